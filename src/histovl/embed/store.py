"""The on-disk record store behind one embedding-cache namespace: SQLite (stdlib) in WAL mode.

One file, ``store.sqlite`` (plus SQLite's ``-wal`` and ``-shm`` while it is open), holds a table
``entries(key TEXT PRIMARY KEY, crc INTEGER, vec BLOB, added REAL)``: the float32 bytes of each
embedding and the CRC-32 of those bytes. A lookup reads only the B-tree pages of the keys asked
for, so opening a namespace costs the same at 10^3 and 10^7 entries (docs/performance.md,
"embedding store"); why SQLite and not LMDB or memory-mapped segments: docs/architecture.md.

Guarantees (docs/reliability.md, "embedding cache"):

* every `put` is one transaction, committed before it returns: a process killed at any point
  loses at most the batch it was writing, and SQLite's write-ahead log never leaves a
  half-written entry visible (``synchronous=NORMAL``: a power cut may also drop the last
  commits, never the file's consistency);
* any number of processes may read and write one store at once (SQLite's locks; writers wait
  up to `BUSY_TIMEOUT_S` for each other); duplicate keys are ignored (same key, same vector);
* a record whose bytes no longer match their CRC-32 is moved to the ``quarantine`` table and
  reads as a miss (so it is encoded again); a file SQLite reports as corrupt or not a database
  is moved to ``quarantine/`` beside it and a fresh store starts. Each is reported once per
  process with the file's name (a warning on the ``histovl`` logger).

SQLite needs a local file system for WAL (not NFS): docs/reliability.md says so.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

STORE_FILE = "store.sqlite"
QUARANTINE_DIR = "quarantine"
BUSY_TIMEOUT_S = 120.0
#: Keys per ``IN (...)`` query (well under SQLite's bound-variable limit).
CHUNK = 900
#: SQLite's primary result codes for a damaged file: SQLITE_CORRUPT, SQLITE_NOTADB.
_CORRUPT_CODES = {11, 26}
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS entries(key TEXT PRIMARY KEY, crc INTEGER NOT NULL, vec BLOB NOT NULL, added REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS quarantine(key TEXT, crc INTEGER, vec BLOB, reason TEXT, at REAL)",
)
#: Connections inherited through fork are kept referenced, never closed in the child (closing
#: them there could checkpoint or unlock the parent's file).
_INHERITED: list[sqlite3.Connection] = []
_REPORTED: set[str] = set()


def checksum(vec: bytes) -> int:
    """CRC-32 of a record's vector bytes (what `get` and `verify` check)."""
    return zlib.crc32(vec)


