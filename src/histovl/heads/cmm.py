"""HistoCLIP's Cross-Modal Matching (CMM) head on frozen image features.

Class queries are the zero-shot text classifier's rows (templates averaged, L2-normalised: the
paper's eq. 2) and stay fixed; image features are keys and values. One decoder block:
multi-head cross-attention with a residual, a two-layer feed-forward network with a residual,
then the mean over the feature dimension (the paper's adaptive average pooling, eq. 4) gives one
logit per class. Layer norms are applied before attention and FFN (pre-norm), so that the mean
over features reads the residual stream directly instead of a normalised vector whose mean is
pinned by the norm.

Two key/value modes:

* ``tokens`` (default): keys/values are one image's own tokens [T, D] (ViT patch tokens or crop
  embeddings, see `histovl.heads.features`). A prediction depends on that image only.
* ``pooled``: the paper's literal eq. 3 with one pooled feature per image, z in R^{B x d}: the
  attention weights are a softmax over the *images of the batch*, and A has the paper's shape
  N x B x d (each image's value weighted by its share of the class's attention). CAVEAT: a
  prediction then depends on which other images share its batch (tested); kept for reproduction.
  Under data-parallel training (`CMMHead.fit` in a torchrun job) each rank holds part of the
  batch, so `batch_gather` collects every rank's keys (with gradients) and the softmax runs over
  the whole global batch, as in one process.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

KVMode = Literal["tokens", "pooled"]


class CrossModalMatching(nn.Module):
    """The CMM decoder block. `forward` maps features to per-class logits [B, C].

    Args:
        class_embeddings: [C, D] fixed queries (a buffer, not trained).
        n_heads: attention heads; D must be divisible by it.
        ffn_dim: hidden width of the two-layer feed-forward network.
        dropout: dropout after attention and inside the FFN (training only).
        kv_mode: ``tokens`` (features [B, T, D]) or ``pooled`` (features [B, D]).
    """

    def __init__(
        self,
        class_embeddings: torch.Tensor,
        *,
        n_heads: int = 8,
        ffn_dim: int = 1024,
        dropout: float = 0.1,
        kv_mode: KVMode = "tokens",
    ) -> None:
        super().__init__()
        n_classes, dim = class_embeddings.shape
        if dim % n_heads:
            raise ValueError(f"feature size {dim} is not divisible by n_heads={n_heads}")
        if kv_mode not in ("tokens", "pooled"):
            raise ValueError(f"kv_mode must be 'tokens' or 'pooled', got {kv_mode!r}")
        self.kv_mode: KVMode = kv_mode
        self.n_heads = n_heads
        # pooled mode under DDP: keys of all ranks + this rank's rows (None: the batch is local)
        self.batch_gather: Callable[[torch.Tensor], tuple[torch.Tensor, slice]] | None = None
        self.register_buffer("queries", class_embeddings.detach().float().clone())
        self.norm_q, self.norm_kv, self.norm_ffn = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q_proj, self.k_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.v_proj, self.out_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn_dim, dim))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """[..., D] -> [..., H, D/H]."""
        return x.reshape(*x.shape[:-1], self.n_heads, x.shape[-1] // self.n_heads)

    def attend(self, features: torch.Tensor) -> torch.Tensor:
        """Cross-attention output A reshaped to [B, C, D] (before the residual)."""
        queries: torch.Tensor = self.queries  # type: ignore[assignment]
        q = self._heads(self.q_proj(self.norm_q(queries)))  # [C, H, dh]
        kv = self.norm_kv(features)
        k, v = self._heads(self.k_proj(kv)), self._heads(self.v_proj(kv))
        scale = 1.0 / math.sqrt(q.shape[-1])
        if self.kv_mode == "tokens":
            if features.ndim != 3:
                raise ValueError(f"kv_mode='tokens' needs features [B, T, D], got {tuple(features.shape)}")
            weights = torch.softmax(torch.einsum("chd,bthd->bhct", q, k) * scale, dim=-1)
            out = torch.einsum("bhct,bthd->bchd", self.dropout(weights), v)
        else:
            if features.ndim != 2:
                raise ValueError(f"kv_mode='pooled' needs features [B, D], got {tuple(features.shape)}")
            if self.batch_gather is None:
                weights = torch.softmax(torch.einsum("chd,bhd->hcb", q, k) * scale, dim=-1)  # over the batch
            else:  # the softmax runs over the global batch; keep the columns of this rank's images
                all_keys, own = self.batch_gather(k)
                weights = torch.softmax(torch.einsum("chd,bhd->hcb", q, all_keys) * scale, dim=-1)[..., own]
            out = torch.einsum("hcb,bhd->bchd", self.dropout(weights), v)
        return self.out_proj(out.flatten(2))  # [B, C, H, dh] -> [B, C, D] (also for B = 0)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        queries: torch.Tensor = self.queries  # type: ignore[assignment]
        x = queries.unsqueeze(0) + self.dropout(self.attend(features))  # residual on queries
        x = x + self.ffn(self.norm_ffn(x))
        return x.mean(dim=-1)  # adaptive average pooling over the feature dimension -> [B, C]
