"""A content-keyed, resumable, multi-process-safe embedding cache that scales to whole cohorts.

Layout (store format 2)::

    <root>/<namespace>/meta.json          what produced these embeddings (weights id, preprocessing,
                                          transform, model, store format)
    <root>/<namespace>/index.sqlite       key -> (segment, row, CRC-32) (`histovl.embed.store`);
                                          SQLite's index.sqlite-wal / -shm beside it while in use
    <root>/<namespace>/seg-<id>.f32       float32 rows, append-only, one writing process each
    <root>/<namespace>/last-used          touched whenever the namespace is opened (`histovl cache info`)
    <root>/<namespace>/quarantine/        damaged files moved aside (segments, an index, v1 shards)

The namespace hashes everything that changes an embedding except the image itself: the cache
key version, the weights identity, the preprocessing, and the image transform (corruption and
severity). Within a namespace each entry is keyed by the sha256 of the image file's bytes, so a
renamed file is a hit and an edited file is a miss (docs/reliability.md, "stale cache").

Why a keyed store: a lookup reads only the keys asked for, so opening a namespace and looking up
1,000 keys takes the same few milliseconds and megabytes at 10^5 and 5*10^6 entries (the format-1
shards were read whole into a dict: 9 s and 1.5 GB at 3*10^5). Every `put` is committed before it
returns, so an encoding engine that puts each batch loses at most the batch in flight when killed
(SIGKILL included); concurrent writers are serialised by SQLite; a damaged record or file is
detected by checksum, reported once with its name, quarantined and encoded again
(`histovl.embed.store`). Format-1 namespaces (``shard-*.npz``) are migrated on first open
(`histovl.embed.cache_v1`). `histovl cache info | verify | prune | compact` administer a cache
(`histovl.embed.cache_admin`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock

from histovl._io import atomic_write_json
from histovl.embed.cache_v1 import has_v1_shards, migrate_v1
from histovl.embed.store import RecordStore
from histovl.options import RunOptions, default_cache_dir  # noqa: F401  (default_cache_dir re-exported)

#: Enters every namespace key; bump it only when the meaning of a key changes (not the storage).
CACHE_FORMAT_VERSION = 1
#: How a namespace folder is laid out: 1 = shard-*.npz (migrated on open), 2 = index.sqlite + seg-*.f32.
STORE_FORMAT_VERSION = 2
META_FILE = "meta.json"
LAST_USED_FILE = "last-used"


def file_content_key(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's bytes (the per-image part of every cache key)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def content_keys(paths: Sequence[str | os.PathLike[str]], workers: int = 4) -> list[str | None]:
    """Content keys for many files (threads: hashlib releases the GIL). None where unreadable."""

    def one(p: str | os.PathLike[str]) -> str | None:
        try:
            return file_content_key(p)
        except OSError:
            return None

    if len(paths) < 64:
        return [one(p) for p in paths]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, paths, chunksize=64))


def namespace_key(*, weights_id: str, preprocessing: str, transform: str = "none") -> str:
    """Hash of everything but the image content that changes an embedding."""
    payload = json.dumps(
        {"format": CACHE_FORMAT_VERSION, "weights": weights_id, "pre": preprocessing, "tf": transform},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


class CacheNamespace:
    """The entries of one (weights, preprocessing, transform) combination.

    `put` commits before it returns (one transaction per call: callers put one encoded batch at a
    time); `flush` is kept for callers written for buffered stores and has nothing left to do.
    `flush_every` is accepted and ignored for the same reason.

    Example:
        >>> ns = EmbeddingCache(tmp).namespace(weights_id="w", preprocessing="p")  # doctest: +SKIP
        >>> ns.put(["k1"], np.ones((1, 4), np.float32))  # doctest: +SKIP
    """

    def __init__(self, directory: Path, meta: dict[str, Any], flush_every: int = 512) -> None:
        self.directory = directory
        self.meta = meta
        self.flush_every = flush_every
        directory.mkdir(parents=True, exist_ok=True)
        self.store = RecordStore(directory)
        meta_path = directory / META_FILE
        if has_v1_shards(directory):
            migrate_v1(directory, self.store)
            atomic_write_json(meta_path, meta)
        elif not meta_path.exists():
            atomic_write_json(meta_path, meta)
        touch_last_used(directory)

    def reload(self) -> None:
        """Nothing to do: every lookup reads the store (kept for format-1 callers)."""

    def __len__(self) -> int:
        return self.store.count()

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self.store.get([key])

    def get(self, keys: Iterable[str | None]) -> tuple[np.ndarray, np.ndarray]:
        """Look up keys. Returns (hit mask, embeddings for the hits in order)."""
        keys = list(keys)
        present = [k for k in keys if k is not None]
        hit_present, rows = self.store.lookup(present)
        if len(present) == len(keys):
            return hit_present, rows
        hit = np.zeros(len(keys), dtype=bool)
        hit[[i for i, k in enumerate(keys) if k is not None]] = hit_present
        return hit, rows

    def put(self, keys: Sequence[str], embeddings: np.ndarray) -> None:
        """Add entries, committed to disk before this returns (existing keys are kept)."""
        if len(keys) != len(embeddings):
            raise ValueError(f"{len(keys)} keys but {len(embeddings)} embeddings")
        if len(keys):
            self.store.put(list(keys), embeddings)

    def flush(self) -> None:
        """Nothing pending: `put` has already committed (kept so callers need not change)."""

    def compact(self) -> None:
        """Merge segments and drop dead rows (under a lock, so concurrent compactions are safe)."""
        with FileLock(str(self.directory / ".compact.lock")):
            self.store.compact()

    def close(self) -> None:
        """Close this process's connection (also done when the namespace is garbage collected)."""
        self.store.close()


def touch_last_used(directory: Path) -> None:
    """Record that the namespace was opened now (`histovl cache info`, `prune --older-than`)."""
    try:
        (directory / LAST_USED_FILE).touch()
    except OSError:
        pass  # a read-only cache is still readable


class EmbeddingCache:
    """A folder of namespaces; see the module docstring for the layout and guarantees."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()

    def namespace(
        self,
        *,
        weights_id: str,
        preprocessing: str,
        transform: str = "none",
        meta: dict[str, Any] | None = None,
    ) -> CacheNamespace:
        key = namespace_key(weights_id=weights_id, preprocessing=preprocessing, transform=transform)
        info = {
            "format_version": CACHE_FORMAT_VERSION,
            "store_format": STORE_FORMAT_VERSION,
            "weights_id": weights_id,
            "preprocessing": preprocessing,
            "transform": transform,
            **(meta or {}),
        }
        return CacheNamespace(self.root / key, info)


def cache_for(options: RunOptions) -> EmbeddingCache | None:
    """The embedding cache a run uses: ``options.cache`` (or the default folder), or None with
    ``use_cache=False``. Every command opens its cache through this one call."""
    return EmbeddingCache(options.cache) if options.use_cache else None
