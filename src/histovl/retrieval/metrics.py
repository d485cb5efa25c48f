"""Retrieval metrics as pure NumPy functions over a [n_query, K] array of retrieved labels.

Every metric has a per-query form (``*_per_query``, one score per query, which is what the
bootstrap resamples) and a mean form (``*_at_k``). Inputs are the labels of the retrieved items in
rank order (column 0 is the best match) and the label of each query. A row may be shorter than K
in effect when the database ran out of candidates: such slots hold `MISSING`, which matches no
query label and never votes.

Definitions (K = ``k``; ``rel[i, j]`` is 1 when the j-th result of query i has the query's class):

- **HA@K** (PathCLIP, ``../shared/seeds/004``): 1 if *all* top-K results share the query's class.
  A query with fewer than K results therefore scores 0.
- **Recall@K** (acc@K): 1 if *any* of the top-K results shares the query's class.
- **mMV@K**: 1 if the majority class of the top-K results equals the query's class. A tie between
  classes is broken in favour of the tied class whose best-ranked item comes first (the usual
  k-NN rule). The rule never looks at the query's label, so a tie cannot be scored in the
  query's favour.
- **mAP@K**: mean over queries of ``AP@K = (1 / min(K, R)) * sum_j rel[i, j] * P@j`` where
  ``P@j`` is the precision of the first j results and ``R`` the number of items of the query's
  class that the query could have retrieved (after excluding itself and, if asked, its group).
  Normalising by ``min(K, R)`` makes a perfect ranking score exactly 1 even when fewer than K
  relevant items exist, and, unlike normalising by the hits found, does not reward a query that
  finds one relevant item at rank 1 and misses the rest. A query with ``R = 0`` scores 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MISSING = -1
"""Label code (after `encode_labels`) of an empty result slot."""


def encode_labels(
    retrieved_labels: Any, query_labels: Any, missing: object = None
) -> tuple[np.ndarray, np.ndarray]:
    """Map arbitrary labels (strings, ints) to integer codes shared by queries and results.

    Slots equal to `missing` (e.g. None for "no result") become `MISSING`.

    Returns:
        (retrieved codes [n, K] int64, query codes [n] int64).
    """
    retrieved = np.asarray(retrieved_labels, dtype=object)
    query = np.asarray(query_labels, dtype=object)
    if retrieved.ndim != 2 or query.ndim != 1 or retrieved.shape[0] != query.shape[0]:
        raise ValueError(
            f"expected retrieved labels [n, K] and query labels [n]; got shapes "
            f"{retrieved.shape} and {query.shape}"
        )
    if any(q is missing for q in query):
        raise ValueError("every query needs a label; found a missing one")
    vocab: dict[object, int] = {}
    q_codes = np.array([vocab.setdefault(q, len(vocab)) for q in query], dtype=np.int64)
    flat = [MISSING if r is missing else vocab.setdefault(r, len(vocab)) for r in retrieved.ravel()]
    return np.asarray(flat, dtype=np.int64).reshape(retrieved.shape), q_codes


def _hits(retrieved: Any, query: Any, k: int) -> np.ndarray:
    """Bool [n, k]: result j of query i shares the query's label (MISSING never does)."""
    r = np.asarray(retrieved)
    q = np.asarray(query)
    if r.ndim != 2 or q.ndim != 1 or r.shape[0] != q.shape[0]:
        raise ValueError(
            f"expected retrieved labels [n, K] and query labels [n]; got shapes {r.shape} and {q.shape}"
        )
    if not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if r.shape[1] < k:
        raise ValueError(
            f"asked for metrics at k={k} but only {r.shape[1]} results per query were retrieved; "
            f"search with k >= {k}"
        )
    if r.shape[0] == 0:
        raise ValueError("no queries: retrieval metrics need at least one labelled query")
    hits: np.ndarray = r[:, :k] == q[:, None]
    return hits


def ha_per_query(retrieved: Any, query: Any, k: int) -> np.ndarray:
    """1.0 where all top-k results share the query's class (HA@K), else 0.0."""
    out: np.ndarray = np.all(_hits(retrieved, query, k), axis=1).astype(np.float64)
    return out


def recall_per_query(retrieved: Any, query: Any, k: int) -> np.ndarray:
    """1.0 where any of the top-k results shares the query's class (Recall@K), else 0.0."""
    out: np.ndarray = np.any(_hits(retrieved, query, k), axis=1).astype(np.float64)
    return out


