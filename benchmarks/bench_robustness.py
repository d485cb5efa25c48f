"""Robustness sweep wall time vs the model's own arithmetic and vs the naive loop peers use.

Measured in one run on the same images and conditions (docs/performance.md: report ratios):

  overhead ratio = sweep wall time (model load, hashing, one decode, corruption, normalisation,
                   encoding, metrics with CIs, retrieval)
                   ÷ (number of encoder passes × bare model-forward time on pre-decoded tensors)
                   target ≤ 1.15
  naive ratio    = naive loop wall time ÷ sweep wall time, where the naive loop (CLIP_benchmark /
                   open_clip style) reloads the model and rebuilds the text classifier for every
                   condition and re-reads and re-decodes every image per condition
                   (`encode_images(..., transform=corruption)`), scoring with the same code.

The bare forward is measured for the same number of passes (not one pass multiplied), so drift
on a shared machine hits both sides alike. Writing the report (figures) is timed separately.

Usage:
    python benchmarks/bench_robustness.py [--n 64] [--corruptions blur,markup,hue,resolution,brightness]
        [--levels extremes|all] [--data ../shared/data/lc25000-lung]
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
from safetensors.torch import save_file

from histovl.data import load_image_set, read_rgb
from histovl.embed import encode_images
from histovl.models import load_model
from histovl.models.encoder import Encoder
from histovl.prompts import load_prompt_set
from histovl.robustness import get_corruption, robustness
from histovl.robustness.evaluation import ConditionScorer
from histovl.zeroshot.classifier import build_text_classifier


def _manifest(data: Path, n: int, folder: Path) -> Path:
    classes = sorted(p for p in data.iterdir() if p.is_dir())
    per = max(1, n // len(classes))
    target = folder / "subset.csv"
    with open(target, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label"])
        for c in classes:
            for p in sorted(c.glob("*.jpeg"))[:per]:
                w.writerow([str(p.resolve()), c.name])
    return target


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/lc25000-lung")
    ap.add_argument("--n", type=int, default=64, help="images (balanced over classes)")
    ap.add_argument("--arch", default="ViT-B-32")
    ap.add_argument("--corruptions", default="blur,markup,hue,resolution,brightness")
    ap.add_argument("--levels", choices=["extremes", "all"], default="extremes",
                    help="extremes: each corruption's mildest and most severe level")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--n-boot", type=int, default=200)
    ap.add_argument("--skip-naive", action="store_true")
    args = ap.parse_args()
    if not args.data.is_dir():
        print(f"data not found: {args.data}", file=sys.stderr)
        return 1

    tmp = Path(tempfile.mkdtemp(prefix="histovl-bench-robust-"))
    manifest = _manifest(args.data, args.n, tmp)
    torch.manual_seed(0)
    weights = tmp / f"{args.arch}.safetensors"
    model = open_clip.create_model(args.arch, pretrained=None)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    del model
    spec = f"open_clip:{args.arch}:{weights}"
    names = args.corruptions.split(",")
    levels = {n: (list(get_corruption(n).levels) if args.levels == "all" else
                  [get_corruption(n).levels[0], get_corruption(n).levels[-1]]) for n in names}
    conditions = [(None, 0)] + [(n, lv) for n in names for lv in levels[n]]
    passes = len(conditions)
    image_set = load_image_set(manifest, allow_absolute_paths=True)
    paths = image_set.paths
    prompts = load_prompt_set("lung-he-v1")
    print(f"torch threads={torch.get_num_threads()} images={len(paths)} model={args.arch} (random weights) "
          f"conditions={passes} ({', '.join(f'{n}:{levels[n]}' for n in names)}) batch={args.batch_size}")

    # 1. The floor: bare forward on pre-decoded, pre-normalised tensors, `passes` times.
    enc = load_model(spec)
    pixels = torch.stack([enc.preprocess(read_rgb(p)) for p in paths])
    def bare_forward() -> float:
        t = time.perf_counter()
        with torch.inference_mode():
            for _ in range(passes):
                for s in range(0, len(pixels), args.batch_size):
                    enc.encode_image(pixels[s : s + args.batch_size])
        return time.perf_counter() - t

    # Measured before and after the sweep; the mean is the reference (load drift on a shared
    # machine hits both phases alike; both values are printed).
    bare_before = bare_forward()
    print(f"bare forward (before): {passes} passes x {len(paths)} images = {bare_before:.1f} s "
          f"({passes * len(paths) / bare_before:.1f} img/s)")

    # 2. The sweep (fresh cache, so every corrupted view is encoded once). The forward calls
    #    inside it are timed too, to attribute the overhead independently of machine drift.
    forward = {"s": 0.0}
    original = Encoder.encode_image

    def timed(self: Encoder, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        t = time.perf_counter()
        try:
            return original(self, pixels, normalize)
        finally:
            forward["s"] += time.perf_counter() - t

    Encoder.encode_image = timed  # type: ignore[method-assign]
    t0 = time.perf_counter()
    res = robustness(spec, manifest, prompts, None, corruptions=names, levels=levels, n_boot=args.n_boot,
                     cache=tmp / "cache", batch_size=args.batch_size, allow_absolute_paths=True, progress=False)
    sweep = time.perf_counter() - t0
    Encoder.encode_image = original  # type: ignore[method-assign]
    encoded = sum(s["n_encoded"] for s in res.encode_stats)
    print(f"sweep: {sweep:.1f} s, {encoded} images encoded ({encoded / len(paths):.0f} passes); "
          f"forward inside the sweep {forward['s']:.1f} s, everything else {sweep - forward['s']:.1f} s")
    t0 = time.perf_counter()
    robustness(spec, manifest, prompts, tmp / "out", corruptions=names, levels=levels, n_boot=args.n_boot,
               cache=tmp / "cache", batch_size=args.batch_size, allow_absolute_paths=True, progress=False)
    resumed = time.perf_counter() - t0
    print(f"same sweep again (all cached) + writing CSV/figures/report: {resumed:.1f} s")
    bare_after = bare_forward()
    bare = (bare_before + bare_after) / 2
    print(f"bare forward (after): {bare_after:.1f} s; reference = mean {bare:.1f} s")

    naive = float("nan")
    if not args.skip_naive:
        # 3. The naive loop: reload, rebuild, re-read and re-decode per condition; same scoring.
        t0 = time.perf_counter()
        gallery = None
        for name, lv in conditions:
            enc_n = load_model(spec)
            clf = build_text_classifier(enc_n, prompts, memoise=False)
            tf = None if name is None else get_corruption(name).transform(lv, seed=0)
            out = encode_images(enc_n, paths, transform=tf, cache=None, batch_size=args.batch_size, progress=False)
            if gallery is None:
                gallery = ConditionScorer(image_set, out.ok, out.embeddings, clf, list(prompts.classes),
                                          n_boot=args.n_boot, seed=0)
            gallery.classifier = clf
            gallery.score(out.embeddings)
        naive = time.perf_counter() - t0
        print(f"naive loop: {naive:.1f} s")

    print()
    print(f"overhead ratio  sweep / (passes x bare forward) = {sweep / bare:.3f}   (target <= 1.15)")
    print(f"  same, from inside the sweep: sweep / its own forward time = {sweep / forward['s']:.3f}")
    if not np.isnan(naive):
        print(f"naive ratio     naive loop / sweep              = {naive / sweep:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
