"""Power-set prompting cost for n = 4..12 labels: memoised encoding vs the naive cost.

For each n the power-set strategy needs 2^n subsets x M templates prompts. histovl encodes each
distinct prompt once for all images (memo + the encoder's causal-tower truncation) and scores in
bounded chunks. The naive implementation (e.g. a per-image loop) encodes every prompt for every
image: N x 2^n x M encodings. Printed per n:

  distinct prompts encoded, text time, scoring time, naive prompt count, naive text time
  (extrapolated from the same run's measured prompts/s; measured directly for the smallest n as
  a check), and the speed-up naive / (text + scoring).

Usage:
    python benchmarks/bench_powerset.py [--model tiny|vit-b-32] [--images 256] [--templates 2]
        [--max-n 12]

``vit-b-32`` builds open_clip's ViT-B-32 with random weights (no download); ``tiny`` is the test
suite's 2-layer model (fast, same code path).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import open_clip
import torch

from histovl.models._open_clip import OpenClipEncoder
from histovl.models.card import OPENAI_MEAN, OPENAI_STD, ModelCard
from histovl.zeroshot.multilabel import TextEmbeddingMemo, powerset_decision

LABELS = ["tumour", "stroma", "lymphocytes", "necrosis", "fat", "mucus", "blood", "muscle",
          "nerve", "cartilage", "bone", "glands", "debris", "background", "adipocytes", "vessels"]
TEMPLATES = ["an H&E stained image of {}.", "a histopathology image showing {}.", "a tissue patch of {}."]


def build_encoder(name: str) -> OpenClipEncoder:
    if name == "tiny":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root
        from tests.helpers.tiny import tiny_encoder

        return tiny_encoder(0)
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    card = ModelCard("vit-b-32-random", "open_clip", "ViT-B-32", "random", 224, OPENAI_MEAN, OPENAI_STD,
                     tokenizer="ViT-B-32", embed_dim=512)
    return OpenClipEncoder(model, open_clip.get_tokenizer("ViT-B-32"), card, "random-vit-b-32")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["tiny", "vit-b-32"], default="tiny")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--templates", type=int, default=2)
    ap.add_argument("--min-n", type=int, default=4)
    ap.add_argument("--max-n", type=int, default=12)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    encoder = build_encoder(args.model)
    dim = encoder.card.embed_dim
    images = torch.nn.functional.normalize(torch.randn(args.images, dim, generator=torch.Generator().manual_seed(0)), dim=1)
    templates = TEMPLATES[: args.templates]
    print(f"model={args.model} images={args.images} templates={len(templates)} torch threads={torch.get_num_threads()}")
    header = ("n", "subsets", "prompts_encoded", "text_s", "score_s", "prompts/s", "naive_prompts", "naive_text_s", "speedup")
    print(" | ".join(header))
    check_done = False
    for n in range(args.min_n, args.max_n + 1):
        memo = TextEmbeddingMemo(encoder)
        t0 = time.perf_counter()
        # Text side alone: warm the memo with every subset prompt (what powerset_decision encodes).
        powerset_decision(images[:1], memo, LABELS[:n], templates, "an image with nothing in it.", 100.0)
        text_s = time.perf_counter() - t0
        scoring = []
        for _ in range(3):  # memo is warm now: this is the scoring cost for all images
            t1 = time.perf_counter()
            powerset_decision(images, memo, LABELS[:n], templates, "an image with nothing in it.", 100.0)
            scoring.append(time.perf_counter() - t1)
        score_s = statistics.median(scoring)
        rate = memo.n_encoded / text_s
        naive_prompts = args.images * ((2**n - 1) * len(templates) + 1)
        naive_s = naive_prompts / rate
        if not check_done:  # measure the naive loop for 4 images to check the extrapolation
            t2 = time.perf_counter()
            for i in range(4):
                fresh = TextEmbeddingMemo(encoder)
                powerset_decision(images[i : i + 1], fresh, LABELS[:n], templates, "an image with nothing in it.", 100.0)
            per_image = (time.perf_counter() - t2) / 4
            print(f"   (check: naive per image measured {per_image:.3f}s vs extrapolated {naive_s / args.images:.3f}s)")
            check_done = True
        print(" | ".join(str(x) for x in (n, 2**n, memo.n_encoded, f"{text_s:.2f}", f"{score_s:.4f}", f"{rate:.0f}",
                                           naive_prompts, f"{naive_s:.1f}", f"{naive_s / (text_s + score_s):.0f}x")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