def majority_vote(retrieved_codes: np.ndarray, k: int) -> np.ndarray:
    """The majority label code of each row's top-k (ties: the class ranked first wins).

    Args:
        retrieved_codes: int codes [n, >=k] (see `encode_labels`); `MISSING` slots do not vote.

    Returns:
        int64 [n]: the winning code, or `MISSING` for a row with no results at all.
    """
    codes = np.asarray(retrieved_codes, dtype=np.int64)[:, :k]
    n = codes.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    n_codes = int(codes.max()) + 1 if codes.size and codes.max() >= 0 else 1
    valid = codes >= 0
    rows = np.broadcast_to(np.arange(n)[:, None], codes.shape)[valid]
    cols = codes[valid]
    pos = np.broadcast_to(np.arange(codes.shape[1])[None, :], codes.shape)[valid]
    counts = np.zeros((n, n_codes), dtype=np.int64)
    np.add.at(counts, (rows, cols), 1)
    first_rank = np.full((n, n_codes), k, dtype=np.int64)
    np.minimum.at(first_rank, (rows, cols), pos)
    # More votes wins; among equal votes the smaller first rank wins (k+1 > any rank difference).
    key = counts * (k + 1) - first_rank
    winner = key.argmax(axis=1)
    winner[counts.max(axis=1) == 0] = MISSING
    return winner


def mmv_per_query(retrieved: Any, query: Any, k: int) -> np.ndarray:
    """1.0 where the top-k majority vote equals the query's class (mMV@K), else 0.0.

    Labels may be any hashable values; `None` in `retrieved` marks an empty slot.
    """
    _hits(retrieved, query, k)  # shape checks
    r = np.asarray(retrieved)
    q = np.asarray(query)
    if np.issubdtype(r.dtype, np.integer) and np.issubdtype(q.dtype, np.integer):
        r_codes, q_codes = r.astype(np.int64), q.astype(np.int64)
        if (q_codes < 0).any():
            raise ValueError("integer query labels must be >= 0 (negative codes mean 'no result')")
    else:
        r_codes, q_codes = encode_labels(r, q)
    return (majority_vote(r_codes, k) == q_codes).astype(np.float64)


def ap_per_query(retrieved: Any, query: Any, k: int, n_relevant: Any) -> np.ndarray:
    """AP@K per query, normalised by ``min(k, n_relevant)`` (0 where ``n_relevant == 0``).

    Args:
        n_relevant: int [n], how many items of the query's class the query could retrieve.
    """
    hits = _hits(retrieved, query, k).astype(np.float64)
    rel = np.asarray(n_relevant)
    if rel.shape != (hits.shape[0],):
        raise ValueError(f"n_relevant must have shape ({hits.shape[0]},), got {rel.shape}")
    if (rel < 0).any():
        raise ValueError("n_relevant must be >= 0")
    found = hits.sum(axis=1)
    if (found > rel).any():
        bad = int(np.flatnonzero(found > rel)[0])
        raise ValueError(
            f"query {bad} retrieved {int(found[bad])} relevant items but n_relevant says "
            f"{int(rel[bad])}; n_relevant must count every retrievable item of the query's class"
        )
    precision_at_j = np.cumsum(hits, axis=1) / np.arange(1, k + 1)[None, :]
    norm = np.minimum(k, rel).astype(np.float64)
    summed = (precision_at_j * hits).sum(axis=1)
    return np.divide(summed, norm, out=np.zeros_like(summed), where=norm > 0)


def ha_at_k(retrieved: Any, query: Any, k: int) -> float:
    """HA@K: fraction of queries whose top-k results all share the query's class.

    Example:
        >>> ha_at_k([["a", "a"], ["b", "a"]], ["a", "b"], k=2)
        0.5
    """
    return float(ha_per_query(retrieved, query, k).mean())


def recall_at_k(retrieved: Any, query: Any, k: int) -> float:
    """Recall@K (acc@K): fraction of queries with at least one top-k result of their class.

    Example:
        >>> recall_at_k([["b", "a"], ["a", "a"]], ["a", "b"], k=2)
        0.5
    """
    return float(recall_per_query(retrieved, query, k).mean())


def mmv_at_k(retrieved: Any, query: Any, k: int) -> float:
    """mMV@K: fraction of queries whose top-k majority vote is their class (see module doc).

    Example:
        >>> mmv_at_k([["b", "a", "a"], ["a", "b", "c"]], ["a", "b"], k=3)
        0.5
    """
    return float(mmv_per_query(retrieved, query, k).mean())


def map_at_k(retrieved: Any, query: Any, k: int, n_relevant: Any) -> float:
    """mAP@K with AP normalised by ``min(k, n_relevant)`` (see module doc for why).

    Example:
        >>> map_at_k([["a", "b"]], ["a"], k=2, n_relevant=[1])
        1.0
    """
    return float(ap_per_query(retrieved, query, k, n_relevant).mean())


PER_QUERY_METRICS = {
    "ha": ha_per_query,
    "recall": recall_per_query,
    "mmv": mmv_per_query,
}
"""Per-query metrics that need only labels; ``map`` also needs `n_relevant`."""
