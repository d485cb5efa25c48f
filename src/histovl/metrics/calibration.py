"""Calibration: how far a model's class probabilities can be trusted (docs/compare.md).

Pure functions on arrays, single-label, top-label (the probability of the predicted class):

* `ece`: expected calibration error, ``sum_b (n_b / n) * |acc_b - conf_b|`` over bins of the
  top-label confidence. ``strategy="uniform"``: ``n_bins`` equal-width bins on [0, 1], right-closed
  as in Guo et al. (2017) (bin b holds ``b/M < conf <= (b+1)/M``; confidence 0 falls in the first);
  ``strategy="quantile"``: equal-mass bins, the items sorted by confidence (stable) and cut into
  ``n_bins`` runs of equal size (sizes differ by at most one).
* `brier`: ``mean_i sum_c (p_ic - 1[y_i = c])^2``, halved for two classes so that it is the usual
  binary ``mean (p - y)^2`` (scikit-learn's ``brier_score_loss`` with its default ``scale_by_half``).
* `nll`: ``mean_i -log p_i,y_i`` (scikit-learn's ``log_loss``; probabilities are clipped at
  ``1e-300`` so a hard zero gives a large finite loss, not Inf).
* `reliability_curve`: per bin the mean confidence, the accuracy and the count (the reliability
  diagram of the reports).
* `fit_temperature` / `apply_temperature`: temperature scaling (Guo et al. 2017): one scalar T
  dividing the logits, fitted by minimising the NLL over ``log T``. Probabilities are accepted in
  place of logits: ``log p`` differs from the logits by a per-row constant, which softmax ignores,
  so scaling ``log p`` is exactly scaling the logits.

The per-item pieces (`top_label`, `uniform_bins`, `per_item_brier`, `per_item_nll`) are public so
that bootstrap code can recompute these metrics under resampling weights without sorting again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

BinStrategy = Literal["uniform", "quantile"]
DEFAULT_BINS = 15
#: probabilities are clipped here before a log (NLL, temperature scaling).
PROB_FLOOR = 1e-300
#: temperatures are searched in exp([-LOG_T_BOUND, LOG_T_BOUND]) (about 0.007 to 150).
LOG_T_BOUND = 5.0

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class ReliabilityCurve:
    """A reliability diagram's numbers: one entry per bin (empty bins have NaN confidence/accuracy).

    Attributes:
        lower, upper: bin edges on the confidence axis (for equal-mass bins, the smallest and
            largest confidence in the bin).
        confidence: mean top-label confidence of the items in the bin.
        accuracy: share of those items whose prediction is right.
        count: items in the bin.
        strategy: ``uniform`` or ``quantile``.
    """

    lower: FloatArray
    upper: FloatArray
    confidence: FloatArray
    accuracy: FloatArray
    count: NDArray[np.int64]
    strategy: BinStrategy

    @property
    def ece(self) -> float:
        """``sum_b (n_b / n) |acc_b - conf_b|`` over the non-empty bins."""
        full = self.count > 0
        n = int(self.count.sum())
        gaps = np.abs(self.accuracy[full] - self.confidence[full])
        return float(np.sum(self.count[full] * gaps) / n)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReliabilityCurve:
        """The curve back from `as_dict` (None entries as NaN)."""
        def floats(key: str) -> FloatArray:
            return np.array([np.nan if v is None else float(v) for v in data[key]], dtype=np.float64)

        return cls(floats("lower"), floats("upper"), floats("confidence"), floats("accuracy"),
                   np.asarray(data["count"], dtype=np.int64), data["strategy"])

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready lists (empty bins as None)."""
        def listed(values: FloatArray) -> list[float | None]:
            return [None if not np.isfinite(v) else float(v) for v in values]

        return {"strategy": self.strategy, "lower": listed(self.lower), "upper": listed(self.upper),
                "confidence": listed(self.confidence), "accuracy": listed(self.accuracy),
                "count": [int(c) for c in self.count]}


