"""The NumPy multi-label strategies against the torch implementation they replaced.

`_torch_*` below is that implementation (histovl's strategies.py and prompts.py at f19b20f, with
the text embeddings read from the same memo), kept here as the reference: the NumPy port must give
the same predictions, the same labels after thresholding the scores at 0.5, and scores within
float32 tolerance, on random inputs and on adversarial ones built so that every similarity is exact
in float32 (dyadic entries, unit vectors made of +-0.5): exact ties between classes, between a class
and the negative prompt, between subsets, and all-zero images, where only the tie rules decide.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch

from histovl.zeroshot.multilabel import (
    MultilabelDecision,
    TextEmbeddingMemo,
    baseline_decision,
    ovr_decision,
    powerset_decision,
    subset_prompt_texts,
    topk_decision,
)

CLASSES = ["tumour", "stroma", "necrosis", "fat"]
TEMPLATES = ["{}", "an image of {}"]
NEG = "nothing"
SCALE = 100.0


# --- the torch reference (the former implementation) -------------------------------------------


def _t(x: Any) -> torch.Tensor:
    return torch.as_tensor(x).detach().float().cpu()


def _torch_decision(scores: torch.Tensor, predictions: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    return predictions.numpy().astype(bool), scores.double().numpy()


def _torch_baseline(x: Any, w: Any, logit_scale: float) -> tuple[np.ndarray, np.ndarray]:
    x, w = _t(x), _t(w)
    log_p = torch.log_softmax(logit_scale * (x @ w.T).double(), dim=1)
    margin = log_p + np.log(w.shape[0])
    return _torch_decision(torch.sigmoid(margin), margin >= 0)


def _torch_ovr(x: Any, w: Any, neg: Any, logit_scale: float) -> tuple[np.ndarray, np.ndarray]:
    x, w, neg = _t(x), _t(w), _t(neg).reshape(1, -1)
    margin = ((x @ w.T) - (x @ neg.T)).double()
    return _torch_decision(torch.sigmoid(logit_scale * margin), margin >= 0)


class _TorchSubsetArgmax:
    def __init__(self, n_images: int, n_labels: int) -> None:
        self.best = torch.full((n_images,), -torch.inf, dtype=torch.float64)
        self.best_mask = torch.zeros((n_images, n_labels), dtype=torch.bool)
        self.with_c = torch.full((n_images, n_labels), -torch.inf, dtype=torch.float64)
        self.without_c = torch.full((n_images, n_labels), -torch.inf, dtype=torch.float64)

    def update(self, rows: slice, sims: torch.Tensor, masks: torch.Tensor) -> None:
        sims = sims.double()
        value, idx = sims.max(dim=1)
        better = value > self.best[rows]
        chosen = masks.expand(sims.shape[0], -1, -1)[torch.arange(sims.shape[0]), idx]
        self.best[rows] = torch.where(better, value, self.best[rows])
        self.best_mask[rows] = torch.where(better[:, None], chosen, self.best_mask[rows])
        expanded = sims[:, :, None]
        self.with_c[rows] = torch.maximum(self.with_c[rows], torch.where(masks, expanded, -torch.inf).amax(dim=1))
        self.without_c[rows] = torch.maximum(self.without_c[rows], torch.where(~masks, expanded, -torch.inf).amax(dim=1))

    def decision(self, logit_scale: float) -> tuple[np.ndarray, np.ndarray]:
        return _torch_decision(torch.sigmoid(logit_scale * (self.with_c - self.without_c)), self.best_mask)


def _torch_embed_subsets(memo: TextEmbeddingMemo, masks: np.ndarray, descriptions, templates, negative) -> torch.Tensor:
    texts: list[str] = []
    for row in masks:
        members = np.flatnonzero(row).tolist()
        texts.extend(subset_prompt_texts(members, descriptions, templates) if members else [negative] * len(templates))
    emb = torch.from_numpy(memo.encode(texts)).view(len(masks), len(templates), -1).mean(dim=1)
    return torch.nn.functional.normalize(emb, dim=-1)


def _masks(codes: np.ndarray, n: int) -> np.ndarray:
    return ((np.asarray(codes, np.int64)[:, None] >> np.arange(n)) & 1).astype(bool)


def _torch_powerset(x: Any, memo, descriptions, templates, negative, logit_scale, *, subset_chunk=512, image_chunk=1024):
    x, n = _t(x), len(descriptions)
    state = _TorchSubsetArgmax(x.shape[0], n)
    for start in range(0, 2**n, subset_chunk):
        masks_np = _masks(np.arange(start, min(start + subset_chunk, 2**n)), n)
        text = _torch_embed_subsets(memo, masks_np, descriptions, templates, negative)
        for i in range(0, x.shape[0], image_chunk):
            rows = slice(i, min(i + image_chunk, x.shape[0]))
            state.update(rows, x[rows] @ text.T, torch.from_numpy(masks_np)[None])
    return state.decision(logit_scale)


def _torch_topk(x: Any, w: Any, memo, descriptions, templates, negative, logit_scale, *, image_chunk=1024):
    x, w = _t(x), _t(w)
    ranks = torch.argsort(x @ w.T, dim=1, descending=True, stable=True).numpy()
    prefix = np.concatenate([np.zeros((len(x), 1), np.int64), np.cumsum(np.left_shift(np.int64(1), ranks), 1)], 1)
    unique, inverse = np.unique(prefix, return_inverse=True)
    inverse = inverse.reshape(prefix.shape)
    masks_np = _masks(unique, w.shape[0])
    text = _torch_embed_subsets(memo, masks_np, descriptions, templates, negative)
    state = _TorchSubsetArgmax(len(x), w.shape[0])
    for i in range(0, len(x), image_chunk):
        rows = slice(i, min(i + image_chunk, len(x)))
        cand = torch.from_numpy(inverse[rows])
        sims = torch.einsum("nd,nkd->nk", x[rows], text[cand])
        state.update(rows, sims, torch.from_numpy(masks_np)[cand])
    return state.decision(logit_scale)


# --- inputs ------------------------------------------------------------------------------------


class TableEncoder:
    """A text 'encoder' returning a fixed vector per prompt (not normalised: the table's are unit)."""

    def __init__(self, table: dict[str, np.ndarray]) -> None:
        self.table = table

    def encode_text(self, texts: Sequence[str], normalize: bool = True) -> torch.Tensor:
        return torch.from_numpy(np.stack([self.table[t] for t in texts]).astype(np.float32))


def _subset_prompts() -> list[list[str]]:
    """The prompts of every non-empty subset, one list (one prompt per template) per subset."""
    subsets = [m for r in range(1, len(CLASSES) + 1) for m in itertools.combinations(range(len(CLASSES)), r)]
    return [subset_prompt_texts(m, CLASSES, TEMPLATES) for m in subsets]


def _random_case(seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)

    def unit(n: int, d: int = 16) -> np.ndarray:
        v = rng.standard_normal((n, d))
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    prompts = [NEG, *itertools.chain.from_iterable(_subset_prompts())]
    table = dict(zip(prompts, unit(len(prompts)).astype(np.float32), strict=True))
    return {"x": unit(300), "w": unit(len(CLASSES)), "neg": table[NEG], "table": table}


def _exact_vectors(rng: np.random.Generator, n: int, d: int = 8) -> np.ndarray:
    """Unit vectors with four +-0.5 entries: every dot product with a dyadic image is exact."""
    out = np.zeros((n, d), np.float32)
    for row in out:
        row[rng.choice(d, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
    return out


def _adversarial_case(seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    w = _exact_vectors(rng, len(CLASSES))
    w[2] = w[0]  # two classes tie on every image
    pool = _exact_vectors(rng, 6)  # few distinct vectors: many subsets tie exactly
    # both templates of a subset get the same unit vector: its mean and normalisation are exact
    table = {p: v for prompts, v in zip(_subset_prompts(), pool[rng.integers(len(pool), size=15)], strict=True)
             for p in prompts}
    table[NEG] = w[1].copy()  # the negative prompt ties with class 1
    x = rng.choice([-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0], size=(200, 8)).astype(np.float32)
    x[:20] = 0.0  # every class, subset and the negative tie
    x[20:40] = pool[rng.integers(len(pool), size=20)]
    return {"x": x, "w": w, "neg": table[NEG], "table": table}


CASES = [("random", _random_case, s) for s in (0, 1)] + [("adversarial", _adversarial_case, s) for s in (0, 1, 2)]


def _same(got: MultilabelDecision, ref: tuple[np.ndarray, np.ndarray], scale: float, *, exact: bool) -> None:
    """Same predictions and thresholded scores. Scores: on exact inputs equal up to the last bits
    of float64 ``exp`` (torch's and NumPy's differ by an ulp); else within float32 tolerance:
    torch's and NumPy's float32 matrix products may differ in the last bits (~1e-7), which the
    logit scale multiplies, so the bound is 1e-6 per unit of scale."""
    predictions, scores = ref
    assert got.predictions.dtype == bool and got.scores.dtype == np.float64
    np.testing.assert_array_equal(got.predictions, predictions)
    np.testing.assert_array_equal(got.scores >= 0.5, scores >= 0.5)
    if exact:
        np.testing.assert_allclose(got.scores, scores, rtol=1e-14, atol=0)
    else:
        np.testing.assert_allclose(got.scores, scores, rtol=0, atol=1e-6 * max(scale, 1.0))


# --- the comparisons ---------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "make", "seed"), CASES)
def test_baseline_and_ovr_equal_the_torch_reference(kind: str, make, seed: int) -> None:
    c = make(seed)
    for scale in (SCALE, 1.0):
        _same(baseline_decision(c["x"], c["w"], scale), _torch_baseline(c["x"], c["w"], scale), scale, exact=False)
        _same(ovr_decision(c["x"], c["w"], c["neg"], scale), _torch_ovr(c["x"], c["w"], c["neg"], scale), scale,
              exact=kind == "adversarial")


@pytest.mark.parametrize(("kind", "make", "seed"), CASES)
def test_powerset_and_topk_equal_the_torch_reference(kind: str, make, seed: int) -> None:
    c = make(seed)
    memo = TextEmbeddingMemo(TableEncoder(c["table"]))
    chunks = {"subset_chunk": 5, "image_chunk": 64}  # ties across chunks go to the earlier one too
    got = powerset_decision(c["x"], memo, CLASSES, TEMPLATES, NEG, SCALE, **chunks)
    _same(got, _torch_powerset(c["x"], memo, CLASSES, TEMPLATES, NEG, SCALE, **chunks), SCALE,
          exact=kind == "adversarial")
    got = topk_decision(c["x"], c["w"], memo, CLASSES, TEMPLATES, NEG, logit_scale=SCALE, image_chunk=64)
    _same(got, _torch_topk(c["x"], c["w"], memo, CLASSES, TEMPLATES, NEG, SCALE, image_chunk=64), SCALE,
          exact=kind == "adversarial")


def test_the_adversarial_cases_do_tie() -> None:
    """The tie rules are exercised: without them the comparison above would prove less."""
    c = _adversarial_case(0)
    sims = c["x"] @ c["w"].T
    assert (sims[:, 0] == sims[:, 2]).all() and (c["x"] @ c["neg"] == sims[:, 1]).all()
    d = ovr_decision(c["x"], c["w"], c["neg"], SCALE)
    assert d.predictions[:, 1].all() and (d.scores[:, 1] == 0.5).all()  # a tie with the negative is present
    memo = TextEmbeddingMemo(TableEncoder(c["table"]))
    d = powerset_decision(c["x"][:20], memo, CLASSES, TEMPLATES, NEG, SCALE)
    assert not d.predictions.any()  # all-zero images: the empty set (subset 0) wins the tie


def test_torch_tensors_are_still_accepted() -> None:
    c = _random_case(3)
    a = ovr_decision(torch.from_numpy(c["x"]), torch.from_numpy(c["w"]), torch.from_numpy(c["neg"]), SCALE)
    b = ovr_decision(c["x"], c["w"], c["neg"], SCALE)
    np.testing.assert_array_equal(a.scores, b.scores)
