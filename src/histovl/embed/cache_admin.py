"""`histovl cache info | verify | prune | compact`: look after an embedding-cache folder.

* `cache_info`: one row per namespace: size on disk, entries, the model (weights id, name),
  preprocessing and transform it belongs to, its store format and when it was last used;
* `cache_verify`: SQLite's structure check plus every row's CRC-32; damaged files and
  records are named (the CLI exits 2 listing them); ``repair=True`` quarantines bad records;
* `cache_prune`: remove whole namespaces by model (a glob on the weights id or model name) and/or
  by age (not used for longer than ``older_than``, e.g. ``"30d"``); ``dry_run`` lists only;
* `cache_compact`: migrate format-1 namespaces, fold the write-ahead log in and reclaim space.

Layout and guarantees: `histovl.embed.cache`, `histovl.embed.store`.

Example:
    >>> [(r.model, r.entries) for r in cache_info("cache/")]  # doctest: +SKIP
    >>> cache_prune("cache/", older_than="30d", dry_run=True)  # doctest: +SKIP
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from histovl.embed.cache import LAST_USED_FILE, META_FILE, CacheNamespace, default_cache_dir
from histovl.embed.cache_v1 import SHARD_GLOB
from histovl.embed.store import INDEX_FILE, QUARANTINE_DIR, RecordStore
from histovl.errors import HistovlError

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass
class NamespaceInfo:
    """One namespace of a cache folder, as `histovl cache info` shows it."""

    name: str
    path: str
    size_bytes: int
    entries: int | None
    quarantined: int
    dim: int | None
    weights_id: str
    model: str
    preprocessing: str
    transform: str
    kind: str
    store_format: int
    last_used: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class VerifyReport:
    """What `cache_verify` found; `bad_files` lists each damaged file with the reason."""

    n_namespaces: int = 0
    n_records: int = 0
    bad_files: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.bad_files


def _root(cache: str | os.PathLike[str] | None) -> Path:
    return Path(os.fspath(cache)).expanduser() if cache is not None else default_cache_dir()


def namespace_dirs(cache: str | os.PathLike[str] | None = None) -> list[Path]:
    """Every namespace folder under the cache root (a folder holding ``meta.json``)."""
    root = _root(cache)
    if not root.is_dir():
        return []
    return sorted(p.parent for p in root.glob(f"*/{META_FILE}") if not p.parent.name.startswith("."))


def namespace_info(directory: Path) -> NamespaceInfo:
    """Size, entries, model and last use of one namespace (reads the store, writes nothing)."""
    try:
        meta = json.loads((directory / META_FILE).read_text())
    except (OSError, ValueError):
        meta = {}
    files = [p for p in directory.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    v1 = any(directory.glob(SHARD_GLOB))
    entries = quarantined = dim = None
    if (directory / INDEX_FILE).exists():
        store = RecordStore(directory)
        try:
            entries, quarantined, dim = store.count(), store.count_quarantined(), store.dim()
        finally:
            store.close()
    stamp = directory / LAST_USED_FILE
    last = stamp.stat().st_mtime if stamp.exists() else max((p.stat().st_mtime for p in files), default=None)
    return NamespaceInfo(
        name=directory.name, path=str(directory), size_bytes=size, entries=entries if not v1 else None,
        quarantined=quarantined or 0, dim=dim, weights_id=str(meta.get("weights_id", "?")),
        model=str(meta.get("model", "")), preprocessing=str(meta.get("preprocessing", "?")),
        transform=str(meta.get("transform", "?")), kind=str(meta.get("kind", "image")),
        store_format=1 if v1 else int(meta.get("store_format", 2)), last_used=last,
    )


def cache_info(cache: str | os.PathLike[str] | None = None) -> list[NamespaceInfo]:
    """One `NamespaceInfo` per namespace of the cache folder (default: `default_cache_dir`)."""
    return [namespace_info(d) for d in namespace_dirs(cache)]


def cache_verify(cache: str | os.PathLike[str] | None = None, *, repair: bool = False) -> VerifyReport:
    """Check every namespace's store (SQLite structure, each record's CRC-32) and format-1 shards.

    Nothing is changed unless `repair`: then bad records go to the quarantine table (a file
    SQLite cannot read is quarantined whenever it is found, `repair` or not)."""
    import zipfile

    import numpy as np

    report = VerifyReport()
    for directory in namespace_dirs(cache):
        report.n_namespaces += 1
        for shard in sorted(directory.glob(SHARD_GLOB)):
            try:
                with np.load(shard, allow_pickle=False) as z:
                    keys, _ = z["keys"], z["embeddings"]  # reading both checks the zip CRCs
                report.n_records += len(keys)
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
                report.bad_files[str(shard)] = f"unreadable format-1 shard: {err}"
        if not (directory / INDEX_FILE).exists():
            continue
        store = RecordStore(directory)
        try:
            res = store.verify(repair=repair)
        finally:
            store.close()
        report.n_records += res.n_checked
        done = " (quarantined)" if repair else " (`histovl cache verify --repair` quarantines it)"
        report.bad_files.update({path: reason + done for path, reason in res.bad_files.items()})
    return report


def parse_age(text: str | float | int) -> float:
    """``"30d"``, ``"12h"``, ``"90m"``, ``"2w"``, ``"45s"`` (or a number of seconds) -> seconds."""
    if isinstance(text, int | float):
        return float(text)
    m = _AGE.match(text)
    if m is None:
        raise HistovlError(f"--older-than {text!r}: give a number and a unit s, m, h, d or w (e.g. 30d)")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def cache_prune(
    cache: str | os.PathLike[str] | None = None, *, model: str | None = None, older_than: str | float | None = None,
    dry_run: bool = False,
) -> list[NamespaceInfo]:
    """Remove the namespaces matching every criterion given; returns them (removed, or with
    `dry_run` only listed).

    Args:
        model: a glob (``fnmatch``) on the weights id or the model name, e.g. ``"*vit-b-32*"``.
        older_than: not used for at least this long (``"30d"``, ``"12h"`` or seconds).
    """
    if model is None and older_than is None:
        raise HistovlError("cache prune needs --model GLOB and/or --older-than AGE (e.g. 30d); nothing was removed")
    cutoff = time.time() - parse_age(older_than) if older_than is not None else None
    chosen = []
    for info in cache_info(cache):
        if model is not None and not (fnmatch.fnmatch(info.weights_id, model) or fnmatch.fnmatch(info.model, model)):
            continue
        if cutoff is not None and info.last_used is not None and info.last_used > cutoff:
            continue
        chosen.append(info)
    if not dry_run:
        for info in chosen:
            _remove_namespace(Path(info.path))
    return chosen


def _remove_namespace(directory: Path) -> None:
    """Rename the folder aside first, so it disappears from the cache in one step, then delete it."""
    aside = directory.with_name(f".pruned-{directory.name}-{uuid.uuid4().hex[:8]}")
    os.replace(directory, aside)
    shutil.rmtree(aside, ignore_errors=True)


def cache_compact(cache: str | os.PathLike[str] | None = None) -> list[tuple[str, int, int]]:
    """Migrate format-1 namespaces, then compact every store; returns (namespace, bytes before, after)."""
    out = []
    for directory in namespace_dirs(cache):
        before = _size(directory)
        meta = json.loads((directory / META_FILE).read_text())
        ns = CacheNamespace(directory, meta)  # opening migrates a format-1 namespace
        try:
            ns.compact()
        finally:
            ns.close()
        out.append((directory.name, before, _size(directory)))
    return out


def _size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def quarantined_files(cache: str | os.PathLike[str] | None = None) -> list[Path]:
    """Files moved aside by the store or the migration (``<namespace>/quarantine/*``)."""
    return sorted(p for d in namespace_dirs(cache) for p in (d / QUARANTINE_DIR).glob("*") if p.is_file())