def as_probabilities(probs: ArrayLike) -> FloatArray:
    """``probs`` as an ``[n, C]`` float matrix; a 1-D array is P(class 1) of a binary task.

    Raises:
        ValueError: the rows are not probability distributions (negative, above 1, or not summing
            to 1 within 1e-6).
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim == 1:
        p = np.stack([1.0 - p, p], axis=1)
    if p.ndim != 2 or p.shape[0] == 0:
        raise ValueError(f"probabilities must have shape [n, C] with n > 0, got {p.shape}")
    if not is_probability_matrix(p):
        raise ValueError(
            "calibration needs class probabilities (each row in [0, 1], summing to 1); "
            "got scores that are not: pass softmax outputs"
        )
    return p


def is_probability_matrix(p: FloatArray, tol: float = 1e-6) -> bool:
    """True when every row of ``p`` is finite, within [0, 1] and sums to 1 (within ``tol``)."""
    return bool(
        p.ndim == 2 and np.isfinite(p).all() and (p >= -tol).all() and (p <= 1 + tol).all()
        and np.allclose(p.sum(axis=1), 1.0, atol=tol, rtol=0.0)
    )


def _labels(y_true: ArrayLike, n: int, n_classes: int) -> NDArray[np.int64]:
    y = np.asarray(y_true)
    if y.shape != (n,) or y.dtype.kind not in "iub":
        raise ValueError(f"y_true must be {n} class indices, got shape {y.shape} and dtype {y.dtype}")
    y = y.astype(np.int64)
    if len(y) and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"y_true holds a class index outside 0..{n_classes - 1}")
    return y


def top_label(y_true: ArrayLike, probs: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """Per item: the top-label confidence (max probability) and 1.0/0.0 for a right prediction
    (ties go to the first class, as ``argmax`` everywhere in histovl)."""
    p = as_probabilities(probs)
    y = _labels(y_true, len(p), p.shape[1])
    pred = p.argmax(axis=1)
    return p[np.arange(len(p)), pred], (pred == y).astype(np.float64)


def uniform_bins(confidence: FloatArray, n_bins: int = DEFAULT_BINS) -> NDArray[np.int64]:
    """Equal-width, right-closed bin index of each confidence: ``ceil(conf * M) - 1`` in 0..M-1."""
    _check_bins(n_bins)
    return np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)


def quantile_bins(confidence: FloatArray, n_bins: int = DEFAULT_BINS) -> NDArray[np.int64]:
    """Equal-mass bin index: rank r (stable sort) of n items goes to bin ``floor(r * M / n)``."""
    _check_bins(n_bins)
    order = np.argsort(confidence, kind="mergesort")
    bins = np.empty(len(confidence), dtype=np.int64)
    bins[order] = (np.arange(len(confidence)) * min(n_bins, len(confidence))) // len(confidence)
    return bins


def _check_bins(n_bins: int) -> None:
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")


def reliability_curve(
    y_true: ArrayLike, probs: ArrayLike, n_bins: int = DEFAULT_BINS, strategy: BinStrategy = "uniform"
) -> ReliabilityCurve:
    """Mean confidence, accuracy and count per confidence bin (see the module docstring).

    Example:
        >>> import numpy as np
        >>> c = reliability_curve([0, 1, 1, 0], np.array([[.9, .1], [.4, .6], [.2, .8], [.3, .7]]), n_bins=2)
        >>> c.count.tolist(), c.accuracy.tolist()
        ([0, 4], [nan, 0.75])
    """
    conf, correct = top_label(y_true, probs)
    if strategy == "uniform":
        bins = uniform_bins(conf, n_bins)
        edges = np.linspace(0.0, 1.0, n_bins + 1)
        lower, upper = edges[:-1], edges[1:]
    elif strategy == "quantile":
        bins = quantile_bins(conf, n_bins)
        lower = np.array([conf[bins == b].min() if (bins == b).any() else np.nan for b in range(n_bins)])
        upper = np.array([conf[bins == b].max() if (bins == b).any() else np.nan for b in range(n_bins)])
    else:
        raise ValueError(f"strategy must be 'uniform' or 'quantile', got {strategy!r}")
    count = np.bincount(bins, minlength=n_bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(bins, weights=conf, minlength=n_bins) / count
        accuracy = np.bincount(bins, weights=correct, minlength=n_bins) / count
    return ReliabilityCurve(lower, upper, mean_conf, accuracy, count, strategy)


def ece(
    y_true: ArrayLike, probs: ArrayLike, n_bins: int = DEFAULT_BINS, strategy: BinStrategy = "uniform"
) -> float:
    """Expected calibration error of the top label (module docstring for the bins).

    Example:
        >>> import numpy as np
        >>> round(ece([0, 1], np.array([[0.8, 0.2], [0.6, 0.4]]), n_bins=5), 12)  # .8 right, .6 wrong
        0.4
    """
    return reliability_curve(y_true, probs, n_bins, strategy).ece


def per_item_brier(y_true: ArrayLike, probs: ArrayLike) -> FloatArray:
    """Each item's Brier term ``sum_c (p_c - 1[y = c])^2`` (halved for two classes)."""
    p = as_probabilities(probs)
    y = _labels(y_true, len(p), p.shape[1])
    onehot = np.zeros_like(p)
    onehot[np.arange(len(p)), y] = 1.0
    terms = np.sum((p - onehot) ** 2, axis=1)
    return terms / 2.0 if p.shape[1] == 2 else terms


