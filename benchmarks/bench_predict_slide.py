"""`histovl predict` on a slide: a first run against a re-run into the same output folder.

  first run  = fresh output folder and an empty embedding cache: thumbnail, tissue mask, tile
               reads and PNG writes, every tile encoded, scoring, outputs
  re-run     = the same command again: the recorded tiling is reused without reading the slide,
               the tile files are hashed and every embedding comes from the cache

Measured twice: through the CLI (a new process each time, so model import and loading are
included, as a user sees it) and in-process with the model loaded once (the slide work alone;
the prompt classifier is rebuilt every call). Medians of --repeats.

Usage:
    python benchmarks/bench_predict_slide.py [--slide ../shared/data/slides/CMU-1-Small-Region.svs]
        [--model histovl-lite] [--prompts bcss-wsss-v1] [--mpp 0.5] [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_SLIDE = Path(__file__).resolve().parents[2] / "shared/data/slides/CMU-1-Small-Region.svs"


def cli_times(args: argparse.Namespace, work: Path) -> tuple[list[float], list[float]]:
    first, rerun = [], []
    for i in range(args.repeats):
        out, cache = work / f"cli{i}", work / f"cli_cache{i}"
        cmd = [sys.executable, "-m", "histovl.cli.app", "predict", "--model", args.model, "--prompts", args.prompts,
               "--data", str(args.slide), "--out", str(out), "--cache", str(cache), "--quiet", "--n-boot", "0"]
        if args.mpp is not None:
            cmd += ["--mpp", str(args.mpp)]
        for bucket in (first, rerun):
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            bucket.append(time.perf_counter() - t0)
    return first, rerun


def library_times(args: argparse.Namespace, work: Path) -> tuple[list[float], list[float], int]:
    from histovl.models import load_model
    from histovl.predict import predict
    from histovl.zeroshot.classifier import clear_classifier_memo

    encoder = load_model(args.model)
    first, rerun, n = [], [], 0
    for i in range(args.repeats):
        out, cache = work / f"lib{i}", work / f"lib_cache{i}"
        for bucket in (first, rerun):
            clear_classifier_memo()
            t0 = time.perf_counter()
            res = predict(encoder, args.slide, out, prompts=args.prompts, mpp=args.mpp, cache=cache, progress=False)
            bucket.append(time.perf_counter() - t0)
            n = len(res.predictions)
            assert bucket is first or (res.n_encoded == 0 and res.slide and res.slide["tiling_reused"])
    return first, rerun, n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slide", type=Path, default=DEFAULT_SLIDE)
    ap.add_argument("--model", default="histovl-lite")
    ap.add_argument("--prompts", default="bcss-wsss-v1")
    ap.add_argument("--mpp", type=float, default=0.5)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_predict_"))
    try:
        cli_first, cli_rerun = cli_times(args, work)
        lib_first, lib_rerun, n = library_times(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = statistics.median
    print(f"{args.slide.name}, {n} tiles, {args.model} + {args.prompts}, medians of {args.repeats}")
    print(f"cli  first run (empty cache)     : {med(cli_first):7.2f} s")
    print(f"cli  re-run (same --out)         : {med(cli_rerun):7.2f} s   RATIO = {med(cli_rerun) / med(cli_first):.2f}")
    print(f"lib  first run (model loaded)    : {med(lib_first):7.2f} s")
    print(f"lib  re-run (model loaded)       : {med(lib_rerun):7.2f} s   RATIO = {med(lib_rerun) / med(lib_first):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
