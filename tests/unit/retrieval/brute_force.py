"""Brute-force references for retrieval, written the obvious way (loops over full matrices).

Used only by tests: every optimised search and metric is compared against these.
"""

from __future__ import annotations

from collections import Counter

import numpy as np


def brute_force_topk(
    database: np.ndarray,
    queries: np.ndarray,
    k: int,
    *,
    exclude_ids: list[int] | None = None,
    db_groups: list[object] | None = None,
    query_groups: list[object] | None = None,
) -> list[list[tuple[int, float]]]:
    """Top-k (id, score) per query from the full similarity matrix; ties by ascending id."""
    sims = queries.astype(np.float64) @ database.astype(np.float64).T
    out = []
    for i in range(queries.shape[0]):
        candidates = []
        for j in range(database.shape[0]):
            if exclude_ids is not None and exclude_ids[i] == j:
                continue
            if query_groups is not None and query_groups[i] is not None and db_groups is not None and db_groups[j] == query_groups[i]:
                continue
            candidates.append((-sims[i, j], j))
        candidates.sort()
        out.append([(j, -s) for s, j in candidates[:k]])
    return out


def brute_force_metrics(
    top: list[list[tuple[int, float]]],
    db_labels: list[object],
    query_labels: list[object],
    k: int,
    n_relevant: list[int],
) -> dict[str, float]:
    """HA@k, recall@k, mMV@k and mAP@k by explicit loops."""
    ha = recall = mmv = ap_sum = 0.0
    for i, results in enumerate(top):
        labels = [db_labels[j] for j, _ in results[:k]]
        same = [lab == query_labels[i] for lab in labels]
        ha += float(len(same) == k and all(same))
        recall += float(any(same))
        if labels:
            counts = Counter(labels)
            best = max(counts.values())
            winner = next(lab for lab in labels if counts[lab] == best)  # first-ranked tied class
            mmv += float(winner == query_labels[i])
        hits, precision_sum = 0, 0.0
        for rank, ok in enumerate(same, start=1):
            if ok:
                hits += 1
                precision_sum += hits / rank
        norm = min(k, n_relevant[i])
        ap_sum += precision_sum / norm if norm else 0.0
    n = len(top)
    return {"ha": ha / n, "recall": recall / n, "mmv": mmv / n, "map": ap_sum / n}


def brute_force_n_relevant(
    db_labels: list[object],
    query_labels: list[object],
    *,
    exclude_ids: list[int] | None = None,
    db_groups: list[object] | None = None,
    query_groups: list[object] | None = None,
) -> list[int]:
    """How many database items of each query's class remain after the exclusions."""
    out = []
    for i, q in enumerate(query_labels):
        count = 0
        for j, lab in enumerate(db_labels):
            if exclude_ids is not None and exclude_ids[i] == j:
                continue
            if query_groups is not None and query_groups[i] is not None and db_groups is not None and db_groups[j] == query_groups[i]:
                continue
            count += lab == q
        out.append(count)
    return out


def tied_unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    """Unit vectors with entries in {0, +-1/2} and exactly 4 non-zeros: every inner product is a
    multiple of 1/4, exact in float32 whatever the summation order, so ties are real ties."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, dim), np.float32)
    for i in range(n):
        cols = rng.choice(dim, size=4, replace=False)
        x[i, cols] = rng.choice([-0.5, 0.5], size=4)
    return x
