"""Grouped cross-validation of HistoStainAlign and its no-alignment baseline on the same folds.

Folds come from scikit-learn's `StratifiedGroupKFold` on the pairs' ``group`` (patient or
slide), so no group is ever in both the training and the test part of a fold. Every pair gets an
out-of-fold probability from each model; the metrics (and their bootstrap CIs, resampling whole
groups) are computed once on all out-of-fold predictions with
`histovl.metrics.classification_metrics`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from histovl.stainalign.model import HistoStainAlign, StainAlignParams


@dataclass
class CrossValidationResult:
    """Out-of-fold class probabilities per model, with the fold of each pair."""

    class_names: list[str]
    probabilities: dict[str, np.ndarray]
    folds: np.ndarray
    n_splits: int


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
    labels: Sequence[str],
    groups: Sequence[str],
    *,
    params: StainAlignParams | Mapping[str, Any] | None = None,
    n_splits: int = 5,
    seed: int = 0,
) -> CrossValidationResult:
    """Out-of-fold probabilities of the aligned model and the baseline on identical folds.

    Each fold trains both models from the same `random_state` (``seed + fold``; `params`' own
    ``align`` and ``random_state`` are replaced); prediction uses H&E bags only.
    """
    classes = sorted(set(map(str, labels)))
    folds = grouped_folds(labels, groups, n_splits, seed)
    probs = {name: np.full((len(labels), len(classes)), np.nan) for name in ("aligned", "baseline")}
    fold_of = np.full(len(labels), -1)
    for f, (train, test) in enumerate(folds):
        train_labels = [labels[i] for i in train]
        if len(set(train_labels)) < len(classes):
            raise ValueError(
                f"fold {f}: training part lacks class(es) {sorted(set(classes) - set(train_labels))}; "
                "use fewer folds (--cv-folds) or more groups per class"
            )
        for name, align in (("aligned", True), ("baseline", False)):
            model = HistoStainAlign.from_params(params, align=align, random_state=seed + f)
            model.fit([he_bags[i] for i in train], [ihc_bags[i] for i in train] if align else None, train_labels)
            p = model.predict_proba([he_bags[i] for i in test])
            cols = np.array([classes.index(c) for c in model.classes_])
            probs[name][np.ix_(test, cols)] = p
        fold_of[test] = f
    for name, p in probs.items():  # a class missing from a fold's training part leaves NaN
        probs[name] = np.nan_to_num(p, nan=0.0)
    return CrossValidationResult(classes, probs, fold_of, len(folds))


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