def per_item_nll(y_true: ArrayLike, probs: ArrayLike) -> FloatArray:
    """Each item's ``-log p_y`` (p clipped at `PROB_FLOOR`)."""
    p = as_probabilities(probs)
    y = _labels(y_true, len(p), p.shape[1])
    return -np.log(np.clip(p[np.arange(len(p)), y], PROB_FLOOR, 1.0))


def brier(y_true: ArrayLike, probs: ArrayLike) -> float:
    """Brier score (module docstring); equal to ``sklearn.metrics.brier_score_loss``."""
    return float(per_item_brier(y_true, probs).mean())


def nll(y_true: ArrayLike, probs: ArrayLike) -> float:
    """Mean negative log-likelihood of the true class; equal to ``sklearn.metrics.log_loss``."""
    return float(per_item_nll(y_true, probs).mean())


def _as_logits(logits_or_probs: ArrayLike) -> FloatArray:
    """Logits as given, or ``log p`` for probability rows (softmax-equivalent logits)."""
    z = np.asarray(logits_or_probs, dtype=np.float64)
    if z.ndim != 2 or z.shape[0] == 0 or not np.isfinite(z).all():
        raise ValueError(f"logits must be a finite [n, C] matrix with n > 0, got shape {z.shape}")
    return np.log(np.clip(z, PROB_FLOOR, 1.0)) if is_probability_matrix(z) else z


def apply_temperature(logits_or_probs: ArrayLike, temperature: float) -> FloatArray:
    """``softmax(z / T)`` for logits z (or ``log p`` for probabilities)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    from scipy.special import log_softmax  # only temperature scaling needs scipy (~1 s to import)

    return np.exp(log_softmax(_as_logits(logits_or_probs) / temperature, axis=1))


def fit_temperature(logits_or_probs: ArrayLike, y: ArrayLike) -> float:
    """The temperature T minimising the NLL of ``softmax(z / T)`` on (z, y).

    The NLL is convex in 1/T, hence unimodal in ``log T``; a bounded scalar search over
    ``log T`` in [-5, 5] finds it. T > 1 softens over-confident probabilities, T < 1 sharpens.

    Example:
        >>> import numpy as np
        >>> t = fit_temperature(np.array([[4.0, 0.0], [0.0, 4.0], [4.0, 0.0]]), np.array([0, 1, 1]))
        >>> t > 1  # one confident mistake in three: soften
        True
    """
    z = _as_logits(logits_or_probs)
    labels = _labels(y, len(z), z.shape[1])
    rows = np.arange(len(z))

    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax

    def loss(log_t: float) -> float:
        return float(-log_softmax(z / np.exp(log_t), axis=1)[rows, labels].mean())

    result = minimize_scalar(loss, bounds=(-LOG_T_BOUND, LOG_T_BOUND), method="bounded",
                             options={"xatol": 1e-7})
    return float(np.exp(result.x))


def calibration_summary(
    y_true: ArrayLike, probs: ArrayLike, n_bins: int = DEFAULT_BINS
) -> dict[str, float | int | None]:
    """``ece`` (equal-width, ``n_bins``), ``ece_bins``, ``brier`` and ``nll`` for a metrics block;
    None for all three when ``probs`` are not probabilities (scores for AUROC only)."""
    p = np.asarray(probs, dtype=np.float64)
    if not is_probability_matrix(p):
        return {"ece": None, "ece_bins": n_bins, "brier": None, "nll": None}
    return {"ece": ece(y_true, p, n_bins), "ece_bins": n_bins, "brier": brier(y_true, p), "nll": nll(y_true, p)}
