"""Single-label classification metrics with bootstrap confidence intervals.

Point estimates come from scikit-learn, always with ``labels=range(C)`` so the class list is the
prompt set's, not whatever happens to occur in the data. Undefined values are reported as
``None`` (JSON ``null``), never NaN, and are left out of macro averages:

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

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

from histovl.errors import NonFiniteError
from histovl.metrics import _weighted
from histovl.metrics.bootstrap import group_codes, percentile_interval, resample_counts

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
        ``auroc_classes``, ``n_boot``, ``ci_level``, ``bootstrap_unit`` and ``n_groups``.

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
    n_classes = len(names)
    labels = list(range(n_classes))
    y_pred = s.argmax(axis=1)

    with warnings.catch_warnings():
        # "y_pred contains classes not in y_true" is expected; the docstring defines the handling.
        warnings.simplefilter("ignore", UserWarning)
        balanced = float(balanced_accuracy_score(y, y_pred))
    precision, recall, f1, support = precision_recall_fscore_support(
        y, y_pred, labels=labels, zero_division=np.nan
    )
    per_class_auroc = _per_class_auroc(y, s)
    defined_auroc = [c for c in labels if per_class_auroc[c] is not None]
    point: dict[str, float | None] = {
        "accuracy": float(accuracy_score(y, y_pred)),
        "balanced_accuracy": balanced,
        "f1_macro": none_if_nan(
            f1_score(y, y_pred, labels=labels, average="macro", zero_division=np.nan)
        ),
        "f1_weighted": none_if_nan(
            f1_score(y, y_pred, labels=labels, average="weighted", zero_division=np.nan)
        ),
        "auroc_macro": float(np.mean([per_class_auroc[c] for c in defined_auroc]))
        if defined_auroc
        else None,
    }

    intervals, skipped, f1_intervals = _bootstrap(
        y, s, y_pred, n_classes, groups=groups, n_boot=n_boot, seed=seed, ci=ci
    )
    codes = group_codes(groups, len(y))
    n_groups = None if codes is None else int(codes.max()) + 1
    return {
        "n": int(len(y)),
        **point,
        "ci95": intervals,
        "ci_skipped": skipped,
        "ci_level": ci,
        "n_boot": int(n_boot),
        "bootstrap_unit": "group" if groups is not None else "item",
        "n_groups": n_groups,
        "confusion_matrix": confusion_matrix(y, y_pred, labels=labels).astype(int).tolist(),
        "per_class": {
            names[c]: {
                "precision": none_if_nan(precision[c]),
                "recall": none_if_nan(recall[c]),
                "f1": none_if_nan(f1[c]),
                "f1_ci95": f1_intervals[c],
                "support": int(support[c]),
                "auroc": per_class_auroc[c],
            }
            for c in labels
        },
        "class_names": names,
        "auroc_classes": [names[c] for c in defined_auroc],
    }


def _bootstrap(
    y: NDArray[np.int64],
    s: NDArray[np.float64],
    y_pred: NDArray[np.int64],
    n_classes: int,
    *,
    groups: ArrayLike | None,
    n_boot: int,
    seed: int,
    ci: float,
) -> tuple[dict[str, list[float | None]], dict[str, int], list[list[float | None]]]:
    """(ci95 block, skipped resamples per metric, per-class F1 intervals)."""
    if n_boot <= 0:
        empty: list[float | None] = [None, None]
        return (
            {m: list(empty) for m in CLASSIFICATION_METRICS},
            {m: 0 for m in CLASSIFICATION_METRICS},
            [list(empty) for _ in range(n_classes)],
        )
    replicates = classification_replicates(
        y, s, y_pred, n_classes, groups=groups, n_boot=n_boot, seed=seed
    )
    intervals = {m: percentile_interval(replicates[m], ci) for m in CLASSIFICATION_METRICS}
    per_class_f1 = [
        percentile_interval(replicates["f1_per_class"][:, c], ci).as_list()
        for c in range(n_classes)
    ]
    return (
        {m: iv.as_list() for m, iv in intervals.items()},
        {m: iv.n_skipped for m, iv in intervals.items()},
        per_class_f1,
    )


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
            out.append(float(roc_auc_score(positive, s[:, c])))
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


def none_if_nan(value: Any) -> float | None:
    """float, or None for NaN (undefined metrics are JSON null, never NaN)."""
    f = float(value)
    return None if np.isnan(f) else f
