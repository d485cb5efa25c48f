"""Test-time views of an image for many-to-many alignment (HistoAlign's bag of views).

Each view is an `ImageTransform` for the embedding engine (so its embeddings are cached under
their own key) acting on the model-sized tensor: flips and rotations are exact permutations of
pixels; `zoom-<f>` takes the central fraction f and resizes it back (a closer look at the same
tissue, as a multi-scale crop).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from histovl.errors import UnknownNameError, did_you_mean

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class View:
    """A named, deterministic view; `key` goes into the embedding-cache namespace."""

    name: str

    @property
    def key(self) -> str:
        return f"view:{self.name}"

    def __call__(self, image: torch.Tensor, seed: int) -> torch.Tensor:
        if self.name == "hflip":
            return image.flip(-1)
        if self.name == "vflip":
            return image.flip(-2)
        if self.name == "rot90":
            return image.rot90(1, dims=(-2, -1))
        if self.name.startswith("zoom-"):
            frac = float(self.name.split("-", 1)[1])
            size = image.shape[-1]
            crop = max(1, round(size * frac))
            off = (size - crop) // 2
            from torch.nn import functional as F

            x = image[..., off : off + crop, off : off + crop].unsqueeze(0)
            return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
        raise UnknownNameError(f"unknown view {self.name!r}.{did_you_mean(self.name, VIEW_NAMES)}")


VIEW_NAMES = ("identity", "hflip", "vflip", "rot90", "zoom-0.75")
DEFAULT_VIEWS = ("identity", "hflip", "vflip", "zoom-0.75")


def make_view(name: str) -> View | None:
    """The transform for a view name; None for `identity` (the plain, already-cached image)."""
    if name == "identity":
        return None
    if name not in VIEW_NAMES and not name.startswith("zoom-"):
        raise UnknownNameError(f"unknown view {name!r}.{did_you_mean(name, VIEW_NAMES)} Known: {', '.join(VIEW_NAMES)}")
    return View(name)
