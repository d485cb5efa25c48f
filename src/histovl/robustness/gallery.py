"""The corruption gallery: one tile under every corruption and level, for reports and docs.

Example:
    >>> fig = corruption_gallery(tile)  # doctest: +SKIP   (tile: float [3, S, S] in [0, 1])
    >>> save_gallery_png(fig, "docs/figures/corruption_gallery.png")  # doctest: +SKIP
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from histovl._io import atomic_path
from histovl.robustness.corruptions import BUILTIN_CORRUPTIONS
from histovl.robustness.registry import get_corruption


def _describe(name: str, level: int) -> str:
    c = get_corruption(name)
    value = c.parameters.get(level)
    if name in ("brightness", "contrast", "saturation"):
        return f"{level:+d} (×{value:g})"
    if name == "hue":
        from histovl.robustness.corruptions import hue_rotation

        return f"{level:+d} ({hue_rotation(float(value or 1)) * 360:+.0f}°)"
    if name == "blur":
        return f"{level} (σ={value:g})"
    if name == "resolution":
        return f"{level} (−{float(value or 0):.0%})"
    if name == "markup":
        return f"{level} ({value:g} stroke{'s' if value != 1 else ''})"
    return str(level)


def corruption_gallery(
    tile: torch.Tensor,
    corruptions: Sequence[str] = BUILTIN_CORRUPTIONS,
    *,
    seed: int = 0,
    tile_inches: float = 1.15,
) -> Figure:
    """A grid: one row per corruption, the clean tile then each level, with the parameter."""
    rows = [get_corruption(n) for n in corruptions]
    n_cols = 1 + max(len(c.levels) for c in rows)
    fig = Figure(figsize=(tile_inches * n_cols, tile_inches * len(rows) * 1.08))
    axes = fig.subplots(len(rows), n_cols, squeeze=False)
    clean = tile.clamp(0, 1)
    for r, c in enumerate(rows):
        images = [("clean", clean)] + [(_describe(c.name, lv), c.apply(clean, lv, seed)) for lv in c.levels]
        for col in range(n_cols):
            ax = axes[r][col]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if col < len(images):
                title, img = images[col]
                ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
                ax.set_title(title, fontsize=6, pad=2)
        axes[r][0].set_ylabel(c.name, fontsize=8)
    fig.subplots_adjust(left=0.06, right=0.995, top=0.97, bottom=0.005, wspace=0.04, hspace=0.22)
    return fig


def save_gallery_png(fig: Figure, target: str | Path, *, dpi: int = 100, max_bytes: int = 300_000) -> Path:
    """Save as PNG, palette-quantised (and shrunk if needed) to stay under `max_bytes`."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    image = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    while True:
        quant = image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        out = io.BytesIO()
        quant.save(out, format="PNG", optimize=True)
        if out.tell() <= max_bytes or min(image.size) < 200:
            break
        w, h = image.size
        image = image.resize((int(w * 0.85), int(h * 0.85)), Image.Resampling.LANCZOS)
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target, suffix=".png") as tmp:
        Path(tmp).write_bytes(out.getvalue())
    return target


def tile_from_array(array: np.ndarray) -> torch.Tensor:
    """uint8 HWC -> float [3, H, W] in [0, 1] (for callers holding NumPy images)."""
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).to(torch.float32) / 255.0
