"""Hand-made cases with known answers, and power-set vs a brute-force arg-max over all subsets."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import pytest
import torch

from histovl.errors import HistovlError, NonFiniteError
from histovl.zeroshot.multilabel import (
    TextEmbeddingMemo,
    baseline_decision,
    embed_subsets,
    ovr_decision,
    powerset_decision,
    subset_prompt_texts,
    topk_decision,
)

CLASSES = ["tumour", "stroma", "necrosis"]
NEG = "nothing"


class LookupEncoder:
    """A text 'encoder' with a fixed vector per prompt: the right answer is known by design."""

    def __init__(self, table: dict[str, Sequence[float]]) -> None:
        self.table = table
        self.calls: list[list[str]] = []

    def encode_text(self, texts: Sequence[str], normalize: bool = True) -> torch.Tensor:
        self.calls.append(list(texts))
        out = torch.tensor([self.table[t] for t in texts], dtype=torch.float32)
        return torch.nn.functional.normalize(out, dim=-1)


def _subset_table() -> dict[str, list[float]]:
    """Subset prompt = normalised sum of its members' axes; 'nothing' is the 4th axis."""
    table: dict[str, list[float]] = {NEG: [0, 0, 0, 1]}
    for r in range(1, 4):
        for members in itertools.combinations(range(3), r):
            vec = [1.0 if i in members else 0.0 for i in range(3)] + [0.0]
            table[subset_prompt_texts(members, CLASSES, ["{}"])[0]] = vec
    return table


def test_baseline_rule_is_softmax_above_uniform_share() -> None:
    w = torch.eye(3)
    x = torch.nn.functional.normalize(torch.tensor([[1.0, 0.95, 0.0], [0.0, 0.0, 1.0]]), dim=1)
    # image 0: p = (0.589, 0.411, 0.0004) at scale 10 -> tumour and stroma above 1/3
    d = baseline_decision(x, w, logit_scale=10.0)
    assert d.predictions.tolist() == [[True, True, False], [False, False, True]]
    # scores: sigmoid(log(C p)); check one value by hand
    p = torch.softmax(10.0 * (x @ w.T).double(), dim=1)
    np.testing.assert_allclose(d.scores, (3 * p / (1 + 3 * p)).numpy(), rtol=1e-12)
    assert ((d.scores >= 0.5) == d.predictions).all()


def test_baseline_always_predicts_at_least_one_class() -> None:
    x = torch.nn.functional.normalize(torch.randn(50, 8, generator=torch.Generator().manual_seed(1)), dim=1)
    w = torch.nn.functional.normalize(torch.randn(5, 8, generator=torch.Generator().manual_seed(2)), dim=1)
    assert baseline_decision(x, w, 10.0).predictions.any(axis=1).all()


def test_ovr_positive_wins_against_negative() -> None:
    w = torch.eye(4)[:3]
    neg = torch.eye(4)[3]
    x = torch.nn.functional.normalize(torch.tensor([[1.0, 0.2, 0.0, 0.5], [0.0, 0.0, 0.0, 1.0]]), dim=1)
    d = ovr_decision(x, w, neg, logit_scale=50.0)
    assert d.predictions.tolist() == [[True, False, False], [False, False, False]]
    assert ((d.scores >= 0.5) == d.predictions).all()


def test_powerset_picks_the_matching_subset_and_the_empty_set() -> None:
    memo = TextEmbeddingMemo(LookupEncoder(_subset_table()))
    x = torch.nn.functional.normalize(
        torch.tensor([[1.0, 0.0, 1.0, 0.1], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.1, 1.0], [1, 1, 1, 0.0]]), dim=1
    )
    d = powerset_decision(x, memo, CLASSES, ["{}"], NEG, 100.0, subset_chunk=3)
    assert d.predictions.astype(int).tolist() == [[1, 0, 1], [0, 1, 0], [0, 0, 0], [1, 1, 1]]
    assert ((d.scores >= 0.5) == d.predictions).all()
    assert memo.n_encoded == 8  # 7 subsets + negative, each once


def test_topk_scores_prefixes_of_the_ranking() -> None:
    memo = TextEmbeddingMemo(LookupEncoder(_subset_table()))
    w = torch.eye(4)[:3]
    # ranking tumour > necrosis > stroma; best prefix {tumour, necrosis}
    x = torch.nn.functional.normalize(torch.tensor([[1.0, 0.1, 0.9, 0.0], [0.0, 0.0, 0.05, 1.0]]), dim=1)
    d = topk_decision(x, w, memo, CLASSES, ["{}"], NEG, logit_scale=100.0)
    assert d.predictions.astype(int).tolist() == [[1, 0, 1], [0, 0, 0]]
    # image 0's prefixes {t}, {t,n}, {t,n,s}; image 1's ranking n > t > s (tie broken by index)
    assert ((d.scores >= 0.5) == d.predictions).all()


