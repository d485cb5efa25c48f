"""Single-label classification metrics with bootstrap confidence intervals.

Point estimates are scikit-learn's (computed bit for bit in NumPy by `histovl.metrics._exact`,
which spares a run the ~2.5 s import of sklearn.metrics), always with ``labels=range(C)`` so the
class list is the prompt set's, not whatever happens to occur in the data. Undefined values are
reported as ``None`` (JSON ``null``), never NaN, and are left out of macro averages:

* F1/precision/recall use ``zero_division=np.nan``: a class that is neither in the truth nor
  predicted has undefined F1 and does not enter ``f1_macro``; a class predicted but absent from
  the truth has F1 = 0 (every prediction of it is wrong) and does enter it.
* ``balanced_accuracy`` is sklearn's: mean recall over classes present in the truth.
* ``auroc_macro`` is the mean of one-vs-rest AUROCs (``roc_auc_score(y == c, scores[:, c])``)
  over the classes for which AUROC is defined, i.e. present in the truth while at least one other
  class is present too. With every class present this equals
  ``roc_auc_score(y, scores, multi_class="ovr", average="macro")`` (tested). The classes used are
  listed in ``auroc_classes``.

Bootstrap intervals (`histovl.metrics.bootstrap`) recompute each metric on every resample with
exactly these definitions, vectorised over resamples (`histovl.metrics._weighted`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from histovl.errors import NonFiniteError
from histovl.metrics import _exact, _weighted
from histovl.metrics._summary import (
    metrics_head,
    none_if_nan,
    precision_recall_f1,
    replicate_intervals,
)
from histovl.metrics.bootstrap import percentile_interval, resample_counts
from histovl.metrics.calibration import calibration_summary

#: metrics reported with a confidence interval, in the order of ``metrics.json``.
CLASSIFICATION_METRICS = ("accuracy", "balanced_accuracy", "f1_macro", "f1_weighted", "auroc_macro")


def classification_metrics(
    y_true: ArrayLike,
    scores: ArrayLike,
    class_names: Sequence[str],
    *,
    groups: ArrayLike | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    item_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro/weighted F1 and macro OvR AUROC with bootstrap CIs.

    Predictions are the argmax of ``scores`` (ties go to the first class, as ``np.argmax``).

    Args:
        y_true: true class per item, as indices into ``class_names`` or as label strings.
        scores: ``[n, C]`` class probabilities (any monotone per-class score works for AUROC).
        class_names: the C class labels, in score-column order.
        groups: optional patient/slide id per item; the bootstrap then resamples whole groups.
        n_boot: bootstrap resamples (0 disables intervals: ``ci95`` values are ``[None, None]``).
        seed: seed of the bootstrap.
        ci: interval coverage; intervals are stored under ``ci95`` whatever the level, and the
            level under ``ci_level``.
        item_names: optional name (path) per item, used in error messages.

    Returns:
        A JSON-ready dict: ``n``, the five metrics, ``ci95`` = {metric: [lo, hi]},
        ``ci_skipped`` (undefined resamples per metric), ``confusion_matrix`` (rows = true),
        ``per_class`` ({label: precision, recall, f1, f1_ci95, support, auroc}), ``class_names``,
        ``auroc_classes``, ``n_boot``, ``ci_level``, ``bootstrap_unit`` and ``n_groups``, then
        calibration: ``ece`` (top-label, ``ece_bins`` = 15 equal-width bins), ``brier`` and ``nll``
        (`histovl.metrics.calibration`; None when ``scores`` are not probabilities).

    Raises:
        NonFiniteError: a score row holds NaN or Inf (the message names the row).
        ValueError: shapes disagree, a label is unknown, or the data set is empty.

    Example:
        >>> import numpy as np
        >>> m = classification_metrics(np.array([0, 1, 1]), np.array([[.9, .1], [.2, .8], [.6, .4]]),
        ...                            ["benign", "tumour"], n_boot=100)
        >>> m["accuracy"], m["confusion_matrix"]
        (0.6666666666666666, [[1, 0], [1, 1]])
    """
    names = [str(c) for c in class_names]
    y, s = _validate(y_true, scores, names, item_names)
    y_pred = s.argmax(axis=1)
    per_class = _per_class_scores(y, s, y_pred, len(names))
    replicates = (
        classification_replicates(y, s, y_pred, len(names), groups=groups, n_boot=n_boot, seed=seed)
        if n_boot > 0
        else None
    )
    intervals, skipped = replicate_intervals(replicates, CLASSIFICATION_METRICS, ci)
    f1_intervals = _per_class_f1_intervals(replicates, len(names), ci)
    labels = range(len(names))
    return {
        **metrics_head(len(y), _point_estimates(y, y_pred, per_class), intervals, skipped,
                       ci=ci, n_boot=n_boot, groups=groups),
        "confusion_matrix": per_class.confusion.astype(int).tolist(),
        "per_class": {
            names[c]: {
                **precision_recall_f1(per_class.precision, per_class.recall, per_class.f1, c),
                "f1_ci95": f1_intervals[c],
                "support": int(per_class.support[c]),
                "auroc": per_class.auroc[c],
            }
            for c in labels
        },
        "class_names": names,
        "auroc_classes": [names[c] for c in per_class.auroc_defined],
        **calibration_summary(y, s),
    }


@dataclass(frozen=True)
class _PerClass:
    """Per-class point estimates (NaN where undefined) and the classes with a defined AUROC."""

    precision: NDArray[np.float64]
    recall: NDArray[np.float64]
    f1: NDArray[np.float64]
    support: NDArray[np.int64]
    auroc: list[float | None]
    auroc_defined: list[int]
    confusion: NDArray[np.int64]


