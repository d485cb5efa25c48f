"""The training steps of `HistoStainAlign.fit` (docs/stainalign.md, "Training").

- `training_data`: bags as checked tensors, class indices (``-1`` for an unlabelled pair), class
  weights from the labelled pairs, and the per-stain standardisation of the tile features.
- `train_epochs`: the gradient loop. Per batch of pairs, the class-balanced cross-entropy over
  the batch's *labelled* pairs (times ``cls_weight``) plus ``align_weight ×`` the symmetric
  InfoNCE over *all* its pairs. Joint training runs it once with both terms; the two-stage
  schedule runs it with ``cls_weight=0`` (alignment only) and then `fit_head`.
- `fit_head`: the two-stage classifier, an L2-regularised logistic regression on the frozen,
  aligned H&E embeddings of the labelled pairs, written into the network's linear classifier.
- `choose_threshold`: the binary decision threshold, chosen on the training pairs only.

Under torchrun the steps run data-parallel (`distributed_step`); see `HistoStainAlign`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from histovl.distributed import DistContext, all_gather_rows_with_grad, all_reduce_sum
from histovl.errors import NonFiniteError
from histovl.stainalign.mil import pad_bags, symmetric_contrastive_loss
from histovl.stainalign.network import StainAlignNetwork
from histovl.stainalign.params import StainAlignParams

#: The label of a pair without a recorded status (the pairs CSV leaves ``label`` empty).
UNLABELLED = ""


@dataclass
class TrainingData:
    """What `HistoStainAlign.fit` trains on (all pairs; ``target`` is -1 where unlabelled)."""

    he: list[torch.Tensor]
    ihc: list[torch.Tensor] | None
    target: torch.Tensor
    weight: torch.Tensor | None
    classes: list[str]
    dim: int

    @property
    def labelled(self) -> torch.Tensor:
        return self.target >= 0


def as_bags(bags: Sequence[np.ndarray], what: str, dim: int | None = None) -> list[torch.Tensor]:
    """Checked float32 tensors [n_tiles, dim] (non-empty, finite, of the expected dimension)."""
    out = []
    for i, b in enumerate(bags):
        arr = np.asarray(b, dtype=np.float32)
        if arr.ndim != 2 or arr.shape[0] == 0:
            raise ValueError(f"{what} bag {i} must be a non-empty [n_tiles, dim] array, got shape {arr.shape}")
        if dim is not None and arr.shape[1] != dim:
            raise ValueError(f"{what} bag {i} has dimension {arr.shape[1]}, the model expects {dim}")
        if not np.isfinite(arr).all():
            raise NonFiniteError(f"{what} bag {i} holds NaN/Inf tile embeddings; re-embed that slide")
        out.append(torch.from_numpy(arr))
    return out


def is_unlabelled(value: object) -> bool:
    """None, NaN and the empty string mean "no recorded status"."""
    return value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == UNLABELLED


def training_data(
    p: StainAlignParams, he_bags: Sequence[np.ndarray], ihc_bags: Sequence[np.ndarray] | None, y: Sequence[object]
) -> TrainingData:
    """Checked bags, class indices and class weights (from the labelled pairs).

    The baseline cannot use a pair without a label, so it drops them here; the aligned model
    keeps them for the alignment term.
    """
    if len(y) != len(he_bags):
        raise ValueError(f"{len(he_bags)} H&E bags but {len(y)} labels")
    if p.align and (ihc_bags is None or len(ihc_bags) != len(he_bags)):
        raise ValueError("alignment needs one IHC bag per H&E bag (pass align=False for the baseline)")
    keep = [i for i, v in enumerate(y) if p.align or not is_unlabelled(v)]
    labels = [None if is_unlabelled(y[i]) else str(y[i]) for i in keep]
    classes = sorted({v for v in labels if v is not None})
    if len(classes) < 2:
        raise ValueError(f"need at least two classes among the labelled pairs to train a status classifier, got {classes}")
    dim = int(as_bags([he_bags[keep[0]]], "H&E")[0].shape[1])
    he = as_bags([he_bags[i] for i in keep], "H&E", dim)
    ihc = as_bags([ihc_bags[i] for i in keep], "IHC", dim) if p.align and ihc_bags is not None else None
    target = torch.tensor([-1 if v is None else classes.index(v) for v in labels])
    counts = torch.bincount(target[target >= 0], minlength=len(classes)).float()
    weight = (counts.sum() / (len(classes) * counts.clamp(min=1))) if p.class_weight == "balanced" else None
    return TrainingData(he, ihc, target, weight, classes, dim)


def batches(n: int, batch_size: int, gen: torch.Generator) -> list[list[int]]:
    """This epoch's batches of pair indices (a last batch of one joins the one before)."""
    order = torch.randperm(n, generator=gen).tolist()
    out = [order[s : s + batch_size] for s in range(0, n, batch_size)]
    if len(out) > 1 and len(out[-1]) < 2:  # InfoNCE needs >= 2 pairs
        out[-2].extend(out.pop())
    return out


