"""Batched search with exclusions equals brute force, ties included."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from histovl.retrieval.search import group_codes, search_excluding
from tests.unit.retrieval.brute_force import brute_force_topk, tied_unit_vectors


def _unit(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _flat(x: np.ndarray) -> faiss.Index:
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    return index


def _compare(result, reference, *, exact_scores: bool) -> None:
    for i, ref in enumerate(reference):
        ids = [int(j) for j in result.ids[i] if j >= 0]
        assert ids == [j for j, _ in ref], f"query {i}"
        got = result.scores[i, : len(ids)]
        want = np.array([s for _, s in ref])
        if exact_scores:
            np.testing.assert_array_equal(got, want)
        else:
            np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("batch_size", [7, 1000])
@pytest.mark.parametrize("with_groups", [False, True])
def test_leave_one_out_equals_brute_force_on_random_vectors(batch_size: int, with_groups: bool) -> None:
    x = _unit(100, 16, seed=1)
    groups = [f"g{i % 23}" for i in range(100)] if with_groups else None
    codes = group_codes(groups)[0] if groups else None
    result = search_excluding(
        _flat(x), x, 10, exclude_ids=np.arange(100), db_groups=codes,
        query_groups=codes, batch_size=batch_size,
    )
    ref = brute_force_topk(x, x, 10, exclude_ids=list(range(100)), db_groups=groups, query_groups=groups)
    _compare(result, ref, exact_scores=False)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("with_groups", [False, True])
def test_exact_ties_are_ordered_by_id_like_brute_force(seed: int, with_groups: bool) -> None:
    # 5-d vectors with 4 non-zero +-1/2 entries: only 80 distinct vectors among 300, so most
    # scores are tied, including across the K + extra cut-off.
    x = tied_unit_vectors(300, 5, seed)
    groups = [f"g{i % 37}" for i in range(300)] if with_groups else None
    codes = group_codes(groups)[0] if groups else None
    result = search_excluding(
        _flat(x), x, 10, exclude_ids=np.arange(300), db_groups=codes, query_groups=codes, batch_size=64
    )
    ref = brute_force_topk(x, x, 10, exclude_ids=list(range(300)), db_groups=groups, query_groups=groups)
    _compare(result, ref, exact_scores=True)


class _ReversedTies:
    """A fake index that returns tied items in *descending* id order (FAISS makes no promise)."""

    def __init__(self, x: np.ndarray) -> None:
        self.x = x
        self.ntotal = x.shape[0]
        self.calls: list[int] = []

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        self.calls.append(k)
        sims = q @ self.x.T
        order = np.lexsort((-np.arange(self.ntotal)[None, :].repeat(len(q), 0), -sims), axis=-1)[:, :k]
        return np.take_along_axis(sims, order, 1).astype(np.float32), order.astype(np.int64)


def test_tie_across_the_cut_off_is_resolved_by_searching_wider() -> None:
    x = np.zeros((12, 2), np.float32)
    x[:, 0] = 1.0  # all identical: every score ties
    fake = _ReversedTies(x)
    result = search_excluding(fake, x[:1], 3, exclude_ids=np.array([0]))
    assert result.ids.tolist() == [[1, 2, 3]]
    assert len(fake.calls) > 1  # the first answer (ids 11, 10, 9, 8) was ambiguous


def test_fewer_candidates_than_k_pads_with_minus_one() -> None:
    x = _unit(3, 4, seed=0)
    result = search_excluding(_flat(x), x, 5, exclude_ids=np.arange(3))
    assert (result.ids[:, :2] >= 0).all() and (result.ids[:, 2:] == -1).all()
    assert np.isneginf(result.scores[:, 2:]).all()


def test_whole_group_excluded_even_when_larger_than_k() -> None:
    x = _unit(60, 8, seed=3)
    groups = ["big"] * 40 + [f"s{i}" for i in range(20)]
    codes = group_codes(groups)[0]
    result = search_excluding(_flat(x), x[:5], 5, exclude_ids=np.arange(5), db_groups=codes, query_groups=codes[:5])
    assert (result.ids >= 40).all()


def test_missing_groups_exclude_nothing_but_self() -> None:
    x = _unit(20, 8, seed=4)
    groups = [None] * 20
    codes = group_codes(groups)[0]
    result = search_excluding(_flat(x), x, 19, exclude_ids=np.arange(20), db_groups=codes, query_groups=codes)
    assert (result.ids >= 0).all()
    assert not (result.ids == np.arange(20)[:, None]).any()


def test_bad_shapes_raise() -> None:
    x = _unit(5, 4, seed=0)
    with pytest.raises(ValueError, match="one entry per query"):
        search_excluding(_flat(x), x, 2, exclude_ids=np.arange(3))
    with pytest.raises(ValueError, match="db_groups"):
        search_excluding(_flat(x), x, 2, query_groups=np.zeros(5, np.int64))


def test_untied_queries_need_one_faiss_call_per_batch() -> None:
    # Regression: without a spare candidate every leave-one-out row looked "tied at the cut-off"
    # and was searched twice, halving throughput.
    x = _unit(200, 16, seed=8)
    fake = _ReversedTies(x)
    search_excluding(fake, x, 10, exclude_ids=np.arange(200), batch_size=100)
    assert fake.calls == [12, 12]
