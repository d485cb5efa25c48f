"""Contrastive losses for image-caption fine-tuning: `clip` and `his2lip`.

Both are pure functions of full-batch embeddings, so under DDP a caller all-gathers the
embeddings (and metadata tensors) from every rank first and passes the gathered batch; nothing
here depends on the process layout. The formula and its motivation are in ``docs/losses.md``.

Example:
    >>> import torch
    >>> img = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    >>> txt = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    >>> scale = torch.tensor(10.0)
    >>> loss = his2lip_loss(img, txt, scale, weights=His2LipWeights(alpha=0, beta=0, w_ii=0, w_tt=0))
    >>> bool(torch.allclose(loss, clip_loss(img, txt, scale)))
    True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from histovl.errors import NonFiniteError, UnknownNameError, did_you_mean


@dataclass(frozen=True)
class His2LipWeights:
    """Weights of the HIS2LIP loss (defaults used to train histovl-lite).

    Attributes:
        w_it, w_ti: weights of the image->text and text->image terms (0.5 each gives CLIP).
        w_ii, w_tt: weights of the intra-modal image->image and text->text terms.
        alpha: share of the target taken from items that share tissue type and/or stain.
        beta: share of the target taken from the other modality's detached similarity structure.
        tissue_weight, stain_weight: how much agreement on tissue / on stain counts when scoring
            which items share metadata (``M_ij = tissue_weight*[same tissue] + stain_weight*[same stain]``).
        structure_scale: inverse temperature of the softmax over the detached similarities.
    """

    w_it: float = 0.5
    w_ti: float = 0.5
    w_ii: float = 0.25
    w_tt: float = 0.25
    alpha: float = 0.4
    beta: float = 0.2
    tissue_weight: float = 1.0
    stain_weight: float = 0.5
    structure_scale: float = 20.0

    def __post_init__(self) -> None:
        for name in ("w_it", "w_ti", "w_ii", "w_tt", "alpha", "beta", "tissue_weight", "stain_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"His2LipWeights.{name} must be >= 0, got {getattr(self, name)}")
        if self.alpha + self.beta > 1:
            raise ValueError(f"alpha + beta must be <= 1 (got {self.alpha} + {self.beta})")


def _check_inputs(image_emb: torch.Tensor, text_emb: torch.Tensor) -> None:
    if image_emb.ndim != 2 or image_emb.shape != text_emb.shape:
        raise ValueError(
            f"image and text embeddings must both be [N, D] with the same shape; got "
            f"{tuple(image_emb.shape)} and {tuple(text_emb.shape)}"
        )
    if image_emb.shape[0] < 2:
        raise ValueError("a contrastive loss needs a batch of at least 2 pairs")


def _finite(loss: torch.Tensor, name: str) -> torch.Tensor:
    if not torch.isfinite(loss):
        raise NonFiniteError(f"{name} loss is not finite ({loss.item()}); lower the learning rate")
    return loss


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``-sum_j targets_ij * log_softmax(logits)_ij`` (rows of targets sum to 1)."""
    return -(targets * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP): mean of image->text and text->image cross-entropy.

    Args:
        image_emb, text_emb: L2-normalised [N, D] embeddings; row i of each is a pair.
        logit_scale: the learnable inverse temperature, already exponentiated (a scalar tensor).
    """
    _check_inputs(image_emb, text_emb)
    logits = logit_scale * image_emb @ text_emb.T
    labels = torch.arange(logits.shape[0], device=logits.device)
    loss = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
    return _finite(loss, "clip")


def metadata_affinity(
    n: int,
    tissue: torch.Tensor | None,
    stain: torch.Tensor | None,
    weights: His2LipWeights,
    device: torch.device,
) -> torch.Tensor:
    """``M_ij = tissue_weight*[tissue_i == tissue_j] + stain_weight*[stain_i == stain_j]``.

    A negative id means unknown and never matches (not even itself).
    """
    m = torch.zeros(n, n, device=device)
    for ids, w in ((tissue, weights.tissue_weight), (stain, weights.stain_weight)):
        if ids is None or w == 0:
            continue
        ids = ids.to(device)
        if ids.shape != (n,):
            raise ValueError(f"metadata ids must have shape ({n},), got {tuple(ids.shape)}")
        known = ids >= 0
        m = m + w * ((ids[:, None] == ids[None, :]) & known[:, None] & known[None, :]).float()
    return m


def _row_normalise(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows scaled to sum 1 and a mask of rows that had any mass."""
    sums = m.sum(dim=-1, keepdim=True)
    has_mass = sums.squeeze(-1) > 0
    return m / sums.clamp_min(1e-12), has_mass