def sample_tiles(bag: torch.Tensor, max_tiles: int, gen: torch.Generator) -> torch.Tensor:
    """At most `max_tiles` tiles of `bag`, drawn without replacement when it is larger."""
    if bag.shape[0] <= max_tiles:
        return bag
    return bag[torch.randperm(bag.shape[0], generator=gen)[:max_tiles]]


def _weighted_ce_sum(logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Sum over the labelled rows (``y >= 0``) of the class-weighted cross-entropy."""
    mask = y >= 0
    return F.cross_entropy(logits[mask], y[mask], weight=weight, reduction="sum")


def _ce_denominator(target: torch.Tensor, weight: torch.Tensor | None) -> float:
    """The weighted-mean denominator of a batch's labelled rows (1 when it has none)."""
    y = target[target >= 0]
    total = float(weight[y].sum()) if weight is not None else float(len(y))
    return total if total > 0 else 1.0


def local_step(
    net: StainAlignNetwork, p: StainAlignParams, data: TrainingData, idx: list[int], gen: torch.Generator, cls_weight: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """One process: the batch's loss to back-propagate and the logged losses."""
    he_x, he_m = pad_bags([sample_tiles(data.he[i], p.max_tiles, gen) for i in idx])
    e_he, _ = net.he_embed(he_x, he_m)
    y = data.target[idx]
    cls_loss = _weighted_ce_sum(net.logits(e_he), y, data.weight) / _ce_denominator(y, data.weight)
    loss = cls_weight * cls_loss
    align_loss = torch.zeros(())
    if data.ihc is not None and len(idx) >= 2:
        ihc_x, ihc_m = pad_bags([sample_tiles(data.ihc[i], p.max_tiles, gen) for i in idx])
        align_loss = symmetric_contrastive_loss(e_he, net.ihc_embed(ihc_x, ihc_m), p.temperature)
        loss = loss + p.align_weight * align_loss
    return loss, {"loss": float(loss.detach()), "cls": float(cls_loss.detach()), "align": float(align_loss.detach())}


def _pad_or_empty(bags: list[torch.Tensor], dim: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """`pad_bags` on `device`, or an empty batch [0, 1, dim] for a rank with no bags this step."""
    if not bags:
        return torch.zeros((0, 1, dim), device=device), torch.zeros((0, 1), dtype=torch.bool, device=device)
    x, m = pad_bags(bags)
    return x.to(device), m.to(device)


def distributed_step(
    trainer: nn.Module, p: StainAlignParams, data: TrainingData, idx: list[int], gen: torch.Generator,
    ctx: DistContext, cls_weight: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """This rank's share of the global batch `idx`: (loss to back-propagate, logged losses).

    Every rank draws the tile samples of the *whole* batch from the shared generator (so the
    generators stay in step, and the samples equal a one-process run's), then keeps every
    ``world``-th bag (`DistributedSampler`'s split). Classification: this rank's weighted CE
    *sum* over the labelled pairs of its shard, over the weight total of the global batch's
    labelled pairs, times ``world``, so DDP's gradient average is the one-process gradient also
    for shards of different sizes. Alignment: the slide embeddings of all ranks are gathered
    with gradients and every rank computes the same symmetric InfoNCE over the global batch.
    """
    world, rank, device = ctx.world_size, ctx.rank, ctx.device
    he_all = [sample_tiles(data.he[i], p.max_tiles, gen) for i in idx]
    ihc_all = [sample_tiles(data.ihc[i], p.max_tiles, gen) for i in idx] if data.ihc is not None and len(idx) >= 2 else None
    he_x, he_m = _pad_or_empty(he_all[rank::world], data.dim, device)
    ihc_x = ihc_m = None
    if ihc_all is not None:
        ihc_x, ihc_m = _pad_or_empty(ihc_all[rank::world], data.dim, device)
    e_he, logits, e_ihc = trainer(he_x, he_m, ihc_x, ihc_m)  # all parameters used inside DDP's forward
    weight = data.weight.to(device) if data.weight is not None else None
    denominator = _ce_denominator(data.target[idx], data.weight)
    cls_sum = _weighted_ce_sum(logits, data.target[idx[rank::world]].to(device), weight)
    loss = cls_weight * cls_sum * (world / denominator)
    cls_value = float(all_reduce_sum(cls_sum.detach())) / denominator
    align_value = 0.0
    if e_ihc is not None:
        all_he, _ = all_gather_rows_with_grad(e_he)
        all_ihc, _ = all_gather_rows_with_grad(e_ihc)
        align_loss = symmetric_contrastive_loss(all_he, all_ihc, p.temperature)
        loss = loss + p.align_weight * align_loss
        align_value = float(align_loss.detach())
    total = cls_weight * cls_value + (p.align_weight * align_value if ihc_all is not None else 0.0)
    return loss, {"loss": total, "cls": cls_value, "align": align_value}


def train_epochs(
    net: StainAlignNetwork, trainer: nn.Module, p: StainAlignParams, data: TrainingData, gen: torch.Generator,
    ctx: DistContext, cls_weight: float,
) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """``p.epochs`` epochs of AdamW over all pairs; returns (per-epoch, per-step) losses."""
    opt = torch.optim.AdamW(net.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    n = len(data.he)
    history: list[dict[str, float]] = []
    steps: list[dict[str, float]] = []
    for epoch in range(p.epochs):
        net.train()
        sums = {"loss": 0.0, "cls": 0.0, "align": 0.0}
        for idx in batches(n, p.batch_size, gen):
            if ctx.is_distributed:
                loss, logged = distributed_step(trainer, p, data, idx, gen, ctx, cls_weight)
            else:
                loss, logged = local_step(net, p, data, idx, gen, cls_weight)
            if not np.isfinite(logged["loss"]):
                raise NonFiniteError(f"HistoStainAlign loss became NaN/Inf at epoch {epoch}; lower --lr")
            opt.zero_grad()
            loss.backward()
            opt.step()
            for key, val in logged.items():
                sums[key] += val * len(idx) / n
            steps.append({"epoch": float(epoch), **logged})
        history.append({"epoch": float(epoch), **sums})
    return history, steps


def embed_he(net: StainAlignNetwork, bags: list[torch.Tensor], batch: int = 64) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """H&E slide embeddings [N, projection_dim] and attention per bag, in eval mode, all tiles."""
    net.eval()
    embs: list[torch.Tensor] = []
    atts: list[torch.Tensor] = []
    with torch.inference_mode():
        for s in range(0, len(bags), batch):
            chunk = bags[s : s + batch]
            x, m = pad_bags(chunk)
            e, a = net.he_embed(x, m)
            embs.append(e)
            atts.extend(a[i, : len(b)] for i, b in enumerate(chunk))
    return torch.cat(embs), atts


def fit_head(net: StainAlignNetwork, p: StainAlignParams, data: TrainingData) -> None:
    """Two-stage, second stage: logistic regression on the frozen aligned H&E embedding.

    scikit-learn's L2-regularised ``LogisticRegression`` (``C = head_c``, class weights as
    ``class_weight``) on the unit-length embeddings of the labelled pairs, copied into
    ``net.classifier`` so that ``net.logits(e)`` gives its decision values (binary: the second
    class's logit, the first's is 0).
    """
    from sklearn.linear_model import LogisticRegression

    emb, _ = embed_he(net, data.he)
    mask = data.labelled
    x, y = emb[mask].double().numpy(), data.target[mask].numpy()
    head = LogisticRegression(C=p.head_c, class_weight=p.class_weight, max_iter=1000).fit(x, y)
    coef, intercept = torch.from_numpy(head.coef_).float(), torch.from_numpy(head.intercept_).float()
    if coef.shape[0] == 1:  # binary: logit(class 1) - logit(class 0) = coef · e + b
        coef = torch.cat([torch.zeros_like(coef), coef])
        intercept = torch.cat([torch.zeros(1), intercept])
    with torch.no_grad():
        net.classifier.weight.copy_(coef / p.logit_scale)
        net.classifier.bias.copy_(intercept)


def choose_threshold(scores: np.ndarray, y: np.ndarray, balanced: bool) -> float:
    """The threshold on P(second class) with the best training balanced accuracy (`balanced`) or
    accuracy; among equally good ones, the one closest to 0.5. Candidates: 0, 0.5, 1 and the
    midpoints between consecutive distinct scores (a score above the threshold says "second class")."""
    s = np.sort(np.unique(scores))
    candidates = np.unique(np.concatenate([[0.0, 0.5, 1.0], (s[1:] + s[:-1]) / 2]))
    pos = y == 1
    n_pos, n_neg = max(int(pos.sum()), 1), max(int((~pos).sum()), 1)
    said = scores[None, :] > candidates[:, None]
    tp = (said & pos[None, :]).sum(axis=1)
    tn = (~said & ~pos[None, :]).sum(axis=1)
    value = 0.5 * (tp / n_pos + tn / n_neg) if balanced else (tp + tn) / len(y)
    best = candidates[np.isclose(value, value.max())]
    return float(best[np.argmin(np.abs(best - 0.5))])
