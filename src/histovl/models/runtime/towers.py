"""The two towers of an encoder as exportable modules, and the inputs an exported tower takes.

The image tower of every family is its `Encoder._encode_image` (pixels in, unnormalised features
out). A text tower is exported after tokenisation, so the graph takes token ids (and a mask)
padded to the card's full context length (the TorchScript exporter fixes sequence lengths; a
causal tower's end-of-text pooling and the others' attention masks make the padding inert):
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
    """An exportable text tower: the module, its input names (all int64 [N, context length],
    dynamic batch) and the tokeniser that feeds it."""

    module: nn.Module
    input_names: tuple[str, ...]
    tokenize: Callable[[Sequence[str]], dict[str, np.ndarray]]


class _Forward(nn.Module):
    def __init__(self, fn: Callable[..., torch.Tensor], owner: nn.Module) -> None:
        super().__init__()
        self.owner = owner  # registers the weights, so export sees them as parameters
        self.fn = fn

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.fn(*inputs)


def _numpy(batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().astype(np.int64) for k, v in batch.items()}


def _open_clip_tower(encoder: Any) -> TextTower:
    def tokenize(texts: Sequence[str]) -> dict[str, np.ndarray]:
        return _numpy({"tokens": encoder.tokenize(texts)})  # open_clip pads to the full context

    return TextTower(_Forward(encoder.model.encode_text, encoder), ("tokens",), tokenize)


def _hf_clip_tower(encoder: Any) -> TextTower:
    model = encoder.model

    def forward(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pooled = model.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return model.text_projection(pooled)

    return TextTower(_Forward(forward, encoder), ("input_ids", "attention_mask"),
                     lambda t: _numpy(encoder.tokenize(t, padding="max_length")))


def _lite_tower(encoder: Any) -> TextTower:
    def forward(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return encoder.project_text(encoder.text_features_from_tokens(input_ids, attention_mask))

    return TextTower(_Forward(forward, encoder), ("input_ids", "attention_mask"),
                     lambda t: _numpy(encoder.tokenize(t, padding="max_length")))


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
