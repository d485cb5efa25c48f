"""What every runtime wrapper of a torch encoder answers the same way (`RuntimeEncoder`,
`AutocastEncoder`): the base encoder's card, logit scale, preprocessing, prompt cache and token
counts, a ``weights_id`` naming the runtime (so the embedding cache never mixes its embeddings
with fp32 torch's), and the device it encodes on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class EncoderWrapper:
    """The delegating part of the `Encoder` interface for a wrapper around `base`.

    Subclasses set ``base`` (an `Encoder` or a `LazyEncoder`), ``label`` (the runtime as the
    weights id names it: ``onnx``, ``onnx-int8``, ``torch-bf16``...) and ``device_name``, and
    implement ``encode_image`` / ``encode_text``.
    """

    is_lazy_encoder = True  # stands in for an Encoder: load_model and open_encoder pass it through
    base: Any
    label: str
    device_name: str

    @property
    def card(self) -> Any:
        return self.base.card

    @property
    def weights_id(self) -> str:
        return f"{self.base.weights_id}|runtime={self.label}"

    @property
    def logit_scale(self) -> float:
        return float(self.base.logit_scale)

    @property
    def preprocess(self) -> Any:
        return self.base.preprocess

    @property
    def text_cache(self) -> Any:
        return getattr(self.base, "text_cache", None)

    @property
    def device(self) -> Any:
        import torch

        return torch.device(self.device_name)

    def text_token_counts(self, texts: Sequence[str]) -> tuple[list[int], int] | None:
        """The torch encoder's count (same tokenizer and context), so wrapped runs warn of cut prompts too."""
        counter = getattr(self.base, "text_token_counts", None)
        return counter(texts) if callable(counter) else None

    def encode_image(self, pixels: Any, normalize: bool = True) -> Any:
        raise NotImplementedError

    def __call__(self, pixels: Any) -> Any:
        return self.encode_image(pixels)
