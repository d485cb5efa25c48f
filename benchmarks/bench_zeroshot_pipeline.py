"""Zero-shot pipeline throughput vs the bare model forward, and the cached second run.

Measured in one run on the same images (docs/performance.md: report ratios, not absolute times):

  pipeline ratio = pipeline images/s (decode in workers + preprocess + encode + cache write)
                   ÷ bare model-forward images/s (pre-decoded tensors, forward only)
  cache speed-up = first pipeline run time ÷ second run time (served from the cache)

Usage:
    python benchmarks/bench_zeroshot_pipeline.py [--n 512] [--data ../shared/data/lc25000-lung]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import open_clip
import torch
from safetensors.torch import save_file

from histovl.data import read_rgb
from histovl.embed import EmbeddingCache, encode_images
from histovl.models import load_model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/lc25000-lung")
    ap.add_argument("--n", type=int, default=512, help="images (balanced over classes)")
    ap.add_argument("--arch", default="ViT-B-32")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if not args.data.is_dir():
        print(f"data not found: {args.data}", file=sys.stderr)
        return 1

    classes = sorted(p for p in args.data.iterdir() if p.is_dir())
    per = args.n // len(classes)
    paths = [p for c in classes for p in sorted(c.glob("*.jpeg"))[:per]]
    tmp = Path(tempfile.mkdtemp(prefix="histovl-bench-"))
    torch.manual_seed(0)
    model = open_clip.create_model(args.arch, pretrained=None)
    weights = tmp / f"{args.arch}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    enc = load_model(f"open_clip:{args.arch}:{weights}")
    print(f"torch threads={torch.get_num_threads()} images={len(paths)} model={args.arch} (random weights)")

    # Bare forward: decode + preprocess up front (not timed), then forward only. Bare and pipeline
    # runs alternate within each repeat and the ratio is taken per repeat, so load drift on a
    # shared machine hits both sides alike; the median over repeats is reported.
    pixels = torch.stack([enc.preprocess(read_rgb(p)) for p in paths])

    def bare_forward() -> float:
        t0 = time.perf_counter()
        with torch.inference_mode():
            for s in range(0, len(pixels), args.batch_size):
                enc.encode_image(pixels[s : s + args.batch_size])
        return time.perf_counter() - t0

    bare_forward()  # warm-up (allocator, kernels)
    bare_times, pipe_times, cached_times = [], [], []
    for r in range(args.repeats):
        bare_times.append(bare_forward())
        cache = EmbeddingCache(tmp / f"cache{r}")
        t0 = time.perf_counter()
        encode_images(enc, paths, cache=cache, batch_size=args.batch_size, progress=False)
        pipe_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        res = encode_images(enc, paths, cache=cache, batch_size=args.batch_size, progress=False)
        cached_times.append(time.perf_counter() - t0)
        assert res.n_cached == len(paths)
    bare, pipe, cached = (statistics.median(x) for x in (bare_times, pipe_times, cached_times))
    ratios = [b / p for b, p in zip(bare_times, pipe_times, strict=True)]
    speedups = [p / c for p, c in zip(pipe_times, cached_times, strict=True)]

    n = len(paths)
    print(f"bare forward      : {n / bare:8.2f} img/s  ({bare:.2f} s)")
    print(f"pipeline (1st run): {n / pipe:8.2f} img/s  ({pipe:.2f} s)")
    print(f"pipeline (cached) : {n / cached:8.2f} img/s  ({cached:.3f} s)")
    print(f"per-repeat pipeline/bare: {', '.join(f'{x:.3f}' for x in ratios)}")
    print(f"RATIO pipeline/bare = {statistics.median(ratios):.3f}   (median over repeats; target >= 0.9)")
    print(f"RATIO cache speed-up = {statistics.median(speedups):.1f}x  (target >= 20x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
