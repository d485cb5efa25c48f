"""Image preprocessing built from a model card (picklable, so it runs in data-loader workers)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from histovl.models.card import ModelCard

_INTERP = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR}


@dataclass(frozen=True)
class Preprocess:
    """RGB PIL image -> normalised float tensor [3, S, S], exactly as the card prescribes.

    Mirrors open_clip's eval transform (resize shortest side, centre crop, to tensor, normalise),
    which is also what CLIP, PLIP, QuiltNet and BiomedCLIP use.

    Example:
        >>> from histovl.models.card import ModelCard, OPENAI_MEAN, OPENAI_STD
        >>> card = ModelCard("x", "open_clip", "ViT-B-32", "", 224, OPENAI_MEAN, OPENAI_STD)
        >>> Preprocess.from_card(card)(Image.new("RGB", (300, 200))).shape
        torch.Size([3, 224, 224])
    """

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"

    @classmethod
    def from_card(cls, card: ModelCard) -> Preprocess:
        return cls(card.image_size, card.mean, card.std, card.interpolation, card.resize_mode)

    def to_unnormalised(self, img: Image.Image) -> torch.Tensor:
        """Resize + crop to a float tensor in [0, 1] (what corruptions operate on)."""
        interp = _INTERP[self.interpolation]
        if self.resize_mode == "squash":
            img = TF.resize(img, [self.image_size, self.image_size], interpolation=interp)
        else:
            img = TF.resize(img, self.image_size, interpolation=interp)
            img = TF.center_crop(img, [self.image_size, self.image_size])
        return TF.to_tensor(img)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Apply mean/std to a [.., 3, H, W] tensor in [0, 1]."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return (x - mean) / std

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self.normalise(self.to_unnormalised(img))
