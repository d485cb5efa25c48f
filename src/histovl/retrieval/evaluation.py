"""Leave-one-out image→image evaluation on embeddings: search, relevant counts, metrics + CIs.

No model and no files here: `histovl.retrieval.run.retrieve` encodes images and writes outputs,
this module turns embeddings and labels into numbers, so it is tested on synthetic embeddings.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from histovl.metrics import percentile_interval, resample_counts
from histovl.retrieval.index import VectorIndex
from histovl.retrieval.metrics import (
    MISSING,
    ap_per_query,
    ha_per_query,
    majority_vote,
    recall_per_query,
)
from histovl.retrieval.search import SearchResult
from histovl.retrieval.storage import IndexOptions

FIXED_METRICS = ("ha@5", "ha@10", "recall@1", "recall@5", "mmv@5", "map@10")
"""The keys docs/interfaces.md fixes for `histovl retrieve`; always computed."""

FAMILIES = ("ha", "recall", "mmv", "map")


@dataclass(frozen=True)
class LeaveOneOut:
    """A leave-one-out search over a labelled set.

    Attributes:
        index: the index holding every item (ids = positions in the inputs).
        result: top-K per query, excluding the query and (optionally) its group.
        n_relevant: per query, how many items of its class it could have retrieved.
    """

    index: VectorIndex
    result: SearchResult
    n_relevant: np.ndarray


def metric_ks(k: Sequence[int]) -> list[int]:
    """The cut-offs to report: the user's `k` plus those the fixed keys need (1, 5, 10)."""
    ks = sorted({int(x) for x in k} | {1, 5, 10})
    if ks[0] < 1:
        raise ValueError(f"k must be positive, got {list(k)}")
    return ks


def relevant_counts(
    labels: Sequence[str], groups: Sequence[str | None] | None, *, exclude_same_group: bool
) -> np.ndarray:
    """Items of each query's class left to retrieve after removing itself (and its group)."""
    per_label = Counter(labels)
    counts = np.array([per_label[lab] - 1 for lab in labels], dtype=np.int64)
    if exclude_same_group and groups is not None:
        per_pair = Counter((g, lab) for g, lab in zip(groups, labels, strict=True) if g is not None)
        for i, (g, lab) in enumerate(zip(groups, labels, strict=True)):
            if g is not None:
                counts[i] -= per_pair[(g, lab)] - 1
    return counts


def leave_one_out(
    embeddings: np.ndarray,
    paths: Sequence[str],
    labels: Sequence[str],
    groups: Sequence[str | None] | None = None,
    *,
    k: int = 10,
    exclude_same_group: bool = True,
    storage: str = "flat",
    options: IndexOptions | None = None,
    batch_size: int = 2048,
    index: VectorIndex | None = None,
) -> LeaveOneOut:
    """Index every item, then query each one against all the others.

    Args:
        embeddings: float32 [n, D], L2-normalised.
        groups: patient/slide/source-image id per item; with `exclude_same_group` a query never
            retrieves an item of its own group (near-duplicates would inflate every metric).
        index: reuse an index already holding exactly these items in this order.

    Example:
        >>> import numpy as np
        >>> x = np.eye(4, dtype="float32")[[0, 0, 1, 1]]
        >>> loo = leave_one_out(x, list("abcd"), ["p", "p", "q", "q"], k=1)
        >>> loo.result.ids.ravel().tolist()
        [1, 0, 3, 2]
    """
    n = len(paths)
    if n == 0:
        raise ValueError("the data set is empty: retrieval needs at least two labelled images")
    if len(labels) != n or any(lab is None for lab in labels):
        raise ValueError("retrieval evaluation needs one label per image (a `label` column or class folders)")
    use_groups = groups if (exclude_same_group and groups is not None and any(g is not None for g in groups)) else None
    if index is None:
        index = VectorIndex(embeddings.shape[1], storage=storage, options=options)
        index.add(embeddings, paths, labels=labels, groups=groups)
    result = index.search(
        embeddings, k, exclude_ids=np.arange(n), exclude_groups=list(use_groups) if use_groups else None,
        batch_size=batch_size,
    )
    n_relevant = relevant_counts(labels, use_groups, exclude_same_group=use_groups is not None)
    return LeaveOneOut(index, result, n_relevant)


