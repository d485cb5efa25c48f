"""Slide figures: the tissue map written by every tiling, and the zero-shot class map.

Both are drawn straight onto the thumbnail with Pillow (no matplotlib figure state), so they are
cheap, deterministic and safe to make from worker threads.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from histovl._io import atomic_path

#: Colour-blind-safe palette (Okabe–Ito) for class maps.
CLASS_COLOURS: tuple[tuple[int, int, int], ...] = (
    (0, 114, 178),
    (230, 159, 0),
    (0, 158, 115),
    (204, 121, 167),
    (86, 180, 233),
    (213, 94, 0),
    (240, 228, 66),
    (0, 0, 0),
)


def save_png(image: Image.Image, path: str | os.PathLike[str]) -> None:
    """Write `image` as PNG atomically."""
    with atomic_path(path, suffix=".png") as tmp:
        image.save(tmp, format="PNG")


def _tile_rects(tiles: pd.DataFrame, extent0: int, scale: tuple[float, float]) -> list[tuple[float, float, float, float]]:
    sx, sy = scale
    return [
        (x / sx, y / sy, (x + extent0) / sx - 1, (y + extent0) / sy - 1)
        for x, y in zip(tiles["x"].to_numpy(), tiles["y"].to_numpy(), strict=True)
    ]


def tissue_map_image(
    thumbnail: Image.Image, mask: np.ndarray, tiles: pd.DataFrame, extent0: int, level0_size: tuple[int, int]
) -> Image.Image:
    """Thumbnail with the tissue mask tinted green and each kept tile outlined."""
    base = thumbnail.convert("RGB")
    mask_img = Image.fromarray((mask * 255).astype(np.uint8)).resize(base.size, Image.Resampling.NEAREST)
    tint = Image.new("RGB", base.size, (0, 170, 60))
    out = Image.composite(Image.blend(base, tint, 0.35), base, mask_img)
    draw = ImageDraw.Draw(out)
    scale = (level0_size[0] / base.size[0], level0_size[1] / base.size[1])
    for rect in _tile_rects(tiles, extent0, scale):
        draw.rectangle(rect, outline=(20, 20, 160), width=1)
    return out


def class_map_image(
    thumbnail: Image.Image,
    tiles: pd.DataFrame,
    predicted: Sequence[int] | np.ndarray,
    class_names: Sequence[str],
    extent0: int,
    level0_size: tuple[int, int],
    *,
    alpha: float = 0.45,
) -> Image.Image:
    """Each tile filled with the colour of its predicted class over the thumbnail, plus a legend."""
    base = thumbnail.convert("RGB")
    overlay = base.copy()
    draw = ImageDraw.Draw(overlay)
    scale = (level0_size[0] / base.size[0], level0_size[1] / base.size[1])
    for rect, cls in zip(_tile_rects(tiles, extent0, scale), predicted, strict=True):
        draw.rectangle(rect, fill=CLASS_COLOURS[int(cls) % len(CLASS_COLOURS)])
    blended = Image.blend(base, overlay, alpha)
    legend_h = 16 * len(class_names) + 8
    canvas = Image.new("RGB", (blended.width, blended.height + legend_h), (255, 255, 255))
    canvas.paste(blended, (0, 0))
    legend = ImageDraw.Draw(canvas)
    for k, name in enumerate(class_names):
        y = blended.height + 4 + 16 * k
        legend.rectangle((4, y, 16, y + 12), fill=CLASS_COLOURS[k % len(CLASS_COLOURS)])
        legend.text((22, y), str(name), fill=(0, 0, 0))
    return canvas


def heatmap_image(
    thumbnail: Image.Image,
    tiles: pd.DataFrame,
    values: Sequence[float] | np.ndarray,
    extent0: int,
    level0_size: tuple[int, int],
    *,
    alpha: float = 0.5,
) -> Image.Image:
    """Tiles coloured by a scalar (e.g. MIL attention), min-max scaled, yellow = high."""
    v = np.asarray(values, dtype=np.float64)
    span = float(v.max() - v.min()) if v.size else 0.0
    norm = (v - v.min()) / span if span > 0 else np.zeros_like(v)
    base = thumbnail.convert("RGB")
    overlay = base.copy()
    draw = ImageDraw.Draw(overlay)
    scale = (level0_size[0] / base.size[0], level0_size[1] / base.size[1])
    for rect, t in zip(_tile_rects(tiles, extent0, scale), norm, strict=True):
        # dark blue -> yellow ramp (viridis end points)
        colour = (int(68 + t * (253 - 68)), int(1 + t * (231 - 1)), int(84 + t * (37 - 84)))
        draw.rectangle(rect, fill=colour)
    return Image.blend(base, overlay, alpha)
