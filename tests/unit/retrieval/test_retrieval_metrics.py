"""Retrieval metrics against brute-force loops, hand-worked examples and bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

from histovl.retrieval.metrics import (
    ap_per_query,
    encode_labels,
    ha_at_k,
    majority_vote,
    map_at_k,
    mmv_at_k,
    recall_at_k,
)
from tests.unit.retrieval.brute_force import brute_force_metrics


def _random_case(seed: int, n: int = 200, k: int = 10, n_classes: int = 3):
    rng = np.random.default_rng(seed)
    query = rng.integers(0, n_classes, size=n)
    retrieved = rng.integers(0, n_classes, size=(n, k))
    # Skewed rows make HA@K and majority ties actually happen.
    retrieved[: n // 4] = query[: n // 4, None]
    n_relevant = (retrieved == query[:, None]).sum(axis=1) + rng.integers(0, 4, size=n)
    return retrieved, query, n_relevant


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 2, 5, 10])
def test_metrics_equal_brute_force_on_random_labels(seed: int, k: int) -> None:
    retrieved, query, n_relevant = _random_case(seed)
    top = [[(j, 0.0) for j in range(retrieved.shape[1])] for _ in range(len(query))]
    ref = {"ha": 0.0, "recall": 0.0, "mmv": 0.0, "map": 0.0}
    for i in range(len(query)):
        one = brute_force_metrics([top[i]], list(retrieved[i]), [query[i]], k, [int(n_relevant[i])])
        for key in ref:
            ref[key] += one[key] / len(query)
    assert ha_at_k(retrieved, query, k) == pytest.approx(ref["ha"], abs=1e-12)
    assert recall_at_k(retrieved, query, k) == pytest.approx(ref["recall"], abs=1e-12)
    assert mmv_at_k(retrieved, query, k) == pytest.approx(ref["mmv"], abs=1e-12)
    assert map_at_k(retrieved, query, k, n_relevant) == pytest.approx(ref["map"], abs=1e-12)


def test_string_labels_give_the_same_numbers_as_codes() -> None:
    retrieved, query, n_relevant = _random_case(5, k=5)
    names = np.array(["lung_aca", "lung_n", "lung_scc"], dtype=object)
    for fn in (ha_at_k, recall_at_k, mmv_at_k):
        assert fn(names[retrieved], names[query], 5) == fn(retrieved, query, 5)
    assert map_at_k(names[retrieved], names[query], 5, n_relevant) == map_at_k(retrieved, query, 5, n_relevant)


def test_hand_worked_examples() -> None:
    retrieved = [["a", "a", "a"], ["a", "b", "a"], ["b", "b", "a"]]
    query = ["a", "a", "a"]
    assert ha_at_k(retrieved, query, 3) == pytest.approx(1 / 3)
    assert ha_at_k(retrieved, query, 1) == pytest.approx(2 / 3)
    assert recall_at_k(retrieved, query, 1) == pytest.approx(2 / 3)
    assert recall_at_k(retrieved, query, 3) == 1.0
    assert mmv_at_k(retrieved, query, 3) == pytest.approx(2 / 3)
    # AP@3 with R=3: q0 = 1; q1 = (1 + 2/3)/3; q2 = (1/3)/3.
    ap = ap_per_query(retrieved, query, 3, [3, 3, 3])
    np.testing.assert_allclose(ap, [1.0, (1 + 2 / 3) / 3, (1 / 3) / 3])


def test_majority_tie_goes_to_the_class_ranked_first_not_to_the_query() -> None:
    # 2 votes each for "b" and "a"; "b" is ranked first, so the vote is "b" for an "a" query.
    assert mmv_at_k([["b", "a", "a", "b"]], ["a"], 4) == 0.0
    assert mmv_at_k([["a", "b", "b", "a"]], ["a"], 4) == 1.0
    # Three-way tie at k=3: the first-ranked class wins.
    codes, _ = encode_labels([["c", "b", "a"]], ["a"])
    assert majority_vote(codes, 3).tolist() == [codes[0, 0]]


def test_missing_slots_never_match_and_never_vote() -> None:
    retrieved = [["a", None, None], [None, None, None]]
    query = ["a", "a"]
    assert ha_at_k(retrieved, query, 3) == 0.0  # fewer than K results: not "all K"
    assert ha_at_k(retrieved, query, 1) == 0.5
    assert recall_at_k(retrieved, query, 3) == 0.5
    assert mmv_at_k(retrieved, query, 3) == 0.5  # "a" wins the only vote; empty row has no winner


def test_map_normalises_by_min_k_and_relevant_count() -> None:
    # Only one relevant item exists and it is ranked first: a perfect ranking scores 1.
    assert map_at_k([["a", "b", "b"]], ["a"], 3, [1]) == 1.0
    # Ten relevant items exist but one was found, at rank 1: 1/3, not 1.
    assert map_at_k([["a", "b", "b"]], ["a"], 3, [10]) == pytest.approx(1 / 3)
    # No relevant item retrievable: 0 by definition, not NaN.
    assert map_at_k([["b", "b", "b"]], ["a"], 3, [0]) == 0.0


@pytest.mark.parametrize(
    ("retrieved", "query", "k", "match"),
    [
        ([["a"]], ["a"], 2, "only 1 results"),
        ([["a"]], ["a"], 0, "positive integer"),
        (np.zeros((0, 3)), np.zeros(0), 1, "no queries"),
        ([["a", "b"]], ["a", "b"], 1, "shapes"),
    ],
)
def test_bad_inputs_raise_clear_errors(retrieved, query, k, match) -> None:
    with pytest.raises(ValueError, match=match):
        ha_at_k(retrieved, query, k)


def test_map_rejects_inconsistent_relevant_counts() -> None:
    with pytest.raises(ValueError, match="n_relevant"):
        map_at_k([["a", "a"]], ["a"], 2, [1])