def per_query_scores(
    retrieved_codes: np.ndarray, query_codes: np.ndarray, n_relevant: np.ndarray, ks: Sequence[int]
) -> dict[str, np.ndarray]:
    """One score per query for every metric family and cut-off (``"ha@5"`` -> float [n])."""
    out: dict[str, np.ndarray] = {}
    for k in ks:
        out[f"ha@{k}"] = ha_per_query(retrieved_codes, query_codes, k)
        out[f"recall@{k}"] = recall_per_query(retrieved_codes, query_codes, k)
        out[f"mmv@{k}"] = (majority_vote(retrieved_codes, k) == query_codes).astype(np.float64)
        out[f"map@{k}"] = ap_per_query(retrieved_codes, query_codes, k, n_relevant)
    return out


def retrieval_metrics(
    retrieved_labels: Any,
    query_labels: Sequence[str],
    n_relevant: Any,
    *,
    ks: Sequence[int] = (1, 5, 10),
    groups: Sequence[str | None] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> dict[str, Any]:
    """Every retrieval metric at every cut-off, with percentile bootstrap intervals.

    Every metric is a mean of per-query scores, so a resample's value is a weighted mean with
    the resample's multiplicities as weights (`histovl.metrics.resample_counts`): the same
    resamples `bootstrap_ci` draws, computed as one matrix product instead of a Python loop.

    Args:
        retrieved_labels: [n, >=max(ks)] labels of the results (None for an empty slot).
        groups: with groups, whole groups are resampled (queries of one patient are not
            independent).

    Returns:
        ``n``, ``<family>@<k>`` for each family and k, ``ci95`` = {metric: [lo, hi]}, and
        ``n_boot``, ``bootstrap_unit``, ``ci_level``, ``n_no_relevant`` (queries whose class had
        nothing left to retrieve).
    """
    retrieved = np.asarray(retrieved_labels, dtype=object)
    vocab: dict[object, int] = {}
    q_codes = np.array([vocab.setdefault(q, len(vocab)) for q in query_labels], dtype=np.int64)
    r_codes = np.array(
        [MISSING if r is None else vocab.setdefault(r, len(vocab)) for r in retrieved.ravel()], dtype=np.int64
    ).reshape(retrieved.shape)
    rel = np.asarray(n_relevant, dtype=np.int64)
    scores = per_query_scores(r_codes, q_codes, rel, sorted(set(ks)))
    names = list(scores)
    metrics: dict[str, Any] = {"n": int(len(q_codes))}
    metrics.update({name: float(values.mean()) for name, values in scores.items()})
    metrics["ci95"] = _bootstrap(np.stack([scores[m] for m in names], axis=1), names, groups, n_boot, seed, ci)
    metrics["n_boot"] = int(n_boot)
    metrics["ci_level"] = ci
    metrics["bootstrap_unit"] = "group" if groups is not None and any(g is not None for g in groups) else "item"
    metrics["n_no_relevant"] = int((rel == 0).sum())
    return metrics


def _bootstrap(
    values: np.ndarray, names: list[str], groups: Sequence[str | None] | None, n_boot: int, seed: int, ci: float
) -> dict[str, list[float | None]]:
    if n_boot <= 0:
        return {name: [None, None] for name in names}
    use_groups = np.asarray(groups, dtype=object) if groups is not None and any(g is not None for g in groups) else None
    replicates = []
    for counts in resample_counts(values.shape[0], groups=use_groups, n_boot=n_boot, seed=seed):
        weights = counts.astype(np.float64)
        replicates.append((weights @ values) / weights.sum(axis=1, keepdims=True))
    reps = np.concatenate(replicates, axis=0)
    return {name: percentile_interval(reps[:, j], ci).as_list() for j, name in enumerate(names)}
