"""Paired statistics for two runs over the same images (formulas and meaning: docs/compare.md).

Pure functions on arrays:

* `paired_bootstrap_difference` / `paired_bootstrap_differences`: the difference of a metric
  between run a and run b with a percentile bootstrap interval, both runs evaluated on the *same*
  resamples (`histovl.metrics.bootstrap.resample_counts`, whole groups when ``groups`` is given).
  The five classification metrics are recomputed exactly as `histovl.metrics.classification_metrics`
  defines them (its `classification_replicates`, called once per run with one seed, draws the
  same resamples for both); ``ece``, ``brier`` and ``nll`` (`histovl.metrics.calibration`) are
  recomputed from per-item terms under the same resampling weights. Identical runs give exactly
  ``(0, 0, 0)``.
* `mcnemar_exact`: McNemar's exact test on the discordant pairs (a right / b wrong and the
  reverse): two-sided binomial p with success probability 1/2, as
  ``statsmodels.stats.contingency_tables.mcnemar(table, exact=True)``.
* `delong_test` / `delong`: DeLong, DeLong and Clarke-Pearson (1988) for two correlated AUROCs on
  one set of binary labels, in the midrank form of Sun and Xu (2014): O(n log n);
  `delong_one_vs_rest` runs it per class (class c against the rest, on the score of class c) for
  more than two classes.
* `holm`: Holm's step-down adjustment of a family of p-values (as statsmodels'
  ``multipletests(method="holm")``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

from histovl.metrics.bootstrap import percentile_interval, resample_counts
from histovl.metrics.calibration import (
    DEFAULT_BINS,
    is_probability_matrix,
    per_item_brier,
    per_item_nll,
    top_label,
    uniform_bins,
)
from histovl.metrics.classification import (
    CLASSIFICATION_METRICS,
    classification_metrics,
    classification_replicates,
)

#: metrics the paired bootstrap knows: the five of `classification_metrics`, then calibration.
CALIBRATION_METRICS = ("ece", "brier", "nll")
PAIRED_METRICS = (*CLASSIFICATION_METRICS, *CALIBRATION_METRICS)
#: metrics where a smaller value is better (a negative difference favours run a).
LOWER_IS_BETTER = frozenset(CALIBRATION_METRICS)

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class PairedDifference:
    """One metric of two runs on the same items: both values, a - b, and its bootstrap interval.

    Undefined values are NaN here (the writers turn them into JSON null).
    """

    metric: str
    a: float
    b: float
    difference: float
    low: float
    high: float
    n_valid: int
    n_skipped: int


def paired_bootstrap_difference(
    y_true: ArrayLike,
    probs_a: ArrayLike,
    probs_b: ArrayLike,
    metric: str,
    *,
    groups: ArrayLike | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``(metric(a) - metric(b), 95% CI low, high)`` from one set of paired bootstrap resamples.

    Args:
        y_true: true class index per item.
        probs_a, probs_b: ``[n, C]`` class probabilities of the two runs, rows in the same item
            order (a 1-D array is P(class 1) of a binary task).
        metric: one of `PAIRED_METRICS` (accuracy, balanced_accuracy, f1_macro, f1_weighted,
            auroc_macro, ece, brier, nll).
        groups: optional group id per item; whole groups are resampled.
        n_boot: resamples; 0 gives NaN interval ends.
        seed: seed of the resampling (the same for both runs by construction).

    Example:
        >>> import numpy as np
        >>> y = np.array([0, 1, 1, 0]); p = np.array([[.9, .1], [.3, .7], [.6, .4], [.2, .8]])
        >>> paired_bootstrap_difference(y, p, p, "accuracy", n_boot=200)
        (0.0, 0.0, 0.0)
    """
    result = paired_bootstrap_differences(
        y_true, probs_a, probs_b, (metric,), groups=groups, n_boot=n_boot, seed=seed
    )[metric]
    return result.difference, result.low, result.high


