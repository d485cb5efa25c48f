from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from histovl.errors import UnknownNameError
from histovl.zeroshot.fusion import (
    AGGREGATORS,
    EncoderScores,
    fuse,
    many_to_many_scores,
    softmax,
    standardise,
)
from histovl.zeroshot.views import View, make_view


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


def test_aggregators_on_hand_made_bag():
    s = torch.tensor([[[0.1, 0.5], [0.3, 0.9]]])  # N=1, V=2, P=2
    assert AGGREGATORS["mean"](s).item() == pytest.approx(0.45)
    assert AGGREGATORS["max"](s).item() == pytest.approx(0.9)
    assert AGGREGATORS["topk-mean"](s).item() == pytest.approx((0.9 + 0.5 + 0.3 + 0.1) / 4)
    lse = AGGREGATORS["lse"](s).item()
    expected = 0.05 * (math.log(sum(math.exp(v / 0.05) for v in (0.1, 0.5, 0.3, 0.9))) - math.log(4))
    assert lse == pytest.approx(expected)
    assert 0.45 < lse <= 0.9


def test_many_to_many_equals_naive_loop():
    g = torch.Generator().manual_seed(0)
    views = [_unit(torch.randn(4, 8, generator=g)).numpy() for _ in range(3)]
    prompts = [_unit(torch.randn(k, 8, generator=g)) for k in (2, 5)]
    for agg in ("mean", "max"):
        got = many_to_many_scores(views, prompts, agg)
        ref = np.zeros((4, 2))
        for n in range(4):
            for c, p in enumerate(prompts):
                sims = [float(np.dot(v[n], p[j].numpy())) for v in views for j in range(len(p))]
                ref[n, c] = np.mean(sims) if agg == "mean" else np.max(sims)
        np.testing.assert_allclose(got, ref, atol=1e-6)


def test_prompt_and_view_order_do_not_matter():
    g = torch.Generator().manual_seed(1)
    views = [_unit(torch.randn(3, 8, generator=g)).numpy() for _ in range(3)]
    prompts = [_unit(torch.randn(4, 8, generator=g)) for _ in range(2)]
    for agg in AGGREGATORS:
        a = many_to_many_scores(views, prompts, agg)
        b = many_to_many_scores(views[::-1], [p.flip(0) for p in prompts], agg)
        np.testing.assert_allclose(a, b, atol=1e-6)


def _scores(seed: int, n: int = 6, c: int = 3, name: str = "m") -> EncoderScores:
    rng = np.random.default_rng(seed)
    return EncoderScores(name, rng.normal(size=(n, c)) * 5, rng.normal(size=(n, c)) * 5, identity=name)


@pytest.mark.parametrize("rule", ["mean-prob", "mean-logit-z", "m2m"])
def test_duplicated_encoder_changes_nothing(rule):
    a, b = _scores(0, name="a"), _scores(1, name="b")
    with pytest.warns(UserWarning, match="counted once"):
        dup = fuse(rule, [a, b, b])
    np.testing.assert_allclose(dup, fuse(rule, [a, b]))


@pytest.mark.parametrize("rule", ["mean-prob", "mean-logit-z", "m2m"])
def test_class_order_permutes_output(rule):
    a, b = _scores(0, name="a"), _scores(1, name="b")
    perm = [2, 0, 1]
    pa = EncoderScores("a", a.logits[:, perm], a.m2m_logits[:, perm], "a")
    pb = EncoderScores("b", b.logits[:, perm], b.m2m_logits[:, perm], "b")
    np.testing.assert_allclose(fuse(rule, [pa, pb]), fuse(rule, [a, b])[:, perm], atol=1e-12)


def test_mean_prob_by_hand():
    a = EncoderScores("a", np.log(np.array([[0.8, 0.2]])), identity="a")
    b = EncoderScores("b", np.log(np.array([[0.4, 0.6]])), identity="b")
    np.testing.assert_allclose(fuse("mean-prob", [a, b]), [[0.6, 0.4]])
    np.testing.assert_allclose(fuse("mean-prob", [a, b], [3, 1]), [[0.7, 0.3]])


def test_single_encoder_mean_prob_is_its_softmax():
    a = _scores(3)
    np.testing.assert_allclose(fuse("mean-prob", [a]), softmax(a.logits))


def test_standardise_keeps_binary_information():
    logits = np.array([[2.0, 1.0], [5.0, 0.0]])
    z = standardise(logits)
    assert z[1, 0] - z[1, 1] > z[0, 0] - z[0, 1]  # margins stay ordered (per-row z-scores would tie)


def test_unknown_fusion_and_view_suggest():
    with pytest.raises(UnknownNameError, match="mean-prob"):
        fuse("mean-prb", [_scores(0)])
    with pytest.raises(UnknownNameError, match="hflip"):
        make_view("hflp")


def test_views_are_exact_transforms():
    x = torch.rand(3, 8, 8)
    assert torch.equal(View("hflip")(x, 0), x.flip(-1))
    assert torch.equal(View("rot90")(View("rot90")(View("rot90")(View("rot90")(x, 0), 0), 0), 0), x)
    z = View("zoom-0.5")(x, 0)
    assert z.shape == x.shape and 0 <= z.min() and z.max() <= 1
