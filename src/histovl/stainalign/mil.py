"""Gated attention-MIL pooling (Ilse, Tomczak & Welling, 2018) and the symmetric contrastive loss.

A slide is a bag of tile embeddings ``X`` [K, D]. The pooling first embeds each tile,
``h_k = ReLU(W x_k)``, then scores it with the gated attention of Ilse et al. (eq. 9)

    a_k = softmax_k( w^T ( tanh(V h_k) ⊙ sigmoid(U h_k) ) )

and returns ``z = Σ_k a_k h_k``. The attention weights `a` say which tiles carried the slide
embedding: they are what the heatmaps show.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GatedAttentionPool(nn.Module):
    """Bag of tile embeddings [K, D] -> slide embedding [hidden_dim] and attention [K]."""

    def __init__(self, in_dim: int, hidden_dim: int = 128, attention_dim: int = 64, dropout: float = 0.1) -> None:
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))
        self.attention_v = nn.Linear(hidden_dim, attention_dim)
        self.attention_u = nn.Linear(hidden_dim, attention_dim)
        self.attention_w = nn.Linear(attention_dim, 1)

    def forward(self, bag: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool one bag [K, D] or a padded batch [B, K, D] with `mask` [B, K] (True = real tile).

        Returns:
            (slide embeddings [B, hidden_dim] or [hidden_dim], attention [B, K] or [K]).
        """
        single = bag.dim() == 2
        if single:
            bag = bag.unsqueeze(0)
            mask = None if mask is None else mask.unsqueeze(0)
        h = self.embed(bag)
        scores = self.attention_w(torch.tanh(self.attention_v(h)) * torch.sigmoid(self.attention_u(h))).squeeze(-1)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        attention = torch.softmax(scores, dim=-1)
        z = torch.einsum("bk,bkh->bh", attention, h)
        return (z[0], attention[0]) if single else (z, attention)


def symmetric_contrastive_loss(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """CLIP's symmetric InfoNCE between paired rows of `a` and `b` ([N, E] each).

    Row i of `a` should match row i of `b` (the H&E and IHC slides of one case) and no other;
    the loss is the mean of the a→b and b→a cross-entropies over cosine similarities / temperature.
    """
    if a.shape != b.shape:
        raise ValueError(f"paired embeddings must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / temperature
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def pad_bags(bags: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack bags of different sizes into [B, K_max, D] with a [B, K_max] validity mask."""
    if not bags:
        raise ValueError("pad_bags needs at least one bag")
    k_max = max(int(b.shape[0]) for b in bags)
    dim = int(bags[0].shape[1])
    out = bags[0].new_zeros((len(bags), k_max, dim))
    mask = torch.zeros((len(bags), k_max), dtype=torch.bool, device=bags[0].device)
    for i, b in enumerate(bags):
        out[i, : b.shape[0]] = b
        mask[i, : b.shape[0]] = True
    return out, mask
