"""The losses against naive per-sample references (forward and backward) and CLIP reduction."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from histovl.errors import NonFiniteError, UnknownNameError
from histovl.train.losses import His2LipWeights, clip_loss, get_loss, his2lip_loss


def _pairs(n: int = 6, d: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(n, d, generator=g, dtype=torch.float64)
    txt = torch.randn(n, d, generator=g, dtype=torch.float64)
    return img, txt


def _norm(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def naive_clip(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    n = img.shape[0]
    total = img.new_zeros(())
    for i in range(n):
        row_it = torch.stack([scale * (img[i] * txt[j]).sum() for j in range(n)])
        row_ti = torch.stack([scale * (txt[i] * img[j]).sum() for j in range(n)])
        total = total - 0.5 * (row_it[i] - torch.logsumexp(row_it, 0)) / n
        total = total - 0.5 * (row_ti[i] - torch.logsumexp(row_ti, 0)) / n
    return total


def _softmax_list(vals: list[float]) -> list[float]:
    m = max(vals)
    ex = [math.exp(v - m) for v in vals]
    s = sum(ex)
    return [e / s for e in ex]


def naive_his2lip(img, txt, scale, tissue, stain, w: His2LipWeights) -> torch.Tensor:
    """Per-sample loops written straight from the formula in docs/losses.md."""
    n = img.shape[0]
    di, dt = img.detach(), txt.detach()

    def meta(i: int, j: int) -> float:
        m = 0.0
        if tissue is not None and tissue[i] >= 0 and tissue[i] == tissue[j]:
            m += w.tissue_weight
        if stain is not None and stain[i] >= 0 and stain[i] == stain[j]:
            m += w.stain_weight
        return m

    def struct(emb: torch.Tensor, i: int, exclude_self: bool) -> list[float]:
        js = [j for j in range(n) if not (exclude_self and j == i)]
        probs = _softmax_list([w.structure_scale * float((emb[i] * emb[j]).sum()) for j in js])
        out = [0.0] * n
        for j, p in zip(js, probs, strict=True):
            out[j] = p
        return out

    def cross_target(i: int, other: torch.Tensor) -> list[float]:
        ms = [meta(i, j) for j in range(n)]
        tot = sum(ms)
        mrow = [m / tot for m in ms] if tot > 0 else [float(j == i) for j in range(n)]
        st = struct(other, i, exclude_self=False)
        hard = 1 - w.alpha - w.beta
        return [hard * (j == i) + w.alpha * mrow[j] + w.beta * st[j] for j in range(n)]

    def intra_target(i: int, other: torch.Tensor) -> list[float] | None:
        st = struct(other, i, exclude_self=True)
        raw = [0.0 if j == i else w.alpha * meta(i, j) + w.beta * st[j] for j in range(n)]
        tot = sum(raw)
        return [r / tot for r in raw] if tot > 0 else None

    def ce(query: torch.Tensor, keys: torch.Tensor, target: list[float], exclude: int | None):
        js = [j for j in range(n) if j != exclude]
        logits = torch.stack([scale * (query * keys[j]).sum() for j in js])
        lse = torch.logsumexp(logits, 0)
        return -sum(target[j] * (logits[k] - lse) for k, j in enumerate(js))

    loss = img.new_zeros(())
    for i in range(n):
        loss = loss + w.w_it * ce(img[i], txt, cross_target(i, dt), None) / n
        loss = loss + w.w_ti * ce(txt[i], img, cross_target(i, di), None) / n
    for weight, q, other in ((w.w_ii, img, dt), (w.w_tt, txt, di)):
        if weight == 0:
            continue
        rows = [(i, intra_target(i, other)) for i in range(n)]
        rows = [(i, t) for i, t in rows if t is not None]
        for i, t in rows:
            loss = loss + weight * ce(q[i], q, t, exclude=i) / len(rows)
    return loss


def test_clip_matches_naive_forward_and_backward() -> None:
    a, b = _pairs()
    scale = torch.tensor(7.0, dtype=torch.float64, requires_grad=True)
    a1, b1 = a.clone().requires_grad_(), b.clone().requires_grad_()
    a2, b2 = a.clone().requires_grad_(), b.clone().requires_grad_()
    fast = clip_loss(_norm(a1), _norm(b1), scale)
    slow = naive_clip(_norm(a2), _norm(b2), scale)
    torch.testing.assert_close(fast, slow)
    g_fast = torch.autograd.grad(fast, (a1, b1, scale))
    g_slow = torch.autograd.grad(slow, (a2, b2, scale))
    for x, y in zip(g_fast, g_slow, strict=True):
        torch.testing.assert_close(x, y)


def test_clip_matches_cross_entropy_definition() -> None:
    a, b = _pairs(8, 4, seed=3)
    a, b = _norm(a), _norm(b)
    logits = 5.0 * a @ b.T
    ref = 0.5 * (F.cross_entropy(logits, torch.arange(8)) + F.cross_entropy(logits.T, torch.arange(8)))
    torch.testing.assert_close(clip_loss(a, b, torch.tensor(5.0, dtype=torch.float64)), ref)


@pytest.mark.parametrize("seed", [0, 1])
def test_his2lip_reduces_to_clip_exactly(seed: int) -> None:
    a, b = _pairs(7, 6, seed)
    a, b = _norm(a), _norm(b)
    scale = torch.tensor(12.0, dtype=torch.float64)
    w = His2LipWeights(alpha=0.0, beta=0.0, w_ii=0.0, w_tt=0.0)
    tissue = torch.tensor([0, 0, 1, 1, 2, 2, 0])
    got = his2lip_loss(a, b, scale, tissue=tissue, stain=tissue, weights=w)
    assert torch.equal(got, clip_loss(a, b, scale)) or torch.allclose(got, clip_loss(a, b, scale), rtol=0, atol=1e-15)


@pytest.mark.parametrize(
    ("weights", "use_tissue", "use_stain"),
    [
        (His2LipWeights(), True, True),
        (His2LipWeights(alpha=0.5, beta=0.3, w_ii=0.7, w_tt=0.1, stain_weight=2.0), True, False),
        (His2LipWeights(alpha=0.0, beta=0.4), False, False),
        (His2LipWeights(alpha=0.6, beta=0.0, w_ii=0.3, w_tt=0.3), True, True),
    ],
)
def test_his2lip_matches_naive_forward_and_backward(weights, use_tissue, use_stain) -> None:
    a, b = _pairs(6, 5, seed=2)
    tissue = torch.tensor([0, 0, 1, 2, -1, 1]) if use_tissue else None
    stain = torch.tensor([3, 4, 3, 4, 3, -1]) if use_stain else None
    scale = torch.tensor(9.0, dtype=torch.float64, requires_grad=True)
    a1, b1 = a.clone().requires_grad_(), b.clone().requires_grad_()
    a2, b2 = a.clone().requires_grad_(), b.clone().requires_grad_()
    fast = his2lip_loss(_norm(a1), _norm(b1), scale, tissue=tissue, stain=stain, weights=weights)
    slow = naive_his2lip(_norm(a2), _norm(b2), scale, tissue, stain, weights)
    torch.testing.assert_close(fast, slow)
    g_fast = torch.autograd.grad(fast, (a1, b1, scale))
    g_slow = torch.autograd.grad(slow, (a2, b2, scale))
    for x, y in zip(g_fast, g_slow, strict=True):
        torch.testing.assert_close(x, y)


def test_soft_targets_reward_same_class_alignment() -> None:
    """Two pairs of one class: his2lip prefers the geometry where they share a direction."""
    tissue = torch.tensor([0, 0, 1, 1])
    base = torch.eye(4, dtype=torch.float64)
    merged = torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0], [0, 0, 1.0, 0], [0, 0, 1.0, 0]], dtype=torch.float64)
    scale = torch.tensor(10.0, dtype=torch.float64)
    w = His2LipWeights(alpha=0.8, beta=0.0, w_ii=0.0, w_tt=0.0)
    assert his2lip_loss(merged, merged, scale, tissue=tissue, weights=w) < his2lip_loss(base, base, scale, tissue=tissue, weights=w)
    assert clip_loss(merged, merged, scale) > clip_loss(base, base, scale)


def test_bad_inputs_raise() -> None:
    a, b = _pairs()
    with pytest.raises(ValueError, match="same shape"):
        clip_loss(a, b[:3], torch.tensor(1.0))
    with pytest.raises(NonFiniteError):
        clip_loss(a * float("nan"), b, torch.tensor(1.0))
    with pytest.raises(ValueError, match="alpha"):
        His2LipWeights(alpha=0.8, beta=0.5)
    with pytest.raises(UnknownNameError, match="his2lip"):
        get_loss("his2clip")
