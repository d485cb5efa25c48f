"""The one interface every model family implements.

Callers (embedding engine, zero-shot, training, fusion) only see `Encoder`; each family's loader
module hides how its towers, tokenizer and checkpoints work.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from histovl.models.card import ModelCard
from histovl.models.preprocess import Preprocess


class Encoder(nn.Module, abc.ABC):
    """A dual encoder with its card, preprocessing and tokenizer.

    Subclasses implement `_encode_image` and `_encode_text`; the public methods add L2
    normalisation. Features are returned in float32 on the encoder's device.

    Attributes:
        card: the frozen model card (preprocessing, text settings, provenance).
        weights_id: a stable identity of the weights (sha256 of the weight files, or of the
            hub revision); part of every embedding-cache key.
    """

    card: ModelCard
    weights_id: str

    def __init__(self, card: ModelCard, weights_id: str) -> None:
        super().__init__()
        self.card = card
        self.weights_id = weights_id

    # ---- preprocessing -------------------------------------------------------------------
    @property
    def preprocess(self) -> Preprocess:
        """Picklable PIL -> tensor transform for this model (safe to send to workers)."""
        return Preprocess.from_card(self.card)

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    # ---- the two towers --------------------------------------------------------------------
    @abc.abstractmethod
    def _encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """[N, 3, S, S] normalised pixels -> [N, D] unnormalised features."""

    @abc.abstractmethod
    def _encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts -> [N, D] unnormalised features (tokenise, and for causal towers, truncate)."""

    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Encode a batch of preprocessed images."""
        feats = self._encode_image(pixels.to(self.device)).float()
        return torch.nn.functional.normalize(feats, dim=-1) if normalize else feats

    def encode_text(self, texts: Sequence[str], normalize: bool = True) -> torch.Tensor:
        """Encode a list of prompts (tokenisation included)."""
        feats = self._encode_text(list(texts)).float()
        return torch.nn.functional.normalize(feats, dim=-1) if normalize else feats

    def text_token_counts(self, texts: Sequence[str]) -> tuple[list[int], int] | None:
        """(tokens of each text before the tokenizer cuts it, the most the text tower reads), or
        None when this encoder's tokenizer is not one `histovl.models._tokens` knows."""
        from histovl.models._tokens import token_counts

        return token_counts(getattr(self, "tokenizer", None), texts, self.card.context_length)

    @property
    def logit_scale(self) -> float:
        """The model's learned inverse temperature (exp of the stored log value)."""
        return 100.0

    # ---- saving (used by `save_model_dir`) -------------------------------------------------------
    def native_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights in the family's own checkpoint layout (what its builder loads back).

        Families wrapping one model in ``self.model`` store that model's keys, so a saved
        directory and a published checkpoint use the same layout.
        """
        inner = getattr(self, "model", None)
        return (inner if isinstance(inner, nn.Module) else self).state_dict()

    def save_assets(self, out_dir: Path) -> dict[str, Any]:
        """Write files that must travel with the weights (tokenizer...) into `out_dir`.

        Returns entries to merge into the saved card's ``extra`` (e.g. the architecture config).
        """
        return {}

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:  # nn.Module protocol; DDP uses it
        return self.encode_image(pixels)