def paired_bootstrap_differences(
    y_true: ArrayLike,
    probs_a: ArrayLike,
    probs_b: ArrayLike,
    metrics: Sequence[str] = PAIRED_METRICS,
    *,
    groups: ArrayLike | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    n_bins: int = DEFAULT_BINS,
) -> dict[str, PairedDifference]:
    """`paired_bootstrap_difference` for several metrics at once (one resampling pass per run)."""
    unknown = [m for m in metrics if m not in PAIRED_METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {', '.join(PAIRED_METRICS)}")
    y, pa, pb = _check_pair(y_true, probs_a, probs_b)
    point_a, point_b = _points(y, pa, n_bins), _points(y, pb, n_bins)
    reps_a = _replicates(y, pa, metrics, groups, n_boot, seed, n_bins) if n_boot > 0 else None
    reps_b = _replicates(y, pb, metrics, groups, n_boot, seed, n_bins) if n_boot > 0 else None
    out: dict[str, PairedDifference] = {}
    for m in metrics:
        if reps_a is None or reps_b is None:
            low, high, n_valid, n_skipped = np.nan, np.nan, 0, 0
        else:
            iv = percentile_interval(reps_a[m] - reps_b[m], ci)
            low = np.nan if iv.low is None else iv.low
            high = np.nan if iv.high is None else iv.high
            n_valid, n_skipped = iv.n_valid, iv.n_skipped
        out[m] = PairedDifference(m, point_a[m], point_b[m], point_a[m] - point_b[m],
                                  float(low), float(high), n_valid, n_skipped)
    return out


def _check_pair(y_true: ArrayLike, probs_a: ArrayLike, probs_b: ArrayLike) -> tuple[NDArray[np.int64], FloatArray, FloatArray]:
    y = np.asarray(y_true)
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise ValueError(f"y_true must be a 1-D array of class indices, got shape {y.shape}, dtype {y.dtype}")
    arrays = []
    for name, probs in (("probs_a", probs_a), ("probs_b", probs_b)):
        p = np.asarray(probs, dtype=np.float64)
        p = np.stack([1.0 - p, p], axis=1) if p.ndim == 1 else p
        if p.ndim != 2 or p.shape[0] != len(y) or p.shape[1] < 2:
            raise ValueError(f"{name} must have shape [{len(y)}, C >= 2], got {p.shape}")
        if not np.isfinite(p).all():
            raise ValueError(f"{name} holds NaN or Inf")
        arrays.append(p)
    if arrays[0].shape != arrays[1].shape:
        raise ValueError(f"the two runs score different class counts: {arrays[0].shape} vs {arrays[1].shape}")
    return y.astype(np.int64), arrays[0], arrays[1]


def _points(y: NDArray[np.int64], p: FloatArray, n_bins: int) -> dict[str, float]:
    """Whole-data values (NaN where undefined), with `classification_metrics`' definitions."""
    m = classification_metrics(y, p, [str(c) for c in range(p.shape[1])], n_boot=0)
    calib = _calibration_terms(y, p, n_bins) if is_probability_matrix(p) else None
    values = {k: m[k] for k in CLASSIFICATION_METRICS}
    for k in CALIBRATION_METRICS:
        values[k] = None if calib is None else float(_calibration_from_weights(np.ones((1, len(y))), calib)[k][0])
    return {k: np.nan if v is None else float(v) for k, v in values.items()}


@dataclass(frozen=True)
class _CalibrationTerms:
    """Per-item pieces the calibration metrics are weighted sums of."""

    brier: FloatArray
    nll: FloatArray
    gap_by_bin: FloatArray  # [n, M]: (correct - confidence) in the item's equal-width bin


def _calibration_terms(y: NDArray[np.int64], p: FloatArray, n_bins: int) -> _CalibrationTerms:
    conf, correct = top_label(y, p)
    gap = np.zeros((len(y), n_bins))
    gap[np.arange(len(y)), uniform_bins(conf, n_bins)] = correct - conf
    return _CalibrationTerms(per_item_brier(y, p), per_item_nll(y, p), gap)


def _calibration_from_weights(weights: ArrayLike, terms: _CalibrationTerms) -> dict[str, FloatArray]:
    """ece (equal-width), brier and nll under each row of resampling weights ``[B, n]``.

    ECE = ``sum_b |sum_{i in b} w_i (correct_i - conf_i)| / sum_i w_i``, the weighted form of
    ``sum_b (n_b / n) |acc_b - conf_b|``.
    """
    w = np.asarray(weights, dtype=np.float64)
    total = w.sum(axis=1)
    return {
        "ece": np.abs(w @ terms.gap_by_bin).sum(axis=1) / total,
        "brier": (w @ terms.brier) / total,
        "nll": (w @ terms.nll) / total,
    }


def _replicates(
    y: NDArray[np.int64], p: FloatArray, metrics: Sequence[str], groups: ArrayLike | None,
    n_boot: int, seed: int, n_bins: int,
) -> dict[str, FloatArray]:
    """Bootstrap replicates of the requested metrics (NaN where undefined) for one run."""
    out: dict[str, FloatArray] = {}
    if any(m in CLASSIFICATION_METRICS for m in metrics):
        reps = classification_replicates(y, p, p.argmax(axis=1), p.shape[1], groups=groups, n_boot=n_boot, seed=seed)
        out.update({m: reps[m] for m in CLASSIFICATION_METRICS})
    if any(m in CALIBRATION_METRICS for m in metrics):
        if not is_probability_matrix(p):
            out.update({m: np.full(n_boot, np.nan) for m in CALIBRATION_METRICS})
            return out
        terms = _calibration_terms(y, p, n_bins)
        chunks = [_calibration_from_weights(w, terms) for w in resample_counts(len(y), groups=groups, n_boot=n_boot, seed=seed)]
        out.update({m: np.concatenate([c[m] for c in chunks]) for m in CALIBRATION_METRICS})
    return out


def discordant_counts(correct_a: ArrayLike, correct_b: ArrayLike) -> tuple[int, int]:
    """``(a right and b wrong, a wrong and b right)``: the off-diagonal of the paired 2x2 table."""
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"correct_a and correct_b must be 1-D of one length, got {a.shape} and {b.shape}")
    return int(np.sum(a & ~b)), int(np.sum(~a & b))


