"""Leave-one-out evaluation on synthetic embeddings equals the brute-force pipeline."""

from __future__ import annotations

import numpy as np
import pytest

from histovl.metrics import bootstrap_cis
from histovl.retrieval.evaluation import (
    FIXED_METRICS,
    leave_one_out,
    metric_ks,
    relevant_counts,
    retrieval_metrics,
)
from tests.unit.retrieval.brute_force import (
    brute_force_metrics,
    brute_force_n_relevant,
    brute_force_topk,
    tied_unit_vectors,
)


def _clustered(n: int, d: int, n_classes: int, seed: int, noise: float = 1.2):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_classes, d))
    labels = rng.integers(0, n_classes, size=n)
    x = centres[labels] + noise * rng.standard_normal((n, d))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return x, [f"class{c}" for c in labels]


def _check_against_brute_force(x, labels, groups, exclude_same_group: bool) -> None:
    n = len(labels)
    paths = [f"img{i}.png" for i in range(n)]
    loo = leave_one_out(x, paths, labels, groups, k=10, exclude_same_group=exclude_same_group, batch_size=37)
    qgroups = groups if exclude_same_group else None
    top = brute_force_topk(x, x, 10, exclude_ids=list(range(n)), db_groups=groups, query_groups=qgroups)
    assert loo.result.ids.tolist() == [[j for j, _ in r] + [-1] * (10 - len(r)) for r in top]
    n_rel = brute_force_n_relevant(labels, labels, exclude_ids=list(range(n)), db_groups=groups, query_groups=qgroups)
    assert loo.n_relevant.tolist() == n_rel
    retrieved = [[labels[i] if i >= 0 else None for i in row] for row in loo.result.ids.tolist()]
    got = retrieval_metrics(retrieved, labels, loo.n_relevant, ks=[1, 5, 10], n_boot=0)
    for k in (1, 5, 10):
        ref = brute_force_metrics(top, labels, labels, k, n_rel)
        for family, value in ref.items():
            assert got[f"{family}@{k}"] == pytest.approx(value, abs=1e-12), f"{family}@{k}"


@pytest.mark.parametrize("exclude_same_group", [False, True])
def test_leave_one_out_metrics_equal_brute_force_on_random_embeddings(exclude_same_group: bool) -> None:
    x, labels = _clustered(240, 24, 4, seed=0)
    groups = [f"patient{i % 30}" for i in range(240)]
    _check_against_brute_force(x, labels, groups, exclude_same_group)


@pytest.mark.parametrize("seed", [0, 1])
def test_leave_one_out_metrics_equal_brute_force_with_exact_ties(seed: int) -> None:
    x = tied_unit_vectors(200, 6, seed)
    rng = np.random.default_rng(seed)
    labels = [f"c{v}" for v in rng.integers(0, 3, size=200)]
    groups = [f"g{v}" if v < 40 else None for v in rng.integers(0, 50, size=200)]  # some ungrouped
    _check_against_brute_force(x, labels, groups, exclude_same_group=True)


def test_relevant_counts_by_hand() -> None:
    labels = ["a", "a", "a", "b", "b"]
    groups = ["p1", "p1", "p2", "p2", None]
    assert relevant_counts(labels, groups, exclude_same_group=False).tolist() == [2, 2, 2, 1, 1]
    assert relevant_counts(labels, groups, exclude_same_group=True).tolist() == [1, 1, 2, 1, 1]


def test_fixed_keys_present_and_cis_bracket_the_estimate() -> None:
    x, labels = _clustered(150, 16, 3, seed=2)
    loo = leave_one_out(x, [str(i) for i in range(150)], labels, k=10)
    retrieved = [[labels[i] for i in row] for row in loo.result.ids.tolist()]
    m = retrieval_metrics(retrieved, labels, loo.n_relevant, ks=metric_ks([5, 10]), n_boot=200, seed=0)
    assert m["n"] == 150
    for key in FIXED_METRICS:
        lo, hi = m["ci95"][key]
        assert 0.0 <= lo <= m[key] <= hi <= 1.0


def test_matrix_bootstrap_equals_the_shared_bootstrap_helper() -> None:
    x, labels = _clustered(90, 16, 3, seed=3)
    groups = [f"p{i % 20}" for i in range(90)]
    loo = leave_one_out(x, [str(i) for i in range(90)], labels, groups, k=10)
    retrieved = np.array([[labels[i] for i in row] for row in loo.result.ids.tolist()], dtype=object)
    ours = retrieval_metrics(retrieved, labels, loo.n_relevant, ks=[5, 10], groups=groups, n_boot=100, seed=7)

    def all_metrics(r, q, rel):
        return {k: v for k, v in retrieval_metrics(r, list(q), rel, ks=[5, 10], n_boot=0).items() if "@" in k}

    ref = bootstrap_cis(all_metrics, retrieved, np.array(labels, dtype=object), loo.n_relevant,
                        groups=groups, n_boot=100, seed=7)
    for key in ("ha@5", "recall@5", "mmv@5", "map@10"):
        np.testing.assert_allclose(ours["ci95"][key], ref[key].as_list(), atol=1e-12)


def test_clusters_score_better_than_noise() -> None:
    x, labels = _clustered(200, 32, 3, seed=4, noise=0.3)
    rng = np.random.default_rng(0)
    shuffled = list(rng.permutation(labels))
    good = leave_one_out(x, [str(i) for i in range(200)], labels, k=10)
    bad = leave_one_out(x, [str(i) for i in range(200)], shuffled, k=10)
    mg = retrieval_metrics([[labels[i] for i in r] for r in good.result.ids.tolist()], labels, good.n_relevant, n_boot=0)
    mb = retrieval_metrics([[shuffled[i] for i in r] for r in bad.result.ids.tolist()], shuffled, bad.n_relevant, n_boot=0)
    assert mg["ha@5"] > 0.9 > 0.2 > mb["ha@5"]


def test_unlabelled_or_empty_data_is_rejected() -> None:
    x = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="one label per image"):
        leave_one_out(x, ["a", "b", "c"], ["x", None, "y"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="empty"):
        leave_one_out(np.zeros((0, 3), np.float32), [], [])
