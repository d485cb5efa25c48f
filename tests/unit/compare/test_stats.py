"""Paired statistics against references: statsmodels/scipy, a naive DeLong, plain resampling."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from histovl.compare.stats import (
    PAIRED_METRICS,
    delong,
    delong_one_vs_rest,
    delong_test,
    holm,
    mcnemar_exact,
    paired_bootstrap_difference,
    paired_bootstrap_differences,
)
from histovl.metrics.bootstrap import resample_counts
from histovl.metrics.calibration import brier, ece


def _probs(rng: np.random.Generator, y: np.ndarray, n_classes: int, signal: float) -> np.ndarray:
    z = rng.normal(size=(len(y), n_classes))
    z[np.arange(len(y)), y] += signal
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("groups", [None, "grouped"])
@pytest.mark.parametrize("metric", PAIRED_METRICS)
def test_identical_runs_give_exactly_zero(metric, groups):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 90)
    p = _probs(rng, y, 3, 1.0)
    g = np.repeat(np.arange(30), 3) if groups else None
    assert paired_bootstrap_difference(y, p, p, metric, groups=g, n_boot=300, seed=4) == (0.0, 0.0, 0.0)


def test_difference_equals_a_plain_loop_over_the_same_resamples():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 60)
    pa, pb = _probs(rng, y, 3, 1.5), _probs(rng, y, 3, 0.5)
    groups = np.repeat(np.arange(20), 3)
    diffs = paired_bootstrap_differences(y, pa, pb, ("accuracy", "brier", "ece"), groups=groups, n_boot=200, seed=7)
    plain: dict[str, list[float]] = {"accuracy": [], "brier": [], "ece": []}
    for chunk in resample_counts(len(y), groups=groups, n_boot=200, seed=7):
        for row in chunk:
            idx = np.repeat(np.arange(len(y)), row)
            ya, a, b = y[idx], pa[idx], pb[idx]
            plain["accuracy"].append(np.mean(a.argmax(1) == ya) - np.mean(b.argmax(1) == ya))
            plain["brier"].append(brier(ya, a) - brier(ya, b))
            plain["ece"].append(ece(ya, a) - ece(ya, b))
    for metric, values in plain.items():
        lo, hi = np.quantile(values, [0.025, 0.975])
        assert diffs[metric].low == pytest.approx(lo, abs=1e-12) and diffs[metric].high == pytest.approx(hi, abs=1e-12)
    assert diffs["accuracy"].difference == pytest.approx(np.mean(pa.argmax(1) == y) - np.mean(pb.argmax(1) == y))


def test_a_clearly_better_run_has_an_interval_above_zero():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 400)
    lo = paired_bootstrap_difference(y, _probs(rng, y, 2, 3.0), _probs(rng, y, 2, 0.2), "auroc_macro", n_boot=300)[1]
    assert lo > 0


def _mcnemar_reference(a: np.ndarray, b: np.ndarray) -> float:
    try:
        from statsmodels.stats.contingency_tables import mcnemar
    except ImportError:  # statsmodels is a test extra; scipy's exact binomial test is the same
        n01, n10 = int(np.sum(a & ~b)), int(np.sum(~a & b))
        return 1.0 if n01 + n10 == 0 else stats.binomtest(n01, n01 + n10, 0.5).pvalue
    table = [[np.sum(a & b), np.sum(a & ~b)], [np.sum(~a & b), np.sum(~a & ~b)]]
    return float(mcnemar(table, exact=True).pvalue)


@pytest.mark.parametrize("seed", range(6))
def test_mcnemar_matches_the_reference(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 200))
    a, b = rng.random(n) < 0.7, rng.random(n) < rng.uniform(0.4, 0.9)
    assert mcnemar_exact(a, b) == pytest.approx(_mcnemar_reference(a, b), rel=1e-12)


def test_mcnemar_worked_example():
    # 10 discordant pairs split 9/1: p = 2 * P(X <= 1), X ~ Bin(10, 1/2) = 2 * 11/1024
    a = np.array([1] * 9 + [0] + [1] * 5, dtype=bool)
    b = np.array([0] * 9 + [1] + [1] * 5, dtype=bool)
    assert mcnemar_exact(a, b) == pytest.approx(22 / 1024)
    assert mcnemar_exact(a, a) == 1.0


def _delong_naive(y: np.ndarray, sa: np.ndarray, sb: np.ndarray) -> tuple[float, float]:
    """DeLong et al. (1988) written out with the O(m n) kernel matrix."""
    pos, neg = y == 1, y == 0
    comps = []
    for s in (sa, sb):
        psi = (s[pos][:, None] > s[neg][None, :]) + 0.5 * (s[pos][:, None] == s[neg][None, :])
        comps.append((psi.mean(), psi.mean(axis=1), psi.mean(axis=0)))
    m, n = pos.sum(), neg.sum()
    v10 = np.stack([c[1] for c in comps])
    v01 = np.stack([c[2] for c in comps])
    s10 = (v10 - v10.mean(1, keepdims=True)) @ (v10 - v10.mean(1, keepdims=True)).T / (m - 1)
    s01 = (v01 - v01.mean(1, keepdims=True)) @ (v01 - v01.mean(1, keepdims=True)).T / (n - 1)
    cov = s10 / m + s01 / n
    diff = comps[0][0] - comps[1][0]
    z = diff / np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    return float(diff), float(2 * stats.norm.sf(abs(z)))


@pytest.mark.parametrize("seed", range(5))
def test_delong_matches_the_naive_definition(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 150)
    sa = y * 0.8 + rng.normal(size=150)
    sb = np.round(y * 0.5 + rng.normal(size=150), 1)  # ties
    diff, p = delong_test(y, sa, sb)
    ref_diff, ref_p = _delong_naive(y, sa, sb)
    assert diff == pytest.approx(ref_diff, abs=1e-12) and p == pytest.approx(ref_p, rel=1e-9)
    assert diff == pytest.approx(roc_auc_score(y, sa) - roc_auc_score(y, sb), abs=1e-12)


def test_delong_of_identical_scores_is_no_difference():
    y = np.array([0, 1, 0, 1, 1, 0])
    s = np.array([0.1, 0.9, 0.4, 0.35, 0.8, 0.2])
    assert delong_test(y, s, s) == (0.0, 1.0)
    with pytest.raises(ValueError, match="positive and negative"):
        delong_test(np.zeros(4, dtype=int), s[:4], s[:4])


@pytest.mark.parametrize("seed", range(3))
def test_delong_one_vs_rest_is_the_naive_test_per_class_and_averages_to_the_macro_auroc(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, 200)
    pa, pb = _probs(rng, y, 4, 1.5), np.round(_probs(rng, y, 4, 1.0), 2)
    pb /= pb.sum(axis=1, keepdims=True)
    tests = delong_one_vs_rest(y, pa, pb)
    for c, t in enumerate(tests):
        assert t is not None
        ref_diff, ref_p = _delong_naive((y == c).astype(int), pa[:, c], pb[:, c])
        assert t.difference == pytest.approx(ref_diff, abs=1e-12) and t.p == pytest.approx(ref_p, rel=1e-9)
        assert t.auroc_a == pytest.approx(roc_auc_score(y == c, pa[:, c]), abs=1e-12)
        lo, hi = t.ci95()
        assert lo < t.difference < hi and (t.p < 0.05) == (lo > 0 or hi < 0)  # the CI and the test agree
    macro = roc_auc_score(y, pa, multi_class="ovr") - roc_auc_score(y, pb, multi_class="ovr")
    assert np.mean([t.difference for t in tests if t is not None]) == pytest.approx(macro, abs=1e-12)
    assert delong_one_vs_rest(np.zeros(5, dtype=int), pa[:5], pb[:5]) == [None] * 4  # one class only


def test_delong_holds_its_level_under_the_null():
    """Two exchangeable scorers of the same signal: p < 0.05 in about 5% of the data sets."""
    rng = np.random.default_rng(11)
    p = []
    for _ in range(400):
        y = rng.integers(0, 2, 80)
        shared = y * 1.0 + rng.normal(size=80)
        p.append(delong(y, shared + rng.normal(size=80), shared + rng.normal(size=80)).p)
    assert 0.025 <= np.mean(np.array(p) < 0.05) <= 0.085


def test_holm_matches_statsmodels():
    pvals = np.array([0.01, 0.04, 0.03, 0.2, 0.005, np.nan])
    adjusted = holm(pvals)
    assert np.isnan(adjusted[-1])
    try:
        from statsmodels.stats.multitest import multipletests
    except ImportError:
        expected = np.array([0.04, 0.09, 0.09, 0.2, 0.025])  # by hand: 5 tests, step-down
    else:
        expected = multipletests(pvals[:-1], method="holm")[1]
    np.testing.assert_allclose(adjusted[:-1], expected, rtol=1e-12)


def test_unknown_metric_and_shape_mismatch_are_errors():
    y = np.array([0, 1, 1])
    p = np.array([[0.6, 0.4], [0.3, 0.7], [0.5, 0.5]])
    with pytest.raises(ValueError, match="unknown metric"):
        paired_bootstrap_difference(y, p, p, "kappa")
    with pytest.raises(ValueError, match="probs_b"):
        paired_bootstrap_difference(y, p, p[:2], "accuracy")
