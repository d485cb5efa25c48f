"""The embedding store at cohort scale: open + look up 1,000 random keys, and append throughput.

Scale mode (the issue's targets: <= 100 ms and <= 200 MB resident-memory growth for open +
1,000 random lookups, flat in N; appends >= 20,000 entries/s):

  build     = N entries (random keys like sha256 hex digests, float32 vectors of `dim`) put into
              one `histovl.embed.cache` namespace in batches of 8,192 (one transaction each),
              then ``os.sync()`` so the measurements below see a store at rest (a bulk build
              leaves gigabytes of dirty pages whose writeback would be timed instead)
  append    = entries/s of `CacheNamespace.put` in batches of 64 (the engine's default batch,
              each committed before the next), 65,536 entries into an empty namespace and,
              into the full one, 2 x LEVEL0_ROWS (262,144) after merging level 0: two whole
              fill-and-merge cycles, merges included, starting with the store's files evicted
              from the page cache (wall, and per CPU-second of the process; the merges are
              counted and timed)
  lookup    = a fresh process imports histovl.embed.cache, reads its VmRSS, opens the namespace,
              gets 1,000 random present keys (checking every row), reads VmRSS again: wall ms
              of open + get, and the RSS growth; "warm" = the store's pages in the OS page cache
              (just written), "cold" = evicted first with posix_fadvise(DONTNEED); median of 3

Compare mode (`--compare N`): the same lookup and append measurements for three designs, to
choose one (docs/architecture.md, "embedding store"):

  histovl         = what histovl uses (`histovl.embed.store`): SQLite (WAL) index key ->
                    (segment, row, CRC-32); vectors in append-only float32 segment files, one
                    pread per row
  sqlite-blob     = SQLite (WAL, 16 KiB pages), vectors stored as BLOBs with their CRC-32
  lmdb            = LMDB (py-lmdb 1.x, sync off), key -> CRC-32 + vector bytes

Usage:
    python benchmarks/bench_cache.py [--sizes 100000,1000000,5000000] [--dim 512]
        [--dim-largest 512] [--root DIR] [--keep] [--level0 131072,262144] [--before OLD/src]
    python benchmarks/bench_cache.py --compare 200000 [--dim 512]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

LOOKUPS = 1000
BUILD_BATCH = 8192
APPEND_BATCH = 64
#: Entries appended into the full namespace, starting with level 0 empty: two whole cycles of
#: level 0 filling up and being merged into the main index (`histovl.embed.store.LEVEL0_ROWS`),
#: so the merges and SQLite's WAL checkpoints are in the timed rate.
APPEND_CYCLES = 2


def key_of(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def vectors(start: int, n: int, dim: int) -> np.ndarray:
    rng = np.random.default_rng(start)
    v = rng.random((n, dim), dtype=np.float32)
    v[:, 0] = np.arange(start, start + n, dtype=np.float32)  # row i says it is row i
    return v


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def evict(directory: Path) -> None:
    """Drop `directory`'s files from the OS page cache (clean pages; no root needed)."""
    for p in directory.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd) if os.access(p, os.W_OK) else None
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


# ---- the three designs ----------------------------------------------------------------------------