def _per_class_scores(
    y: NDArray[np.int64], s: NDArray[np.float64], y_pred: NDArray[np.int64], n_classes: int
) -> _PerClass:
    cm = _exact.confusion_matrix(y, y_pred, n_classes)
    precision, recall, f1, support = _exact.precision_recall_fscore(cm)
    auroc = _per_class_auroc(y, s)
    defined = [c for c in range(n_classes) if auroc[c] is not None]
    return _PerClass(precision, recall, f1, support, auroc, defined, cm)


def _point_estimates(
    y: NDArray[np.int64], y_pred: NDArray[np.int64], per_class: _PerClass
) -> dict[str, float | None]:
    """The five metrics of `CLASSIFICATION_METRICS` on the whole data set (docstring of the module)."""
    defined = per_class.auroc_defined
    return {
        "accuracy": _exact.accuracy(y, y_pred),
        "balanced_accuracy": _exact.balanced_accuracy(per_class.confusion),
        "f1_macro": none_if_nan(_exact.nan_average(per_class.f1)),
        "f1_weighted": none_if_nan(_exact.nan_average(per_class.f1, per_class.support)),
        "auroc_macro": float(np.mean([per_class.auroc[c] for c in defined])) if defined else None,
    }


def _per_class_f1_intervals(
    replicates: dict[str, NDArray[np.float64]] | None, n_classes: int, ci: float
) -> list[list[float | None]]:
    """Each class's F1 interval (``f1_ci95``); ``[None, None]`` without a bootstrap."""
    if replicates is None:
        return [[None, None] for _ in range(n_classes)]
    return [percentile_interval(replicates["f1_per_class"][:, c], ci).as_list() for c in range(n_classes)]


def classification_replicates(
    y: NDArray[np.int64],
    scores: NDArray[np.float64],
    y_pred: NDArray[np.int64],
    n_classes: int,
    *,
    groups: ArrayLike | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, NDArray[np.float64]]:
    """Bootstrap replicates of every classification metric (NaN where undefined), vectorised.

    Uses the same resamples as `bootstrap_ci` with the same seed and groups. Besides the five
    metrics (shape ``[n_boot]``) it returns ``f1_per_class`` (shape ``[n_boot, C]``).
    """
    chunks: dict[str, list[NDArray[np.float64]]] = {
        m: [] for m in (*CLASSIFICATION_METRICS, "f1_per_class")
    }
    for weights in resample_counts(len(y), groups=groups, n_boot=n_boot, seed=seed):
        cm = _weighted.confusion_from_weights(weights, y, y_pred, n_classes)
        for name, values in _weighted.metrics_from_confusion(cm).items():
            chunks[name].append(values)
        per_class = _weighted.auroc_ovr_from_weights(weights, y, scores)
        chunks["auroc_macro"].append(_weighted.auroc_macro_from_per_class(per_class))
    return {m: np.concatenate(v) for m, v in chunks.items()}


def _per_class_auroc(y: NDArray[np.int64], s: NDArray[np.float64]) -> list[float | None]:
    out: list[float | None] = []
    for c in range(s.shape[1]):
        positive = y == c
        if positive.all() or not positive.any():
            out.append(None)
        else:
            out.append(_exact.roc_auc(positive, s[:, c]))
    return out


def _validate(
    y_true: ArrayLike, scores: ArrayLike, names: list[str], item_names: Sequence[str] | None
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    if len(names) < 2:
        raise ValueError(f"classification needs at least 2 classes, got {names}")
    if len(set(names)) != len(names):
        raise ValueError(f"class_names has duplicates: {names}")
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] != len(names):
        raise ValueError(
            f"scores must have shape [n, {len(names)}] (one column per class), got {s.shape}"
        )
    if s.shape[0] == 0:
        raise ValueError("no items to evaluate (n = 0): check the data set and on_error skips")
    check_finite_rows(s, "scores", item_names)
    y = encode_labels(y_true, names)
    if len(y) != s.shape[0]:
        raise ValueError(f"y_true has {len(y)} items but scores has {s.shape[0]} rows")
    return y, s


def encode_labels(y_true: ArrayLike, names: list[str]) -> NDArray[np.int64]:
    """Label strings or class indices -> indices in ``names``, with a clear error otherwise."""
    arr = np.asarray(y_true)
    if arr.ndim != 1:
        raise ValueError(f"y_true must be 1-D (one label per item), got shape {arr.shape}")
    if arr.dtype.kind in "iu":
        bad = (arr < 0) | (arr >= len(names))
        if bad.any():
            raise ValueError(
                f"y_true holds class index {int(arr[bad][0])}, outside 0..{len(names) - 1} for classes {names}"
            )
        return arr.astype(np.int64)
    if arr.dtype.kind in "UO":
        index = {n: i for i, n in enumerate(names)}
        unknown = sorted({str(v) for v in arr if str(v) not in index})
        if unknown:
            raise ValueError(
                f"labels {unknown} are not among the classes {names}; add them to the prompt set"
            )
        return np.fromiter((index[str(v)] for v in arr), dtype=np.int64, count=len(arr))
    raise ValueError(f"y_true must hold class indices or label strings, got dtype {arr.dtype}")


def check_finite_rows(
    values: NDArray[np.float64], what: str, item_names: Sequence[str] | None = None
) -> None:
    """Raise `NonFiniteError` naming the first row of ``values`` holding NaN or Inf."""
    bad = ~np.isfinite(values).reshape(len(values), -1).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        first = int(rows[0])
        who = f"row {first}" + (f" ({item_names[first]})" if item_names is not None else "")
        raise NonFiniteError(
            f"{what} {who} contains NaN or Inf ({len(rows)} bad row(s) of {len(values)}); "
            "metrics are never computed on non-finite values: check the model output for that item"
        )