def his2lip_targets(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    tissue: torch.Tensor | None,
    stain: torch.Tensor | None,
    weights: His2LipWeights,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Soft targets (detached) for the four terms, each with a mask of rows that count.

    Cross-modal targets blend the paired item (``1 - alpha - beta``), items sharing metadata
    (``alpha``) and the other modality's similarity structure (``beta``). Intra-modal targets
    exclude the item itself and blend metadata and structure only.
    """
    n = image_emb.shape[0]
    device = image_emb.device
    eye = torch.eye(n, device=device)
    off = 1.0 - eye
    meta = metadata_affinity(n, tissue, stain, weights, device)
    meta_cross, has_meta = _row_normalise(meta)
    meta_cross = torch.where(has_meta[:, None], meta_cross, eye)  # unknown metadata: paired item
    with torch.no_grad():
        sim_img = weights.structure_scale * image_emb.detach() @ image_emb.detach().T
        sim_txt = weights.structure_scale * text_emb.detach() @ text_emb.detach().T
    struct_txt, struct_img = sim_txt.softmax(-1), sim_img.softmax(-1)
    hard = 1.0 - weights.alpha - weights.beta
    all_rows = torch.ones(n, dtype=torch.bool, device=device)
    # a query in one modality takes its structure from the other modality's embeddings
    y_it = hard * eye + weights.alpha * meta_cross + weights.beta * struct_txt
    y_ti = hard * eye + weights.alpha * meta_cross + weights.beta * struct_img
    neg_inf = torch.finfo(sim_img.dtype).min
    meta_off = meta * off
    intra = {}
    for key, sim in (("ii", sim_txt), ("tt", sim_img)):
        struct_off = sim.masked_fill(eye.bool(), neg_inf).softmax(-1) * off
        raw = weights.alpha * meta_off + weights.beta * struct_off
        y, rows = _row_normalise(raw)
        intra[key] = (y, rows)
    return {"it": (y_it, all_rows), "ti": (y_ti, all_rows), **intra}


def _masked_soft_ce(logits: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Soft cross-entropy with the diagonal excluded, averaged over the rows that count."""
    n = logits.shape[0]
    diag = torch.eye(n, dtype=torch.bool, device=logits.device)
    logp = F.log_softmax(logits.masked_fill(diag, float("-inf")), dim=-1).masked_fill(diag, 0.0)
    per_row = -(targets * logp).sum(dim=-1)
    if not bool(rows.any()):
        return logits.sum() * 0.0
    return per_row[rows].mean()


def his2lip_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: torch.Tensor,
    *,
    tissue: torch.Tensor | None = None,
    stain: torch.Tensor | None = None,
    weights: His2LipWeights | None = None,
) -> torch.Tensor:
    """Weighted inter- and intra-modal soft-target contrastive loss (see docs/losses.md).

    Args:
        image_emb, text_emb: L2-normalised [N, D] embeddings of N pairs (gathered over ranks).
        logit_scale: exponentiated learnable inverse temperature (scalar tensor).
        tissue, stain: optional integer ids [N] of each pair's tissue type and stain/biomarker;
            negative means unknown.
        weights: term weights and target blend; `His2LipWeights()` when None.
    """
    _check_inputs(image_emb, text_emb)
    w = weights or His2LipWeights()
    targets = his2lip_targets(image_emb, text_emb, tissue, stain, w)
    logits_it = logit_scale * image_emb @ text_emb.T
    loss = w.w_it * soft_cross_entropy(logits_it, targets["it"][0])
    loss = loss + w.w_ti * soft_cross_entropy(logits_it.T, targets["ti"][0])
    if w.w_ii > 0:
        loss = loss + w.w_ii * _masked_soft_ce(logit_scale * image_emb @ image_emb.T, *targets["ii"])
    if w.w_tt > 0:
        loss = loss + w.w_tt * _masked_soft_ce(logit_scale * text_emb @ text_emb.T, *targets["tt"])
    return _finite(loss, "his2lip")


LossFn = Callable[..., torch.Tensor]

LOSSES: dict[str, LossFn] = {"clip": clip_loss, "his2lip": his2lip_loss}


def get_loss(name: str) -> LossFn:
    """Look up a loss by name (`clip`, `his2lip`)."""
    if name not in LOSSES:
        raise UnknownNameError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}.{did_you_mean(name, LOSSES)}")
    return LOSSES[name]
