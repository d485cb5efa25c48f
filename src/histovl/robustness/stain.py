"""Optional mitigation: Macenko stain normalisation before encoding (``pip install 'histovl[stain]'``).

The normaliser (torchstain's Macenko implementation) is fitted once on a reference tile and then
maps every image's H&E stain vectors and concentrations onto the reference's. In the sweep it is
applied after the corruption (a lab would normalise the scans it receives, corrupted or not), and
its rows are reported separately so a user sees whether it undoes colour corruptions and at what
cost on clean images.

Macenko needs enough stained pixels to estimate two stain vectors; on a nearly blank or
saturated image it can fail. Such an image is passed through unnormalised and counted in
`MacenkoTransform.n_fallback` (the sweep records the count).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import torch

from histovl.embed.engine import ImageTransform
from histovl.embed.in_memory import corrupt_batch
from histovl.robustness._stain_support import INSTALL_HINT, stain_available  # noqa: F401  (re-exported)


def _macenko() -> Any:
    try:
        from torchstain.torch.normalizers import TorchMacenkoNormalizer
    except ImportError as err:
        raise ImportError(INSTALL_HINT) from err
    return TorchMacenkoNormalizer()


class MacenkoTransform:
    """An `ImageTransform`: optional inner transform (a corruption), then Macenko normalisation.

    Args:
        reference: float [3, H, W] in [0, 1], the tile whose stain appearance is the target.
        inner: applied first (None: normalise the clean image).

    Example:
        >>> tf = MacenkoTransform(reference_tile)  # doctest: +SKIP
        >>> tf.key  # doctest: +SKIP
        'none+macenko-3f2a9c1b7d0e'
    """

    def __init__(self, reference: torch.Tensor, inner: ImageTransform | None = None) -> None:
        self.reference = reference
        self.inner = inner
        ref_bytes = (reference.clamp(0, 1) * 255).round().to(torch.uint8)
        self.reference_hash = hashlib.sha256(ref_bytes.numpy().tobytes()).hexdigest()[:12]
        self._normaliser = _macenko()
        self._normaliser.fit(ref_bytes.to(torch.float32))
        self.n_fallback = 0

    @property
    def key(self) -> str:
        inner = self.inner.key if self.inner is not None else "none"
        return f"{inner}+macenko-{self.reference_hash}"

    def with_inner(self, inner: ImageTransform | None) -> MacenkoTransform:
        """The same fitted normaliser after another corruption (no refit)."""
        clone = object.__new__(MacenkoTransform)
        clone.__dict__.update(self.__dict__)
        clone.inner = inner
        clone.n_fallback = 0
        return clone

    def normalise(self, image: torch.Tensor) -> torch.Tensor:
        """Macenko-normalise one float image [3, H, W] in [0, 1]."""
        try:
            out, _, _ = self._normaliser.normalize(image.clamp(0, 1) * 255.0, stains=False)
        except (RuntimeError, IndexError, ValueError):  # too few stained pixels to fit
            self.n_fallback += 1
            return image
        result = out.permute(2, 0, 1).to(image.dtype) / 255.0
        if not bool(torch.isfinite(result).all()):
            self.n_fallback += 1
            return image
        return result.clamp(0.0, 1.0)

    def __call__(self, image: torch.Tensor, seed: int) -> torch.Tensor:
        x = self.inner(image, seed).clamp(0, 1) if self.inner is not None else image
        return self.normalise(x)

    def apply_batch(self, images: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        x = corrupt_batch(images, self.inner, seeds)
        return torch.stack([self.normalise(im) for im in x])
