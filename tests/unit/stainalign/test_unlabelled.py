"""Pairs without a label (alignment term only), the decision threshold chosen on the training
pairs (recorded in run.json), and loading a format-1 model folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file, save_file

from histovl.options import RunOptions
from histovl.stainalign import (
    HistoStainAlign,
    StainAlignFitConfig,
    StainAlignParams,
    cross_validate,
    read_pairs,
)
from histovl.stainalign.training import choose_threshold
from tests.helpers.synthetic import tile_folder, toy_pairs

SMALL = {"epochs": 3, "batch_size": 8, "hidden_dim": 16, "attention_dim": 8, "projection_dim": 8}


def _spy_fits(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    original = HistoStainAlign.fit

    def spy(self: HistoStainAlign, he: Any, ihc: Any, y: Any) -> HistoStainAlign:
        calls.append({"align": self.params.align, "n": len(he), "n_unlabelled": sum(v is None or v == "" for v in y),
                      "he_ids": [id(b) for b in he]})
        return original(self, he, ihc, y)

    monkeypatch.setattr(HistoStainAlign, "fit", spy)
    return calls


def test_model_uses_unlabelled_pairs_for_alignment_only() -> None:
    he, ihc, y, _ = toy_pairs(20)
    labels: list[str | None] = [*y[:12], *([None] * 4), *([""] * 4)]
    aligned = HistoStainAlign(**SMALL).fit(he, ihc, labels)
    assert aligned.classes_ == ["neg", "pos"] and (aligned.n_labelled_, aligned.n_unlabelled_) == (12, 8)
    assert aligned.schedule_ == "two-stage"  # "auto" with unlabelled pairs
    baseline = HistoStainAlign(align=False, **SMALL).fit(he, None, labels)
    assert (baseline.n_labelled_, baseline.n_unlabelled_) == (12, 0)  # the baseline drops them
    same = HistoStainAlign(align=False, **SMALL).fit(he[:12], None, y[:12])
    np.testing.assert_allclose(baseline.predict_proba(he), same.predict_proba(he), atol=1e-6)
    assert HistoStainAlign(**SMALL).fit(he[:12], ihc[:12], y[:12]).schedule_ == "joint"
    with pytest.raises(ValueError, match="two classes among the labelled"):
        HistoStainAlign(**SMALL).fit(he, ihc, [y[0]] * 10 + [""] * 10)


def test_cross_validation_splits_labelled_pairs_and_trains_on_unlabelled_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    he, ihc, y, groups = toy_pairs(24)
    labels = [*y[:16], *([""] * 8)]
    groups = [*groups[:16], "patient0", *[f"u{i}" for i in range(7)]]  # one unlabelled pair shares patient0
    calls = _spy_fits(monkeypatch)
    cv = cross_validate(he, ihc, labels, groups, params=SMALL, n_splits=4, seed=0)
    assert cv.probabilities["aligned"].shape == (16, 2) and list(cv.labelled) == list(range(16))
    assert len(cv.thresholds["aligned"]) == len(cv.thresholds["baseline"]) == cv.n_splits == 4
    patient0_fold = int(cv.folds[0])
    for f, call in enumerate(c for c in calls if c["align"]):
        expected = 7 if f == patient0_fold else 8  # patient0's unlabelled pair stays out of its test fold
        assert call["n_unlabelled"] == expected, (f, call)
        assert (id(he[16]) in call["he_ids"]) == (f != patient0_fold)


def _pairs_csv(root: Path, n_labelled: int = 8, n_unlabelled: int = 4) -> Path:
    rows = []
    for i in range(n_labelled + n_unlabelled):
        label = ("pos" if i % 2 else "neg") if i < n_labelled else ""
        status = label or ("pos" if i % 2 else "neg")
        tile_folder(root / "he" / f"s{i}", (200, 90, 160) if status == "pos" else (230, 170, 210))
        tile_folder(root / "ihc" / f"s{i}", (120, 70, 30) if status == "pos" else (140, 150, 200))
        rows.append({"he_slide": f"he/s{i}", "ihc_slide": f"ihc/s{i}", "label": label, "marker": "Ki67", "group": f"p{i // 2}"})
    pd.DataFrame(rows).to_csv(root / "pairs.csv", index=False)
    return root / "pairs.csv"


def test_fit_and_eval_with_empty_labels_record_the_thresholds(tmp_path: Path, tiny_clip) -> None:  # type: ignore[no-untyped-def]
    from histovl.models import save_model_dir
    from histovl.stainalign import stainalign_eval, stainalign_fit

    pairs = _pairs_csv(tmp_path)
    assert list(read_pairs(pairs)["label"])[-4:] == [""] * 4
    encoder = str(save_model_dir(tiny_clip, tmp_path / "encoder"))
    params = StainAlignParams(epochs=2, batch_size=4, hidden_dim=8, attention_dim=4, projection_dim=4)
    opts = RunOptions(n_boot=0, use_cache=False)
    metrics = stainalign_fit(pairs, tmp_path / "fit", StainAlignFitConfig(params=params, cv_folds=2), opts, model=encoder)
    assert metrics["n"] == 8 and metrics["n_unlabelled"] == 4 and metrics["baseline"]["n"] == 8
    assert len(pd.read_csv(tmp_path / "fit" / "predictions.csv")) == 8
    decision = json.loads((tmp_path / "fit" / "run.json").read_text())["extra"]["decision"]
    assert decision["positive_class"] == "pos" and "balanced accuracy" in decision["rule"]
    for name, schedule, n_unlabelled in (("aligned", "two-stage", 4), ("baseline", "classification only", 0)):
        record = decision[name]
        assert record["schedule"] == schedule and record["n_labelled"] == 8 and record["n_unlabelled"] == n_unlabelled
        assert 0.0 < record["threshold"] < 1.0 and len(record["cv_fold_thresholds"]) == 2
    saved = json.loads((tmp_path / "fit" / "stainalign.json").read_text())
    assert saved["threshold"] == decision["aligned"]["threshold"] and saved["schedule"] == "two-stage"

    evaluated = stainalign_eval(tmp_path / "fit", pairs, tmp_path / "eval", opts)
    assert evaluated["n"] == 8 and evaluated["n_unlabelled"] == 4
    frame = pd.read_csv(tmp_path / "eval" / "predictions.csv", keep_default_na=False)
    assert len(frame) == 12 and list(frame["label"])[-4:] == [""] * 4


def test_threshold_choice_and_prior_correction() -> None:
    scores = np.array([0.1, 0.2, 0.3, 0.35, 0.6, 0.7])
    y = np.array([0, 0, 0, 1, 1, 1])
    assert choose_threshold(scores, y, balanced=True) == pytest.approx(0.325)  # between 0.3 and 0.35
    separable = np.array([0.1, 0.2, 0.8, 0.9])
    assert choose_threshold(separable, np.array([0, 0, 1, 1]), balanced=True) == 0.5  # 0.5 among the best
    imbalanced = np.array([0.1, 0.2, 0.3, 0.4, 0.55, 0.65, 0.5, 0.9])  # 6 negatives, 2 positives
    y_imb = np.array([0, 0, 0, 0, 0, 0, 1, 1])
    assert choose_threshold(imbalanced, y_imb, balanced=True) == pytest.approx(0.45)  # both positives: 0.833
    assert choose_threshold(imbalanced, y_imb, balanced=False) == pytest.approx(0.775)  # accuracy 7/8

    he, ihc, y_toy, _ = toy_pairs(16)
    model = HistoStainAlign(threshold="none", **SMALL).fit(he, ihc, y_toy)
    raw = model.predict_proba(he)[:, 1]
    model.threshold_ = float(np.median(raw))
    corrected = model.predict_proba(he)[:, 1]
    np.testing.assert_array_equal(corrected > 0.5, raw > model.threshold_)
    assert np.all(np.diff(corrected[np.argsort(raw)]) >= -1e-12)  # the ranking (AUROC) is unchanged


def test_format_1_folder_still_loads(tmp_path: Path) -> None:
    he, ihc, y, _ = toy_pairs(12)
    old_style = {"standardize": False, "logit_scale": 1.0, "threshold": "none", "schedule": "joint"}
    model = HistoStainAlign(**SMALL, **old_style).fit(he, ihc, y)
    folder = model.save(tmp_path / "m")
    state = {k: v for k, v in load_file(str(folder / "stainalign.safetensors")).items() if not k.endswith(("_mean", "_std"))}
    save_file(state, str(folder / "stainalign.safetensors"))
    meta = json.loads((folder / "stainalign.json").read_text())
    meta["format_version"] = 1
    meta["params"] = {k: v for k, v in meta["params"].items() if k not in (*old_style, "head_c")}
    (folder / "stainalign.json").write_text(json.dumps(meta))
    loaded, _ = HistoStainAlign.load(folder)
    np.testing.assert_allclose(loaded.predict_proba(he), model.predict_proba(he), atol=1e-6)
