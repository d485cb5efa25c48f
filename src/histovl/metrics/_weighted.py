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

    Negatives are sorted by score once; ``cum`` is their running weight with a leading 0. For a
    positive with score s, ``cum[searchsorted(s, "left")]`` is the negative weight strictly below
    s and ``cum[searchsorted(s, "right")]`` adds the tied negatives, so their sum is twice the
    Mann-Whitney credit (ties count half). The cost per class is one gather and one cumsum of the
    negatives' weights, plus a gather of the positives' columns.
    """
    n_boot, _ = weights.shape
    n_classes = scores.shape[1]
    out = np.full((n_boot, n_classes), np.nan)
    total = weights.sum(axis=1)
    for c in range(n_classes):
        positive = y_true == c
        pos_idx = np.flatnonzero(positive)
        neg_idx = np.flatnonzero(~positive)
        if len(pos_idx) == 0 or len(neg_idx) == 0:
            continue
        neg_order = neg_idx[np.argsort(scores[neg_idx, c], kind="mergesort")]
        neg_scores = scores[neg_order, c]
        pos_scores = scores[pos_idx, c]
        below = np.searchsorted(neg_scores, pos_scores, side="left")
        below_or_tied = np.searchsorted(neg_scores, pos_scores, side="right")
        cum = np.zeros((n_boot, len(neg_order) + 1), dtype=np.int64)
        np.cumsum(weights[:, neg_order], axis=1, out=cum[:, 1:])
        w_pos = weights[:, pos_idx]
        twice_u = (w_pos * (cum[:, below] + cum[:, below_or_tied])).sum(axis=1)
        n_pos = w_pos.sum(axis=1)
        n_neg = total - n_pos
        defined = (n_pos > 0) & (n_neg > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, c] = np.where(
                defined, 0.5 * twice_u / (n_pos * n_neg).astype(np.float64), np.nan
            )
    return out


def auroc_macro_from_per_class(per_class: FloatArray) -> FloatArray:
    """Mean of the defined per-class AUROCs per row; NaN when none is defined."""
    return _nanmean_rows(per_class)


def _nanmean_rows(values: FloatArray) -> FloatArray:
    valid = np.isfinite(values)
    count = valid.sum(axis=1)
    total = np.where(valid, values, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)
