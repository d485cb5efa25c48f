"""The slide heatmap: each tile in its predicted class's colour, opacity = top-1 probability.

Drawn with Pillow straight onto the slide thumbnail (like `histovl.slides.figures`), with a
legend below: one swatch per class with its tile count, and an opacity ramp.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from histovl.reports.colours import PALETTE, class_colours  # noqa: F401  (re-exported)

#: Lowest and highest fill opacity (0-255): a tile at 1/C probability is still visible.
MIN_ALPHA, MAX_ALPHA = 40, 200


def confidence_map_image(
    thumbnail: Image.Image,
    tiles: pd.DataFrame,
    probs: np.ndarray,
    class_names: Sequence[str],
    extent0: int,
    level0_size: tuple[int, int],
) -> Image.Image:
    """Thumbnail with tiles filled by predicted class (outlined in a darker shade), opacity scaled by
    the top-1 probability."""
    base = thumbnail.convert("RGBA")
    overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    sx, sy = level0_size[0] / base.width, level0_size[1] / base.height
    colours = class_colours(len(class_names))
    top = probs.argmax(axis=1)
    conf = probs.max(axis=1)
    lo = 1.0 / len(class_names)
    for x, y, k, c in zip(tiles["x"].to_numpy(), tiles["y"].to_numpy(), top, conf, strict=True):
        t = (c - lo) / (1.0 - lo) if lo < 1 else 1.0
        alpha = int(MIN_ALPHA + max(0.0, min(1.0, t)) * (MAX_ALPHA - MIN_ALPHA))
        rect = (x / sx, y / sy, (x + extent0) / sx - 1, (y + extent0) / sy - 1)
        draw.rectangle(rect, fill=(*colours[int(k)], alpha), outline=(*_darker(colours[int(k)]), 230))
    mapped = Image.alpha_composite(base, overlay).convert("RGB")
    counts = np.bincount(top, minlength=len(class_names))
    return _with_legend(mapped, class_names, colours, counts)


def _darker(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    r, g, b = colour
    return (int(r * 0.6), int(g * 0.6), int(b * 0.6))


def _with_legend(image: Image.Image, class_names: Sequence[str], colours: Sequence[tuple[int, int, int]],
                 counts: np.ndarray) -> Image.Image:
    size = max(12, image.width // 60)
    font = ImageFont.load_default(size=size)
    row = int(size * 1.5)
    legend_h = row * (len(class_names) + 2) + size
    canvas = Image.new("RGB", (image.width, image.height + legend_h), (255, 255, 255))
    canvas.paste(image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    y0 = image.height + size // 2
    for k, name in enumerate(class_names):
        y = y0 + row * k
        draw.rectangle((size, y, 2 * size, y + size), fill=colours[k], outline=(0, 0, 0))
        draw.text((int(2.6 * size), y - size // 8), f"{name}  ({int(counts[k])} tile{'' if counts[k] == 1 else 's'})", fill=(0, 0, 0), font=font)
    y = y0 + row * len(class_names) + size // 2
    ramp_w = 6 * size
    for i in range(ramp_w):
        a = MIN_ALPHA + (MAX_ALPHA - MIN_ALPHA) * i / max(1, ramp_w - 1)
        grey = int(255 - (255 - 60) * a / 255)
        draw.line((size + i, y, size + i, y + size), fill=(grey, grey, grey))
    draw.text((int(size * 7.6), y - size // 8), "opacity: top-1 probability, 1/C (faint) to 1 (solid)",
              fill=(0, 0, 0), font=font)
    return canvas
