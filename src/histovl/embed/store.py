"""The on-disk record store behind one embedding-cache namespace: a SQLite index (stdlib, WAL)
and append-only float32 segment files.

Files in the namespace folder::

    index.sqlite          entries(16-byte BLAKE2b digest of the key -> segment, row, CRC-32 of
                          the row's bytes), recent(the same, for entries not yet merged into
                          entries), segments(id, dim, writer, state), quarantine(rows moved aside)
    seg-<id>.f32          raw float32 rows, appended by exactly one process (every store of the
                          namespace in that process shares it), never rewritten

A lookup reads the index B-tree pages of the keys asked for and then each row with one
``pread``; the index holds ~35 bytes per entry (a digest, not the 64-character key), so it stays
small enough to live in the page cache at millions of entries, so opening a namespace and
looking up 1,000 keys costs the same at 10^5 and 5*10^6 entries (docs/performance.md, "embedding
store"). Why this design and not vectors inside SQLite or LMDB: docs/architecture.md, "embedding
store".

Two levels (log-structured): a put inserts into the small ``recent`` table, whose pages stay in
memory; once it holds `LEVEL0_ROWS` rows, the writer that finds so merges it into ``entries`` in
key order in one transaction (each page of the large table is then touched once per merge, not
once per batch of random keys) and empties it. A lookup reads ``entries`` first, then ``recent``
for the keys not found there; a key in both keeps the row of ``entries`` (the older one: the
first row put wins, as with one table). Indexes without ``recent`` get it when first opened.

Guarantees (docs/reliability.md, "embedding cache"):

* `put` writes the rows to the writer's own segment, then commits their index rows in one
  transaction before it returns (a merge of level 0 is a transaction of its own, after that
  commit): a process killed at any point loses at most the batch it was writing (rows written
  but not indexed are dead bytes that `compact` drops); SQLite's
  write-ahead log never shows a half-committed batch (``synchronous=NORMAL``: a power cut may
  also drop the last commits, and rows the OS had not written are caught by their CRC-32);
* any number of processes may read and write one namespace at once: each writer appends to a
  segment of its own, SQLite serialises the index commits (writers wait up to `BUSY_TIMEOUT_S`),
  and a key indexed twice keeps its first row (same key, same vector);
* a row whose bytes fail their CRC-32 is moved to the ``quarantine`` table; a segment shorter
  than its index says (torn) has its rows dropped from the index and the file moved to
  ``quarantine/``; an index SQLite reports as corrupt is moved to ``quarantine/`` with every
  segment and a fresh store starts. Each is reported once per process, naming the file (a
  warning on the ``histovl`` logger), and the keys read as misses, so they are encoded again.

SQLite's WAL needs a local file system (not NFS): docs/reliability.md says so.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import sqlite3
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

INDEX_FILE = "index.sqlite"
QUARANTINE_DIR = "quarantine"
BUSY_TIMEOUT_S = 120.0
#: A writer starts a new segment once its current one reaches this size.
SEGMENT_BYTES = 1 << 30
#: Keys per ``IN (...)`` query (well under SQLite's bound-variable limit).
CHUNK = 900
#: Rows of the ``recent`` table (level 0) that trigger a merge into ``entries`` (module docstring;
#: ``HISTOVL_CACHE_LEVEL0_ROWS`` sets it, e.g. tiny in tests). Chosen by measurement:
#: docs/performance.md, "Embedding store".
LEVEL0_ROWS = int(os.environ.get("HISTOVL_CACHE_LEVEL0_ROWS", 1 << 19))
#: The index tables, oldest level first (a key in both is served from the first).
LEVELS = ("entries", "recent")
#: SQLite's primary result codes for a damaged file: SQLITE_CORRUPT, SQLITE_NOTADB.
_CORRUPT_CODES = {11, 26}
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS entries(key BLOB PRIMARY KEY, seg INTEGER NOT NULL, row INTEGER NOT NULL, "
    "crc INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS recent(key BLOB PRIMARY KEY, seg INTEGER NOT NULL, row INTEGER NOT NULL, "
    "crc INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS segments(id INTEGER PRIMARY KEY AUTOINCREMENT, dim INTEGER NOT NULL, "
    "writer TEXT NOT NULL, created REAL NOT NULL, state TEXT NOT NULL DEFAULT 'live')",
    "CREATE TABLE IF NOT EXISTS quarantine(key BLOB, seg INTEGER, row INTEGER, crc INTEGER, reason TEXT, at REAL)",
)
#: Connections inherited through fork are kept referenced, never closed in the child (closing
#: them there could checkpoint or unlock the parent's file).
_INHERITED: list[sqlite3.Connection] = []
#: This process's open segment per namespace folder: every `RecordStore` of one namespace in a
#: process appends to the same segment (one segment per writing process, not one per call).
_WRITERS: dict[str, _Writer] = {}
#: One lock for every store of the process (SQLite serialises writers anyway; reads are short).
_PROCESS_LOCK = threading.RLock()
_REPORTED: set[tuple[str, str]] = set()


def checksum(data: bytes) -> int:
    """CRC-32 of a row's float32 bytes (what `get` and `verify` check)."""
    return zlib.crc32(data)


