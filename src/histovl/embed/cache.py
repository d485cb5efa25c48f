"""A content-keyed, resumable, multi-process-safe embedding cache.

Layout::

    <root>/<namespace>/meta.json                      what produced these embeddings
    <root>/<namespace>/shard-<pid>-<uuid>.npz          keys + float32 embeddings, append-only

The namespace hashes everything that changes an embedding except the image itself: the cache
format version, the weights identity, the preprocessing, and the image transform (corruption and
severity). Within a namespace each entry is keyed by the sha256 of the image file's bytes, so a
renamed file is a hit and an edited file is a miss (docs/reliability.md, "stale cache").

Why shards: each writer appends its own shard files, written atomically (temp + rename), so two
processes filling one cache never corrupt each other and a killed run loses at most the batch in
flight; the next run re-reads every complete shard and encodes only what is missing. Duplicates
across shards are harmless (same key, same embedding). `compact()` merges shards under a lock.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock

from histovl._io import atomic_path, atomic_write_json
from histovl.options import RunOptions, default_cache_dir  # noqa: F401  (default_cache_dir re-exported)

CACHE_FORMAT_VERSION = 1


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

    Example:
        >>> ns = EmbeddingCache(tmp).namespace(weights_id="w", preprocessing="p")  # doctest: +SKIP
        >>> ns.put(["k1"], np.ones((1, 4), np.float32)); ns.flush()  # doctest: +SKIP
    """

    def __init__(self, directory: Path, meta: dict[str, Any], flush_every: int = 512) -> None:
        self.directory = directory
        self.meta = meta
        self.flush_every = flush_every
        self._index: dict[str, np.ndarray] = {}
        self._pending_keys: list[str] = []
        self._pending: list[np.ndarray] = []
        self._writer_id = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._n_shards_written = 0
        directory.mkdir(parents=True, exist_ok=True)
        meta_path = directory / "meta.json"
        if not meta_path.exists():
            atomic_write_json(meta_path, meta)
        self.reload()

    def reload(self) -> None:
        """Read every complete shard (a torn temp file is never named `shard-*.npz`)."""
        for shard in sorted(self.directory.glob("shard-*.npz")):
            try:
                with np.load(shard, allow_pickle=False) as z:
                    keys, emb = z["keys"], z["embeddings"]
            except (OSError, ValueError, KeyError, EOFError):
                continue  # unreadable shard (e.g. disk full mid-write elsewhere): ignore, re-encode
            for k, row in zip(keys.tolist(), emb, strict=True):
                self._index[k] = row

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def get(self, keys: Iterable[str | None]) -> tuple[np.ndarray, np.ndarray]:
        """Look up keys. Returns (hit mask, embeddings for the hits in order)."""
        keys = list(keys)
        hit = np.array([k is not None and k in self._index for k in keys], dtype=bool)
        rows = [self._index[k] for k, h in zip(keys, hit, strict=True) if h and k is not None]
        dim = rows[0].shape[0] if rows else 0
        return hit, (np.stack(rows) if rows else np.zeros((0, dim), np.float32))

    def put(self, keys: Sequence[str], embeddings: np.ndarray) -> None:
        """Add entries; they reach disk at the next flush (automatic every `flush_every`)."""
        if len(keys) != len(embeddings):
            raise ValueError(f"{len(keys)} keys but {len(embeddings)} embeddings")
        emb = np.ascontiguousarray(embeddings, dtype=np.float32)
        for k, row in zip(keys, emb, strict=True):
            self._index[k] = row
        self._pending_keys.extend(keys)
        self._pending.append(emb)
        if len(self._pending_keys) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Write pending entries as one new shard, atomically."""
        if not self._pending_keys:
            return
        keys = np.array(self._pending_keys)
        emb = np.concatenate(self._pending, axis=0)
        name = f"shard-{self._writer_id}-{self._n_shards_written:05d}.npz"
        with atomic_path(self.directory / name, suffix=".npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, keys=keys, embeddings=emb)
                fh.flush()
                os.fsync(fh.fileno())
        self._n_shards_written += 1
        self._pending_keys, self._pending = [], []

    def compact(self) -> None:
        """Merge all shards into one (under a lock, so concurrent compactions are safe)."""
        self.flush()
        with FileLock(str(self.directory / ".compact.lock")):
            shards = sorted(self.directory.glob("shard-*.npz"))
            if len(shards) <= 1:
                return
            self._index.clear()
            self.reload()
            keys = list(self._index)
            emb = np.stack([self._index[k] for k in keys]) if keys else np.zeros((0, 0), np.float32)
            merged = self.directory / f"shard-compact-{uuid.uuid4().hex[:12]}.npz"
            with atomic_path(merged, suffix=".npz") as tmp:
                with open(tmp, "wb") as fh:
                    np.savez(fh, keys=np.array(keys), embeddings=emb)
            for s in shards:
                s.unlink(missing_ok=True)


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
