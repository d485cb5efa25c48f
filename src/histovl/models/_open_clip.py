"""open_clip family: OpenAI CLIP, QuiltNet, BiomedCLIP and any `open_clip:<ARCH>:<PATH>` model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from open_clip.transformer import text_global_pool

from histovl.models.card import ModelCard
from histovl.models.encoder import Encoder


class OpenClipEncoder(Encoder):
    """Wraps an open_clip model (`open_clip.CLIP` or `CustomTextCLIP`).

    For causal CLIP text towers (card.text_causal) prompts are encoded only up to the longest
    prompt in the batch: with a causal mask and end-of-text pooling, the padding positions cannot
    influence the pooled token, so the result equals full-context encoding (tested) at a fraction
    of the cost (PERFORMANCE.md: 151 vs 17.8 prompts/s for ViT-B/32).
    """

    def __init__(self, model: Any, tokenizer: Any, card: ModelCard, weights_id: str) -> None:
        super().__init__(card, weights_id)
        self.model = model.eval()
        self.tokenizer = tokenizer

    def _encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts)).to(self.device)

    def _encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenize(texts)
        if self.card.text_causal and self._supports_truncation():
            return self._encode_text_truncated(tokens)
        return self.model.encode_text(tokens)

    def _supports_truncation(self) -> bool:
        m = self.model
        return (
            hasattr(m, "token_embedding")
            and getattr(m, "attn_mask", None) is not None
            and getattr(m, "text_pool_type", "argmax") in ("argmax", "eos")
        )

    def _encode_text_truncated(self, tokens: torch.Tensor) -> torch.Tensor:
        """open_clip's `CLIP.encode_text`, cut to the longest prompt (padding id is 0)."""
        m = self.model
        length = int((tokens != 0).sum(dim=1).max().item())
        length = max(1, min(length, tokens.shape[1]))
        text = tokens[:, :length]
        cast_dtype = m.transformer.get_cast_dtype()
        x = m.token_embedding(text).to(cast_dtype)
        x = x + m.positional_embedding[:length].to(cast_dtype)
        x = m.transformer(x, attn_mask=m.attn_mask[:length, :length])
        x = m.ln_final(x)
        x = text_global_pool(x, text, m.text_pool_type, eos_token_id=getattr(m, "text_eos_id", None))
        if m.text_projection is not None:
            x = m.text_projection(x) if isinstance(m.text_projection, torch.nn.Linear) else x @ m.text_projection
        return x

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp().item())
