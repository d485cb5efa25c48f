"""Zero-shot on a set whose answer is known: no class/prompt/label/score inversion anywhere.

The demo's zero-shot once came out far below chance (AUROC 0.14 on two classes), which is what a
swapped class order would give. That one was the model (histovl-lite was never trained on glass),
but this test would catch the bug: an encoder that is right by construction (an image's embedding
points at "bright" or "dark", and so does each prompt by its words) must give balanced accuracy
and AUROC 1.0, with the prompt set's class order unlike the sorted labels and unlike the
manifest's order, cold and again from the cache (image and prompt embeddings read back).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from histovl.models.encoder import Encoder
from histovl.zeroshot import zeroshot
from tests.helpers.tiny import tiny_card


class _BrightnessEncoder(Encoder):
    """2-D embeddings: [brightness, darkness] for images; [1, 0] for prompts about glass."""

    def _encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        bright = pixels.mean(dim=(1, 2, 3))
        return torch.stack([bright - bright.min() + 0.1, bright.max() - bright + 0.1], dim=1)

    def _encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        return torch.tensor([[1.0, 0.0] if "glass" in t else [0.0, 1.0] for t in texts])

    @property
    def logit_scale(self) -> float:
        return 10.0


def _prompts(path: Path, order: Sequence[str]) -> Path:
    words = {"tissue": "dense stained tissue", "background": "empty glass"}
    lines = ["name: known-answer", 'version: "1"', "classes:"]
    for c in order:
        lines += [f"  {c}:", f"    - {words[c]}"]
    lines += ["templates:", '  - "a tile of {}."']
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def tiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("known")
    rng = np.random.default_rng(0)
    rows = ["path,label"]
    for i in range(12):  # interleaved so no order in the manifest lines up with a class
        label = "background" if i % 3 else "tissue"
        level = 235 if label == "background" else 90
        img = np.clip(level + rng.integers(-15, 15, (32, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / f"t{i}.png")
        rows.append(f"t{i}.png,{label}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root / "manifest.csv"


@pytest.mark.parametrize("order", [("tissue", "background"), ("background", "tissue")])
def test_a_right_by_construction_encoder_scores_perfectly(tiles: Path, tmp_path: Path, order: tuple[str, str]) -> None:
    encoder = _BrightnessEncoder(tiny_card("known-answer"), "known-answer-v1").eval()
    prompts = _prompts(tmp_path / "prompts.yaml", order)
    for run in ("cold", "cached"):
        res = zeroshot(encoder, tiles, prompts, tmp_path / run, cache=tmp_path / "cache", n_boot=20, workers=0,
                       progress=False)
        m = res.metrics
        assert res.class_names == list(order)
        assert m["balanced_accuracy"] == 1.0 and m["auroc_macro"] == 1.0, (run, m)
        assert (res.predictions["prediction"] == res.predictions["label"]).all()
        for c in order:  # each score column is its class's probability
            assert (res.predictions.loc[res.predictions["label"] == c, f"score:{c}"] > 0.5).all()
        saved = json.loads((tmp_path / run / "metrics.json").read_text())
        assert saved["per_class"]["tissue"]["recall"] == 1.0 and saved["class_names"] == list(order)
