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

All of it is NumPy, so a fully cached run needs no torch: similarities in float32 (embeddings
are cast to float32 first), softmax, margins and scores in float64, in the order the former torch
implementation used (tests/unit/zeroshot/test_multilabel_numpy_port.py keeps that implementation
and checks this one against it). Torch tensors are still accepted as inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

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


def _host(x: Any) -> np.ndarray:
    """`x` as a NumPy array (a torch tensor from a caller that holds one is detached to the CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


def _as_matrix(x: Any, name: str) -> np.ndarray:
    """`x` as a finite float32 [N, D] array."""
    t = _host(x).astype(np.float32, copy=False)
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(t.shape)}")
    finite = np.isfinite(t).all(axis=1)
    if not finite.all():
        raise NonFiniteError(f"{name} has NaN/Inf in row {int(np.flatnonzero(~finite)[0])}")
    return t


def _sigmoid(z: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(-z))`` in float64 (a huge ``-z`` gives exactly 0, without a warning)."""
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def _decision(scores: np.ndarray, predictions: np.ndarray, **info: Any) -> MultilabelDecision:
    return MultilabelDecision(np.asarray(predictions, dtype=bool), np.asarray(scores, dtype=np.float64), info)


def baseline_decision(image_emb: Any, class_emb: Any, logit_scale: float) -> MultilabelDecision:
    """Independent per-class decisions from one softmax: present when ``p_c >= 1/C``.

    Example:
        >>> d = baseline_decision(np.eye(2), np.eye(2), 100.0)
        >>> d.predictions.tolist()
        [[True, False], [False, True]]
    """
    x, w = _as_matrix(image_emb, "image embeddings"), _as_matrix(class_emb, "class embeddings")
    n_classes = w.shape[0]
    logits = logit_scale * (x @ w.T).astype(np.float64)  # float32 similarities, float64 softmax
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    margin = log_p + np.log(n_classes)  # log(C * p_c): >= 0 iff p_c >= 1/C
    return _decision(_sigmoid(margin), margin >= 0, rule="softmax p_c >= 1/C")


def ovr_decision(image_emb: Any, class_emb: Any, negative_emb: Any, logit_scale: float) -> MultilabelDecision:
    """One-vs-rest: class c present when ``<x, w_c> >= <x, negative>``.

    Example:
        >>> x = np.array([[1.0, 0.0, 0.0]])
        >>> w = np.array([[0.9, 0.1, 0.0], [0.0, 1.0, 0.0]])
        >>> ovr_decision(x, w, np.array([0.5, 0.5, 0.0]), 100.0).predictions.tolist()
        [[True, False]]
    """
    x, w = _as_matrix(image_emb, "image embeddings"), _as_matrix(class_emb, "class embeddings")
    neg = _as_matrix(_host(negative_emb).reshape(1, -1), "negative embedding")
    margin = ((x @ w.T) - (x @ neg.T)).astype(np.float64)  # the difference is taken in float32
    return _decision(_sigmoid(logit_scale * margin), margin >= 0, rule="positive >= negative")


class _SubsetArgmax:
    """Running arg-max over subsets plus per-class max-marginals (float64), fed chunk by chunk."""

    def __init__(self, n_images: int, n_labels: int) -> None:
        self.best = np.full((n_images,), -np.inf)
        self.best_mask = np.zeros((n_images, n_labels), dtype=bool)
        self.with_c = np.full((n_images, n_labels), -np.inf)
        self.without_c = np.full((n_images, n_labels), -np.inf)

    def update(self, rows: slice, sims: np.ndarray, masks: np.ndarray) -> None:
        """`sims` [n, K] for images `rows` against subsets with boolean `masks` [n or 1, K, C]."""
        sims = np.asarray(sims, dtype=np.float64)
        n = sims.shape[0]
        idx = sims.argmax(axis=1)  # the first maximum: earlier subsets win ties (brute-force order)
        value = sims[np.arange(n), idx]
        better = value > self.best[rows]  # strict: earlier chunks win ties too
        chosen = np.broadcast_to(masks, (n, *masks.shape[1:]))[np.arange(n), idx]
        self.best[rows] = np.where(better, value, self.best[rows])
        self.best_mask[rows] = np.where(better[:, None], chosen, self.best_mask[rows])
        expanded = sims[:, :, None]
        with_c = np.where(masks, expanded, -np.inf).max(axis=1)
        without_c = np.where(~masks, expanded, -np.inf).max(axis=1)
        self.with_c[rows] = np.maximum(self.with_c[rows], with_c)
        self.without_c[rows] = np.maximum(self.without_c[rows], without_c)

    def decision(self, logit_scale: float, **info: Any) -> MultilabelDecision:
        scores = _sigmoid(logit_scale * (self.with_c - self.without_c))
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
    image_emb: Any,
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
    x = _as_matrix(image_emb, "image embeddings")
    n_labels = len(descriptions)
    if n_labels == 0:
        raise ValueError("power-set prompting needs at least one class")
    check_powerset_size(n_labels, len(templates), force=force)
    n_images = x.shape[0]
    state = _SubsetArgmax(n_images, n_labels)
    n_subsets = 2**n_labels
    for start in range(0, n_subsets, subset_chunk):
        codes = np.arange(start, min(start + subset_chunk, n_subsets))
        masks = subset_masks_from_codes(codes, n_labels)
        text = embed_subsets(memo, masks, descriptions, templates, negative)
        for i in range(0, n_images, image_chunk):
            rows = slice(i, min(i + image_chunk, n_images))
            state.update(rows, x[rows] @ text.T, masks[None])
    return state.decision(logit_scale, n_subsets=n_subsets, distinct_prompts=len(memo))


def topk_decision(
    image_emb: Any,
    class_emb: Any,
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
    x, w = _as_matrix(image_emb, "image embeddings"), _as_matrix(class_emb, "class embeddings")
    n_images, n_labels = x.shape[0], w.shape[0]
    if len(descriptions) != n_labels:
        raise ValueError(f"{len(descriptions)} descriptions for {n_labels} class embeddings")
    ranks = np.argsort(-(x @ w.T), axis=1, kind="stable")  # descending; equal classes keep their order
    bits = np.left_shift(np.int64(1), ranks.astype(np.int64))
    prefix_codes = np.concatenate([np.zeros((n_images, 1), np.int64), np.cumsum(bits, axis=1)], 1)
    unique_codes, inverse = np.unique(prefix_codes, return_inverse=True)
    inverse = inverse.reshape(prefix_codes.shape)
    masks = subset_masks_from_codes(unique_codes, n_labels)
    text = embed_subsets(memo, masks, descriptions, templates, negative)
    state = _SubsetArgmax(n_images, n_labels)
    for i in range(0, n_images, image_chunk):
        rows = slice(i, min(i + image_chunk, n_images))
        cand = inverse[rows]  # [n, C+1] indices into the unique subsets
        sims = np.einsum("nd,nkd->nk", x[rows], text[cand])
        state.update(rows, sims, masks[cand])
    return state.decision(logit_scale, distinct_subsets=len(unique_codes), distinct_prompts=len(memo))
