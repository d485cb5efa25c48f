"""Support pools and draws: no support image ever shares a path, group or near-duplicate unit with
the query set (checked over many random data sets and seeds; hypothesis is not installed here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from histovl.data import ImageRecord
from histovl.errors import HistovlError
from histovl.heads.fewshot_run import FewshotConfig, parse_shots
from histovl.heads.fewshot_split import (
    check_shots,
    draw_orders,
    leakage_units,
    split_pool,
    support_indices,
)

CLASSES = ["a", "b", "c"]


def random_items(rng: np.random.Generator, n: int):
    """Records with random labels and groups, plus random near-duplicate links and repeated paths."""
    labels = np.array([CLASSES[i] for i in rng.integers(0, 3, size=n)], dtype=object)
    groups = [f"p{g}" if rng.random() < 0.8 else None for g in rng.integers(0, max(2, n // 4), size=n)]
    paths = [f"/d/img{i if rng.random() > 0.05 else int(rng.integers(0, n))}.png" for i in range(n)]
    dup = rng.integers(0, max(2, n // 2), size=n)
    records = [ImageRecord(path=Path(p), label=str(lab), group=g) for p, lab, g in zip(paths, labels, groups, strict=True)]
    links = [[f"path:{r.path}"] + ([f"group:{r.group}"] if r.group else []) + [f"dup:{d}"] for r, d in zip(records, dup, strict=True)]
    return records, labels, links


def shared_keys(links, a, b):
    keys_a = {k for i in a for k in links[i]}
    return keys_a & {k for i in b for k in links[i]}


def test_leakage_units_join_chains():
    units = leakage_units([["x"], ["x", "y"], ["y"], ["z"], ["w", "z"], ["v"]])
    assert units[0] == units[1] == units[2] and units[3] == units[4] and len(set(units.tolist())) == 3


@pytest.mark.parametrize("trial", range(60))
def test_no_support_query_overlap_by_id_or_group(trial):
    rng = np.random.default_rng(trial)
    n = int(rng.integers(30, 120))
    records, labels, links = random_items(rng, n)
    units = leakage_units(links)
    separate = rng.random() < 0.5
    is_query = rng.random(n) < 0.3 if separate else None
    if separate and (is_query.all() or not is_query.any()):
        return
    try:
        split = split_pool(records, units, is_query, query_fraction=0.3, seed=trial)
    except ValueError:  # fewer than two units: nothing can be split
        assert len(set(units.tolist())) < 2
        return
    assert not shared_keys(links, split.pool, split.query)
    assert not set(split.pool.tolist()) & set(split.query.tolist())
    if separate:
        assert set(split.query.tolist()) == set(np.flatnonzero(is_query).tolist())
    for seed in range(3):
        orders = draw_orders(split.pool, labels, units, CLASSES, seed)
        for shots in (1, 2, 4, "all"):
            idx = support_indices(orders, shots, split.pool)
            assert set(idx.tolist()) <= set(split.pool.tolist())
            assert not shared_keys(links, idx, split.query)


def test_draws_are_nested_per_class_and_prefer_distinct_units():
    rng = np.random.default_rng(0)
    records, labels, links = random_items(rng, 200)
    units = leakage_units(links)
    pool = np.arange(200)
    orders = draw_orders(pool, labels, units, CLASSES, seed=4)
    again = draw_orders(pool, labels, units, CLASSES, seed=4)
    other = draw_orders(pool, labels, units, CLASSES, seed=5)
    for cls in CLASSES:
        order = orders[cls]
        np.testing.assert_array_equal(order, again[cls])  # reproducible
        assert sorted(order.tolist()) == sorted(np.flatnonzero(labels == cls).tolist())  # every image once
        n_units = len(set(units[order].tolist()))
        assert len(set(units[order[:n_units]].tolist())) == n_units  # one image per unit first
    assert any(not np.array_equal(orders[c], other[c]) for c in CLASSES)
    two = support_indices(orders, 2, pool)
    four = support_indices(orders, 4, pool)
    assert set(two.tolist()) <= set(four.tolist())
    assert len(two) == 6 and sorted(labels[two].tolist()) == ["a", "a", "b", "b", "c", "c"]


def test_check_shots_names_the_class_and_its_count():
    with pytest.raises(HistovlError) as err:
        check_shots({"a": 9, "b": 3}, (1, 4, "all"), "in the support pool")
    message = str(err.value)
    assert "'b'" in message and "3 image(s)" in message and "--shots 4" in message and "\n" not in message
    check_shots({"a": 9, "b": 3}, ("all",), "in the support pool")  # 'all' never fails
    check_shots({"a": 9, "b": 3}, (1, 2, 3), "in the support pool")


def test_parse_shots_and_config():
    assert parse_shots("16, 1,2,all,4") == (1, 2, 4, 16, "all")
    assert parse_shots([8, "all"]) == (8, "all")
    for bad in ("0", "1.5", "x", ""):
        with pytest.raises(ValueError, match="--shots"):
            parse_shots(bad)
    assert FewshotConfig(shots="1,all").shots == (1, "all")
    with pytest.raises(ValueError, match="unknown few-shot method"):
        FewshotConfig(methods=("linear", "svm"))
    with pytest.raises(ValueError, match="seeds"):
        FewshotConfig(seeds=0)


@pytest.mark.parametrize("seed", range(5))
def test_point_metrics_equal_classification_metrics(seed):
    from histovl.heads.fewshot_run import FEWSHOT_METRICS, point_metrics
    from histovl.metrics import classification_metrics

    rng = np.random.default_rng(seed)
    n_classes = int(rng.integers(2, 5))
    y = rng.integers(0, n_classes - (seed == 3), size=int(rng.integers(5, 60)))  # seed 3: a class absent
    probs = rng.dirichlet(np.ones(n_classes), size=len(y))
    expected = classification_metrics(y, probs, [str(c) for c in range(n_classes)], n_boot=0)
    got = point_metrics(y, probs)
    for k in FEWSHOT_METRICS:
        assert (got[k] is None) == (expected[k] is None), k
        if got[k] is not None:
            assert got[k] == pytest.approx(expected[k], abs=1e-12), k


def test_near_duplicate_groups_are_cached_by_content(tmp_path, monkeypatch):
    from PIL import Image, ImageOps

    import histovl.data
    from histovl.heads.fewshot_run import near_duplicate_ids
    from histovl.options import RunOptions

    rng = np.random.default_rng(0)
    paths = []
    for i in range(4):
        arr = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
        arr[16:48, 20:30] = 255  # an asymmetric bar, so the mirror is a copy, not the same image
        Image.fromarray(arr).save(tmp_path / f"t{i}.png")
        ImageOps.mirror(Image.fromarray(arr)).save(tmp_path / f"t{i}_mirror.png")
        paths += [str(tmp_path / f"t{i}.png"), str(tmp_path / f"t{i}_mirror.png")]
    opts = RunOptions(cache=tmp_path / "cache", workers=0)
    first = near_duplicate_ids(paths, opts)
    assert all(first[2 * i] == first[2 * i + 1] for i in range(4))  # each mirror with its original
    assert len(list((tmp_path / "cache" / "near-duplicates").glob("*.json"))) == 1

    def no_recompute(*args, **kwargs):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(histovl.data, "near_duplicate_groups", no_recompute)
    again = near_duplicate_ids(list(reversed(paths)), opts)
    assert list(reversed(again)) == first
    with pytest.raises(AssertionError, match="recomputed"):
        near_duplicate_ids(paths, opts.replace(use_cache=False))
