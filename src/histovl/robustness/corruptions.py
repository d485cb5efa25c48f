"""The seven corruptions of the PathCLIP robustness study, registered under ``histovl/``.

Parameters follow the study's section 3.5 (model input 224 × 224; see docs/robustness.md):

| corruption | levels | parameter per level | implementation |
|---|---|---|---|
| brightness | −2, −1, 1, 2 | factor 0.4, 0.8, 1.2, 1.6 | ``torchvision.transforms.v2.functional.adjust_brightness`` |
| contrast | −2, −1, 1, 2 | factor 0.4, 0.8, 1.2, 1.6 | ``adjust_contrast`` (blend with the image's mean grey) |
| saturation | −2, −1, 1, 2 | factor 0.4, 0.8, 1.2, 1.6 | ``adjust_saturation`` (blend with its greyscale) |
| hue | −2, −1, 1, 2 | factor 0.4, 0.8, 1.2, 1.6 → rotation (f − 1)/4 turn: −54°, −18°, +18°, +54° | ``adjust_hue`` |
| blur | 1–4 | sigma 1, 2, 3, 4 px at 224 px | ``gaussian_blur``, kernel 2⌈3σ⌉ + 1 |
| resolution | 1–4 | shrink 20, 40, 60, 80 % | ``resize`` down (antialiased) and back up, bilinear |
| markup | 1–4 | 1, 2, 3, 4 pen strokes | `histovl.robustness.markup` |

Why the hue mapping: the paper's "factor" has no standard meaning for hue. A rotation of the hue
circle by ``(factor − 1) / 4`` turns keeps the paper's symmetry (factor 1 = identity, 0.4 and 1.6
equally strong in opposite directions), grows linearly with the factor like the other three
colour corruptions, and spans casts seen between labs and scanners (±18°) up to a strong,
clearly wrong stain colour (±54°, H&E pink turning orange or violet) without wrapping around.

Why sigma scales with the image: blur is defined at the study's 224 px; on an S-px model input
sigma is ``level × S / 224`` so the same fraction of the tile is blurred whatever the model's
input size (the same holds for markup widths and the resolution shrink).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from histovl.robustness.markup import markup_transmission
from histovl.robustness.registry import Corruption, add_corruption

if TYPE_CHECKING:  # torch and torchvision are imported when pixels are corrupted, not to plan a sweep
    import torch

REFERENCE_SIZE = 224
"""The input size at which the study's pixel parameters (blur sigma) are defined."""

SIGNED_LEVELS = (-2, -1, 1, 2)
POSITIVE_LEVELS = (1, 2, 3, 4)

COLOUR_FACTORS: dict[int, float] = {-2: 0.4, -1: 0.8, 1: 1.2, 2: 1.6}
"""Brightness, contrast, saturation and hue factor per level (paper section 3.5)."""

BLUR_SIGMA: dict[int, float] = {1: 1.0, 2: 2.0, 3: 3.0, 4: 4.0}
"""Gaussian sigma in pixels at `REFERENCE_SIZE`."""

RESOLUTION_SHRINK: dict[int, float] = {1: 0.2, 2: 0.4, 3: 0.6, 4: 0.8}
"""Fraction by which the side is shrunk before scaling back up."""

MARKUP_STROKES: dict[int, float] = {1: 1, 2: 2, 3: 3, 4: 4}


def hue_rotation(factor: float) -> float:
    """The paper's hue factor as a rotation in turns (``adjust_hue``'s ``hue_factor``)."""
    return (factor - 1.0) / 4.0


def blur_kernel(sigma: float) -> int:
    """Odd kernel size covering ±3 sigma (99.7 % of the Gaussian's mass), at least 3."""
    return max(3, 2 * math.ceil(3.0 * sigma) + 1)


def _brightness(images: torch.Tensor, level: int, seeds: Sequence[int]) -> torch.Tensor:
    import torchvision.transforms.v2.functional as TF

    return TF.adjust_brightness(images, COLOUR_FACTORS[level])


def _contrast(images: torch.Tensor, level: int, seeds: Sequence[int]) -> torch.Tensor:
    import torchvision.transforms.v2.functional as TF

    return TF.adjust_contrast(images, COLOUR_FACTORS[level])


def _saturation(images: torch.Tensor, level: int, seeds: Sequence[int]) -> torch.Tensor:
    import torchvision.transforms.v2.functional as TF

    return TF.adjust_saturation(images, COLOUR_FACTORS[level])


def _hue(images: torch.Tensor, level: int, seeds: Sequence[int]) -> torch.Tensor:
    import torchvision.transforms.v2.functional as TF

    return TF.adjust_hue(images, hue_rotation(COLOUR_FACTORS[level]))


def _blur(images: torch.Tensor, level: int, seeds: Sequence[int]) -> torch.Tensor:
    import torchvision.transforms.v2.functional as TF

    size = min(images.shape[-2:])
    sigma = BLUR_SIGMA[level] * size / REFERENCE_SIZE
    kernel = blur_kernel(sigma)
    # Reflect padding needs the pad (kernel // 2) below the side; tiny inputs get a smaller kernel.
    kernel = min(kernel, 2 * ((size - 1) // 2) + 1)
    return TF.gaussian_blur(images, [kernel, kernel], [sigma, sigma])


def _resolution(images: torch.Tensor, level: int, seeds: Sequence[int]) -> torch.Tensor:
    import torchvision.transforms.v2.functional as TF

    height, width = images.shape[-2:]
    keep = 1.0 - RESOLUTION_SHRINK[level]
    small = [max(1, round(height * keep)), max(1, round(width * keep))]
    low = TF.resize(images, small, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    return TF.resize(low, [height, width], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)


def _markup(images: torch.Tensor, level: int, seeds: Sequence[int]) -> torch.Tensor:
    import torch

    height, width = images.shape[-2:]
    trans = np.stack([markup_transmission(int(MARKUP_STROKES[level]), s, height, width) for s in seeds])
    return images * torch.from_numpy(trans).to(images.dtype)  # one batched multiply


BUILTIN_CORRUPTIONS = ("brightness", "contrast", "blur", "resolution", "saturation", "hue", "markup")
"""The study's seven corruptions, in its table order (also the sweep's default)."""


def _register_builtins() -> None:
    colour = {
        "brightness": (_brightness, "scale intensities (over/under-exposure)"),
        "contrast": (_contrast, "blend with the mean grey (contrast enhancement/loss)"),
        "saturation": (_saturation, "blend with the greyscale image (faded or vivid stain)"),
        "hue": (_hue, "rotate the hue circle by (factor - 1)/4 turn (stain colour cast)"),
    }
    for name, (fn, text) in colour.items():
        add_corruption(Corruption(name, fn, SIGNED_LEVELS, dict(COLOUR_FACTORS), description=text))
    add_corruption(
        Corruption("blur", _blur, POSITIVE_LEVELS, dict(BLUR_SIGMA), description="Gaussian blur, sigma = level px at 224 px (out of focus)")
    )
    add_corruption(
        Corruption("resolution", _resolution, POSITIVE_LEVELS, dict(RESOLUTION_SHRINK), description="shrink by 20-80 % and scale back (low scan resolution)")
    )
    add_corruption(
        Corruption("markup", _markup, POSITIVE_LEVELS, dict(MARKUP_STROKES), uses_seed=True, description="1-4 translucent pen strokes in marker colours")
    )


_register_builtins()
