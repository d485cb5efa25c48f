"""The network behind `HistoStainAlign` (docs/stainalign.md, "Model")."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from histovl.stainalign.mil import GatedAttentionPool
from histovl.stainalign.params import StainAlignParams


def feature_stats(bags: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and standard deviation over all tiles (a constant feature gets 1)."""
    tiles = torch.cat(bags).double()
    std = tiles.std(dim=0, unbiased=False)
    return tiles.mean(dim=0).float(), torch.where(std > 1e-8, std, torch.ones_like(std)).float()


class StainAlignNetwork(nn.Module):
    """Both stains' standardisation, attention-MIL pooling and projection, and the classifier."""

    he_mean: torch.Tensor
    he_std: torch.Tensor
    ihc_mean: torch.Tensor
    ihc_std: torch.Tensor

    def __init__(self, in_dim: int, n_classes: int, p: StainAlignParams) -> None:
        super().__init__()
        self.he_pool = GatedAttentionPool(in_dim, p.hidden_dim, p.attention_dim, p.dropout)
        self.ihc_pool = GatedAttentionPool(in_dim, p.hidden_dim, p.attention_dim, p.dropout)
        self.he_proj = nn.Linear(p.hidden_dim, p.projection_dim)
        self.ihc_proj = nn.Linear(p.hidden_dim, p.projection_dim)
        self.classifier = nn.Linear(p.projection_dim, n_classes)
        self.logit_scale = p.logit_scale
        for stain in ("he", "ihc"):  # feature standardisation (identity until `standardise`)
            self.register_buffer(f"{stain}_mean", torch.zeros(in_dim))
            self.register_buffer(f"{stain}_std", torch.ones(in_dim))

    def standardise(self, he: list[torch.Tensor], ihc: list[torch.Tensor] | None) -> None:
        """Set the per-stain feature mean/std from the training tiles."""
        for stain, bags in (("he", he), ("ihc", ihc)):
            if bags is not None:
                mean, std = feature_stats(bags)
                getattr(self, f"{stain}_mean").copy_(mean)
                getattr(self, f"{stain}_std").copy_(std)

    def he_embed(self, bags: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z, att = self.he_pool((bags - self.he_mean) / self.he_std, mask)
        return F.normalize(self.he_proj(z), dim=-1), att

    def ihc_embed(self, bags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        z, _ = self.ihc_pool((bags - self.ihc_mean) / self.ihc_std, mask)
        return F.normalize(self.ihc_proj(z), dim=-1)

    def logits(self, e_he: torch.Tensor) -> torch.Tensor:
        return self.classifier(e_he * self.logit_scale)

    def branches(
        self, he_x: torch.Tensor, he_m: torch.Tensor, ihc_x: torch.Tensor | None = None, ihc_m: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """One training forward: (H&E embeddings, class logits, IHC embeddings or None)."""
        e_he, _ = self.he_embed(he_x, he_m)
        e_ihc = self.ihc_embed(ihc_x, ihc_m) if ihc_x is not None and ihc_m is not None else None
        return e_he, self.logits(e_he), e_ihc