def is_corruption(err: BaseException) -> bool:
    """True for SQLite's "database disk image is malformed" / "file is not a database"."""
    code = getattr(err, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in _CORRUPT_CODES
    text = str(err).lower()
    return "malformed" in text or "not a database" in text


def report_once(path: Path, message: str) -> None:
    """Warn once per process about a damaged file, naming it."""
    if str(path) + message in _REPORTED:
        return
    _REPORTED.add(str(path) + message)
    log.warning("embedding cache: %s: %s", path, message)


class StoreCorrupt(Exception):
    """Raised inside the store when SQLite reports the file as damaged (handled by quarantine)."""


@dataclass
class VerifyResult:
    """What `RecordStore.verify` found: records checked, keys whose CRC failed, a file-level error."""

    n_checked: int
    bad_keys: list[str]
    error: str | None = None

    @property
    def ok(self) -> bool:
        return not self.bad_keys and self.error is None


class RecordStore:
    """key -> float32 vector in one SQLite file; see the module docstring for the guarantees."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / STORE_FILE
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._pid = -1

    # ---- connection ----------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA cache_size=-16000")  # 16 MB page cache per connection
            for statement in _SCHEMA:
                conn.execute(statement)
        except sqlite3.DatabaseError:
            conn.close()
            raise
        return conn

    def conn(self) -> sqlite3.Connection:
        """This process's connection (opened on first use, again after a fork)."""
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        if self._conn is not None:
            _INHERITED.append(self._conn)
        self._conn = None
        try:
            self._conn = self._connect()
        except sqlite3.DatabaseError as err:
            if not is_corruption(err):
                raise
            self.quarantine_file(str(err))
            self._conn = self._connect()
        self._pid = os.getpid()
        return self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    @contextmanager
    def _guard(self) -> Iterator[sqlite3.Connection]:
        """Run one operation; a damaged file becomes `StoreCorrupt` after it is quarantined."""
        with self._lock:
            try:
                yield self.conn()
            except sqlite3.DatabaseError as err:
                if not is_corruption(err):
                    raise
                self.quarantine_file(str(err))
                raise StoreCorrupt(str(err)) from err

    def quarantine_file(self, reason: str) -> None:
        """Move a damaged store file (and its WAL) to ``quarantine/`` and start a fresh one."""
        from filelock import FileLock

        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None
        with FileLock(str(self.directory / ".quarantine.lock")):
            if not self.path.exists():
                return
            target = self.directory / QUARANTINE_DIR
            target.mkdir(exist_ok=True)
            stamp = time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
            for suffix in ("", "-wal", "-shm"):
                src = Path(str(self.path) + suffix)
                if src.exists():
                    os.replace(src, target / f"{STORE_FILE}.{stamp}{suffix}")
        report_once(self.path, f"damaged ({reason}); moved to {target}/{STORE_FILE}.{stamp}, "
                               "its entries will be encoded again")

    # ---- records -------------------------------------------------------------------------------

    def get(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """The intact records of `keys` (a damaged record is quarantined and left out)."""
        found: dict[str, np.ndarray] = {}
        bad: list[str] = []
        unique = list(dict.fromkeys(keys))
        try:
            with self._guard() as conn:
                for start in range(0, len(unique), CHUNK):
                    part = unique[start : start + CHUNK]
                    sql = f"SELECT key, crc, vec FROM entries WHERE key IN ({','.join('?' * len(part))})"
                    for key, crc, vec in conn.execute(sql, part):
                        if checksum(vec) != crc or len(vec) % 4:
                            bad.append(key)
                        else:
                            found[key] = np.frombuffer(vec, dtype=np.float32)
        except StoreCorrupt:
            return {}
        if bad:
            self.quarantine_records(bad, "checksum mismatch")
        return found

    def put(self, keys: Sequence[str], embeddings: np.ndarray) -> None:
        """Add records in one committed transaction (existing keys are left as they are)."""
        emb = np.ascontiguousarray(embeddings, dtype=np.float32)
        now = time.time()
        rows = [(k, checksum(v := row.tobytes()), v, now) for k, row in zip(keys, emb, strict=True)]
        for attempt in (0, 1):
            try:
                with self._guard() as conn:
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        conn.executemany("INSERT OR IGNORE INTO entries(key, crc, vec, added) VALUES (?,?,?,?)", rows)
                        conn.execute("COMMIT")
                    except BaseException:
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                        raise
                return
            except StoreCorrupt:
                if attempt:
                    raise

    def quarantine_records(self, keys: Sequence[str], reason: str) -> None:
        """Move damaged records to the ``quarantine`` table (they then read as misses)."""
        try:
            with self._guard() as conn:
                conn.execute("BEGIN IMMEDIATE")
                for start in range(0, len(keys), CHUNK):
                    part = list(keys[start : start + CHUNK])
                    marks = ",".join("?" * len(part))
                    conn.execute(f"INSERT INTO quarantine SELECT key, crc, vec, ?, ? FROM entries WHERE key IN ({marks})",
                                 [reason, time.time(), *part])
                    conn.execute(f"DELETE FROM entries WHERE key IN ({marks})", part)
                conn.execute("COMMIT")
        except (StoreCorrupt, sqlite3.OperationalError):
            pass  # read-only or busy: the records still read as misses in this process
        report_once(self.path, f"{len(keys)} record(s) failed their CRC-32 ({reason}); moved to its quarantine "
                               "table, they will be encoded again")

    def count(self) -> int:
        try:
            with self._guard() as conn:
                return int(conn.execute("SELECT count(*) FROM entries").fetchone()[0])
        except StoreCorrupt:
            return 0

    def count_quarantined(self) -> int:
        with self._guard() as conn:
            return int(conn.execute("SELECT count(*) FROM quarantine").fetchone()[0])

    def dim(self) -> int | None:
        """Embedding width (from one record), None when empty."""
        with self._guard() as conn:
            row = conn.execute("SELECT length(vec) FROM entries LIMIT 1").fetchone()
        return None if row is None else int(row[0]) // 4

    def last_added(self) -> float | None:
        with self._guard() as conn:
            row = conn.execute("SELECT max(added) FROM entries").fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def verify(self, *, repair: bool = False) -> VerifyResult:
        """Check SQLite's own structure and every record's CRC-32 (streamed, bounded memory).

        With `repair`, bad records are quarantined (a damaged file always is, when found)."""
        bad: list[str] = []
        n = 0
        try:
            with self._guard() as conn:
                problems = [r[0] for r in conn.execute("PRAGMA quick_check")]
                if problems != ["ok"]:
                    return VerifyResult(n, bad, "; ".join(problems[:3]))
                for key, crc, vec in conn.execute("SELECT key, crc, vec FROM entries"):
                    n += 1
                    if checksum(vec) != crc:
                        bad.append(key)
        except StoreCorrupt as err:
            return VerifyResult(n, bad, str(err))
        if bad and repair:
            self.quarantine_records(bad, "found by verify")
        return VerifyResult(n, bad)

    def compact(self) -> None:
        """Fold the write-ahead log into the file and rebuild it without free pages (VACUUM)."""
        with self._guard() as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.execute("VACUUM")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.directory.glob(STORE_FILE + "*") if p.is_file())