def mcnemar_exact(correct_a: ArrayLike, correct_b: ArrayLike) -> float:
    """Two-sided exact McNemar p: ``min(1, 2 * BinomCDF(min(n01, n10); n01 + n10, 1/2))``.

    Under the null hypothesis that both runs have the same accuracy, each discordant item is
    equally likely to favour either run. No discordant item gives p = 1.

    Example:
        >>> mcnemar_exact([1, 1, 1, 1, 1, 0], [0, 0, 0, 0, 0, 0])  # 5 discordant, all for a
        0.0625
    """
    n_ab, n_ba = discordant_counts(correct_a, correct_b)
    n = n_ab + n_ba
    if n == 0:
        return 1.0
    return float(min(1.0, 2.0 * stats.binom.cdf(min(n_ab, n_ba), n, 0.5)))


@dataclass(frozen=True)
class DeLong:
    """DeLong's test of two correlated AUROCs: both AUROCs, their difference, its standard error
    and the two-sided p (NaN when the variance is zero but the AUROCs differ)."""

    auroc_a: float
    auroc_b: float
    difference: float
    se: float
    p: float

    def ci95(self) -> tuple[float, float]:
        """The normal-theory 95% interval of the difference (both ends = the difference when se = 0)."""
        half = 1.959963984540054 * self.se
        return self.difference - half, self.difference + half


