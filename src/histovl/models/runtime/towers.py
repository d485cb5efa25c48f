"""The two towers of an encoder as exportable modules, and the inputs an exported tower takes.

The image tower of every family is its `Encoder._encode_image` (pixels in, unnormalised features
out). A text tower is exported after tokenisation, so the graph takes token ids (and a mask)
with a dynamic batch and length, padded to the longest prompt as the torch path does (causal
open_clip towers are cut to the longest prompt, the cut read from the input's shape):
open_clip towers, transformers CLIP and histovl-lite's MiniLM. Other families (CONCH) keep their text tower in
torch: prompts are few and cached, so the image tower is where the time goes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn


class ImageTower(nn.Module):
    """pixels [N, 3, S, S] -> unnormalised image features [N, D]."""

    def __init__(self, encoder: Any) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.encoder._encode_image(pixels)


@dataclass(frozen=True)
class TextTower:
    """An exportable text tower: the module, its input names (all int64 [N, L], dynamic batch
    and length) and the tokeniser that feeds it."""

    module: nn.Module
    input_names: tuple[str, ...]
    tokenize: Callable[[Sequence[str]], dict[str, np.ndarray]]


class _Forward(nn.Module):
    def __init__(self, fn: Callable[..., torch.Tensor], owner: nn.Module) -> None:
        super().__init__()
        self.owner = owner  # registers the weights, so export sees them as parameters
        self.fn = fn

    def forward(self, first: torch.Tensor, second: torch.Tensor | None = None) -> torch.Tensor:
        return self.fn(first) if second is None else self.fn(first, second)


def _numpy(batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().astype(np.int64) for k, v in batch.items()}


def _cut_length(tokens: torch.Tensor) -> int:
    """The longest prompt's length (padding id is 0), as `OpenClipEncoder` truncates."""
    return max(1, min(int((tokens != 0).sum(dim=1).max().item()), tokens.shape[1]))


def _open_clip_cut_forward(model: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """open_clip's `CLIP.encode_text` over tokens already cut to their length
    (`OpenClipEncoder._encode_text_truncated` after its cut)."""
    from open_clip.transformer import text_global_pool

    def forward(text: torch.Tensor) -> torch.Tensor:
        length = text.shape[1]
        cast_dtype = model.transformer.get_cast_dtype()
        x = model.token_embedding(text).to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
        x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:length, :length]))
        x = text_global_pool(x, text, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
        if model.text_projection is not None:
            x = model.text_projection(x) if isinstance(model.text_projection, nn.Linear) else x @ model.text_projection
        return x

    return forward


def _open_clip_tower(encoder: Any) -> TextTower:
    cut = bool(encoder.card.text_causal and encoder._supports_truncation())

    def tokenize(texts: Sequence[str]) -> dict[str, np.ndarray]:
        tokens = encoder.tokenize(texts)
        return _numpy({"tokens": tokens[:, : _cut_length(tokens)] if cut else tokens})

    forward = _open_clip_cut_forward(encoder.model) if cut else encoder.model.encode_text
    return TextTower(_Forward(forward, encoder), ("tokens",), tokenize)


def _hf_clip_tower(encoder: Any) -> TextTower:
    model = encoder.model

    def forward(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pooled = model.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return model.text_projection(pooled)

    return TextTower(_Forward(forward, encoder), ("input_ids", "attention_mask"),
                     lambda t: _numpy(encoder.tokenize(t)))


def _lite_tower(encoder: Any) -> TextTower:
    def forward(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return encoder.project_text(encoder.text_features_from_tokens(input_ids, attention_mask))

    return TextTower(_Forward(forward, encoder), ("input_ids", "attention_mask"),
                     lambda t: _numpy(encoder.tokenize(t)))


_TEXT_TOWERS: dict[str, Callable[[Any], TextTower]] = {
    "open_clip": _open_clip_tower,
    "hf_clip": _hf_clip_tower,
    "histovl_lite": _lite_tower,
}


def text_tower(encoder: Any) -> TextTower | None:
    """The exportable text tower of `encoder`'s family, or None (its text stays in torch)."""
    build = _TEXT_TOWERS.get(encoder.card.family)
    return build(encoder) if build is not None else None


def has_text_tower(family: str) -> bool:
    """Whether prompts of this family run in the ONNX runtime (else in torch)."""
    return family in _TEXT_TOWERS
