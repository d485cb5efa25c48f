"""Multi-label metrics: HistoCLIP's mAcc, macro/micro F1, exact match, per label, with CIs.

mAcc follows HistoCLIP's equation 6 exactly::

    mAcc = 1/C * sum_c 1/N * sum_i  I( ybin_ic == y_ic ),   ybin_ic = I( sigma(logit_ic) >= 0.5 )

i.e. the per-label binary accuracy averaged over labels (with the same N for every label this is
also the fraction of correct entries of the N x C decision matrix). Inputs may be probabilities
(``sigma(logit)`` already applied, thresholded at ``threshold``), logits (``from_logits=True``:
the sigmoid is applied first, literally as in the equation), or boolean decisions (used as is, for
strategies such as power-set or top-k that decide without a per-label probability).

F1 follows scikit-learn with ``zero_division=np.nan``: a label neither present nor predicted has
undefined F1 (``None``) and is left out of ``f1_macro``; ``f1_micro`` pools all decisions.
``exact_match`` is the fraction of items whose whole label set is right (sklearn's subset
accuracy). The bootstrap recomputes every metric per resample, vectorised over resamples.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import expit
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

from histovl.metrics._summary import (
    metrics_head,
    none_if_nan,
    precision_recall_f1,
    replicate_intervals,
)
from histovl.metrics.bootstrap import resample_counts
from histovl.metrics.classification import check_finite_rows

#: metrics reported with a confidence interval, in the order of ``metrics.json``.
MULTILABEL_METRICS = ("macc", "f1_macro", "f1_micro", "exact_match")


def multilabel_metrics(
    y_true: ArrayLike,
    probs: ArrayLike,
    class_names: Sequence[str],
    *,
    threshold: float = 0.5,
    from_logits: bool = False,
    groups: ArrayLike | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    item_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """mAcc, macro/micro F1, exact match and per-label scores of multi-label decisions.

    Args:
        y_true: ``[n, C]`` boolean (or 0/1) truth.
        probs: ``[n, C]`` probabilities, logits (``from_logits=True``) or boolean decisions
            (a bool array is taken as the decisions themselves).
        class_names: the C labels, in column order.
        threshold: decision threshold on the probability (the paper's 0.5).
        from_logits: apply the sigmoid to ``probs`` first.
        groups: optional patient/slide id per item for a grouped bootstrap.
        n_boot, seed, ci: bootstrap settings (``n_boot=0`` disables intervals).
        item_names: optional name per item for error messages.

    Returns:
        A JSON-ready dict: ``n``, ``macc``, ``f1_macro``, ``f1_micro``, ``exact_match``,
        ``ci95``, ``ci_skipped``, ``per_label`` ({label: precision, recall, f1, accuracy,
        support}), ``class_names``, ``threshold``, ``n_boot``, ``ci_level``, ``bootstrap_unit``,
        ``n_groups``.

    Example:
        >>> import numpy as np
        >>> y = np.array([[1, 0], [1, 1]], bool); p = np.array([[0.9, 0.2], [0.7, 0.4]])
        >>> multilabel_metrics(y, p, ["tumour", "stroma"], n_boot=0)["macc"]
        0.75
    """
    names = [str(c) for c in class_names]
    truth, decisions = _validate(
        y_true, probs, names, threshold=threshold, from_logits=from_logits, item_names=item_names
    )
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, decisions, average=None, zero_division=np.nan
    )
    label_accuracy = [float(accuracy_score(truth[:, c], decisions[:, c])) for c in range(len(names))]
    replicates = (
        multilabel_replicates(truth, decisions, groups=groups, n_boot=n_boot, seed=seed) if n_boot > 0 else None
    )
    intervals, skipped = replicate_intervals(replicates, MULTILABEL_METRICS, ci)
    return {
        **metrics_head(len(truth), _point_estimates(truth, decisions, label_accuracy), intervals, skipped,
                       ci=ci, n_boot=n_boot, groups=groups),
        "threshold": threshold,
        "per_label": {
            names[c]: {
                **precision_recall_f1(precision, recall, f1, c),
                "accuracy": label_accuracy[c],
                "support": int(support[c]),
            }
            for c in range(len(names))
        },
        "class_names": names,
    }


def _point_estimates(
    truth: NDArray[np.bool_], decisions: NDArray[np.bool_], label_accuracy: list[float]
) -> dict[str, float | None]:
    """The four metrics of `MULTILABEL_METRICS` on the whole data set (mAcc = mean label accuracy)."""
    return {
        "macc": float(np.mean(label_accuracy)),
        "f1_macro": none_if_nan(f1_score(truth, decisions, average="macro", zero_division=np.nan)),
        "f1_micro": none_if_nan(f1_score(truth, decisions, average="micro", zero_division=np.nan)),
        "exact_match": float(accuracy_score(truth, decisions)),
    }


def multilabel_replicates(
    truth: NDArray[np.bool_],
    decisions: NDArray[np.bool_],
    *,
    groups: ArrayLike | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, NDArray[np.float64]]:
    """Bootstrap replicates of every multi-label metric (NaN where undefined), vectorised.

    A resample's weighted counts are matrix products of the multiplicities with per-item
    indicators (true positives, false positives, false negatives, correct entries, exact rows).
    """
    tp_items = (truth & decisions).astype(np.float64)
    fp_items = (~truth & decisions).astype(np.float64)
    fn_items = (truth & ~decisions).astype(np.float64)
    correct_items = (truth == decisions).astype(np.float64)
    exact_items = correct_items.all(axis=1).astype(np.float64)
    n_labels = truth.shape[1]
    out: dict[str, list[NDArray[np.float64]]] = {m: [] for m in MULTILABEL_METRICS}
    for counts in resample_counts(len(truth), groups=groups, n_boot=n_boot, seed=seed):
        w = counts.astype(np.float64)
        total = w.sum(axis=1)
        tp, fp, fn = w @ tp_items, w @ fp_items, w @ fn_items
        with np.errstate(invalid="ignore", divide="ignore"):
            out["macc"].append((w @ correct_items).sum(axis=1) / (n_labels * total))
            out["exact_match"].append((w @ exact_items) / total)
            denom = 2 * tp + fp + fn
            f1 = np.where(denom > 0, 2 * tp / denom, np.nan)
            valid = np.isfinite(f1)
            n_valid = valid.sum(axis=1)
            out["f1_macro"].append(
                np.where(
                    n_valid > 0, np.where(valid, f1, 0).sum(axis=1) / np.maximum(n_valid, 1), np.nan
                )
            )
            pooled = denom.sum(axis=1)
            out["f1_micro"].append(np.where(pooled > 0, 2 * tp.sum(axis=1) / pooled, np.nan))
    return {m: np.concatenate(v) for m, v in out.items()}


def binary_decisions(
    probs: ArrayLike, *, threshold: float = 0.5, from_logits: bool = False
) -> NDArray[np.bool_]:
    """``sigma(logit) >= threshold`` (``from_logits``) or ``prob >= threshold``; bools pass through."""
    arr = np.asarray(probs)
    if arr.dtype == bool:
        return arr
    values = np.asarray(arr, dtype=np.float64)
    if from_logits:
        values = expit(values)
    return values >= threshold


def _validate(
    y_true: ArrayLike,
    probs: ArrayLike,
    names: list[str],
    *,
    threshold: float,
    from_logits: bool,
    item_names: Sequence[str] | None,
) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    if len(set(names)) != len(names) or not names:
        raise ValueError(f"class_names must be distinct and non-empty, got {names}")
    truth_raw = np.asarray(y_true)
    if truth_raw.ndim != 2 or truth_raw.shape[1] != len(names):
        raise ValueError(
            f"y_true must have shape [n, {len(names)}] (one column per label), got {truth_raw.shape}"
        )
    if truth_raw.dtype != bool and not np.isin(truth_raw, (0, 1)).all():
        raise ValueError("y_true must be boolean or 0/1 indicators of each label")
    truth = truth_raw.astype(bool)
    scores = np.asarray(probs)
    if scores.shape != truth.shape:
        raise ValueError(f"probs has shape {scores.shape} but y_true has {truth.shape}")
    if len(truth) == 0:
        raise ValueError("no items to evaluate (n = 0): check the data set and on_error skips")
    if scores.dtype != bool:
        check_finite_rows(
            np.asarray(scores, dtype=np.float64),
            "logits" if from_logits else "probabilities",
            item_names,
        )
        if not from_logits and ((scores < 0) | (scores > 1)).any():
            raise ValueError("probs lie outside [0, 1]: pass from_logits=True for raw logits")
    return truth, binary_decisions(scores, threshold=threshold, from_logits=from_logits)
