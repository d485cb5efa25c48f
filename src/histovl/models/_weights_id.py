"""Stable identities for sets of weights (part of every embedding-cache key).

A local file is identified by the sha256 of its bytes. Hashing a 1.7 GB ViT-L checkpoint takes
seconds, so results are memoised in a small JSON file keyed by (path, size, mtime_ns): a file that
has not changed is not re-read. Hub models are identified by their commit hash instead, which the
hub already guarantees to be content-addressed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from filelock import FileLock

from histovl._io import atomic_write_json

_CHUNK = 8 * 1024 * 1024


def memo_path() -> Path:
    """Where file hashes are memoised (``$HISTOVL_CACHE`` or ``~/.cache/histovl``)."""
    root = os.environ.get("HISTOVL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "histovl")
    return Path(root) / "weights_sha256.json"


def file_sha256(path: str | Path, *, memo: Path | None = None) -> str:
    """sha256 (hex) of a file, streamed and memoised by (resolved path, size, mtime_ns)."""
    path = Path(path).resolve()
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    memo = memo or memo_path()
    table = _read_memo(memo)
    if key in table:
        return table[key]
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    value = digest.hexdigest()
    _write_memo(memo, key, value)
    return value


def files_weights_id(paths: Iterable[str | Path], *, memo: Path | None = None) -> str:
    """Identity of one or more weight files: ``sha256:<hex>`` (combined when several)."""
    hashes = [file_sha256(p, memo=memo) for p in paths]
    if len(hashes) == 1:
        return f"sha256:{hashes[0]}"
    return "sha256:" + hashlib.sha256("\n".join(hashes).encode()).hexdigest()


def hub_weights_id(repo_id: str, commit: str) -> str:
    """Identity of weights pinned to a hub commit."""
    return f"hf-hub:{repo_id}@{commit}"


def _read_memo(memo: Path) -> dict[str, str]:
    try:
        data = json.loads(memo.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_memo(memo: Path, key: str, value: str) -> None:
    """Add one entry; a read-only home directory only costs re-hashing next time."""
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(memo) + ".lock", timeout=30):
            table = _read_memo(memo)
            table[key] = value
            if len(table) > 512:  # keep the memo small: drop the oldest entries
                table = dict(list(table.items())[-512:])
            atomic_write_json(memo, table)
    except OSError:
        pass
