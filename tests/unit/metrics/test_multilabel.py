"""multilabel_metrics: HistoCLIP equation 6, sklearn agreement, decisions/logits inputs, bootstrap."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

from histovl.errors import NonFiniteError
from histovl.metrics import multilabel_metrics
from histovl.metrics.bootstrap import bootstrap_replicates
from histovl.metrics.multilabel import multilabel_replicates

NAMES = ["tumour", "stroma", "lymphocyte", "necrosis"]


def _data(seed: int, n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.random((n, 4)) < 0.4
    logits = rng.normal(size=(n, 4)) + np.where(y, 1.0, -1.0)
    return y, logits


def _equation_6(y: np.ndarray, logits: np.ndarray) -> float:
    """The paper's formula, written as literally as possible with explicit loops."""
    n, c = y.shape
    total = 0.0
    for j in range(c):
        correct = 0
        for i in range(n):
            sigma = 1.0 / (1.0 + np.exp(-logits[i, j]))
            correct += int((sigma >= 0.5) == y[i, j])
        total += correct / n
    return total / c


@pytest.mark.parametrize("seed", range(4))
def test_macc_is_equation_6_and_others_match_sklearn(seed: int) -> None:
    y, logits = _data(seed)
    m = multilabel_metrics(y, logits, NAMES, from_logits=True, n_boot=20)
    assert m["macc"] == pytest.approx(_equation_6(y, logits), abs=1e-12)
    d = logits >= 0
    assert m["f1_macro"] == pytest.approx(
        f1_score(y, d, average="macro", zero_division=np.nan), abs=1e-12
    )
    assert m["f1_micro"] == pytest.approx(f1_score(y, d, average="micro"), abs=1e-12)
    assert m["exact_match"] == pytest.approx(accuracy_score(y, d), abs=1e-12)
    p, r, f, s = precision_recall_fscore_support(y, d, average=None, zero_division=np.nan)
    for c, name in enumerate(NAMES):
        assert m["per_label"][name]["f1"] == pytest.approx(f[c])
        assert m["per_label"][name]["support"] == s[c]
        assert m["per_label"][name]["accuracy"] == pytest.approx(np.mean(d[:, c] == y[:, c]))
    for key in ("n", "macc", "f1_macro", "f1_micro", "exact_match", "per_label", "ci95"):
        assert key in m
    json.dumps(m, allow_nan=False)


def test_probabilities_logits_and_decisions_agree() -> None:
    y, logits = _data(7)
    probs = 1.0 / (1.0 + np.exp(-logits))
    a = multilabel_metrics(y, logits, NAMES, from_logits=True, n_boot=30, seed=1)
    b = multilabel_metrics(y, probs, NAMES, n_boot=30, seed=1)
    c = multilabel_metrics(y.astype(int), probs >= 0.5, NAMES, n_boot=30, seed=1)
    assert a == b == c


def test_threshold_is_inclusive() -> None:
    y = np.array([[True, False]])
    m = multilabel_metrics(y, np.array([[0.5, 0.5]]), ["a", "b"], n_boot=0)
    assert m["macc"] == 0.5 and m["exact_match"] == 0.0  # 0.5 >= 0.5 -> both predicted


def test_absent_label_is_undefined_not_zero() -> None:
    y = np.array([[1, 0], [1, 0], [0, 0]], dtype=bool)
    d = np.array([[1, 0], [0, 0], [0, 0]], dtype=bool)
    m = multilabel_metrics(y, d, ["a", "b"], n_boot=0)
    assert m["per_label"]["b"]["f1"] is None
    assert m["f1_macro"] == pytest.approx(m["per_label"]["a"]["f1"])


def test_vectorised_bootstrap_equals_sklearn_replicates() -> None:
    y, logits = _data(3, n=40)
    d = logits >= 0
    groups = [f"p{i % 9}" for i in range(40)]

    def reference(yy: np.ndarray, dd: np.ndarray) -> dict[str, float]:
        return {
            "macc": float(
                np.mean([accuracy_score(yy[:, c], dd[:, c]) for c in range(yy.shape[1])])
            ),
            "f1_macro": f1_score(yy, dd, average="macro", zero_division=np.nan),
            "f1_micro": f1_score(yy, dd, average="micro", zero_division=np.nan),
            "exact_match": accuracy_score(yy, dd),
        }

    slow = bootstrap_replicates(reference, y, d, groups=groups, n_boot=30, seed=2)
    fast = multilabel_replicates(y, d, groups=groups, n_boot=30, seed=2)
    for name, values in slow.items():
        np.testing.assert_allclose(fast[name], values, atol=1e-12, equal_nan=True, err_msg=name)


def test_interval_contains_point_estimate() -> None:
    y, logits = _data(5, n=300)
    m = multilabel_metrics(y, logits, NAMES, from_logits=True, n_boot=300, seed=0)
    for name, (lo, hi) in m["ci95"].items():
        assert lo <= m[name] <= hi, name


def test_bad_inputs() -> None:
    y = np.zeros((3, 2), dtype=bool)
    with pytest.raises(ValueError, match="shape"):
        multilabel_metrics(y, np.zeros((3, 3)), ["a", "b"])
    with pytest.raises(ValueError, match="from_logits"):
        multilabel_metrics(y, np.full((3, 2), 2.0), ["a", "b"])
    with pytest.raises(ValueError, match="0/1"):
        multilabel_metrics(np.full((3, 2), 2), np.zeros((3, 2)), ["a", "b"])
    bad = np.zeros((3, 2))
    bad[1, 0] = np.nan
    with pytest.raises(NonFiniteError, match=r"row 1 \(t1\)"):
        multilabel_metrics(y, bad, ["a", "b"], item_names=["t0", "t1", "t2"])