class SqliteBlob:
    """Prototype: SQLite (WAL) key -> CRC-32 + vector BLOB in one table (page size 16 KiB)."""

    def __init__(self, directory: Path, dim: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(directory / "blob.sqlite", isolation_level=None, timeout=60)
        self.db.execute("PRAGMA page_size=16384")
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA journal_size_limit=67108864")
        self.db.execute("CREATE TABLE IF NOT EXISTS entries(key TEXT PRIMARY KEY, crc INTEGER, vec BLOB)")

    def put(self, keys: list[str], emb: np.ndarray) -> None:
        rows = [(k, zlib.crc32(b := row.tobytes()), b) for k, row in zip(keys, np.ascontiguousarray(emb, np.float32), strict=True)]
        self.db.execute("BEGIN IMMEDIATE")
        self.db.executemany("INSERT OR IGNORE INTO entries VALUES (?,?,?)", rows)
        self.db.execute("COMMIT")

    def get(self, keys: list[str]) -> dict[str, np.ndarray]:
        out = {}
        for s in range(0, len(keys), 900):
            part = keys[s : s + 900]
            q = f"SELECT key, crc, vec FROM entries WHERE key IN ({','.join('?' * len(part))})"
            out.update({k: np.frombuffer(v, np.float32) for k, c, v in self.db.execute(q, part) if zlib.crc32(v) == c})
        return out


class Lmdb:
    """Prototype: LMDB key -> 4-byte CRC-32 + vector bytes."""

    def __init__(self, directory: Path, dim: int) -> None:
        import lmdb

        directory.mkdir(parents=True, exist_ok=True)
        self.env = lmdb.open(str(directory), map_size=1 << 40, subdir=True, sync=False, metasync=False, readahead=False)

    def put(self, keys: list[str], emb: np.ndarray) -> None:
        with self.env.begin(write=True) as txn:
            for k, row in zip(keys, np.ascontiguousarray(emb, np.float32), strict=True):
                b = row.tobytes()
                txn.put(k.encode(), zlib.crc32(b).to_bytes(4, "little") + b, overwrite=False)

    def get(self, keys: list[str]) -> dict[str, np.ndarray]:
        out = {}
        with self.env.begin() as txn:
            for k in keys:
                v = txn.get(k.encode())
                if v is not None and zlib.crc32(v[4:]) == int.from_bytes(v[:4], "little"):
                    out[k] = np.frombuffer(v[4:], np.float32)
        return out


class Histovl:
    """What histovl uses: a `CacheNamespace` (SQLite WAL index, append-only float32 segments)."""

    def __init__(self, directory: Path, dim: int) -> None:
        from histovl.embed.cache import EmbeddingCache

        self.ns = EmbeddingCache(directory).namespace(weights_id="bench", preprocessing="p")
        self.merges: list[float] = []  # seconds of each merge of level 0 into the main index
        merge = getattr(self.ns.store, "merge", None)
        if merge is None:  # a store with one level (an older histovl on PYTHONPATH, for a before/after)
            return

        def timed_merge(at_least: int = 0) -> bool:
            t0 = time.perf_counter()
            done = merge(at_least)
            if done:
                self.merges.append(time.perf_counter() - t0)
            return done

        self.ns.store.merge = timed_merge  # type: ignore[method-assign]

    def put(self, keys: list[str], emb: np.ndarray) -> None:
        self.ns.put(keys, emb)

    def get(self, keys: list[str]) -> dict[str, np.ndarray]:
        hit, rows = self.ns.get(keys)
        return dict(zip([k for k, h in zip(keys, hit, strict=True) if h], rows, strict=True))


BACKENDS = {"histovl": Histovl, "sqlite-blob": SqliteBlob, "lmdb": Lmdb}


# ---- measurements -------------------------------------------------------------------------------


def build(backend: str, directory: Path, n: int, dim: int, batch: int = BUILD_BATCH) -> float:
    """Fill `directory` with entries 0..n-1; returns entries/s."""
    store = BACKENDS[backend](directory, dim)
    t0 = time.perf_counter()
    for s in range(0, n, batch):
        m = min(batch, n - s)
        store.put([key_of(i) for i in range(s, s + m)], vectors(s, m, dim))
    return n / (time.perf_counter() - t0)


def append_rate(backend: str, directory: Path, start: int, n: int, dim: int, merge_first: bool = False) -> float:
    """entries/s of puts in batches of APPEND_BATCH (each committed), keys start..start+n-1;
    also prints entries per CPU-second of this process (what a process with a core of its own
    would reach; the shared machine's load changes only the wall rate) and the merges of level 0
    timed within (with `merge_first`, level 0 is merged before the clock starts, and then the
    store's files are evicted from the page cache, with or without a level 0)."""
    store = BACKENDS[backend](directory, dim)
    batches = [([key_of(i) for i in range(s, s + APPEND_BATCH)], vectors(s, APPEND_BATCH, dim))
               for s in range(start, start + n, APPEND_BATCH)]
    merges = getattr(store, "merges", [])
    if merge_first and hasattr(store.ns.store, "merge"):  # type: ignore[attr-defined]
        store.ns.store.merge()  # type: ignore[attr-defined]
        print(f"  level 0 merged before the appends: {merges[-1] if merges else 0:.2f} s", flush=True)
        merges.clear()
    if merge_first:
        store.ns.close()  # no connection open while this process opens (and closes) the index file
        evict(directory)  # the files out of the page cache again, as the cold lookups left them
    t0, c0 = time.perf_counter(), time.process_time()
    for keys, emb in batches:
        store.put(keys, emb)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    timed = f"; {len(merges)} merge(s) of level 0 within: {', '.join(f'{m:.2f}' for m in merges)} s" if merges else ""
    print(f"  append {backend} at {start:,}: {len(batches) * APPEND_BATCH:,} entries, {len(batches) * APPEND_BATCH / wall:,.0f} "
          f"entries/s wall, {len(batches) * APPEND_BATCH / cpu:,.0f} per CPU-second{timed}; load {os.getloadavg()[0]:.1f}", flush=True)
    return len(batches) * APPEND_BATCH / wall


def probe(backend: str, directory: Path, n: int, dim: int, seed: int, cold: bool) -> dict[str, float]:
    """In a fresh process: open + 1,000 random lookups; wall ms and VmRSS growth."""
    args = [sys.executable, __file__, "--probe", backend, str(directory), str(n), str(dim), str(seed), str(int(cold))]
    out = subprocess.run(args, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _probe_main(backend: str, directory: str, n: int, dim: int, seed: int, cold: bool) -> None:
    import histovl.embed.cache  # noqa: F401  (imports are not part of the lookup cost)

    if cold:
        evict(Path(directory))
    ids = np.random.default_rng(seed).choice(n, size=LOOKUPS, replace=False)
    keys = [key_of(int(i)) for i in ids]
    before = rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    store = BACKENDS[backend](Path(directory), dim)
    found = store.get(keys)
    ms, cpu_ms = (time.perf_counter() - t0) * 1000, (time.process_time() - c0) * 1000
    grown = rss_mb() - before
    assert len(found) == LOOKUPS and all(found[k][0] == i for k, i in zip(keys, ids, strict=True)), "wrong rows"
    print(json.dumps({"ms": ms, "cpu_ms": cpu_ms, "rss_mb": grown}))


def lookups(backend: str, directory: Path, n: int, dim: int) -> dict[str, float]:
    warm = [probe(backend, directory, n, dim, seed, cold=False) for seed in range(3)]
    cold = [probe(backend, directory, n, dim, seed + 10, cold=True) for seed in range(3)]
    return {"warm_ms": statistics.median(r["ms"] for r in warm), "warm_rss": statistics.median(r["rss_mb"] for r in warm),
            "warm_cpu": statistics.median(r["cpu_ms"] for r in warm),
            "cold_ms": statistics.median(r["ms"] for r in cold), "cold_rss": statistics.median(r["rss_mb"] for r in cold)}


def du_mb(directory: Path) -> float:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file()) / 1e6


def compare(n: int, dim: int, root: Path) -> None:
    print(f"compare: N={n:,} dim={dim}; lookups of {LOOKUPS} random keys in a fresh process (median of 3)")
    print(f"{'design':<16} {'build/s':>9} {'append64/s':>11} {'MB':>8} {'warm ms':>8} {'warm RSS':>9} {'cold ms':>8} {'cold RSS':>9}")
    for backend in BACKENDS:
        if backend == "lmdb" and importlib.util.find_spec("lmdb") is None:
            print("lmdb: skipped (pip install lmdb to compare it; histovl does not need it)")
            continue
        d = root / backend
        rate = build(backend, d, n, dim)
        app = append_rate(backend, root / f"{backend}-append", 0, 32 * 1024, dim)
        r = lookups(backend, d, n, dim)
        print(f"{backend:<16} {rate:>9,.0f} {app:>11,.0f} {du_mb(d):>8,.0f} {r['warm_ms']:>8.1f} {r['warm_rss']:>8.1f}M "
              f"{r['cold_ms']:>8.1f} {r['cold_rss']:>8.1f}M", flush=True)
        shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(root / f"{backend}-append", ignore_errors=True)


def appends_at_n(d: Path, n: int, dim: int, level0: list[int], before: str | None) -> float:
    """The append measurements at N: with `before` (a ``src`` folder of an older histovl), first
    that store's rate in a subprocess (the same entries count as the first level-0 size, files
    evicted first); then one run per level-0 size (`histovl.embed.store.LEVEL0_ROWS`), each two
    fill-and-merge cycles on top of the entries appended so far. Returns the first run's rate."""
    from histovl.embed import store

    sizes = level0 or [getattr(store, "LEVEL0_ROWS", 1 << 17)]
    start = n
    if before:
        env = {**os.environ, "PYTHONPATH": before}
        args = [sys.executable, __file__, "--append-only", str(d), str(start), str(APPEND_CYCLES * sizes[0]), str(dim)]
        print(f"  before ({before}):", flush=True)
        subprocess.run(args, env=env, check=True)
        start += APPEND_CYCLES * sizes[0]
    rates = []
    for rows in sizes:
        store.LEVEL0_ROWS = rows
        print(f"  level 0 of {rows:,} rows:", flush=True)
        # One batch more than two level-0 fills: the second merge falls inside (a writer counts
        # level 0 every LEVEL0_ROWS / 16 rows, from its first put).
        rates.append(append_rate("histovl", d, start, APPEND_CYCLES * rows + APPEND_BATCH, dim, merge_first=True))
        start += APPEND_CYCLES * rows + APPEND_BATCH
    return rates[0]


def scale(sizes: list[int], dim: int, dim_largest: int, root: Path, keep: bool, level0: list[int] | None = None,
          before: str | None = None) -> None:
    print(f"scale: histovl store; open + {LOOKUPS} random lookups in a fresh process (median of 3); appends in batches of {APPEND_BATCH}")
    print(f"{'N':>10} {'dim':>4} {'GB':>6} {'build/s':>9} {'append/s empty':>15} {'append/s at N':>14} "
          f"{'warm ms':>8} {'(CPU ms)':>8} {'warm RSS':>9} {'cold ms':>8} {'cold RSS':>9}")
    empty = append_rate("histovl", root / "append-empty", 0, 64 * 1024, dim)
    shutil.rmtree(root / "append-empty", ignore_errors=True)
    for n in sizes:
        d_dim = dim_largest if n == max(sizes) else dim
        d = root / f"n{n}"
        rate = build("histovl", d, n, d_dim)
        os.sync()  # steady state: the bulk build's dirty pages written back before measuring
        r = lookups("histovl", d, n, d_dim)
        at_n = appends_at_n(d, n, d_dim, level0 or [], before)
        print(f"{n:>10,} {d_dim:>4} {du_mb(d) / 1e3:>6.1f} {rate:>9,.0f} {empty:>15,.0f} {at_n:>14,.0f} "
              f"{r['warm_ms']:>8.1f} {r['warm_cpu']:>8.1f} {r['warm_rss']:>8.1f}M {r['cold_ms']:>8.1f} {r['cold_rss']:>8.1f}M",
              f"load {os.getloadavg()[0]:.1f}", flush=True)
        if not keep:
            shutil.rmtree(d, ignore_errors=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--probe":
        b, d, n, dim, seed, cold = sys.argv[2:8]
        _probe_main(b, d, int(n), int(dim), int(seed), cold == "1")
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--append-only":  # `--before`: this process imports the older store
        d, start, n, dim = sys.argv[2:6]
        evict(Path(d))
        append_rate("histovl", Path(d), int(start), int(n), int(dim))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000,5000000")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--dim-largest", type=int, default=None, help="dim at the largest size only (disk or time)")
    ap.add_argument("--compare", type=int, default=None, help="compare the three designs at this N")
    ap.add_argument("--root", type=Path, default=None, help="where to build (default: a temp folder)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--level0", default="", help="level-0 sizes to append with at N, e.g. 131072,262144,524288")
    ap.add_argument("--before", default=None, help="src folder of an older histovl: its append rate at N first")
    a = ap.parse_args()
    root = a.root or Path(tempfile.mkdtemp(prefix="bench-cache-", dir=os.environ.get("BENCH_TMP")))
    root.mkdir(parents=True, exist_ok=True)
    print(f"machine: {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}; sqlite {sqlite3.sqlite_version}; root {root}")
    try:
        if a.compare:
            compare(a.compare, a.dim, root)
        else:
            sizes = [int(float(s)) for s in a.sizes.split(",")]
            level0 = [int(float(x)) for x in a.level0.split(",") if x]
            scale(sizes, a.dim, a.dim_largest or a.dim, root, a.keep, level0, a.before)
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
