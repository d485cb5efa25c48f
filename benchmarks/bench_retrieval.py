"""Retrieval benchmark: our batched, exclusion-aware query path vs calling FAISS directly.

Measures, in one run on the same vectors:

1. Query throughput of `VectorIndex.search` (leave-one-out: each query excludes itself, ties
   re-ordered by id) against ``faiss.IndexFlatIP.search`` called directly with all queries at
   once for the same k. Target: ratio >= 0.9.
2. Throughput when queries arrive one at a time (what batching saves).
3. Memory per million 512-d vectors for each storage type: serialised index size and the growth
   of the process's resident memory while the index is built, scaled linearly from `--memory-n`.

Usage:
    python benchmarks/bench_retrieval.py --n 100000 --dim 512 --queries 2000 --repeats 5
"""

from __future__ import annotations

import argparse
import gc
import statistics
import subprocess
import sys
import time

import faiss
import numpy as np

from histovl.retrieval import IndexOptions, VectorIndex, list_storage


def unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    """Clustered unit vectors (64 centres), closer to real embeddings than pure noise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((64, dim)).astype(np.float32)
    x = centres[rng.integers(0, 64, n)] + 1.5 * rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def rss_mb() -> float:
    """Current resident set size of this process (Linux /proc), MiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def timed(fn, repeats: int) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def throughput(args: argparse.Namespace) -> None:
    x = unit_vectors(args.n, args.dim, seed=0)
    rng = np.random.default_rng(1)
    qids = np.sort(rng.choice(args.n, size=args.queries, replace=False))
    queries = x[qids]
    ours = VectorIndex(args.dim)
    ours.add(x, [f"img{i}" for i in range(args.n)])
    direct = faiss.IndexFlatIP(args.dim)
    direct.add(x)
    k = args.k
    ours_times, direct_times = [], []
    for _ in range(args.repeats):  # interleaved so drift on a shared machine hits both alike
        direct_times += timed(lambda: direct.search(queries, k), 1)
        ours_times += timed(lambda: ours.search(queries, k, exclude_ids=qids), 1)
    t_ours, t_direct = statistics.median(ours_times), statistics.median(direct_times)
    print(f"== query throughput: {args.n:,} x {args.dim}-d flat float32, {args.queries} queries, k={k}, "
          f"{faiss.omp_get_max_threads()} threads, median of {args.repeats} ==")
    print(f"FAISS direct (one call, k={k}, no exclusion): {args.queries / t_direct:10.1f} queries/s  ({t_direct:.3f} s)")
    print(f"VectorIndex.search (exclude self, id ties):   {args.queries / t_ours:10.1f} queries/s  ({t_ours:.3f} s)")
    print(f"ratio ours / direct: {t_direct / t_ours:.3f}  (target >= 0.9)")

    few = queries[: args.single]
    t_single = statistics.median(timed(lambda: [ours.search(few[i : i + 1], k) for i in range(len(few))], 3))
    t_batch = statistics.median(timed(lambda: ours.search(few, k), 3))
    print(f"one query per call: {len(few) / t_single:.1f} queries/s; same {len(few)} in one batch: "
          f"{len(few) / t_batch:.1f} queries/s (x{t_single / t_batch:.1f})")

    half = VectorIndex(args.dim, storage="flat-f16")
    half.add(x, [f"img{i}" for i in range(args.n)])
    t_half = statistics.median(timed(lambda: half.search(queries, k, exclude_ids=qids), args.repeats))
    a, b = half.search(queries, k, exclude_ids=qids).ids, ours.search(queries, k, exclude_ids=qids).ids
    agree = np.mean([len(set(ra) & set(rb)) / k for ra, rb in zip(a, b, strict=True)])
    print(f"flat-f16: {args.queries / t_half:.1f} queries/s; top-{k} overlap with float32: {agree:.4f}")


def memory_child(storage: str, n: int, dim: int) -> None:
    """Run in a fresh process: print RSS growth (MiB) while `storage` indexes n vectors."""
    x = unit_vectors(n, dim, seed=2)
    names = [f"img{i}" for i in range(n)]
    warm = VectorIndex(dim, storage=storage, options=IndexOptions(nlist=4))  # pay one-off costs first
    warm.add(x[:200], names[:200])
    del warm
    gc.collect()
    before = rss_mb()
    t0 = time.perf_counter()
    index = VectorIndex(dim, storage=storage, options=IndexOptions())
    index.add(x, names)
    build = time.perf_counter() - t0
    size = faiss.serialize_index(index.faiss_index).nbytes
    print(f"{rss_mb() - before} {size} {build}")


def memory(args: argparse.Namespace) -> None:
    n = args.memory_n
    scale = 1e6 / n
    print(f"\n== memory per million {args.dim}-d vectors (measured on {n:,} in a fresh process each, scaled x{scale:g}) ==")
    print(f"{'storage':>9} | {'serialised MiB/1e6':>18} | {'RSS growth MiB/1e6':>18} | build s ({n:,})")
    for storage in list_storage():
        done = subprocess.run(
            [sys.executable, __file__, "--memory-child", storage, "--memory-n", str(n), "--dim", str(args.dim)],
            check=True, capture_output=True, text=True,
        )
        grown, size, build = (float(v) for v in done.stdout.split())
        print(f"{storage:>9} | {size * scale / 2**20:18.0f} | {grown * scale:18.0f} | {build:7.1f}")
    print("(RSS growth includes the path/label table, ~0.1 KiB per vector here; serialised size is the index alone)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--single", type=int, default=50, help="queries for the one-at-a-time comparison")
    parser.add_argument("--memory-n", type=int, default=50_000)
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.memory_n, args.dim)
        return
    throughput(args)
    memory(args)


if __name__ == "__main__":
    main()
