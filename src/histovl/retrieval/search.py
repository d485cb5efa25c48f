"""Batched top-K search that excludes the query itself and, optionally, its whole group.

FAISS cannot exclude a different set per query in one batched call, and single-query calls take
its slow path (docs/performance.md: 1 query over 1e6 vectors costs 150 ms; 1,000 queries 6 s). So each
batch asks FAISS for ``K + extra + 1`` results, where ``extra`` is the most items any query of
the batch may lose (its group's size, plus itself), then filters. At most ``extra`` candidates
of a query are removed, so at least K + 1 remain: for an exact index the result equals brute
force.

Ties in similarity are ordered by ascending index id (a stable order), so results never depend
on FAISS's internal heap order. A tie can straddle the cut-off (an item with the same score as
the K-th kept one but a smaller id that FAISS did not return): the spare candidate reveals it,
because it then scores the same as the K-th kept one. Such rows (rare outside exact duplicates)
are searched again with twice as many candidates until the cut-off is clear or the whole index
is covered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

DEFAULT_BATCH_SIZE = 2048
"""Queries per FAISS call: well above the ~20 where FAISS switches to its BLAS path."""


class SearchableIndex(Protocol):
    """What the search needs from an index (any `faiss.Index` satisfies it)."""

    ntotal: int

    def search(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class SearchResult:
    """Top-K results per query, best first.

    Attributes:
        ids: int64 [n, K] positions in the index; -1 where fewer than K candidates exist.
        scores: float32 [n, K] inner products (cosine similarity for L2-normalised vectors);
            -inf where ``ids == -1``.
    """

    ids: np.ndarray
    scores: np.ndarray


def group_codes(groups: Any) -> tuple[np.ndarray, dict[object, int]]:
    """Integer code per item (-1 for a missing group) and the code of each group value."""
    vocab: dict[object, int] = {}
    codes = np.array(
        [-1 if g is None or (isinstance(g, float) and np.isnan(g)) else vocab.setdefault(g, len(vocab)) for g in groups],
        dtype=np.int64,
    )
    return codes, vocab


def search_excluding(
    index: SearchableIndex,
    queries: np.ndarray,
    k: int,
    *,
    exclude_ids: np.ndarray | None = None,
    db_groups: np.ndarray | None = None,
    query_groups: np.ndarray | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> SearchResult:
    """Top-k search with per-query exclusions, in batches.

    Args:
        index: a FAISS index (or anything with ``search`` and ``ntotal``).
        queries: float32 [n, D] query vectors.
        k: results per query.
        exclude_ids: int [n]; the index id each query must not return (itself), -1 for none.
        db_groups: int [ntotal] group code of each index item (-1: no group). Needed with
            `query_groups`.
        query_groups: int [n]; every index item with this group code is excluded for that
            query, -1 for none.
        batch_size: queries per FAISS call.

    Returns:
        `SearchResult` with ties ordered by ascending id.

    Example:
        >>> import faiss, numpy as np
        >>> x = np.eye(3, dtype="float32"); ix = faiss.IndexFlatIP(3); ix.add(x)
        >>> search_excluding(ix, x, 1, exclude_ids=np.arange(3)).ids.ravel().tolist()
        [1, 0, 0]
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if q.ndim != 2:
        raise ValueError(f"queries must be a 2-D array [n, D], got shape {q.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n, ntotal = q.shape[0], int(index.ntotal)
    excl = np.full(n, -1, np.int64) if exclude_ids is None else np.asarray(exclude_ids, np.int64)
    qgroups = np.full(n, -1, np.int64) if query_groups is None else np.asarray(query_groups, np.int64)
    if excl.shape != (n,) or qgroups.shape != (n,):
        raise ValueError("exclude_ids and query_groups need one entry per query")
    if (qgroups >= 0).any() and (db_groups is None or len(db_groups) != ntotal):
        raise ValueError("query_groups needs db_groups with one code per index item")
    dbg = np.full(ntotal, -1, np.int64) if db_groups is None else np.asarray(db_groups, np.int64)
    if (excl >= ntotal).any():
        raise ValueError(f"exclude_ids must be index ids below {ntotal} (or -1 for none)")
    ids = np.full((n, k), -1, np.int64)
    scores = np.full((n, k), -np.inf, np.float32)
    if ntotal == 0 or n == 0:
        return SearchResult(ids, scores)
    extra = _extra_per_query(excl, qgroups, dbg)
    for start in range(0, n, max(1, batch_size)):
        rows = np.arange(start, min(n, start + batch_size))
        # One spare candidate: unless it ties with the k-th kept one, the cut-off is clear.
        kk = min(ntotal, k + int(extra[rows].max()) + 1)
        while rows.size:
            distances, labels = index.search(q[rows], kk)
            b_ids, b_scores, ambiguous = _filter_batch(
                distances, labels, k, excl[rows], qgroups[rows], dbg, kk < ntotal
            )
            done = ~ambiguous
            ids[rows[done]], scores[rows[done]] = b_ids[done], b_scores[done]
            rows = rows[ambiguous]
            kk = min(ntotal, 2 * kk)
    return SearchResult(ids, scores)


def _extra_per_query(excl: np.ndarray, qgroups: np.ndarray, dbg: np.ndarray) -> np.ndarray:
    """How many index items each query may have to skip: its group's size, plus itself."""
    extra = np.zeros(excl.shape[0], np.int64)
    if (qgroups >= 0).any():
        n_codes = int(max(dbg.max(initial=-1), qgroups.max())) + 1
        sizes = np.bincount(dbg[dbg >= 0], minlength=n_codes)
        has = qgroups >= 0
        extra[has] = sizes[qgroups[has]]
    self_outside_group = (excl >= 0) & ((qgroups < 0) | (dbg[np.clip(excl, 0, None)] != qgroups))
    return extra + self_outside_group.astype(np.int64)


def _filter_batch(
    distances: np.ndarray,
    labels: np.ndarray,
    k: int,
    excl: np.ndarray,
    qgroups: np.ndarray,
    dbg: np.ndarray,
    truncated: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort candidates by (score desc, id asc), drop exclusions, keep k; flag unclear rows."""
    m, kk = labels.shape
    valid = labels >= 0
    d = np.where(valid, distances, -np.inf).astype(np.float32)
    order = np.lexsort((np.where(valid, labels, np.iinfo(np.int64).max), -d), axis=-1)
    lab = np.take_along_axis(labels, order, axis=1)
    dist = np.take_along_axis(d, order, axis=1)
    keep = lab >= 0
    keep &= lab != excl[:, None]
    in_group = (dbg[np.clip(lab, 0, None)] == qgroups[:, None]) & (qgroups[:, None] >= 0)
    keep &= ~in_group
    rank = np.cumsum(keep, axis=1) - 1
    take = keep & (rank < k)
    out_ids = np.full((m, k), -1, np.int64)
    out_scores = np.full((m, k), -np.inf, np.float32)
    r, c = np.nonzero(take)
    out_ids[r, rank[r, c]] = lab[r, c]
    out_scores[r, rank[r, c]] = dist[r, c]

    ambiguous = np.zeros(m, bool)
    if truncated:
        n_kept = take.sum(axis=1)
        returned_full = valid.all(axis=1)
        lowest_returned = dist[:, -1]
        boundary = out_scores[:, k - 1]
        # Unreturned items score <= lowest_returned; one with an equal score and a smaller id
        # could belong in the top k, and a row short of k results may have more to find.
        ambiguous = returned_full & ((n_kept < k) | (boundary <= lowest_returned))
    return out_ids, out_scores, ambiguous
