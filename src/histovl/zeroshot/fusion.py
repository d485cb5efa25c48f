"""Combining several encoders for zero-shot classification (HistoAlign, training-free).

Per encoder we compute class scores two ways:

* one-to-one: the usual text classifier (prompt-ensemble class weight) on the plain image;
* many-to-many: the similarity tensor between a bag of image views and the bag of prompts of each
  class (descriptions × templates), aggregated per class by a registered aggregator (mean, max,
  log-sum-exp, top-k mean).

Then a registered fusion rule combines encoders. Encoders whose weights and preprocessing are
identical are counted once, so duplicating an encoder never changes a fused result.

Standardisation (``mean-logit-z`` and ``m2m``): each encoder's logits are centred per image
(softmax is unchanged by that) and divided by one scalar per encoder, the standard deviation of
its centred logits over the evaluated images. Per-image z-scoring would be data-independent but
collapses every binary task to ±1, so we accept one data-set-level scale per encoder instead.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from histovl.errors import UnknownNameError, did_you_mean
from histovl.zeroshot.classifier import TextClassifier

# ---- aggregators over a bag of similarities [N, V, P] -> [N] ---------------------------------
Aggregator = Callable[[torch.Tensor], torch.Tensor]


def _agg_mean(s: torch.Tensor) -> torch.Tensor:
    return s.flatten(1).mean(dim=1)


def _agg_max(s: torch.Tensor) -> torch.Tensor:
    return s.flatten(1).max(dim=1).values


def _agg_lse(s: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    # A smooth maximum on the cosine scale; minus log(count) so bag size does not shift scores.
    flat = s.flatten(1)
    return temperature * (torch.logsumexp(flat / temperature, dim=1) - math.log(flat.shape[1]))


def _agg_topk_mean(s: torch.Tensor, k: int = 5) -> torch.Tensor:
    flat = s.flatten(1)
    return flat.topk(min(k, flat.shape[1]), dim=1).values.mean(dim=1)


AGGREGATORS: dict[str, Aggregator] = {
    "mean": _agg_mean,
    "max": _agg_max,
    "lse": _agg_lse,
    "topk-mean": _agg_topk_mean,
}


def get_aggregator(name: str) -> Aggregator:
    if name not in AGGREGATORS:
        raise UnknownNameError(f"unknown aggregator {name!r}.{did_you_mean(name, AGGREGATORS)} Known: {', '.join(AGGREGATORS)}")
    return AGGREGATORS[name]


def many_to_many_scores(
    view_embeddings: Sequence[np.ndarray], prompt_embeddings: Sequence[np.ndarray | torch.Tensor], aggregator: str = "mean"
) -> np.ndarray:
    """Aggregate the views × prompts similarity bag per class.

    Args:
        view_embeddings: per view, [N, D] L2-normalised image embeddings.
        prompt_embeddings: per class, [P_c, D] L2-normalised prompt embeddings.
        aggregator: a name in `AGGREGATORS`.

    Returns:
        [N, C] cosine-scale class scores.
    """
    agg = get_aggregator(aggregator)
    views = torch.stack([torch.as_tensor(v, dtype=torch.float32) for v in view_embeddings], dim=1)  # N V D
    cols = [agg(torch.einsum("nvd,pd->nvp", views, torch.as_tensor(p, dtype=torch.float32))) for p in prompt_embeddings]
    return torch.stack(cols, dim=1).numpy()


# ---- per-encoder scores and fusion rules -------------------------------------------------------
@dataclass
class EncoderScores:
    """One encoder's class scores on the evaluated images.

    Attributes:
        name: the model spec, for tables.
        logits: [N, C] one-to-one logits (logit_scale × cosine to the class weight).
        m2m_logits: [N, C] many-to-many logits (logit_scale × aggregated cosine), if computed.
        identity: weights + preprocessing identity; duplicates are dropped before fusing.
    """

    name: str
    logits: np.ndarray
    m2m_logits: np.ndarray | None = None
    identity: str = ""
    extra: dict[str, object] = field(default_factory=dict)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row softmax in float64, as the single-encoder path does (fused == single for one encoder)."""
    logits = np.asarray(logits, dtype=np.float64)
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def standardise(logits: np.ndarray) -> np.ndarray:
    """Centre each row; divide by this encoder's spread over all rows (see module docstring)."""
    centred = logits - logits.mean(axis=1, keepdims=True)
    scale = float(centred.std())
    return centred / scale if scale > 0 else centred


