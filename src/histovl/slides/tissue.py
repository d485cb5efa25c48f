"""Tissue detection on a slide thumbnail.

Method (documented in docs/slides.md, tested on synthetic thumbnails):

1. Convert the RGB thumbnail to HSV. Glass background is bright and grey (low saturation);
   stained tissue, H&E or IHC, is coloured (higher saturation).
2. Threshold saturation with Otsu's method, computed only over pixels that are not near-black,
   and never below `min_saturation` (so a blank slide does not split its noise in two).
3. Remove what is not tissue: near-black pixels (value < `max_darkness`: slide-edge shadows,
   black marker, dirt) and, with `exclude_green_pen`, strongly saturated green (hue 0.20–0.45:
   no H&E or IHC stain is green, but green pen is common). Blue pen is *not* removed by default
   because its hue overlaps hematoxylin.
4. Clean up with a binary closing then opening (radius `morph_radius` px), fill holes smaller
   than `min_hole_fraction` of the thumbnail, and drop objects smaller than
   `min_object_fraction` of the thumbnail.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage


@dataclass(frozen=True)
class TissueParams:
    """Settings of `detect_tissue` (defaults tuned for 20×–40× H&E and IHC thumbnails)."""

    min_saturation: float = 0.05
    max_darkness: float = 0.15
    exclude_green_pen: bool = True
    morph_radius: int = 2
    min_object_fraction: float = 0.0005
    min_hole_fraction: float = 0.0005


def otsu_threshold(values: np.ndarray, bins: int = 256, value_range: tuple[float, float] = (0.0, 1.0)) -> float:
    """Otsu's threshold of `values`: the cut that maximises the between-class variance.

    Returns the bin centre of the best cut (as scikit-image's `threshold_otsu` does). A constant
    input returns that constant.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("otsu_threshold needs at least one value")
    if np.all(v == v[0]):
        return float(v[0])
    hist, edges = np.histogram(v, bins=bins, range=value_range)
    centres = (edges[:-1] + edges[1:]) / 2
    hist = hist.astype(np.float64)
    w0 = np.cumsum(hist)
    w1 = np.cumsum(hist[::-1])[::-1]
    m0 = np.cumsum(hist * centres) / np.maximum(w0, 1e-12)
    m1 = (np.cumsum((hist * centres)[::-1]) / np.maximum(w1[::-1], 1e-12))[::-1]
    between = w0[:-1] * w1[1:] * (m0[:-1] - m1[1:]) ** 2
    return float(centres[int(np.argmax(between))])


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """uint8 or [0,1] float RGB [..., 3] -> float HSV in [0, 1] (vectorised, no Pillow round-trip)."""
    x = rgb.astype(np.float32)
    if rgb.dtype == np.uint8:
        x /= 255.0
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    maxc = x.max(axis=-1)
    minc = x.min(axis=-1)
    delta = maxc - minc
    s = np.where(maxc > 0, delta / np.maximum(maxc, 1e-12), 0.0)
    safe = np.maximum(delta, 1e-12)
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = np.where(maxc == r, bc - gc, np.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = np.where(delta > 0, (h / 6.0) % 1.0, 0.0)
    return np.stack([h, s, maxc], axis=-1).astype(np.float32)


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return (xx**2 + yy**2) <= radius**2


def _remove_small(mask: np.ndarray, min_size: int) -> np.ndarray:
    if min_size <= 1:
        return mask
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_size
    keep[0] = False
    return keep[labels]


def detect_tissue(thumbnail: Image.Image | np.ndarray, params: TissueParams | None = None) -> np.ndarray:
    """Boolean tissue mask [H, W] of an RGB thumbnail (see the module docstring for the method).

    Example:
        >>> import numpy as np
        >>> img = np.full((64, 64, 3), 240, np.uint8); img[16:48, 16:48] = (180, 80, 150)
        >>> int(detect_tissue(img)[32, 32]), int(detect_tissue(img)[2, 2])
        (1, 0)
    """
    p = params or TissueParams()
    rgb = np.asarray(thumbnail.convert("RGB") if isinstance(thumbnail, Image.Image) else thumbnail)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"detect_tissue needs an RGB image [H, W, 3], got shape {rgb.shape}")
    hsv = rgb_to_hsv(rgb)
    hue, sat, val = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    not_dark = val >= p.max_darkness
    candidates = sat[not_dark]
    threshold = p.min_saturation
    if candidates.size and candidates.max() > p.min_saturation:
        threshold = max(p.min_saturation, otsu_threshold(candidates))
    mask = (sat > threshold) & not_dark
    if p.exclude_green_pen:
        mask &= ~((hue >= 0.20) & (hue <= 0.45) & (sat > 0.3))
    if p.morph_radius > 0:
        disk = _disk(p.morph_radius)
        mask = ndimage.binary_closing(mask, structure=disk, border_value=0)
        mask = ndimage.binary_opening(mask, structure=disk, border_value=0)
    area = mask.size
    holes = ndimage.binary_fill_holes(mask) & ~mask
    small_holes = holes & ~_remove_small(holes, int(p.min_hole_fraction * area))
    mask = mask | small_holes
    return _remove_small(mask, int(p.min_object_fraction * area))


def region_fractions(mask: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Mean of `mask` over each box [x0, y0, x1, y1] (mask pixels, half-open, clipped).

    Uses a summed-area table, so thousands of tiles cost one pass over the mask. Boxes are rounded
    outward (floor of the start, ceil of the end) so a tile always covers at least one mask pixel.
    """
    h, w = mask.shape
    sat = np.zeros((h + 1, w + 1), dtype=np.float64)
    sat[1:, 1:] = np.cumsum(np.cumsum(mask.astype(np.float64), axis=0), axis=1)
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x0 = np.clip(np.floor(b[:, 0]), 0, w).astype(int)
    y0 = np.clip(np.floor(b[:, 1]), 0, h).astype(int)
    x1 = np.clip(np.ceil(b[:, 2]), 0, w).astype(int)
    y1 = np.clip(np.ceil(b[:, 3]), 0, h).astype(int)
    x1 = np.maximum(x1, np.minimum(x0 + 1, w))
    y1 = np.maximum(y1, np.minimum(y0 + 1, h))
    total = sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]
    area = np.maximum((x1 - x0) * (y1 - y0), 1)
    return (total / area).astype(np.float32)
