"""`ImageTransform`: the protocol of a change applied to images before encoding (a corruption,
a stain normalisation). Its own module so the engine and the torch-side decoder share it
without importing each other."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch


class ImageTransform(Protocol):
    """A deterministic change applied to the model-sized image before normalisation.

    `key` names it (e.g. ``blur:3``) and becomes part of the cache namespace; `__call__` takes a
    float tensor [3, S, S] in [0, 1] plus a per-image seed and returns the same shape and range.
    Working on the model-sized tensor makes a corruption independent of the source image size.
    """

    @property
    def key(self) -> str: ...

    def __call__(self, image: torch.Tensor, seed: int) -> torch.Tensor: ...