def digest(key: str) -> bytes:
    """The index key of a cache key: 128-bit BLAKE2b (a collision is ~10^-20 at 10^9 keys)."""
    return hashlib.blake2b(key.encode("utf-8"), digest_size=16).digest()


def segment_name(seg: int) -> str:
    return f"seg-{seg:08d}.f32"


def is_corruption(err: BaseException) -> bool:
    """True for SQLite's "database disk image is malformed" / "file is not a database"."""
    code = getattr(err, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in _CORRUPT_CODES
    text = str(err).lower()
    return "malformed" in text or "not a database" in text


def report_once(path: Path, message: str) -> None:
    """Warn once per process about a damaged file, naming it."""
    if (str(path), message) in _REPORTED:
        return
    _REPORTED.add((str(path), message))
    log.warning("embedding cache: %s: %s", path, message)


def writer_id() -> str:
    import socket  # here, not at import: `import histovl.embed.cache` stays light

    return f"{socket.gethostname()}:{os.getpid()}"


def writer_alive(writer: str) -> bool:
    """Whether the process that owns a segment may still append to it (unknown host: yes)."""
    import socket

    host, _, pid = writer.rpartition(":")
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return True


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    written = 0
    while written < len(data):
        written += os.pwrite(fd, data[written:], offset + written)


@contextmanager
def _snapshot(conn: sqlite3.Connection) -> Iterator[None]:
    """One read transaction: queries of both levels see the same state (a merge committing
    between them would otherwise hide a key that moved from ``recent`` to ``entries``)."""
    conn.execute("BEGIN")
    try:
        yield
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT")


class StoreCorrupt(Exception):
    """Raised inside the store when SQLite reports the index as damaged (after quarantine)."""


@dataclass
class VerifyResult:
    """What `RecordStore.verify` found: rows checked, keys whose CRC failed, damaged files."""

    n_checked: int = 0
    bad_keys: list[bytes] = field(default_factory=list)
    bad_files: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.bad_keys and not self.bad_files


@dataclass
class _Writer:
    seg: int
    dim: int
    fd: int
    rows: int
    pid: int


class RecordStore:
    """key -> float32 vector: a SQLite index and append-only segments (module docstring)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / INDEX_FILE
        self._lock = _PROCESS_LOCK
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        self._readers: dict[int, int] = {}
        self._dims: dict[int, int] = {}
        self._levels: tuple[str, ...] = LEVELS
        # Rows this object put into ``recent`` since it last counted them (the first put counts).
        self._unmerged = LEVEL0_ROWS

    # ---- connection ----------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA cache_size=-65536")  # up to 64 MB of index pages (touched pages only)
            # Fewer checkpoints (a WAL of up to ~160 MB): each index page a run of appends dirties
            # is written back once per checkpoint, not once per 10,000 pages of log.
            conn.execute("PRAGMA wal_autocheckpoint=40000")
            conn.execute("PRAGMA journal_size_limit=67108864")  # the WAL shrinks back to 64 MB
            if not conn.execute("SELECT 1 FROM sqlite_master WHERE name='quarantine'").fetchone():
                # A new index (WAL mode is stored in the file, so an existing one needs no pragma):
                # 2 KiB pages, which halve the log bytes of a put into a large random-keyed index.
                conn.execute("PRAGMA page_size=2048")
                conn.execute("PRAGMA journal_mode=WAL")
                for statement in _SCHEMA:
                    conn.execute(statement)
            else:
                if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    conn.execute("PRAGMA journal_mode=WAL")
                self._add_level0(conn)
        except sqlite3.DatabaseError:
            conn.close()
            raise
        return conn

    def _add_level0(self, conn: sqlite3.Connection) -> None:
        """An index written before the two levels gets its (empty) ``recent`` table; one that
        cannot be written is read as it is, with one level."""
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name='recent'").fetchone():
            return
        try:
            conn.execute(_SCHEMA[1])
        except sqlite3.OperationalError as err:
            if "readonly" not in str(err).replace(" ", "").lower():
                raise
            self._levels = LEVELS[:1]

    def conn(self) -> sqlite3.Connection:
        """This process's connection (opened on first use, again after a fork)."""
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        if self._conn is not None:
            _INHERITED.append(self._conn)
        self._conn, self._readers = None, {}
        try:
            self._conn = self._connect()
        except sqlite3.DatabaseError as err:
            if not is_corruption(err):
                raise
            self.quarantine_index(str(err))
            self._conn = self._connect()
        self._pid = os.getpid()
        return self._conn

    @property
    def _writer(self) -> _Writer | None:
        w = _WRITERS.get(str(self.directory))
        return w if w is not None and w.pid == os.getpid() else None

    @_writer.setter
    def _writer(self, w: _Writer | None) -> None:
        if w is None:
            _WRITERS.pop(str(self.directory), None)
        else:
            _WRITERS[str(self.directory)] = w

    def close(self) -> None:
        """Close this object's index connection and segment readers (this process's only). The
        process's open segment stays open for the next store of this namespace."""
        with self._lock:
            if self._pid == os.getpid():
                self._close_readers()
                if self._conn is not None:
                    self._conn.close()
            self._conn, self._readers = None, {}

    def _close_readers(self) -> None:
        for fd in self._readers.values():
            os.close(fd)
        self._readers = {}

    def __del__(self) -> None:  # segment file descriptors are not closed by the GC otherwise
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: nothing left to do
            pass

    @contextmanager
    def _guard(self) -> Iterator[sqlite3.Connection]:
        """Run one operation; a damaged index becomes `StoreCorrupt` after it is quarantined."""
        with self._lock:
            try:
                yield self.conn()
            except sqlite3.DatabaseError as err:
                if not is_corruption(err):
                    raise
                self.quarantine_index(str(err))
                raise StoreCorrupt(str(err)) from err

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._guard() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    # ---- writing -------------------------------------------------------------------------------

    def _segment_for(self, dim: int) -> _Writer:
        """This process's open segment for rows of `dim` (a new one when needed)."""
        w = self._writer
        if w is not None and w.pid == os.getpid() and w.dim == dim and w.rows * 4 * dim < SEGMENT_BYTES:
            return w
        self.end_segment()
        with self._transaction() as conn:
            cur = conn.execute("INSERT INTO segments(dim, writer, created) VALUES (?,?,?)", (dim, writer_id(), time.time()))
            seg = int(cur.lastrowid or 0)
        fd = os.open(self.directory / segment_name(seg), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        self._writer = _Writer(seg, dim, fd, 0, os.getpid())
        self._dims[seg] = dim
        return self._writer

    def end_segment(self) -> None:
        """Stop appending to the current segment (the next put starts a new one)."""
        w, self._writer = self._writer, None
        if w is not None and w.pid == os.getpid():
            os.close(w.fd)

    def put(self, keys: Sequence[str], embeddings: np.ndarray) -> None:
        """Append rows to this process's segment, then commit their index rows (one transaction);
        keys already present keep their first row."""
        emb = np.ascontiguousarray(embeddings, dtype=np.float32)
        if emb.ndim != 2 or len(keys) != len(emb):
            raise ValueError(f"{len(keys)} keys but embeddings of shape {emb.shape}")
        for attempt in (0, 1):
            try:
                with self._lock:
                    self.conn()
                    self._append(list(keys), emb)
                return
            except StoreCorrupt:
                if attempt:
                    raise

    def _append(self, keys: list[str], emb: np.ndarray) -> None:
        w = self._segment_for(emb.shape[1])
        data = emb.tobytes()
        row_bytes = 4 * emb.shape[1]
        start = w.rows
        try:
            _pwrite_all(w.fd, data, start * row_bytes)
        except BaseException:
            os.ftruncate(w.fd, start * row_bytes)  # nothing indexed points past `start`
            raise
        w.rows += len(keys)
        view = memoryview(data)
        crcs = [zlib.crc32(view[o : o + row_bytes]) for o in range(0, len(data), row_bytes)] if row_bytes else [0] * len(keys)
        # Sorted by digest: the B-tree inserts walk forward through the index, touching each page once.
        rows = sorted(zip(map(digest, keys), itertools.repeat(w.seg), range(start, start + len(keys)), crcs))
        with self._transaction() as conn:
            conn.executemany(f"INSERT OR IGNORE INTO {self._levels[-1]}(key, seg, row, crc) VALUES (?,?,?,?)", rows)
        self._unmerged += len(rows)
        if self._unmerged >= max(1, LEVEL0_ROWS // 16):  # count level 0 now and then, not per put
            self._unmerged = 0
            try:
                self.merge(LEVEL0_ROWS)
            except sqlite3.OperationalError:
                pass  # busy past BUSY_TIMEOUT_S, or read-only: the put is committed, a later one merges

    def merge(self, at_least: int = 0) -> bool:
        """Move level 0 (``recent``) into ``entries`` in one transaction, in key order, if it holds
        at least `at_least` rows (counted inside the transaction: of two writers crossing the
        threshold together, one merges). Keys already in ``entries`` keep their row there.
        Returns whether it merged."""
        if len(self._levels) < 2:
            return False
        with self._transaction() as conn:
            if conn.execute("SELECT count(*) FROM recent").fetchone()[0] < max(at_least, 1):
                return False  # too small yet, or another writer merged it meanwhile
            conn.execute("INSERT OR IGNORE INTO entries(key, seg, row, crc) SELECT key, seg, row, crc FROM recent ORDER BY key")
            conn.execute("DELETE FROM recent")
        return True

    # ---- reading -------------------------------------------------------------------------------

    def _index_rows(self, digests: Sequence[bytes]) -> list[tuple[bytes, int, int, int]]:
        """(digest, segment, row, crc) of the digests present, in file order (one ``IN`` query
        per `CHUNK` digests: SQLite sorts the list and walks the B-tree once per key)."""
        found: list[tuple[bytes, int, int, int]] = []
        with self._guard() as conn, _snapshot(conn):
            for start in range(0, len(digests), CHUNK):
                part = digests[start : start + CHUNK]
                for table in self._levels:  # oldest first: a key in both keeps its first row
                    rows = conn.execute(f"SELECT key, seg, row, crc FROM {table} WHERE key IN ({','.join('?' * len(part))})", part).fetchall()
                    found.extend(rows)
                    if len(rows) < len(part):
                        seen = {r[0] for r in rows}
                        part = [d for d in part if d not in seen]
                    else:
                        break
        found.sort(key=lambda r: (r[1], r[2]))
        return found

    def _dim(self, seg: int) -> int:
        if seg not in self._dims:
            with self._guard() as conn:
                row = conn.execute("SELECT dim FROM segments WHERE id=?", (seg,)).fetchone()
            self._dims[seg] = int(row[0]) if row else 0
        return self._dims[seg]

    def _reader(self, seg: int) -> int:
        if seg not in self._readers:
            self._readers[seg] = os.open(self.directory / segment_name(seg), os.O_RDONLY)
        return self._readers[seg]

    def get(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """The intact rows of `keys` (damaged rows and segments are quarantined and left out)."""
        unique = list(dict.fromkeys(keys))
        digests = [digest(k) for k in unique]
        found = self.lookup_digests(digests)
        return {k: found[d] for k, d in zip(unique, digests, strict=True) if d in found}

    def lookup(self, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(hit mask over `keys`, the hits' rows in order): `get` without a dict per call (what
        `CacheNamespace.get` uses; each key is hashed once)."""
        digests = [digest(k) for k in keys]
        found = self.lookup_digests(list(dict.fromkeys(digests)))
        hit = np.fromiter((d in found for d in digests), dtype=bool, count=len(digests))
        rows = [found[d] for d in digests if d in found]
        dim = rows[0].shape[0] if rows else 0
        return hit, (np.stack(rows) if rows else np.zeros((0, dim), np.float32))

    def lookup_digests(self, digests: list[bytes]) -> dict[bytes, np.ndarray]:
        """digest -> intact row for the (unique) `digests` present."""
        with self._lock:
            try:
                found, bad, torn = self._read(self._index_rows(digests))
                if torn and self._retired(torn):  # compacted under us: the rows moved, look again
                    found, bad, torn = self._read(self._index_rows(digests))
            except StoreCorrupt:
                return {}
            if bad:
                self.quarantine_records(bad, "checksum mismatch")
            for seg, reason in torn.items():
                self.quarantine_segment(seg, reason)
        return found

    def _read(self, rows: list[tuple[bytes, int, int, int]]) -> tuple[dict[bytes, np.ndarray], list[bytes], dict[int, str]]:
        """Read and check rows: (digest -> vector, digests failing their CRC, torn segment -> why).
        Rows in file order: one ``pread`` each (random rows are rarely adjacent)."""
        found: dict[bytes, np.ndarray] = {}
        bad: list[bytes] = []
        torn: dict[int, str] = {}
        pread, crc32, frombuffer, f32 = os.pread, zlib.crc32, np.frombuffer, np.float32
        cur_seg, fd, size = -1, -1, 0
        for key, seg, row, crc in rows:
            if seg != cur_seg:
                cur_seg, size = seg, 4 * self._dim(seg)
                try:
                    fd = self._reader(seg) if size else -1
                except FileNotFoundError:
                    torn[seg] = "segment file missing"
            if seg in torn:
                continue
            data = pread(fd, size, row * size) if size else b""
            if len(data) < size or size == 0:
                torn[seg] = f"truncated: row {row} is past its end"
            elif crc32(data) != crc:
                bad.append(key)
            else:
                found[key] = frombuffer(data, dtype=f32)
        self._close_readers()  # one open per segment per call: no descriptor piles up
        if torn:  # a torn segment is quarantined whole: none of its rows is served
            found = {k: v for k, v in found.items() if k not in {r[0] for r in rows if r[1] in torn}}
        return found, bad, torn

    def _retired(self, segs: dict[int, str]) -> bool:
        with self._guard() as conn:
            marks = ",".join("?" * len(segs))
            return bool(conn.execute(f"SELECT 1 FROM segments WHERE state='retired' AND id IN ({marks})", list(segs)).fetchone())

    # ---- damage ----------------------------------------------------------------------------------

    def quarantine_records(self, keys: Sequence[bytes], reason: str) -> None:
        """Move damaged rows' index entries to the ``quarantine`` table (they then read as misses)."""
        segs: set[str] = set()
        try:
            with self._transaction() as conn:
                for start in range(0, len(keys), CHUNK):
                    part = list(keys[start : start + CHUNK])
                    marks = ",".join("?" * len(part))
                    for table in self._levels:
                        segs.update(segment_name(s) for (s,) in conn.execute(f"SELECT DISTINCT seg FROM {table} WHERE key IN ({marks})", part))
                        conn.execute(f"INSERT INTO quarantine SELECT key, seg, row, crc, ?, ? FROM {table} WHERE key IN ({marks})",
                                     [reason, time.time(), *part])
                        conn.execute(f"DELETE FROM {table} WHERE key IN ({marks})", part)
        except (StoreCorrupt, sqlite3.OperationalError):
            pass  # read-only or busy: the rows still read as misses in this process
        where = ", ".join(sorted(segs)) or INDEX_FILE
        report_once(self.directory / where, f"{len(keys)} row(s) failed their CRC-32 ({reason}); moved to the "
                                            f"quarantine table of {INDEX_FILE}, they will be encoded again")

    def quarantine_segment(self, seg: int, reason: str) -> None:
        """Drop a torn segment's rows from the index and move the file to ``quarantine/``."""
        path = self.directory / segment_name(seg)
        try:
            with self._transaction() as conn:
                n = sum(conn.execute(f"DELETE FROM {table} WHERE seg=?", (seg,)).rowcount for table in self._levels)
                conn.execute("UPDATE segments SET state='quarantined' WHERE id=?", (seg,))
        except (StoreCorrupt, sqlite3.OperationalError):
            n = -1
        if seg in self._readers:
            os.close(self._readers.pop(seg))
        if self._writer is not None and self._writer.seg == seg:
            self.end_segment()
        (self.directory / QUARANTINE_DIR).mkdir(exist_ok=True)
        try:
            os.replace(path, self.directory / QUARANTINE_DIR / path.name)
        except FileNotFoundError:
            pass
        report_once(path, f"damaged segment ({reason}); moved to {QUARANTINE_DIR}/, its {max(n, 0)} entries "
                          "will be encoded again")

    def quarantine_index(self, reason: str) -> None:
        """Move a damaged index (and its WAL, and every segment, useless without it) to
        ``quarantine/<time>/``; the next use starts an empty store."""
        from filelock import FileLock

        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None
        self.end_segment()
        self._close_readers()
        self._dims = {}
        stamp = time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
        target = self.directory / QUARANTINE_DIR / stamp
        with FileLock(str(self.directory / ".quarantine.lock")):
            if not self.path.exists():
                return
            target.mkdir(parents=True, exist_ok=True)
            for src in [*self.directory.glob(INDEX_FILE + "*"), *self.directory.glob("seg-*.f32")]:
                os.replace(src, target / src.name)
        report_once(self.path, f"damaged index ({reason}); moved with its segments to {target}, "
                               "its entries will be encoded again")

    # ---- administration ---------------------------------------------------------------------------

    def _select_all(self, columns: str = "key, seg, row, crc") -> str:
        """SQL for every indexed entry once: ``entries``, plus the keys of ``recent`` not in it."""
        if len(self._levels) < 2:
            return f"SELECT {columns} FROM entries"
        return (f"SELECT {columns} FROM entries UNION ALL SELECT {columns} FROM recent "
                "WHERE NOT EXISTS (SELECT 1 FROM entries WHERE entries.key = recent.key)")

    def count(self) -> int:
        """Entries in the store (a key in both levels counts once)."""
        try:
            with self._guard() as conn, _snapshot(conn):
                n = int(conn.execute("SELECT count(*) FROM entries").fetchone()[0])
                if len(self._levels) > 1:
                    n += int(conn.execute("SELECT count(*) FROM recent WHERE NOT EXISTS "
                                          "(SELECT 1 FROM entries WHERE entries.key = recent.key)").fetchone()[0])
                return n
        except StoreCorrupt:
            return 0

    def count_quarantined(self) -> int:
        with self._guard() as conn:
            return int(conn.execute("SELECT count(*) FROM quarantine").fetchone()[0])

    def dim(self) -> int | None:
        """Embedding width (from the segments in use), None when empty."""
        with self._guard() as conn:
            row = conn.execute("SELECT dim FROM segments WHERE state='live' ORDER BY id DESC LIMIT 1").fetchone()
        return None if row is None else int(row[0])

    def verify(self, *, repair: bool = False) -> VerifyResult:
        """SQLite's structure check, then every indexed row read and its CRC-32 checked (segment
        by segment, bounded memory). With `repair`, bad rows and torn segments are quarantined
        (a damaged index always is, when found)."""
        res = VerifyResult()
        try:
            with self._guard() as conn:
                problems = [r[0] for r in conn.execute("PRAGMA quick_check")]
                if problems != ["ok"]:
                    res.bad_files[str(self.path)] = "; ".join(problems[:3])
                    return res
                rows = conn.execute(f"{self._select_all()} ORDER BY seg, row")
                while batch := rows.fetchmany(4096):
                    _, bad, torn = self._read(batch)
                    res.n_checked += len(batch)
                    res.bad_keys += bad
                    for seg, reason in torn.items():
                        res.bad_files[str(self.directory / segment_name(seg))] = reason
        except StoreCorrupt as err:
            res.bad_files[str(self.path)] = f"damaged index ({err}); moved to {QUARANTINE_DIR}/"
            return res
        if res.bad_keys:
            res.bad_files.setdefault(str(self.path), f"{len(res.bad_keys)} row(s) fail their CRC-32")
        if repair:
            if res.bad_keys:
                self.quarantine_records(res.bad_keys, "found by verify")
            for name in [f for f in res.bad_files if f.endswith(".f32")]:
                self.quarantine_segment(int(Path(name).stem.split("-")[1]), res.bad_files[name])
        return res

    def compact(self) -> int:
        """Rewrite segments with dead rows, and small ones, into new segments; delete emptied
        and retired segment files; fold the WAL in. Segments a live process may still append to
        are left alone. Returns the number of segment files removed. Callers hold a file lock
        (`histovl.embed.cache.CacheNamespace.compact`), so two compactions never overlap."""
        with self._lock:
            self.end_segment()
            self.merge()
            with self._guard() as conn:
                segs = conn.execute("SELECT id, dim, writer, state FROM segments").fetchall()
                live = dict(conn.execute(f"SELECT seg, count(*) FROM ({self._select_all('seg')}) GROUP BY seg").fetchall())
            chosen = []
            for seg, dim, writer, state in segs:
                path = self.directory / segment_name(seg)
                if state != "live" or (writer != writer_id() and writer_alive(writer)):
                    continue
                rows = path.stat().st_size // (4 * dim) if path.exists() else 0
                if live.get(seg, 0) < rows or rows * 4 * dim < SEGMENT_BYTES // 2:
                    chosen.append((seg, dim))
            if len(chosen) == 1 and live.get(chosen[0][0], 0) == self._file_rows(*chosen[0]):
                chosen = []  # one small segment without dead rows: nothing to gain
            for seg, dim in chosen:
                self._move_rows(seg, dim)
            self.end_segment()
            removed = self._remove_retired()
            with self._guard() as conn:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return removed

    def _file_rows(self, seg: int, dim: int) -> int:
        path = self.directory / segment_name(seg)
        return path.stat().st_size // (4 * dim) if path.exists() else 0

    def _move_rows(self, seg: int, dim: int) -> None:
        """Copy a segment's intact indexed rows to this process's segment, re-point the index, retire it."""
        with self._guard() as conn:
            rows = conn.execute(f"SELECT * FROM ({self._select_all()}) WHERE seg=? ORDER BY row", (seg,)).fetchall()
        for start in range(0, len(rows), 4096):
            part = rows[start : start + 4096]
            found, bad, torn = self._read(part)
            if torn:
                self.quarantine_segment(seg, torn[seg])
                return
            if bad:
                self.quarantine_records(bad, "checksum mismatch")
            keys = [r[0] for r in part if r[0] in found]
            if not keys:
                continue
            w = self._segment_for(dim)
            first = w.rows
            _pwrite_all(w.fd, np.stack([found[k] for k in keys]).tobytes(), first * 4 * dim)
            w.rows += len(keys)
            with self._transaction() as conn:
                for table in self._levels:
                    conn.executemany(f"UPDATE {table} SET seg=?, row=? WHERE key=? AND seg=?",
                                     [(w.seg, first + i, k, seg) for i, k in enumerate(keys)])
        with self._transaction() as conn:
            conn.execute("UPDATE segments SET state='retired' WHERE id=?", (seg,))

    def _remove_retired(self) -> int:
        with self._guard() as conn:
            retired = [int(s) for (s,) in conn.execute("SELECT id FROM segments WHERE state='retired'")]
            in_use = {int(s) for table in self._levels for (s,) in conn.execute(f"SELECT DISTINCT seg FROM {table}")}
        removed = 0
        for seg in retired:
            if seg in in_use:
                continue
            if seg in self._readers:
                os.close(self._readers.pop(seg))
            path = self.directory / segment_name(seg)
            if path.exists():
                path.unlink()
                removed += 1
        return removed

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.directory.iterdir() if p.is_file())
