"""Format-1 namespaces (``shard-*.npz`` files) are migrated into the store on first open.

Under a file lock, each shard is read (one at a time: memory stays bounded by one shard) and its
entries committed to the store (`histovl.embed.store`); a shard that cannot be read (torn,
bit-flipped: ``zipfile.BadZipFile``, "Bad CRC-32") is reported once with its name and moved to
``quarantine/`` (its keys are then misses and are encoded again). Only when every shard is in the
store are the shard files removed: a migration killed half-way leaves them in place, and the next
open repeats it (inserting a key twice is a no-op). A cache folder that cannot be written is
refused with a `HistovlError` that says what to do.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
from filelock import FileLock

from histovl.embed.store import QUARANTINE_DIR, RecordStore, report_once
from histovl.errors import HistovlError

SHARD_GLOB = "shard-*.npz"


def has_v1_shards(directory: Path) -> bool:
    return any(directory.glob(SHARD_GLOB))


def migrate_v1(directory: Path, store: RecordStore) -> int:
    """Move every format-1 shard of `directory` into `store`; returns the entries read."""
    if not os.access(directory, os.W_OK):
        raise HistovlError(
            f"{directory} holds a format-1 embedding cache (shard-*.npz) that must be migrated once to the "
            "current store; run any histovl command on it with write access to that folder, or delete the "
            "folder to start an empty cache"
        )
    n = 0
    with FileLock(str(directory / ".migrate.lock")):
        shards = sorted(directory.glob(SHARD_GLOB))
        for shard in shards:
            entries = _read_shard(shard)
            if entries is None:
                _quarantine_shard(directory, shard)
                continue
            keys, emb = entries
            for start in range(0, len(keys), 4096):
                store.put(keys[start : start + 4096], emb[start : start + 4096])
            n += len(keys)
        for shard in shards:  # every readable shard is committed: only now remove them
            shard.unlink(missing_ok=True)
    return n


def _read_shard(shard: Path) -> tuple[list[str], np.ndarray] | None:
    try:
        with np.load(shard, allow_pickle=False) as z:
            keys, emb = z["keys"].tolist(), np.asarray(z["embeddings"], dtype=np.float32)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        report_once(shard, f"unreadable format-1 shard ({type(err).__name__}: {err}); moved to "
                           f"{QUARANTINE_DIR}/, its entries will be encoded again")
        return None
    if emb.ndim != 2 or len(keys) != len(emb):
        report_once(shard, "format-1 shard with mismatched keys and embeddings; moved to quarantine/")
        return None
    return [str(k) for k in keys], emb


def _quarantine_shard(directory: Path, shard: Path) -> None:
    target = directory / QUARANTINE_DIR
    target.mkdir(exist_ok=True)
    try:
        os.replace(shard, target / shard.name)
    except FileNotFoundError:
        pass