def _dedupe(scores: Sequence[EncoderScores]) -> list[EncoderScores]:
    seen: set[str] = set()
    out = []
    for s in scores:
        key = s.identity or s.name
        if key in seen:
            warnings.warn(f"encoder {s.name} appears twice; it is counted once in the fusion", stacklevel=3)
            continue
        seen.add(key)
        out.append(s)
    return out


def check_fusion_weights(n: int, weights: Sequence[float] | None) -> np.ndarray:
    if weights is None:
        return np.full(n, 1.0 / n)
    w = np.asarray(weights, dtype=float)
    if w.shape != (n,) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(
            f"need {n} non-negative fusion weights with a positive sum (one --fusion-weight per --model), "
            f"got {[float(x) for x in w.ravel()]}"
        )
    return w / w.sum()


def fuse_mean_prob(scores: Sequence[EncoderScores], weights: Sequence[float] | None = None) -> np.ndarray:
    """Average of each encoder's softmax probabilities (optionally weighted)."""
    w = check_fusion_weights(len(scores), weights)
    return sum(wi * softmax(s.logits) for wi, s in zip(w, scores, strict=True))  # type: ignore[return-value]


def fuse_mean_logit_z(scores: Sequence[EncoderScores], weights: Sequence[float] | None = None) -> np.ndarray:
    """Softmax of the average of standardised one-to-one logits."""
    w = check_fusion_weights(len(scores), weights)
    return softmax(sum(wi * standardise(s.logits) for wi, s in zip(w, scores, strict=True)))  # type: ignore[arg-type]


def fuse_m2m(scores: Sequence[EncoderScores], weights: Sequence[float] | None = None) -> np.ndarray:
    """HistoAlign: softmax of the average of standardised many-to-many logits."""
    missing = [s.name for s in scores if s.m2m_logits is None]
    if missing:
        raise ValueError(f"m2m fusion needs many-to-many scores; missing for {missing}")
    w = check_fusion_weights(len(scores), weights)
    return softmax(sum(wi * standardise(s.m2m_logits) for wi, s in zip(w, scores, strict=True)))  # type: ignore[arg-type]


FUSIONS: dict[str, Callable[[Sequence[EncoderScores], Sequence[float] | None], np.ndarray]] = {
    "mean-prob": fuse_mean_prob,
    "mean-logit-z": fuse_mean_logit_z,
    "m2m": fuse_m2m,
}
NEEDS_M2M = {"m2m"}


def register_fusion(name: str, fn: Callable[[Sequence[EncoderScores], Sequence[float] | None], np.ndarray], *, needs_m2m: bool = False) -> None:
    """Add a fusion rule (error on duplicates)."""
    if name in FUSIONS:
        raise ValueError(f"fusion {name!r} is already registered")
    FUSIONS[name] = fn
    if needs_m2m:
        NEEDS_M2M.add(name)


def fuse(name: str, scores: Sequence[EncoderScores], weights: Sequence[float] | None = None) -> np.ndarray:
    """Apply the registered fusion `name` to de-duplicated encoder scores → [N, C] probabilities."""
    if name not in FUSIONS:
        raise UnknownNameError(f"unknown fusion {name!r}.{did_you_mean(name, FUSIONS)} Known: {', '.join(FUSIONS)}")
    uniq = _dedupe(scores)
    if weights is not None and len(uniq) != len(scores):
        raise ValueError("fusion weights were given but some encoders are duplicates; remove the duplicates")
    probs = FUSIONS[name](uniq, weights)
    if not np.isfinite(probs).all():
        from histovl.errors import NonFiniteError

        raise NonFiniteError(f"fusion {name!r} produced NaN/Inf probabilities")
    return probs


def check_cross_pair(image_clf_dim: int, text_clf: TextClassifier, allow: bool) -> None:
    """Cross pairs (A's images vs B's texts) are meaningful only in an aligned, same-size space."""
    if not allow:
        raise ValueError("cross pairs compare one encoder's images with another's texts; pass allow_cross_pairs=True to run them")
    if text_clf.weights.shape[-1] != image_clf_dim:
        raise ValueError(
            f"cross pair impossible: image embedding size {image_clf_dim} != text embedding size {text_clf.weights.shape[-1]}"
        )
