"""The cost of multi-encoder fusion against running the encoders separately (same run).

Reports encoder passes, distinct prompts encoded and wall time for:
  separate: `zeroshot` once per encoder (what a user does without fusion)
  mean-prob fusion: one identity view per encoder → the same passes, one run
  m2m fusion: V views per encoder → V passes per encoder (cached after the first run)

Usage:
    python benchmarks/bench_fusion.py --model histovl-lite --model open_clip:ViT-B-32:w.safetensors \
        [--n 96] [--data ../shared/data/lc25000-lung] [--prompts lung-he-v1]
Without --model, two random-weight ViT-B-32 encoders (different seeds) are used.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import open_clip
import torch
from safetensors.torch import save_file

from histovl.models import load_model
from histovl.zeroshot import zeroshot
from histovl.zeroshot.views import DEFAULT_VIEWS


def _random_vit(tmp: Path, seed: int) -> str:
    torch.manual_seed(seed)
    m = open_clip.create_model("ViT-B-32", pretrained=None)
    p = tmp / f"vit-b-32-seed{seed}.safetensors"
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(p))
    return f"open_clip:ViT-B-32:{p}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", default=[])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/lc25000-lung")
    ap.add_argument("--prompts", default="lung-he-v1")
    ap.add_argument("--n", type=int, default=96)
    args = ap.parse_args()
    if not args.data.is_dir():
        print(f"data not found: {args.data}", file=sys.stderr)
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="histovl-fusion-"))
    sample = tmp / "data"
    for cls in sorted(p for p in args.data.iterdir() if p.is_dir()):
        (sample / cls.name).mkdir(parents=True)
        for p in sorted(cls.glob("*.jpeg"))[: args.n // 3]:
            shutil.copy(p, sample / cls.name / p.name)
    specs = args.model or [_random_vit(tmp, 0), _random_vit(tmp, 1)]
    encoders = [load_model(s) for s in specs]
    kw = dict(n_boot=200, progress=False)

    from histovl.prompts import load_prompt_set
    from histovl.zeroshot import build_text_classifier

    clf = build_text_classifier(encoders[0], load_prompt_set(args.prompts))
    n_prompts = len({p for groups in clf.prompts.values() for group in groups for p in group})

    t0 = time.perf_counter()
    for e in encoders:
        zeroshot(e, sample, args.prompts, None, cache=tmp / "c-sep", **kw)
    separate = time.perf_counter() - t0

    t0 = time.perf_counter()
    mp = zeroshot(encoders, sample, args.prompts, None, fusion="mean-prob", cache=tmp / "c-mp", **kw)
    mean_prob = time.perf_counter() - t0

    t0 = time.perf_counter()
    r = zeroshot(encoders, sample, args.prompts, None, fusion="m2m", cache=tmp / "c-m2m", **kw)
    m2m = time.perf_counter() - t0
    t0 = time.perf_counter()
    warm = zeroshot(encoders, sample, args.prompts, None, fusion="m2m", cache=tmp / "c-m2m", **kw)
    m2m_warm = time.perf_counter() - t0

    def cost(res: object) -> str:
        c = res.fusion_cost  # type: ignore[attr-defined]
        return (f"{c.image_passes} encoder passes, {c.images_encoded} images encoded, "
                f"{c.images_from_cache} from cache, {c.prompts_encoded} prompts encoded")

    n = len(r.predictions)
    print(f"images={n} encoders={[e.card.name for e in encoders]} views={list(DEFAULT_VIEWS)}")
    print(f"separate runs       : {separate:7.2f} s  ({len(encoders)} encoder passes, {len(encoders) * n} images encoded, "
          f"{len(encoders) * n_prompts} prompts encoded)")
    print(f"mean-prob fusion    : {mean_prob:7.2f} s  ({cost(mp)})  RATIO vs separate {mean_prob / separate:.2f}")
    print(f"m2m fusion (cold)   : {m2m:7.2f} s  ({cost(r)})  RATIO vs separate {m2m / separate:.2f}")
    print(f"m2m fusion (cached) : {m2m_warm:7.2f} s  ({cost(warm)})  RATIO vs separate {m2m_warm / separate:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
