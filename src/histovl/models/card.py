"""The model card: everything that must travel with a set of weights.

Preprocessing (size, mean/std, interpolation, crop) and text settings (tokenizer, context length,
whether the text tower is causal) live here, in one frozen dataclass, so no caller ever has to
remember them (docs/style.md, "Weights travel with their preprocessing"). Cards for registry
models are data files in `cards/`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

Family = Literal["open_clip", "hf_clip", "conch", "histovl_lite"]

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelCard:
    """Identity, preprocessing and text settings of one model.

    Attributes:
        name: registry name or spec the user typed (``plip``, ``open_clip:ViT-B-32:/w.safetensors``).
        family: which loader builds it.
        architecture: the family's architecture name (open_clip model name, ``conch_ViT-B-16``...).
        source: where the weights come from: ``hf-hub:org/repo``, a local file or a directory.
        pretrained: open_clip pretrained tag (``openai``) when the weights come from open_clip's zoo.
        image_size: square input size after resize and crop.
        mean, std: per-channel normalisation applied after scaling pixels to [0, 1].
        interpolation: ``bicubic`` or ``bilinear`` (resize filter).
        resize_mode: ``shortest`` (resize the short side, then centre-crop) or ``squash``.
        context_length: the text tower's maximum number of tokens.
        tokenizer: tokenizer id (open_clip tokenizer name or a HF tokenizer id/dir).
        embed_dim: size of the shared image/text embedding.
        text_causal: True when the text tower uses a causal mask and pools at the end-of-text
            token, so encoding only up to the longest prompt gives the same embedding.
        licence, citation, description: shown by ``histovl models`` and recorded in run.json.
        extra: family-specific settings (e.g. HF hub revision), kept as data.
    """

    name: str
    family: Family
    architecture: str
    source: str
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    resize_mode: Literal["shortest", "squash"] = "shortest"
    context_length: int = 77
    tokenizer: str = ""
    embed_dim: int = 512
    text_causal: bool = True
    pretrained: str | None = None
    licence: str = "unknown"
    citation: str = ""
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (for run.json, model directories and the cache key)."""
        d = dataclasses.asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelCard:
        """Inverse of `to_dict`; unknown keys are an error so typos in card files surface."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown model card field(s) {sorted(unknown)}; known: {sorted(names)}")
        d = dict(d)
        d["mean"] = tuple(float(x) for x in d["mean"])
        d["std"] = tuple(float(x) for x in d["std"])
        return cls(**d)

    def preprocessing_key(self) -> str:
        """Hash of every field that changes the pixels the image tower sees."""
        parts = [self.image_size, list(self.mean), list(self.std), self.interpolation, self.resize_mode]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]

    def replace(self, **changes: Any) -> ModelCard:
        """A copy with some fields changed (cards are frozen)."""
        return dataclasses.replace(self, **changes)
