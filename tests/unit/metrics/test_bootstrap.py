"""Bootstrap: resampling, percentile intervals, groups, skipped resamples, the vectorised path."""

from __future__ import annotations

import time

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

from histovl.metrics import (
    bootstrap_ci,
    bootstrap_cis,
    classification_metrics,
    percentile_interval,
    resample_counts,
)
from histovl.metrics._weighted import (
    auroc_ovr_from_weights,
    confusion_from_weights,
    metrics_from_confusion,
)
from histovl.metrics.classification import classification_replicates


def _data(
    seed: int, n: int, n_classes: int, *, ties: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, size=n)
    logits = rng.normal(size=(n, n_classes))
    logits[np.arange(n), y] += 1.0
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    return y, (np.round(p, 1) if ties else p)


def _sklearn_metrics(n_classes: int):
    labels = list(range(n_classes))

    def fn(y: np.ndarray, s: np.ndarray) -> dict[str, float]:
        pred = s.argmax(axis=1)
        aucs = [roc_auc_score(y == c, s[:, c]) for c in labels if 0 < (y == c).sum() < len(y)]
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            balanced = balanced_accuracy_score(y, pred)
        return {
            "accuracy": accuracy_score(y, pred),
            "balanced_accuracy": balanced,
            "f1_macro": f1_score(y, pred, labels=labels, average="macro", zero_division=np.nan),
            "f1_weighted": f1_score(
                y, pred, labels=labels, average="weighted", zero_division=np.nan
            ),
            "auroc_macro": float(np.mean(aucs)) if aucs else float("nan"),
        }

    return fn


def test_resample_counts_ungrouped_and_deterministic() -> None:
    a = np.concatenate(list(resample_counts(50, n_boot=300, seed=7, chunk=64)))
    b = np.concatenate(list(resample_counts(50, n_boot=300, seed=7, chunk=64)))
    c = np.concatenate(list(resample_counts(50, n_boot=300, seed=8, chunk=64)))
    assert a.shape == (300, 50)
    assert (a.sum(axis=1) == 50).all()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # each item is drawn about once per resample on average
    assert abs(a.mean() - 1.0) < 0.05


def test_resample_counts_grouped_keeps_groups_whole() -> None:
    groups = np.array(["p1", "p1", "p1", "p2", "p3", "p3", None, None], dtype=object)
    counts = np.concatenate(list(resample_counts(8, groups=groups, n_boot=200, seed=0)))
    np.testing.assert_array_equal(counts[:, 0], counts[:, 1])
    np.testing.assert_array_equal(counts[:, 0], counts[:, 2])
    np.testing.assert_array_equal(counts[:, 4], counts[:, 5])
    # missing group ids are singletons, not one shared "None" group
    assert (counts[:, 6] != counts[:, 7]).any()
    # 5 units drawn per resample (p1, p2, p3 and two singletons)
    unit_draws = counts[:, 0] + counts[:, 3] + counts[:, 4] + counts[:, 6] + counts[:, 7]
    assert (unit_draws == 5).all()


@pytest.mark.parametrize(("seed", "ties"), [(0, False), (1, True), (2, True)])
def test_vectorised_metrics_equal_sklearn_on_expanded_resamples(seed: int, ties: bool) -> None:
    y, s = _data(seed, n=80, n_classes=4, ties=ties)
    pred = s.argmax(axis=1)
    weights = np.concatenate(list(resample_counts(len(y), n_boot=12, seed=seed)))
    cm_metrics = metrics_from_confusion(confusion_from_weights(weights, y, pred, 4))
    aucs = auroc_ovr_from_weights(weights, y, s)
    reference = _sklearn_metrics(4)
    for b, w in enumerate(weights):
        idx = np.repeat(np.arange(len(y)), w)
        ref = reference(y[idx], s[idx])
        for name in ("accuracy", "balanced_accuracy", "f1_macro", "f1_weighted"):
            assert cm_metrics[name][b] == pytest.approx(ref[name], abs=1e-12), name
        for c in range(4):
            expected = roc_auc_score(y[idx] == c, s[idx, c])
            assert aucs[b, c] == pytest.approx(expected, abs=1e-12)
            # and equal to sklearn's own sample-weight path
            assert aucs[b, c] == pytest.approx(
                roc_auc_score(y == c, s[:, c], sample_weight=w), abs=1e-12
            )


def test_vectorised_path_equals_generic_bootstrap() -> None:
    y, s = _data(3, n=60, n_classes=3, ties=True)
    groups = [f"g{i % 11}" for i in range(60)]
    fast = classification_replicates(y, s, s.argmax(axis=1), 3, groups=groups, n_boot=25, seed=5)
    from histovl.metrics.bootstrap import bootstrap_replicates

    slow = bootstrap_replicates(_sklearn_metrics(3), y, s, groups=groups, n_boot=25, seed=5)
    for name, values in slow.items():
        np.testing.assert_allclose(fast[name], values, atol=1e-12, equal_nan=True, err_msg=name)


