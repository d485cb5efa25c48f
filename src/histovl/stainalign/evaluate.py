"""Grouped cross-validation of HistoStainAlign and its no-alignment baseline on the same folds.

Folds come from scikit-learn's `StratifiedGroupKFold` on the pairs' ``group`` (patient or
slide), so no group is ever in both the training and the test part of a fold. Every labelled
pair gets an out-of-fold probability from each model; the metrics (and their bootstrap CIs,
resampling whole groups) are computed once on all out-of-fold predictions with
`histovl.metrics.classification_metrics`.

Pairs without a label (``""`` or None) are split into no fold: they join the training part of
every fold whose test part holds none of their group (the aligned model uses them in the
alignment term; the baseline drops them), and get no out-of-fold prediction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from histovl.stainalign.model import HistoStainAlign, StainAlignParams
from histovl.stainalign.training import is_unlabelled


@dataclass
class CrossValidationResult:
    """Out-of-fold class probabilities per model for the labelled pairs (rows in the order of
    `labelled`, the indices of the labelled pairs among all), the fold of each, and per model the
    decision threshold each fold's model chose on its training part (None: argmax)."""

    class_names: list[str]
    probabilities: dict[str, np.ndarray]
    folds: np.ndarray
    n_splits: int
    labelled: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    thresholds: dict[str, list[float | None]] = field(default_factory=dict)


def grouped_folds(labels: Sequence[str], groups: Sequence[str], n_splits: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified, grouped folds; `n_splits` is reduced to the number of groups when larger."""
    n_groups = len(set(groups))
    k = min(n_splits, n_groups)
    if k < 2:
        raise ValueError(f"grouped cross-validation needs at least 2 groups, got {n_groups}; add a 'group' column with patient ids")
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(labels)), list(labels), list(groups)))


def cross_validate(
    he_bags: Sequence[np.ndarray],
    ihc_bags: Sequence[np.ndarray],
    labels: Sequence[str | None],
    groups: Sequence[str],
    *,
    params: StainAlignParams | Mapping[str, Any] | None = None,
    n_splits: int = 5,
    seed: int = 0,
) -> CrossValidationResult:
    """Out-of-fold probabilities of the aligned model and the baseline on identical folds.

    Each fold trains both models from the same `random_state` (``seed + fold``; `params`' own
    ``align`` and ``random_state`` are replaced); prediction uses H&E bags only. Folds are made
    from the labelled pairs; unlabelled ones join the training parts (module docstring).
    """
    labelled = np.array([i for i, v in enumerate(labels) if not is_unlabelled(v)], dtype=int)
    unlabelled = np.array([i for i, v in enumerate(labels) if is_unlabelled(v)], dtype=int)
    y = [str(labels[i]) for i in labelled]
    g = [groups[i] for i in labelled]
    classes = sorted(set(y))
    folds = grouped_folds(y, g, n_splits, seed)
    probs = {name: np.full((len(y), len(classes)), np.nan) for name in ("aligned", "baseline")}
    thresholds: dict[str, list[float | None]] = {"aligned": [], "baseline": []}
    fold_of = np.full(len(y), -1)
    for f, (train, test) in enumerate(folds):
        train_labels = [y[i] for i in train]
        if len(set(train_labels)) < len(classes):
            raise ValueError(
                f"fold {f}: training part lacks class(es) {sorted(set(classes) - set(train_labels))}; "
                "use fewer folds (--cv-folds) or more groups per class"
            )
        test_groups = {g[i] for i in test}
        extra = [int(i) for i in unlabelled if groups[i] not in test_groups]
        rows = [int(labelled[i]) for i in train] + extra
        fit_labels: list[str | None] = [*train_labels, *([None] * len(extra))]
        for name, align in (("aligned", True), ("baseline", False)):
            model = HistoStainAlign.from_params(params, align=align, random_state=seed + f)
            model.fit([he_bags[i] for i in rows], [ihc_bags[i] for i in rows] if align else None, fit_labels)
            p = model.predict_proba([he_bags[labelled[i]] for i in test])
            cols = np.array([classes.index(c) for c in model.classes_])
            probs[name][np.ix_(test, cols)] = p
            thresholds[name].append(model.threshold_)
        fold_of[test] = f
    for name, p in probs.items():  # a class missing from a fold's training part leaves NaN
        probs[name] = np.nan_to_num(p, nan=0.0)
    return CrossValidationResult(classes, probs, fold_of, len(folds), labelled, thresholds)


def summarise(metrics: dict[str, Any]) -> dict[str, Any]:
    """The fixed stainalign keys from a `classification_metrics` dict (``auroc`` = macro OvR)."""
    ci = metrics.get("ci95", {})
    return {
        "n": metrics["n"],
        "f1_weighted": metrics["f1_weighted"],
        "f1_macro": metrics["f1_macro"],
        "accuracy": metrics["accuracy"],
        "auroc": metrics["auroc_macro"],
        "ci95": {
            "f1_weighted": ci.get("f1_weighted"),
            "f1_macro": ci.get("f1_macro"),
            "accuracy": ci.get("accuracy"),
            "auroc": ci.get("auroc_macro"),
        },
    }
