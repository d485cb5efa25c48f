"""The sweep: CSV contract, outputs, protocol against brute force, resume after interruption."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score

import histovl.robustness.sweep as sweep_module
from histovl.prompts import PromptSet
from histovl.robustness import CSV_COLUMNS, plan_conditions, robustness
from histovl.robustness.evaluation import ConditionScorer
from tests.helpers.tiny import tiny_encoder

PROMPTS = PromptSet(
    name="tiny", classes={"lung_aca": ["red tissue"], "lung_n": ["green tissue"], "lung_scc": ["blue tissue"]},
    templates=["an image of {}."],
)
SMALL = {"corruptions": ["blur", "hue"], "levels": {"blur": [1, 4], "hue": [-2]}}


def test_plan_conditions():
    conds = plan_conditions(["blur", "hue"], (1, 2))
    assert [(c.name, c.level) for c in conds] == [("none", 0), ("blur", 1), ("blur", 2), ("hue", 1), ("hue", 2)]
    assert len(plan_conditions(None, None)) == 1 + 7 * 4
    with pytest.raises(ValueError, match="none of the chosen"):
        plan_conditions(["blur"], (-2,))
    with pytest.raises(ValueError, match="levels"):
        plan_conditions(["blur"], {"blur": [7]})


@pytest.fixture(scope="module")
def two_models():
    return [tiny_encoder(0), tiny_encoder(1)]


def test_csv_columns_rows_and_outputs(two_models, class_folder, tmp_path):
    out = tmp_path / "out"
    res = robustness(two_models, class_folder, PROMPTS, out, n_boot=20, cache=tmp_path / "cache", progress=False, **SMALL)
    csv = pd.read_csv(out / "robustness.csv")
    assert tuple(csv.columns) == CSV_COLUMNS
    assert len(csv) == 2 * 4
    assert set(csv["corruption"]) == {"none", "blur", "hue"}
    assert list(csv["model"].unique()) == ["tiny-clip", "tiny-clip#2"]
    assert csv.loc[csv["corruption"] == "none", "severity"].tolist() == [0, 0]
    detail = pd.read_csv(out / "robustness_detail.csv")
    assert tuple(detail.columns[:8]) == CSV_COLUMNS and {"accuracy_lo", "ha@5_hi", "mitigation"} <= set(detail.columns)
    assert (detail["accuracy_lo"] <= detail["accuracy"]).all() and (detail["accuracy"] <= detail["accuracy_hi"]).all()
    for name in ("metrics.json", "run.json", "report.html", "predictions.csv", "figures/robustness_accuracy.png",
                 "figures/robustness_ha_at_5.png", "figures/corruption_gallery.png"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["degradation"]) >= {"accuracy", "ha@5"} and metrics["n"] == 12
    preds = pd.read_csv(out / "predictions.csv")
    assert len(preds) == 2 * 4 * 12 and {"path", "label", "prediction", "score:lung_n"} <= set(preds.columns)
    # Zero-shot numbers agree with scikit-learn on the written predictions.
    for (model, corruption, severity), part in preds.groupby(["model", "corruption", "severity"]):
        row = csv[(csv["model"] == model) & (csv["corruption"] == corruption) & (csv["severity"] == severity)].iloc[0]
        assert row["accuracy"] == pytest.approx(accuracy_score(part["label"], part["prediction"]))
        assert row["f1_weighted"] == pytest.approx(
            f1_score(part["label"], part["prediction"], average="weighted", labels=list(PROMPTS.classes), zero_division=0)
        )
    assert len(res.table) == 8


def _brute_force_ha(queries, gallery, labels, groups, k):
    sims = queries @ gallery.T
    n = len(labels)
    hits = []
    for i in range(n):
        allowed = [j for j in range(n) if j != i and (groups is None or groups[j] != groups[i])]
        order = sorted(allowed, key=lambda j: (-sims[i, j], j))[:k]
        hits.append(float(len(order) == k and all(labels[j] == labels[i] for j in order)))
    return float(np.mean(hits))


@pytest.mark.parametrize("with_groups", [False, True])
def test_corrupted_queries_against_clean_gallery_match_brute_force(with_groups, tiny_clip):
    from types import SimpleNamespace

    from histovl.data import ImageRecord
    from histovl.zeroshot import build_text_classifier

    rng = np.random.default_rng(0)
    n, labels = 30, [["lung_aca", "lung_n", "lung_scc"][i % 3] for i in range(30)]
    groups = [f"g{i // 2}" for i in range(n)] if with_groups else None
    centres = rng.normal(size=(3, 32))
    clean = centres[[i % 3 for i in range(n)]] + rng.normal(scale=1.5, size=(n, 32))
    clean = (clean / np.linalg.norm(clean, axis=1, keepdims=True)).astype(np.float32)
    noisy = clean + rng.normal(scale=0.3, size=clean.shape)
    noisy = (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)
    records = [ImageRecord(path=Path(f"{i}.png"), label=labels[i], labels=None, group=groups[i] if groups else None)
               for i in range(n)]
    image_set = SimpleNamespace(records=records, root=Path("."))
    scorer = ConditionScorer(image_set, np.ones(n, bool), clean, build_text_classifier(tiny_clip, PROMPTS),
                             list(PROMPTS.classes), n_boot=0)
    metrics, _ = scorer.score(noisy)
    for k in (5, 10):
        assert metrics[f"ha@{k}"] == pytest.approx(_brute_force_ha(noisy, clean, labels, groups, k))


def test_resume_after_interruption_gives_the_same_table(two_models, class_folder, tmp_path, monkeypatch):
    models = two_models[:1]
    reference = robustness(models, class_folder, PROMPTS, None, n_boot=20, cache=tmp_path / "ref", progress=False, **SMALL)

    real = sweep_module.encode_decoded
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sweep_module, "encode_decoded", interrupted)
    with pytest.raises(KeyboardInterrupt):
        robustness(models, class_folder, PROMPTS, None, n_boot=20, cache=tmp_path / "c", progress=False, **SMALL)
    monkeypatch.setattr(sweep_module, "encode_decoded", real)
    resumed = robustness(models, class_folder, PROMPTS, None, n_boot=20, cache=tmp_path / "c", progress=False, **SMALL)
    encoded = [s["n_encoded"] for s in resumed.encode_stats]
    assert encoded[:2] == [0, 0] and sum(encoded) == 12 * 2  # clean + blur:1 were cached; two left
    pd.testing.assert_frame_equal(resumed.table, reference.table)


def test_stain_normalisation_rows(tiny_clip, class_folder, tmp_path):
    pytest.importorskip("torchstain")
    res = robustness([tiny_clip], class_folder, PROMPTS, None, corruptions=["brightness"], levels=[2], n_boot=0,
                     stain_normalisation=True, cache=tmp_path / "c", progress=False)
    assert list(res.table["mitigation"]) == ["none", "none", "macenko", "macenko"]
    assert [s["transform"].split("+")[0] for s in res.encode_stats] == ["none", "brightness:2", "none", "brightness:2"]
