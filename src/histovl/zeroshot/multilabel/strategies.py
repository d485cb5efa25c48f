"""HistoCLIP's four zero-shot multi-label strategies as pure functions over embeddings.

Every strategy returns a `MultilabelDecision`: boolean `predictions` [N, C] and `scores` [N, C]
in [0, 1] built so that ``scores >= 0.5`` reproduces the predictions (up to exact float ties),
which lets every strategy go through the same metric (the paper's eq. 6 thresholds at 0.5).

Decision rules (each tested on hand-made cases):

* ``baseline`` -- CLIP's usual softmax over the C class logits ``s * <x, w_c>`` (s = the model's
  logit scale); class c is present when it gets more than its uniform share, ``p_c >= 1/C``.
  Score: ``sigmoid(log(C * p_c))``, which is 0.5 exactly at the uniform share. Scale-aware and
  always predicts at least one class (the arg-max has ``p >= 1/C``).
* ``ovr`` -- class c is present when its positive embedding is closer to the image than the
  negative prompt's: score ``sigmoid(s * (<x, w_c> - <x, n>))``.
* ``powerset`` -- the subset whose prompt is most similar wins (the empty set is the negative
  prompt). Score per class: the max-marginal ``sigmoid(s * (best_with_c - best_without_c))``, which
  is >= 0.5 exactly when the winning subset contains c.
* ``topk`` -- the candidates are the prefixes of the image's class ranking (k = 1..C) plus the
  empty set; the best candidate wins; scores are the same max-marginals over those candidates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from histovl.errors import HistovlError, NonFiniteError
from histovl.zeroshot.multilabel.prompts import (
    TextEmbeddingMemo,
    embed_subsets,
    subset_masks_from_codes,
)

MAX_POWERSET_LABELS = 16


@dataclass(frozen=True)
class MultilabelDecision:
    """Output of a strategy: boolean `predictions` and [0, 1] `scores`, both [N, C]."""

    predictions: np.ndarray
    scores: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


def _as_tensor(x: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    t = torch.as_tensor(x).detach().float().cpu()
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        row = int((~torch.isfinite(t)).any(dim=1).nonzero()[0, 0])
        raise NonFiniteError(f"{name} has NaN/Inf in row {row}")
    return t


def _decision(scores: torch.Tensor, predictions: torch.Tensor, **info: Any) -> MultilabelDecision:
    return MultilabelDecision(predictions.numpy().astype(bool), scores.double().numpy(), info)


def baseline_decision(
    image_emb: np.ndarray | torch.Tensor, class_emb: np.ndarray | torch.Tensor, logit_scale: float
) -> MultilabelDecision:
    """Independent per-class decisions from one softmax: present when ``p_c >= 1/C``.

    Example:
        >>> import torch
        >>> d = baseline_decision(torch.eye(2), torch.eye(2), 100.0)
        >>> d.predictions.tolist()
        [[True, False], [False, True]]
    """
    x, w = _as_tensor(image_emb, "image embeddings"), _as_tensor(class_emb, "class embeddings")
    n_classes = w.shape[0]
    log_p = torch.log_softmax(logit_scale * (x @ w.T).double(), dim=1)
    margin = log_p + np.log(n_classes)  # log(C * p_c): >= 0 iff p_c >= 1/C
    return _decision(torch.sigmoid(margin), margin >= 0, rule="softmax p_c >= 1/C")


def ovr_decision(
    image_emb: np.ndarray | torch.Tensor,
    class_emb: np.ndarray | torch.Tensor,
    negative_emb: np.ndarray | torch.Tensor,
    logit_scale: float,
) -> MultilabelDecision:
    """One-vs-rest: class c present when ``<x, w_c> >= <x, negative>``.

    Example:
        >>> import torch
        >>> x = torch.tensor([[1.0, 0.0, 0.0]])
        >>> w = torch.tensor([[0.9, 0.1, 0.0], [0.0, 1.0, 0.0]])
        >>> ovr_decision(x, w, torch.tensor([[0.5, 0.5, 0.0]]), 100.0).predictions.tolist()
        [[True, False]]
    """
    x, w = _as_tensor(image_emb, "image embeddings"), _as_tensor(class_emb, "class embeddings")
    neg = _as_tensor(torch.as_tensor(negative_emb).reshape(1, -1), "negative embedding")
    margin = ((x @ w.T) - (x @ neg.T)).double()
    return _decision(torch.sigmoid(logit_scale * margin), margin >= 0, rule="positive >= negative")


class _SubsetArgmax:
    """Running arg-max over subsets plus per-class max-marginals, fed chunk by chunk."""

    def __init__(self, n_images: int, n_labels: int) -> None:
        self.best = torch.full((n_images,), -torch.inf, dtype=torch.float64)
        self.best_mask = torch.zeros((n_images, n_labels), dtype=torch.bool)
        self.with_c = torch.full((n_images, n_labels), -torch.inf, dtype=torch.float64)
        self.without_c = torch.full((n_images, n_labels), -torch.inf, dtype=torch.float64)

    def update(self, rows: slice, sims: torch.Tensor, masks: torch.Tensor) -> None:
        """`sims` [n, K] for images `rows` against subsets with boolean `masks` [n or 1, K, C]."""
        sims = sims.double()
        value, idx = sims.max(dim=1)
        better = value > self.best[rows]  # strict: earlier subsets win ties (brute-force order)
        chosen = masks.expand(sims.shape[0], -1, -1)[torch.arange(sims.shape[0]), idx]
        self.best[rows] = torch.where(better, value, self.best[rows])
        self.best_mask[rows] = torch.where(better[:, None], chosen, self.best_mask[rows])
        expanded = sims[:, :, None]
        with_c = torch.where(masks, expanded, -torch.inf).amax(dim=1)
        without_c = torch.where(~masks, expanded, -torch.inf).amax(dim=1)
        self.with_c[rows] = torch.maximum(self.with_c[rows], with_c)
        self.without_c[rows] = torch.maximum(self.without_c[rows], without_c)

    def decision(self, logit_scale: float, **info: Any) -> MultilabelDecision:
        scores = torch.sigmoid(logit_scale * (self.with_c - self.without_c))
        return _decision(scores, self.best_mask, **info)


def check_powerset_size(n_labels: int, n_templates: int, *, force: bool = False) -> None:
    """Refuse power-set prompting beyond `MAX_POWERSET_LABELS` labels unless `force` (cheap, up front).

    Raises:
        HistovlError: more than 16 labels without `force` (2^n prompts per template).
    """
    if n_labels > MAX_POWERSET_LABELS and not force:
        raise HistovlError(
            f"power-set prompting with {n_labels} labels needs 2^{n_labels} = {2**n_labels:,} "
            f"subset prompts per template ({2**n_labels * n_templates:,} text encodings); the "
            f"limit is {MAX_POWERSET_LABELS} labels. Use --strategy topk (n + 1 prompts per image), "
            "or pass --force-powerset if you really want this."
        )


def powerset_decision(
    image_emb: np.ndarray | torch.Tensor,
    memo: TextEmbeddingMemo,
    descriptions: Sequence[str],
    templates: Sequence[str],
    negative: str,
    logit_scale: float,
    *,
    force: bool = False,
    subset_chunk: int = 512,
    image_chunk: int = 1024,
) -> MultilabelDecision:
    """Power-set prompting: score every label subset's prompt, the best subset wins.

    Subsets are enumerated by bit code (0 = empty set scored by `negative`, then 1, 2, 3, ...)
    and processed `subset_chunk` at a time, images `image_chunk` at a time, so memory is
    O(image_chunk * subset_chunk * C) whatever the number of subsets. Each distinct prompt is
    encoded once for all images (via `memo`).

    Raises:
        HistovlError: more than 16 labels without `force` (2^n prompts per template).
    """
    x = _as_tensor(image_emb, "image embeddings")
    n_labels = len(descriptions)
    if n_labels == 0:
        raise ValueError("power-set prompting needs at least one class")
    check_powerset_size(n_labels, len(templates), force=force)
    n_images = x.shape[0]
    state = _SubsetArgmax(n_images, n_labels)
    n_subsets = 2**n_labels
    for start in range(0, n_subsets, subset_chunk):
        codes = np.arange(start, min(start + subset_chunk, n_subsets))
        masks_np = subset_masks_from_codes(codes, n_labels)
        text = embed_subsets(memo, masks_np, descriptions, templates, negative)
        masks = torch.from_numpy(masks_np)[None]
        for i in range(0, n_images, image_chunk):
            rows = slice(i, min(i + image_chunk, n_images))
            state.update(rows, x[rows] @ text.T, masks)
    return state.decision(logit_scale, n_subsets=n_subsets, distinct_prompts=len(memo))


def topk_decision(
    image_emb: np.ndarray | torch.Tensor,
    class_emb: np.ndarray | torch.Tensor,
    memo: TextEmbeddingMemo,
    descriptions: Sequence[str],
    templates: Sequence[str],
    negative: str,
    *,
    logit_scale: float,
    image_chunk: int = 1024,
) -> MultilabelDecision:
    """Top-k prompting: rank classes by ``<x, w_c>``, score the k = 1..C prefixes and the empty set.

    Distinct prefixes are collected over all images and embedded once (an O(N * C) search space
    instead of O(2^C)); candidates are ordered empty, k = 1, ..., C and earlier ones win ties.
    """
    x, w = _as_tensor(image_emb, "image embeddings"), _as_tensor(class_emb, "class embeddings")
    n_images, n_labels = x.shape[0], w.shape[0]
    if len(descriptions) != n_labels:
        raise ValueError(f"{len(descriptions)} descriptions for {n_labels} class embeddings")
    ranks = torch.argsort(x @ w.T, dim=1, descending=True, stable=True).numpy()
    bits = np.left_shift(np.int64(1), ranks.astype(np.int64))
    prefix_codes = np.concatenate([np.zeros((n_images, 1), np.int64), np.cumsum(bits, axis=1)], 1)
    unique_codes, inverse = np.unique(prefix_codes, return_inverse=True)
    inverse = inverse.reshape(prefix_codes.shape)
    masks_np = subset_masks_from_codes(unique_codes, n_labels)
    text = embed_subsets(memo, masks_np, descriptions, templates, negative)
    masks_all = torch.from_numpy(masks_np)
    state = _SubsetArgmax(n_images, n_labels)
    for i in range(0, n_images, image_chunk):
        rows = slice(i, min(i + image_chunk, n_images))
        cand = torch.from_numpy(inverse[rows])  # [n, C+1] indices into the unique subsets
        sims = torch.einsum("nd,nkd->nk", x[rows], text[cand])
        state.update(rows, sims, masks_all[cand])
    return state.decision(logit_scale, distinct_subsets=len(unique_codes), distinct_prompts=len(memo))
