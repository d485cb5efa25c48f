"""scikit-learn's single-label point estimates in NumPy, equal to the last bit.

`histovl.metrics.classification` defines its metrics as scikit-learn's (module docstring there).
Importing ``sklearn.metrics`` costs ~2.5 s of CPU (it pulls in scipy.stats), more than the rest of
a fully cached zero-shot run, so the point estimates are computed here with the same floating-
point operations in the same order as scikit-learn 1.9 (`precision_recall_fscore_support` with
``labels=range(C)`` and ``zero_division=np.nan``, `balanced_accuracy_score`, `accuracy_score`,
`confusion_matrix`, and `roc_auc_score` = trapezoidal area under `roc_curve` with
``drop_intermediate=True``). tests/unit/metrics/test_exact.py checks equality with ``==`` (not
approximately) against scikit-learn on random, tied and degenerate inputs.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]


def confusion_matrix(y: IntArray, y_pred: IntArray, n_classes: int) -> IntArray:
    """[C, C] counts, rows = true class (``sklearn.metrics.confusion_matrix(labels=range(C))``)."""
    flat = np.asarray(y, dtype=np.int64) * n_classes + np.asarray(y_pred, dtype=np.int64)
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes).astype(np.int64)


def _divide(numerator: NDArray[np.int64] | FloatArray, denominator: IntArray | FloatArray) -> FloatArray:
    """sklearn's ``_prf_divide`` with ``zero_division=np.nan``."""
    mask = denominator == 0
    denom = np.array(denominator, dtype=np.float64, copy=True)
    denom[mask] = 1
    result = np.asarray(numerator, dtype=np.float64) / denom
    result[mask] = np.nan
    return result


def precision_recall_fscore(cm: IntArray) -> tuple[FloatArray, FloatArray, FloatArray, IntArray]:
    """Per-class precision, recall, F1 (NaN where undefined) and support from a confusion matrix."""
    tp_sum = np.diagonal(cm).copy()
    pred_sum = tp_sum + (cm.sum(axis=0) - tp_sum)
    true_sum = tp_sum + (cm.sum(axis=1) - tp_sum)
    precision = _divide(tp_sum, pred_sum)
    recall = _divide(tp_sum, true_sum)
    denom = 1.0 * true_sum.astype(np.float64) + pred_sum.astype(np.float64)
    f_score = _divide((1 + 1.0) * tp_sum.astype(np.float64), denom)
    return precision, recall, f_score, true_sum


def nan_average(values: FloatArray, weights: IntArray | None = None) -> float:
    """sklearn's ``_nanaverage``: the (weighted) mean of the values that are not NaN."""
    if values.shape[0] == 0:
        return float("nan")
    mask = np.isnan(values)
    if mask.all():
        return float("nan")
    if weights is None:
        return float(np.nanmean(values))
    kept, w = values[~mask], np.asarray(weights)[~mask]
    try:
        return float(np.average(kept, weights=w))
    except ZeroDivisionError:  # every weight zero: the plain mean, as sklearn
        return float(np.average(kept))


def accuracy(y: IntArray, y_pred: IntArray) -> float:
    """``sklearn.metrics.accuracy_score``."""
    return float(np.average(np.asarray(y) == np.asarray(y_pred)))


def balanced_accuracy(cm: IntArray) -> float:
    """``sklearn.metrics.balanced_accuracy_score``: mean recall over classes present in the truth
    (classes absent from the truth, predicted or not, leave the mean)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        per_class = np.diagonal(cm) / np.sum(cm, axis=1)
    per_class = per_class[~np.isnan(per_class)]
    return float(np.mean(per_class))


def roc_auc(positive: NDArray[np.bool_], scores: FloatArray) -> float:
    """``sklearn.metrics.roc_auc_score(positive, scores)`` for a binary truth with both classes."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    order = np.argsort(s, kind="stable")[::-1]  # ties are grouped below, so their order is moot
    s_sorted = s[order]
    y_sorted = np.asarray(positive, dtype=np.int32)[order].astype(np.float64)
    distinct = np.nonzero(np.diff(s_sorted))[0]
    thresholds = np.concatenate([distinct, [y_sorted.size - 1]])
    tps = np.cumsum(y_sorted, dtype=np.float64)[thresholds]
    fps = 1 + thresholds.astype(np.float64) - tps
    if fps.shape[0] > 2:
        keep = np.where(np.concatenate([[True], np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), [True]]))[0]
        fps, tps = fps[keep], tps[keep]
    tps = np.concatenate([[0.0], tps])
    fps = np.concatenate([[0.0], fps])
    fpr, tpr = fps / fps[-1], tps / tps[-1]
    dx = np.diff(fpr)
    return float(np.add.reduce(dx * (tpr[1:] + tpr[:-1]) / 2.0))
