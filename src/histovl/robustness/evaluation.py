"""Scoring one corrupted view: zero-shot metrics and corrupted-query → clean-gallery retrieval.

No model and no files here: embeddings in, numbers out, so the protocol is tested on synthetic
embeddings against brute force.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from histovl.metrics import classification_metrics
from histovl.reports import predictions_frame
from histovl.retrieval import VectorIndex, relevant_counts, retrieval_metrics
from histovl.zeroshot.classifier import TextClassifier

SCORED_METRICS = ("accuracy", "f1_macro", "f1_weighted", "ha@5", "ha@10")


class ConditionScorer:
    """Everything that stays fixed across the conditions of one model.

    Built once per model: the clean gallery index, labels, groups and relevant counts; then
    `score` turns each condition's (corrupted) embeddings into metrics.

    Args:
        image_set: the evaluated `ImageSet` (labels, groups, paths).
        ok: bool mask over its records: the images that decoded.
        clean_embeddings: [ok.sum(), D] clean embeddings (the retrieval gallery).
        classifier: the model's text classifier.
        ks: retrieval cut-offs.
        exclude_same_group: with a ``group`` column, a query never retrieves its own group.
    """

    def __init__(
        self,
        image_set: Any,
        ok: np.ndarray,
        clean_embeddings: np.ndarray,
        classifier: TextClassifier,
        class_names: Sequence[str],
        *,
        ks: Sequence[int] = (5, 10),
        n_boot: int = 1000,
        seed: int = 0,
        exclude_same_group: bool = True,
    ) -> None:
        self.records = [r for r, keep in zip(image_set.records, ok, strict=True) if keep]
        self.root = image_set.root
        self.class_names = list(class_names)
        index_of = {c: i for i, c in enumerate(self.class_names)}
        self.labels = [str(r.label) for r in self.records]
        self.y_true = np.array([index_of[lab] for lab in self.labels], dtype=np.int64)
        groups = [r.group for r in self.records]
        self.groups: list[str | None] | None = groups if any(g is not None for g in groups) else None
        self.exclude_groups = self.groups if exclude_same_group else None
        self.classifier = classifier
        self.ks = sorted({int(x) for x in ks})
        self.n_boot, self.seed = n_boot, seed
        paths = [str(r.path) for r in self.records]
        self.index = VectorIndex(clean_embeddings.shape[1])
        self.index.add(clean_embeddings, paths, labels=self.labels, groups=self.groups)
        self.label_array = np.array(self.labels, dtype=object)
        self.n_relevant = relevant_counts(self.labels, self.exclude_groups, exclude_same_group=self.exclude_groups is not None)

    def retrieved_labels(self, queries: np.ndarray) -> np.ndarray:
        """Labels [n, max(ks)] of each query's results in the clean gallery (None: no result)."""
        n = len(self.labels)
        result = self.index.search(
            queries, max(self.ks), exclude_ids=np.arange(n), exclude_groups=self.exclude_groups
        )
        out = np.full(result.ids.shape, None, dtype=object)
        found = result.ids >= 0
        out[found] = self.label_array[result.ids[found]]
        return out

    def score(self, embeddings: np.ndarray) -> tuple[dict[str, Any], np.ndarray]:
        """Metrics (flat: point estimates, ``<m>_lo``/``<m>_hi``, ``n``) and class probabilities."""
        probs = self.classifier.probabilities(embeddings)
        groups_arr = np.array(self.groups, dtype=object) if self.groups is not None else None
        cls = classification_metrics(
            self.y_true, probs, self.class_names, groups=groups_arr, n_boot=self.n_boot, seed=self.seed
        )
        ret = retrieval_metrics(
            self.retrieved_labels(embeddings), self.labels, self.n_relevant, ks=self.ks,
            groups=self.groups, n_boot=self.n_boot, seed=self.seed,
        )
        out: dict[str, Any] = {"n": int(len(self.labels))}
        for name in ("accuracy", "balanced_accuracy", "f1_macro", "f1_weighted", "auroc_macro"):
            out[name] = cls[name]
        for kk in self.ks:
            for family in ("ha", "recall", "mmv", "map"):
                out[f"{family}@{kk}"] = ret[f"{family}@{kk}"]
        intervals = {**{m: cls["ci95"].get(m) for m in ("accuracy", "f1_macro", "f1_weighted")},
                     **{f"ha@{kk}": ret["ci95"].get(f"ha@{kk}") for kk in self.ks}}
        for name, ci in intervals.items():
            lo, hi = ci if ci is not None else (None, None)
            out[f"{name}_lo"], out[f"{name}_hi"] = lo, hi
        return out, probs

    def predictions(
        self, probs: np.ndarray, model: str, mitigation: str, corruption: str, severity: int
    ) -> pd.DataFrame:
        """predictions.csv rows for one condition (docs/interfaces.md columns plus the condition)."""
        frame = predictions_frame(
            [r.path for r in self.records], self.labels, probs, self.class_names, root=self.root
        )
        frame.insert(0, "severity", severity)
        frame.insert(0, "corruption", corruption)
        frame.insert(0, "mitigation", mitigation)
        frame.insert(0, "model", model)
        return frame


def detail_frame(details: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """robustness_detail.csv: the fixed columns first, then mitigation, n, CIs and the rest."""
    frame = pd.DataFrame(list(details))
    if frame.empty:
        return frame
    first = ["model", "corruption", "severity", *SCORED_METRICS, "mitigation", "parameter", "n"]
    cis = [f"{m}_{b}" for m in SCORED_METRICS for b in ("lo", "hi") if f"{m}_{b}" in frame]
    rest = [c for c in frame.columns if c not in first and c not in cis]
    return frame[first + cis + rest]
