"""Slide tiling and tile-embedding throughput against bare references, in one run.

Reading (same slide, same coordinates, same level and read size):

  bare            = a plain OpenSlide ``read_region`` loop, one thread, ``.convert("RGB")``
  ours (k thr)    = `histovl.slides.iter_tiles` with k reader threads (composite on white, resize
                    when the level does not match exactly, one reopen+retry on errors)
  RATIO read      = ours tiles/s ÷ bare tiles/s

Embedding (same tiles):

  bare encoder    = tiles already in memory as preprocessed tensors, forward only
  end to end      = `embed_slide`: thumbnail + tissue + grid + threaded reads + PNG writes +
                    the embedding engine (decode workers, batching, no cache)
  warm cache, new folder = the same call into a fresh output folder with a warm embedding cache
                    (the slide is tiled again; only the encoder is skipped)
  warm cache      = the same call again into the folder of a finished run (the re-run case):
                    the recorded tiling is reused without opening the slide, the tile files are
                    hashed and every embedding comes from the cache

Usage:
    python benchmarks/bench_slides.py [--slide ../shared/data/slides/CMU-1-Small-Region.svs]
        [--mpp 0.5] [--size 224] [--model SPEC | --arch ViT-B-32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from histovl.slides import TileSpec, embed_slide, iter_tiles, open_slide, plan_slide

DEFAULT_SLIDE = Path(__file__).resolve().parents[2] / "shared/data/slides/CMU-1-Small-Region.svs"


def median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slide", type=Path, default=DEFAULT_SLIDE)
    ap.add_argument("--slide-mpp", type=float, default=None)
    ap.add_argument("--mpp", type=float, default=None, help="target µm/px (default: native level 0)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--tissue-threshold", type=float, default=0.0, help="0 = every grid tile (more work to time)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--model", default=None, help="model spec (default: open_clip --arch, random weights)")
    ap.add_argument("--arch", default="ViT-B-32")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-embed", action="store_true")
    args = ap.parse_args()
    if not args.slide.exists():
        print(f"slide not found: {args.slide}", file=sys.stderr)
        return 1
    import openslide

    spec = TileSpec(size=args.size, mpp=args.mpp, tissue_threshold=args.tissue_threshold)
    with open_slide(args.slide, mpp=args.slide_mpp) as reader:
        plan = plan_slide(reader, spec)
    tiles, res = plan.tiles, plan.resolution
    coords = list(zip(tiles["x"].tolist(), tiles["y"].tolist(), strict=True))
    n = len(coords)
    print(f"slide={args.slide.name} tiles={n} level={res.level} read={res.read_size}px out={res.size}px "
          f"torch_threads={torch.get_num_threads()} repeats={args.repeats} (medians)")

    def bare_loop() -> None:
        with openslide.OpenSlide(str(args.slide)) as s:
            for x, y in coords:
                s.read_region((x, y), res.level, (res.read_size, res.read_size)).convert("RGB")

    bare = median_time(bare_loop, args.repeats)
    print(f"read  bare OpenSlide loop     : {n / bare:8.1f} tiles/s")
    factory = partial(open_slide, args.slide, mpp=args.slide_mpp)
    for k in args.threads:
        t = median_time(lambda k=k: sum(1 for _ in iter_tiles(factory, tiles, res, num_workers=k)), args.repeats)
        print(f"read  ours, {k} thread(s)       : {n / t:8.1f} tiles/s   RATIO vs bare = {bare / t:.2f}")

    if args.skip_embed:
        return 0
    from histovl.embed import EmbeddingCache
    from histovl.models import load_model

    tmp = Path(tempfile.mkdtemp(prefix="histovl-bench-slides-"))
    if args.model is None:
        import open_clip
        from safetensors.torch import save_file

        torch.manual_seed(0)
        model = open_clip.create_model(args.arch, pretrained=None)
        weights = tmp / f"{args.arch}.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
        args.model = f"open_clip:{args.arch}:{weights}"
    enc = load_model(args.model)
    with open_slide(args.slide, mpp=args.slide_mpp) as s:
        pixels = torch.stack([enc.preprocess(img) for _, img in iter_tiles(lambda: s, tiles, res, num_workers=1)])

    def bare_encode() -> None:
        with torch.inference_mode():
            for i in range(0, n, args.batch_size):
                enc.encode_image(pixels[i : i + args.batch_size])

    t_bare = median_time(bare_encode, args.repeats)
    print(f"embed bare encoder ({enc.card.name}) : {n / t_bare:8.1f} tiles/s")
    runs = iter(range(10_000))
    t_e2e = median_time(
        lambda: embed_slide(enc, args.slide, tmp / f"run{next(runs)}", spec, cache=None, slide_mpp=args.slide_mpp,
                            batch_size=args.batch_size),
        args.repeats,
    )
    print(f"embed end to end (no cache)   : {n / t_e2e:8.1f} tiles/s   RATIO vs bare encoder = {t_bare / t_e2e:.2f}")
    cache = EmbeddingCache(tmp / "cache")
    embed_slide(enc, args.slide, tmp / "warm", spec, cache=cache, slide_mpp=args.slide_mpp, batch_size=args.batch_size)
    t_new_folder = median_time(
        lambda: embed_slide(enc, args.slide, tmp / f"run{next(runs)}", spec, cache=cache, slide_mpp=args.slide_mpp,
                            batch_size=args.batch_size),
        args.repeats,
    )
    print(f"embed end to end (warm cache, new folder): {n / t_new_folder:8.1f} tiles/s   "
          f"RATIO vs bare encoder = {t_bare / t_new_folder:.2f}")
    reruns: list[bool] = []

    def rerun() -> None:
        se = embed_slide(enc, args.slide, tmp / "warm", spec, cache=cache, slide_mpp=args.slide_mpp,
                         batch_size=args.batch_size)
        reruns.append(se.tiling.reused and se.n_encoded == 0)

    t_cached = median_time(rerun, args.repeats)
    if not all(reruns):
        print("warning: a re-run did not reuse the tiling or encoded tiles", file=sys.stderr)
    print(f"embed end to end (warm cache) : {n / t_cached:8.1f} tiles/s   RATIO vs bare encoder = {t_bare / t_cached:.2f}"
          "   (re-run into the same folder: tiling reused)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
