"""classification_metrics against scikit-learn, absent-class handling and input checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    roc_auc_score,
)

from histovl.errors import NonFiniteError
from histovl.metrics import CLASSIFICATION_METRICS, classification_metrics


def _probs(
    rng: np.random.Generator, y: np.ndarray, n_classes: int, signal: float = 1.0
) -> np.ndarray:
    logits = rng.normal(size=(len(y), n_classes))
    logits[np.arange(len(y)), y] += signal
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("seed", range(6))
def test_point_estimates_equal_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_classes = int(rng.integers(2, 7))
    y = rng.integers(0, n_classes, size=int(rng.integers(20, 300)))
    y[:n_classes] = np.arange(n_classes)  # every class present
    p = _probs(rng, y, n_classes)
    pred = p.argmax(axis=1)
    names = [f"c{i}" for i in range(n_classes)]
    m = classification_metrics(y, p, names, n_boot=20, seed=seed)
    assert m["n"] == len(y)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-12)
    assert m["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-12)
    assert m["f1_weighted"] == pytest.approx(f1_score(y, pred, average="weighted"), abs=1e-12)
    if n_classes == 2:
        reference = roc_auc_score(y, p[:, 1])
    else:
        reference = roc_auc_score(y, p, multi_class="ovr", average="macro")
    assert m["auroc_macro"] == pytest.approx(reference, abs=1e-12)
    assert m["confusion_matrix"] == confusion_matrix(y, pred).tolist()
    per_f1 = f1_score(y, pred, average=None, labels=list(range(n_classes)))
    for c, name in enumerate(names):
        assert m["per_class"][name]["f1"] == pytest.approx(per_f1[c], abs=1e-12)
        assert m["per_class"][name]["support"] == int((y == c).sum())
    assert set(m["ci95"]) == set(CLASSIFICATION_METRICS)


def test_fixed_keys_and_json_safe() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=60)
    m = classification_metrics(y, _probs(rng, y, 3), ["a", "b", "c"], n_boot=50)
    for key in (
        "n",
        "accuracy",
        "balanced_accuracy",
        "f1_macro",
        "f1_weighted",
        "auroc_macro",
        "ci95",
        "confusion_matrix",
        "per_class",
        "class_names",
        "n_boot",
    ):
        assert key in m
    json.dumps(m, allow_nan=False)  # no NaN anywhere


def test_absent_classes_are_handled_explicitly() -> None:
    # classes: a, b, c, d. Truth holds a and b only; c is predicted once; d never appears.
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array(
        [
            [0.8, 0.1, 0.05, 0.05],
            [0.7, 0.2, 0.05, 0.05],
            [0.1, 0.1, 0.7, 0.1],
            [0.2, 0.7, 0.05, 0.05],
            [0.3, 0.6, 0.05, 0.05],
            [0.6, 0.3, 0.05, 0.05],
        ]
    )
    m = classification_metrics(y, p, ["a", "b", "c", "d"], n_boot=30)
    pred = p.argmax(axis=1)
    per = m["per_class"]
    assert per["c"]["f1"] == 0.0  # predicted but never true: every prediction of it is wrong
    assert per["d"]["f1"] is None  # neither true nor predicted: undefined, left out
    assert per["d"]["precision"] is None and per["d"]["recall"] is None
    expected_macro = np.mean([per["a"]["f1"], per["b"]["f1"], 0.0])
    assert m["f1_macro"] == pytest.approx(expected_macro)
    assert m["f1_macro"] == pytest.approx(
        f1_score(y, pred, labels=[0, 1, 2, 3], average="macro", zero_division=np.nan)
    )
    # AUROC is defined only for classes present in the truth
    assert per["c"]["auroc"] is None and per["d"]["auroc"] is None
    assert m["auroc_classes"] == ["a", "b"]
    expected_auc = np.mean([roc_auc_score(y == 0, p[:, 0]), roc_auc_score(y == 1, p[:, 1])])
    assert m["auroc_macro"] == pytest.approx(expected_auc)
    assert len(m["confusion_matrix"]) == 4 and all(len(r) == 4 for r in m["confusion_matrix"])


def test_single_class_truth_gives_undefined_auroc() -> None:
    y = np.zeros(5, dtype=int)
    p = np.tile([0.6, 0.4], (5, 1))
    m = classification_metrics(y, p, ["a", "b"], n_boot=20)
    assert m["auroc_macro"] is None
    assert m["ci95"]["auroc_macro"] == [None, None]
    assert m["ci_skipped"]["auroc_macro"] == 20
    json.dumps(m, allow_nan=False)


def test_string_labels_equal_indices() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, size=40)
    p = _probs(rng, y, 3)
    names = ["x", "y", "z"]
    by_index = classification_metrics(y, p, names, n_boot=30, seed=3)
    by_name = classification_metrics([names[i] for i in y], p, names, n_boot=30, seed=3)
    assert by_index == by_name


def test_nan_scores_raise_naming_the_row() -> None:
    p = np.full((4, 2), 0.5)
    p[2, 1] = np.nan
    with pytest.raises(NonFiniteError, match=r"row 2 \(tile_2.png\)"):
        classification_metrics(
            [0, 1, 0, 1], p, ["a", "b"], item_names=[f"tile_{i}.png" for i in range(4)]
        )
    p[2, 1] = np.inf
    with pytest.raises(NonFiniteError, match="row 2"):
        classification_metrics([0, 1, 0, 1], p, ["a", "b"])


@pytest.mark.parametrize(
    ("y", "scores", "names", "match"),
    [
        ([0, 1], np.ones((2, 3)), ["a", "b"], "shape"),
        ([0, 1, 1], np.ones((2, 2)), ["a", "b"], "3 items"),
        ([0, 5], np.ones((2, 2)), ["a", "b"], "outside"),
        (["a", "q"], np.ones((2, 2)), ["a", "b"], "not among"),
        ([], np.ones((0, 2)), ["a", "b"], "n = 0"),
        ([0], np.ones((1, 1)), ["a"], "at least 2"),
    ],
)
def test_bad_input_is_a_clear_error(
    y: list, scores: np.ndarray, names: list[str], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        classification_metrics(y, scores, names)


def test_no_bootstrap_gives_empty_intervals() -> None:
    m = classification_metrics(
        [0, 1, 1], [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], ["a", "b"], n_boot=0
    )
    assert all(v == [None, None] for v in m["ci95"].values())
    assert m["per_class"]["a"]["f1_ci95"] == [None, None]


def test_groups_are_recorded() -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, size=30)
    m = classification_metrics(
        y, _probs(rng, y, 2), ["a", "b"], groups=[f"p{i % 5}" for i in range(30)], n_boot=40
    )
    assert m["bootstrap_unit"] == "group" and m["n_groups"] == 5
    with pytest.raises(ValueError, match="one group id per item"):
        classification_metrics(y, _probs(rng, y, 2), ["a", "b"], groups=["p0"] * 3, n_boot=10)