def test_interval_contains_point_estimate_and_is_deterministic() -> None:
    y, s = _data(4, n=400, n_classes=3)
    m1 = classification_metrics(y, s, ["a", "b", "c"], n_boot=300, seed=11)
    m2 = classification_metrics(y, s, ["a", "b", "c"], n_boot=300, seed=11)
    m3 = classification_metrics(y, s, ["a", "b", "c"], n_boot=300, seed=12)
    assert m1 == m2
    assert m1["ci95"] != m3["ci95"]
    for name, (lo, hi) in m1["ci95"].items():
        assert lo <= m1[name] <= hi, name
        assert hi - lo < 0.2


def test_grouped_bootstrap_resamples_groups() -> None:
    # One patient with 50 correct tiles, 50 patients with one wrong tile each: accuracy 0.5.
    y = np.zeros(100, dtype=int)
    pred = np.r_[np.zeros(50, dtype=int), np.ones(50, dtype=int)]
    groups = ["big"] * 50 + [f"p{i}" for i in range(50)]

    def accuracy(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.mean(a == b))

    plain = bootstrap_ci(accuracy, y, pred, n_boot=500, seed=0)
    grouped = bootstrap_ci(accuracy, y, pred, groups=groups, n_boot=500, seed=0)
    assert (
        plain.low is not None
        and grouped.low is not None
        and plain.high is not None
        and grouped.high is not None
    )
    assert 0.35 < plain.low < 0.5 < plain.high < 0.65
    # whole-patient resampling: the big patient is absent in ~1/e of resamples (accuracy 0)
    assert grouped.low == pytest.approx(0.0)
    assert (grouped.high - grouped.low) > 3 * (plain.high - plain.low)


def test_undefined_resamples_are_skipped_and_counted() -> None:
    y = np.array([1, 0, 0, 0, 0, 0])
    s = np.array([0.9, 0.1, 0.2, 0.3, 0.4, 0.5])

    def auc(yy: np.ndarray, ss: np.ndarray) -> float:
        return float("nan") if len(np.unique(yy)) < 2 else float(roc_auc_score(yy, ss))

    iv = bootstrap_ci(auc, y, s, n_boot=200, seed=0)
    assert iv.n_skipped > 0
    assert iv.n_valid + iv.n_skipped == 200
    assert iv.low == 1.0 and iv.high == 1.0


def test_bootstrap_cis_multiple_metrics_share_resamples() -> None:
    y, s = _data(5, n=50, n_classes=2)
    pred = s.argmax(axis=1)
    out = bootstrap_cis(
        lambda a, b: {"acc": accuracy_score(a, b), "err": 1 - accuracy_score(a, b)},
        y,
        pred,
        n_boot=100,
        seed=1,
    )
    assert out["acc"].low == pytest.approx(1 - out["err"].high)
    assert out["acc"].high == pytest.approx(1 - out["err"].low)


def test_percentile_interval_checks_level() -> None:
    with pytest.raises(ValueError, match="ci must be"):
        percentile_interval([0.1, 0.2], 1.5)
    assert percentile_interval([np.nan, np.nan]).as_list() == [None, None]


def test_bootstrap_rejects_mismatched_arrays() -> None:
    with pytest.raises(ValueError, match="same number of rows"):
        bootstrap_ci(accuracy_score, [0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="empty"):
        bootstrap_ci(accuracy_score, np.array([]), np.array([]))


def test_thousand_resamples_of_five_thousand_items_are_fast() -> None:
    # PERFORMANCE: 1,000 resamples x 5,000 items x 9 classes took ~0.8 s on a shared 2-core box
    # (the per-resample sklearn loop it replaces takes ~100x longer). Loose bound for CI noise.
    y, s = _data(6, n=5000, n_classes=9)
    start = time.perf_counter()
    classification_metrics(y, s, [f"c{i}" for i in range(9)], n_boot=1000, seed=0)
    assert time.perf_counter() - start < 10.0


def test_missing_group_ids_from_a_csv_are_singletons() -> None:
    from histovl.metrics.bootstrap import group_codes

    codes = group_codes(["p1", float("nan"), "p1", None, "", "p2"], 6)
    assert codes is not None
    assert codes[0] == codes[2]
    assert len({int(codes[1]), int(codes[3]), int(codes[4]), int(codes[0]), int(codes[5])}) == 5


def test_lower_level_gives_a_narrower_interval() -> None:
    y, s = _data(8, n=200, n_classes=2)
    pred = s.argmax(axis=1)

    def accuracy(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.mean(a == b))

    wide = bootstrap_ci(accuracy, y, pred, n_boot=400, seed=0, ci=0.95)
    narrow = bootstrap_ci(accuracy, y, pred, n_boot=400, seed=0, ci=0.8)
    assert (
        wide.low is not None
        and wide.high is not None
        and narrow.low is not None
        and narrow.high is not None
    )
    assert wide.low <= narrow.low <= narrow.high <= wide.high
    assert narrow.level == 0.8


def test_resamples_do_not_depend_on_chunk_size() -> None:
    small = np.concatenate(list(resample_counts(300, n_boot=100, seed=3, chunk=7)))
    large = np.concatenate(list(resample_counts(300, n_boot=100, seed=3, chunk=128)))
    np.testing.assert_array_equal(small, large)
    groups = [f"g{i % 13}" for i in range(300)]
    small = np.concatenate(list(resample_counts(300, groups=groups, n_boot=100, seed=3, chunk=9)))
    large = np.concatenate(list(resample_counts(300, groups=groups, n_boot=100, seed=3)))
    np.testing.assert_array_equal(small, large)