def delong(y_true_binary: ArrayLike, scores_a: ArrayLike, scores_b: ArrayLike) -> DeLong:
    """DeLong's test for correlated ROC curves (see `delong_test`), with both AUROCs and the SE."""
    y = np.asarray(y_true_binary)
    if y.ndim != 1 or not np.isin(y, (0, 1)).all():
        raise ValueError("y_true_binary must be a 1-D array of 0/1 labels")
    scores = np.vstack([np.asarray(scores_a, dtype=np.float64), np.asarray(scores_b, dtype=np.float64)])
    if scores.shape[1] != len(y) or not np.isfinite(scores).all():
        raise ValueError(f"scores must be finite with {len(y)} entries each, got shape {scores.shape}")
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    if m == 0 or n == 0:
        raise ValueError("DeLong's test needs both positive and negative items")
    tz = np.vstack([stats.rankdata(np.concatenate([pos[k], neg[k]])) for k in range(2)])
    tx = np.vstack([stats.rankdata(pos[k]) for k in range(2)])
    ty = np.vstack([stats.rankdata(neg[k]) for k in range(2)])
    auc = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    s10 = np.cov(v10) if m > 1 else np.zeros((2, 2))
    s01 = np.cov(v01) if n > 1 else np.zeros((2, 2))
    cov = s10 / m + s01 / n
    var = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    diff = float(auc[0] - auc[1])
    if var <= 1e-15:
        return DeLong(float(auc[0]), float(auc[1]), diff, 0.0, 1.0 if abs(diff) < 1e-12 else float("nan"))
    se = float(np.sqrt(var))
    return DeLong(float(auc[0]), float(auc[1]), diff, se, float(2.0 * stats.norm.sf(abs(diff) / se)))


def delong_test(y_true_binary: ArrayLike, scores_a: ArrayLike, scores_b: ArrayLike) -> tuple[float, float]:
    """``(AUROC(a) - AUROC(b), two-sided p)`` by DeLong's test for correlated ROC curves.

    With m positives X and n negatives Y, each run's structural components are
    ``V10(X_i) = mean_j psi(X_i, Y_j)`` and ``V01(Y_j) = mean_i psi(X_i, Y_j)``
    (psi = 1 above, 1/2 tied, 0 below), computed from midranks; the covariance of the two AUROCs is
    ``S10 / m + S01 / n`` (sample covariances of the components) and
    ``z = (A_a - A_b) / sqrt(var_a + var_b - 2 cov_ab)``. A zero variance (identical scores, or
    two perfect separations) gives p = 1 when the AUROCs are equal and NaN otherwise.

    Raises:
        ValueError: labels not 0/1, only one class present, or lengths that disagree.
    """
    result = delong(y_true_binary, scores_a, scores_b)
    return result.difference, result.p


def delong_one_vs_rest(y_true: ArrayLike, probs_a: ArrayLike, probs_b: ArrayLike) -> list[DeLong | None]:
    """DeLong's test per class, one vs rest: class c's AUROC is ``roc_auc_score(y == c, p[:, c])``
    (the per-class AUROCs whose mean is ``auroc_macro``). None for a class that is absent or is
    every item (its AUROC is undefined)."""
    y = np.asarray(y_true)
    pa, pb = np.asarray(probs_a, dtype=np.float64), np.asarray(probs_b, dtype=np.float64)
    if pa.shape != pb.shape or pa.ndim != 2 or pa.shape[0] != len(y):
        raise ValueError(f"probabilities must both be [{len(y)}, k], got {pa.shape} and {pb.shape}")
    out: list[DeLong | None] = []
    for c in range(pa.shape[1]):
        positive = (y == c).astype(np.int64)
        out.append(delong(positive, pa[:, c], pb[:, c]) if 0 < positive.sum() < len(y) else None)
    return out


def holm(pvalues: ArrayLike) -> FloatArray:
    """Holm-adjusted p-values, in the input order; NaN entries stay NaN and are not counted.

    Sorted ascending, the i-th smallest (0-based) of k becomes ``max_{j<=i} min(1, (k - j) p_(j))``.

    Example:
        >>> holm([0.125, 0.25, 0.0625]).tolist()
        [0.25, 0.25, 0.1875]
    """
    p = np.asarray(pvalues, dtype=np.float64).ravel()
    out = np.full(p.shape, np.nan)
    valid = np.flatnonzero(np.isfinite(p))
    k = len(valid)
    if k == 0:
        return out
    order = valid[np.argsort(p[valid], kind="mergesort")]
    scaled = np.minimum(1.0, (k - np.arange(k)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out
