"""The viewer's overlays, drawn from the tile table: one RGBA PNG over the slide's whole
level-0 extent, a block of pixels per tile of the regular grid (``x // E, y // E``).

- ``tissue``: the kept tiles, green, stronger where the tile holds more tissue;
- ``prediction``: each tile in its predicted class's colour (the palette of `histovl predict`'s
  heatmap), opacity rising with the top-1 probability (faint at 1/C, solid at 1);
- ``score:<class>``: that class's probability per tile on a colour map (dark blue low, yellow high).
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
from PIL import Image

from histovl.reports.colours import class_colours
from histovl.serve.slides import SCORE_PREFIX, SlideEntry

#: Longest side of an overlay image, in pixels.
MAX_OVERLAY_SIDE = 4096


def overlay_geometry(entry: SlideEntry) -> dict[str, Any] | None:
    """Grid, pixels per tile and the overlay's width as a fraction of the slide's width."""
    if entry.tiles is None or entry.tiles.empty or entry.level0_size is None:
        return None
    extent = int(entry.tiles["width"].iloc[0])
    width, height = entry.level0_size
    cols, rows = math.ceil(width / extent), math.ceil(height / extent)
    px = max(1, min(16, MAX_OVERLAY_SIDE // max(cols, rows)))
    return {"extent": extent, "cols": cols, "rows": rows, "px": px, "width_fraction": cols * extent / width}


def legend(entry: SlideEntry) -> list[dict[str, Any]]:
    """Class, colour (hex) and tile count of the prediction overlay."""
    counts = entry.tiles["prediction"].value_counts() if entry.tiles is not None and "prediction" in entry.tiles else {}
    return [{"class": c, "colour": "#{:02x}{:02x}{:02x}".format(*col), "tiles": int(counts.get(c, 0))}
            for c, col in zip(entry.classes, class_colours(len(entry.classes)), strict=True)]


def render_overlay(entry: SlideEntry, key: str) -> bytes | None:
    """PNG bytes of overlay `key`, or None when the slide has no such overlay."""
    geo = overlay_geometry(entry)
    if geo is None or key not in {o["key"] for o in entry.overlays()}:
        return None
    tiles = entry.tiles
    assert tiles is not None
    colours = _colours(entry, key)
    canvas = np.zeros((geo["rows"] * geo["px"], geo["cols"] * geo["px"], 4), dtype=np.uint8)
    cols = (tiles["x"].to_numpy() // geo["extent"]).astype(int)
    rows = (tiles["y"].to_numpy() // geo["extent"]).astype(int)
    px = geo["px"]
    for r, c, colour in zip(rows, cols, colours, strict=True):
        if colour[3] and 0 <= r < geo["rows"] and 0 <= c < geo["cols"]:
            canvas[r * px:(r + 1) * px, c * px:(c + 1) * px] = colour
    buffer = io.BytesIO()
    Image.fromarray(canvas, "RGBA").save(buffer, "PNG", optimize=False)
    return buffer.getvalue()


def _colours(entry: SlideEntry, key: str) -> np.ndarray:
    """RGBA per tile for overlay `key` (alpha 0: not drawn)."""
    tiles = entry.tiles
    assert tiles is not None
    n = len(tiles)
    out = np.zeros((n, 4), dtype=np.uint8)
    if key == "tissue":
        fraction = tiles["tissue_fraction"].to_numpy(dtype=float) if "tissue_fraction" in tiles else np.ones(n)
        out[:] = (0, 200, 90, 0)
        out[:, 3] = (90 + 140 * np.clip(np.nan_to_num(fraction, nan=1.0), 0, 1)).astype(np.uint8)
        return out
    if key == "prediction":
        palette = dict(zip(entry.classes, class_colours(len(entry.classes)), strict=True))
        scores = tiles[[SCORE_PREFIX + c for c in entry.classes]].to_numpy(dtype=float)
        top = np.nan_to_num(scores.max(axis=1), nan=0.0)
        floor = 1.0 / max(1, len(entry.classes))
        alpha = 60 + 195 * np.clip((top - floor) / max(1e-9, 1 - floor), 0, 1)
        for i, (cls, a) in enumerate(zip(tiles["prediction"], alpha, strict=True)):
            if cls in palette:
                out[i] = (*palette[cls], int(a))
        return out
    values = tiles[key].to_numpy(dtype=float)
    ok = np.isfinite(values)
    out[ok, :3] = _colour_map(np.clip(values[ok], 0, 1))
    out[ok, 3] = 210
    return out


#: A small perceptual ramp (viridis' ends and middle): low -> high.
_RAMP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=float)


def _colour_map(values: np.ndarray) -> np.ndarray:
    pos = values * (len(_RAMP) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(_RAMP) - 2)
    t = (pos - lo)[:, None]
    return ((1 - t) * _RAMP[lo] + t * _RAMP[lo + 1]).astype(np.uint8)
