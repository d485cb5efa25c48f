"""Vectorised single-label metrics under bootstrap multiplicities (many resamples at once).

Why this exists: 1,000 resamples x (5 sklearn metrics) re-run sklearn's input validation, label
discovery and sorting 5,000 times, which takes tens of seconds on 5,000 items. A bootstrap
resample is fully described by per-item multiplicities ``w`` (see `bootstrap.resample_counts`),
and every metric here is a function of weighted counts:

* the confusion matrix of a resample is ``W @ onehot(true * C + pred)`` (exact: integer counts);
* one-vs-rest AUROC of class c equals the weighted Mann-Whitney statistic
  ``sum_pos w * (negative weight strictly below + 0.5 * tied negative weight) / (P * N)``,
  which is what sklearn's trapezoidal ``roc_auc_score`` computes (ties give the half-credit
  diagonal segment). Scores are sorted once for all resamples.

The definitions mirror `classification.classification_metrics` (sklearn with ``labels=`` and
``zero_division=np.nan``) and the unit tests check equality with sklearn on expanded resamples.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]


def confusion_from_weights(
    weights: NDArray[np.int64], y_true: NDArray[np.int64], y_pred: NDArray[np.int64], n_classes: int
) -> FloatArray:
    """Confusion matrices ``[B, C, C]`` (rows = true) for ``B`` weight vectors."""
    cell = y_true * n_classes + y_pred
    onehot = np.zeros((len(cell), n_classes * n_classes), dtype=np.float64)
    onehot[np.arange(len(cell)), cell] = 1.0
    return (weights.astype(np.float64) @ onehot).reshape(-1, n_classes, n_classes)


def metrics_from_confusion(cm: FloatArray) -> dict[str, FloatArray]:
    """accuracy, balanced accuracy, macro/weighted F1 (``[B]``) and per-class F1 (``[B, C]``).

    Balanced accuracy averages recall over classes present in the truth (sklearn's
    ``balanced_accuracy_score``); F1 is NaN for a class neither true nor predicted and such
    classes are left out of the macro mean (sklearn ``zero_division=np.nan``).
    """
    tp = np.diagonal(cm, axis1=1, axis2=2)
    support = cm.sum(axis=2)
    predicted = cm.sum(axis=1)
    total = support.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = tp.sum(axis=1) / total
        recall = np.where(support > 0, tp / support, np.nan)
        balanced = _nanmean_rows(recall)
        denom = support + predicted
        f1 = np.where(denom > 0, 2.0 * tp / denom, np.nan)
        f1_macro = _nanmean_rows(f1)
        f1_weighted = np.nansum(f1 * support, axis=1) / total
    return {
        "f1_per_class": f1,
        "accuracy": accuracy,
        "balanced_accuracy": balanced,
        "f1_macro": f1_macro,
        "f1_weighted": f1_weighted,
    }


def auroc_ovr_from_weights(
    weights: NDArray[np.int64], y_true: NDArray[np.int64], scores: FloatArray
) -> FloatArray:
    """Per-class one-vs-rest AUROC ``[B, C]`` under each weight vector; NaN where undefined.

    In score order, with ``cum`` the running negative weight (a leading 0 prepended) and a
    positive item's tie run spanning sorted positions ``first..last``, the negative weight
    strictly below it plus half the tied negative weight is ``(cum[first] + cum[last + 1]) / 2``.
    Only the positive columns are gathered, so the cost is one gather and one cumsum of the
    ``[B, n]`` weights per class.
    """
    n_boot, n_items = weights.shape
    n_classes = scores.shape[1]
    out = np.full((n_boot, n_classes), np.nan)
    w_all = weights.astype(np.int32 if n_items < 2**20 else np.int64, copy=False)
    total = w_all.sum(axis=1, dtype=np.int64)
    cum = np.zeros((n_boot, n_items + 1), dtype=np.int64)
    for c in range(n_classes):
        order = np.argsort(scores[:, c], kind="mergesort")
        s_sorted = scores[order, c]
        positive = y_true[order] == c
        if not positive.any():
            continue
        new_run = np.r_[True, s_sorted[1:] != s_sorted[:-1]]
        run_first = np.maximum.accumulate(np.where(new_run, np.arange(n_items), 0))
        run_last = _run_last(new_run)
        w_sorted = w_all[:, order]
        np.cumsum(np.where(positive, 0, w_sorted), axis=1, out=cum[:, 1:])
        pos_cols = np.flatnonzero(positive)
        w_pos = w_sorted[:, pos_cols].astype(np.int64)
        twice_u = (w_pos * (cum[:, run_first[pos_cols]] + cum[:, run_last[pos_cols] + 1])).sum(
            axis=1
        )
        n_pos = w_pos.sum(axis=1)
        n_neg = total - n_pos
        defined = (n_pos > 0) & (n_neg > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, c] = np.where(
                defined, 0.5 * twice_u / (n_pos * n_neg).astype(np.float64), np.nan
            )
    return out


def _run_last(new_run: NDArray[np.bool_]) -> NDArray[np.int64]:
    """For each sorted position, the last position of its run of tied scores."""
    n = len(new_run)
    ends = np.r_[np.flatnonzero(new_run)[1:] - 1, n - 1]
    run_id = np.cumsum(new_run) - 1
    return ends[run_id]


def auroc_macro_from_per_class(per_class: FloatArray) -> FloatArray:
    """Mean of the defined per-class AUROCs per row; NaN when none is defined."""
    return _nanmean_rows(per_class)


def _nanmean_rows(values: FloatArray) -> FloatArray:
    valid = np.isfinite(values)
    count = valid.sum(axis=1)
    total = np.where(valid, values, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)