def test_topk_memoises_prompts_across_images() -> None:
    enc = LookupEncoder(_subset_table())
    memo = TextEmbeddingMemo(enc)
    x = torch.nn.functional.normalize(torch.tensor([[1.0, 0.1, 0.9, 0.0]] * 20), dim=1)
    topk_decision(x, torch.eye(4)[:3], memo, CLASSES, ["{}"], NEG, logit_scale=100.0)
    assert memo.n_encoded == 4  # empty + 3 prefixes, not 20 * 4
    assert sum(len(c) for c in enc.calls) == 4


def _brute_force_powerset(encoder, x: torch.Tensor, descriptions, templates, negative):
    n = len(descriptions)
    embs, masks = [], []
    for code in range(2**n):
        members = [i for i in range(n) if code >> i & 1]
        if members:
            texts = [t.replace("{}", ", ".join(descriptions[i] for i in members)) for t in templates]
            e = torch.stack([encoder.encode_text([t])[0] for t in texts]).mean(0)
        else:
            e = encoder.encode_text([negative])[0]
        embs.append(torch.nn.functional.normalize(e, dim=0))
        masks.append([i in members for i in range(n)])
    sims = (x @ torch.stack(embs).T).double()
    return sims, np.array(masks)


@pytest.mark.parametrize("n_labels", [1, 3, 5])
def test_powerset_equals_brute_force_argmax(tiny_clip, n_labels: int) -> None:
    descriptions = ["tumour", "stroma", "lymphocytes", "necrosis", "fat"][:n_labels]
    templates = ["an H&E image of {}.", "a patch showing {}"]
    gen = torch.Generator().manual_seed(n_labels)
    x = torch.nn.functional.normalize(torch.randn(40, 32, generator=gen), dim=1)
    with torch.no_grad():
        sims, masks = _brute_force_powerset(tiny_clip, x, descriptions, templates, "no tissue")
    memo = TextEmbeddingMemo(tiny_clip, batch_size=7)
    d = powerset_decision(x, memo, descriptions, templates, "no tissue", 100.0, subset_chunk=3, image_chunk=16)
    chosen = np.array([np.flatnonzero((masks == row).all(1))[0] for row in d.predictions])
    best = sims.max(1).values.numpy()
    np.testing.assert_allclose(sims.numpy()[np.arange(len(x)), chosen], best, atol=1e-5)
    clear = (sims.topk(min(2, sims.shape[1]), 1).values.diff(dim=1).abs().squeeze(1) > 1e-4).numpy()
    np.testing.assert_array_equal(d.predictions[clear], masks[sims.argmax(1).numpy()][clear])
    assert memo.n_encoded == (2**n_labels - 1) * len(templates) + 1


def test_topk_never_beats_powerset_and_shares_prompts(tiny_clip) -> None:
    descriptions, templates = ["tumour", "stroma", "lymphocytes", "necrosis"], ["an H&E image of {}."]
    x = torch.nn.functional.normalize(torch.randn(30, 32, generator=torch.Generator().manual_seed(3)), dim=1)
    w = torch.nn.functional.normalize(tiny_clip.encode_text(descriptions).detach(), dim=1)
    memo = TextEmbeddingMemo(tiny_clip)
    full = powerset_decision(x, memo, descriptions, templates, "nothing", 100.0)
    encoded = memo.n_encoded
    top = topk_decision(x, w, memo, descriptions, templates, "nothing", logit_scale=100.0)
    assert memo.n_encoded == encoded  # every prefix prompt was already in the power-set memo
    # power-set's winner is at least as similar to the image as top-k's (top-k searches a subset)
    score_full = (x * embed_subsets(memo, full.predictions, descriptions, templates, "nothing")).sum(1)
    score_top = (x * embed_subsets(memo, top.predictions, descriptions, templates, "nothing")).sum(1)
    assert (score_full >= score_top - 1e-6).all()


def test_powerset_refuses_more_than_16_labels_unless_forced() -> None:
    memo = TextEmbeddingMemo(LookupEncoder({}))
    with pytest.raises(HistovlError, match="2\\^17"):
        powerset_decision(torch.ones(1, 4), memo, [f"c{i}" for i in range(17)], ["{}"], NEG, 1.0)


def test_non_finite_embeddings_are_refused() -> None:
    x = torch.tensor([[float("nan"), 0.0]])
    with pytest.raises(NonFiniteError, match="row 0"):
        baseline_decision(x, torch.eye(2), 1.0)


def test_memo_encodes_each_distinct_prompt_once() -> None:
    enc = LookupEncoder({"a": [1, 0], "b": [0, 1]})
    memo = TextEmbeddingMemo(enc, batch_size=1)
    out = memo.encode(["a", "b", "a", "a"])
    assert out.shape == (4, 2) and memo.n_encoded == 2 and memo.n_requested == 4
    memo.encode(["b"])
    assert memo.n_encoded == 2
