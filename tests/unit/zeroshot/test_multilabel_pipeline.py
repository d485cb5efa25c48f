"""`multilabel`, `cmm fit` and `cmm eval` end to end on tiny mosaics with the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import histovl.metrics
from histovl.data.mosaic import mosaic
from histovl.prompts import PromptSet
from histovl.zeroshot.multilabel.pipeline import STRATEGIES, multilabel

pytestmark = pytest.mark.skipif(
    not hasattr(histovl.metrics, "multilabel_metrics"), reason="histovl.metrics.multilabel_metrics not in the tree yet"
)

PROMPTS = PromptSet(
    name="lung-ml-test",
    classes={"lung_aca": ["adenocarcinoma"], "lung_n": ["benign lung"], "lung_scc": ["squamous carcinoma"]},
    templates=["an H&E image of {}.", "a patch of {}"],
    negative="an image with nothing in it.",
)


@pytest.fixture(scope="module")
def mosaics(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("ml") / "tiles"
    for ci, cls in enumerate(["lung_aca", "lung_n", "lung_scc"]):
        (folder / cls).mkdir(parents=True)
        for i in range(4):
            arr = np.zeros((40, 48, 3), dtype=np.int16)
            arr[..., ci] = 180
            arr = np.clip(arr + rng.integers(0, 60, size=arr.shape), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(folder / cls / f"{cls}_{i}.png")
    root = folder.parent
    s = mosaic(folder, root / "mosaics", n_train=24, n_test=12, tile_size=16, seed=0)
    return s.train_manifest, s.test_manifest


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_multilabel_writes_the_fixed_outputs(tiny_clip, mosaics, tmp_path: Path, strategy: str) -> None:
    _, test = mosaics
    res = multilabel(tiny_clip, test, PROMPTS, tmp_path / strategy, strategy=strategy, use_cache=False,
                     n_boot=20, num_workers=0, progress=False)
    out = tmp_path / strategy
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"n", "macc", "f1_macro", "f1_micro", "exact_match", "per_label", "ci95"} <= set(metrics)
    assert metrics["n"] == 12
    frame = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert list(frame.columns[:3]) == ["path", "labels", "predictions"]
    assert [c for c in frame.columns if c.startswith("score:")] == [f"score:{c}" for c in PROMPTS.classes]
    predicted = [set(p.split(";")) - {""} for p in frame["predictions"]]
    expected = [{c for c, on in zip(PROMPTS.classes, row, strict=True) if on} for row in res.decision.predictions]
    assert predicted == expected
    assert (out / "run.json").is_file() and (out / "report.html").is_file()


def test_multilabel_refuses_single_label_data(tiny_clip, class_folder: Path) -> None:
    with pytest.raises(ValueError, match="labels"):
        multilabel(tiny_clip, class_folder, PROMPTS, strategy="baseline", use_cache=False, progress=False)


def test_ovr_needs_a_negative_prompt(tiny_clip, mosaics) -> None:
    no_negative = PROMPTS.model_copy(update={"negative": None})
    with pytest.raises(ValueError, match="negative"):
        multilabel(tiny_clip, mosaics[1], no_negative, strategy="ovr", use_cache=False, progress=False, n_boot=0)


def test_cmm_fit_then_eval_round_trip(tiny_clip, mosaics, tmp_path: Path) -> None:
    from histovl.heads.cmm_run import cmm_eval, cmm_fit

    train, test = mosaics
    fit = cmm_fit(tiny_clip, train, PROMPTS, tmp_path / "head", epochs=3, n_heads=2, ffn_dim=16, n_boot=10,
                  use_cache=False)
    assert (tmp_path / "head" / "head.safetensors").is_file() and (tmp_path / "head" / "train_log.csv").is_file()
    ev = cmm_eval(tmp_path / "head", test, tmp_path / "eval", model=tiny_clip, n_boot=10, use_cache=False)
    again = cmm_eval(fit.head, test, None, model=tiny_clip, n_boot=10, use_cache=False)
    np.testing.assert_allclose(ev.probabilities, again.probabilities, atol=1e-6)
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["n"] == 12
