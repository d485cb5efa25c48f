"""Pen markup: smooth, translucent marker strokes like those pathologists draw on slides.

Each stroke is a cubic Bézier curve whose start, direction, length, bend, width, ink and opacity
are drawn from the image's own seed, so the same image always gets the same strokes, and level
``n`` draws the first ``n`` of the same four strokes (a higher level only adds ink). Everything
is in coordinates relative to the image side, so a stroke covers the same part of the tile at any
input size.

Why a multiply blend: slide markers are translucent dyes on the glass, and a brightfield scanner
sees light that passed through them, so each channel is attenuated by the ink's transmittance
(``out = image × (1 − a + a × ink)``) rather than painted over; crossing strokes darken further,
tissue structure stays faintly visible under the ink, as on real slides.

Inks (per-channel transmittance) approximate the usual marker colours: green, blue, black, red.
Widths are 2–3.5 % of the image side (4.5–8 px at 224 px, a felt-tip line on a tile at about
20× magnification); edges are anti-aliased over one pixel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

if TYPE_CHECKING:
    import torch

MARKER_INKS: dict[str, tuple[float, float, float]] = {
    "green": (0.20, 0.62, 0.32),
    "blue": (0.18, 0.32, 0.78),
    "black": (0.10, 0.10, 0.12),
    "red": (0.85, 0.16, 0.18),
}
MAX_STROKES = 4
CURVE_SAMPLES = 48
WIDTH_RANGE = (0.020, 0.035)
LENGTH_RANGE = (0.45, 0.9)
OPACITY_RANGE = (0.70, 0.90)
SUPERSAMPLE = 4


@dataclass(frozen=True)
class Stroke:
    """One pen stroke in relative coordinates (x right, y down, image side = 1)."""

    points: np.ndarray  # [CURVE_SAMPLES, 2] along the curve
    width: float  # relative to the shorter image side
    ink: str
    opacity: float


def plan_strokes(seed: int, n_strokes: int) -> list[Stroke]:
    """The first `n_strokes` of the image's four strokes (same seed, same strokes)."""
    if not 0 <= n_strokes <= MAX_STROKES:
        raise ValueError(f"markup draws 0 to {MAX_STROKES} strokes, got {n_strokes}")
    rng = np.random.default_rng(int(seed) & 0xFFFFFFFF)
    inks = list(MARKER_INKS)
    t = np.linspace(0.0, 1.0, CURVE_SAMPLES)[:, None]
    strokes = []
    for _ in range(MAX_STROKES):  # always draw all four: level n's strokes are level n+1's first n
        start = rng.uniform(0.1, 0.9, size=2)
        angle = rng.uniform(0.0, 2.0 * np.pi)
        length = rng.uniform(*LENGTH_RANGE)
        chord = length * np.array([np.cos(angle), np.sin(angle)])
        normal = np.array([-chord[1], chord[0]])
        bend = rng.normal(0.0, 0.35, size=2)
        p0, p3 = start, start + chord
        p1 = p0 + chord / 3.0 + bend[0] * normal
        p2 = p0 + 2.0 * chord / 3.0 + bend[1] * normal
        points = (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3 * p3
        width = rng.uniform(*WIDTH_RANGE)
        ink = inks[int(rng.integers(len(inks)))]
        opacity = rng.uniform(*OPACITY_RANGE)
        strokes.append(Stroke(points, float(width), ink, float(opacity)))
    return strokes[:n_strokes]


def stroke_coverage(stroke: Stroke, height: int, width: int) -> np.ndarray:
    """Ink coverage in [0, 1] of one stroke on an ``height × width`` grid (float32 [H, W]).

    Drawn with Pillow as a thick polyline with round joints and caps on a canvas
    `SUPERSAMPLE` times finer, cropped to the stroke's bounding box, then box-averaged down:
    anti-aliased edges for about a millisecond per stroke (an exact distance field in torch cost
    ~100× more; the tests compare the two).
    """
    s = SUPERSAMPLE
    cover = np.zeros((height, width), dtype=np.float32)
    pts = stroke.points * np.array([width, height], dtype=np.float64)
    line_width = max(1.0 / s, stroke.width * min(height, width))
    reach = line_width / 2.0 + 1.0
    x0 = max(0, int(np.floor(pts[:, 0].min() - reach)))
    x1 = min(width, int(np.ceil(pts[:, 0].max() + reach)))
    y0 = max(0, int(np.floor(pts[:, 1].min() - reach)))
    y1 = min(height, int(np.ceil(pts[:, 1].max() + reach)))
    if x0 >= x1 or y0 >= y1:
        return cover  # the stroke lies outside the image
    canvas = Image.new("L", ((x1 - x0) * s, (y1 - y0) * s), 0)
    draw = ImageDraw.Draw(canvas)
    xy = [((x - x0) * s, (y - y0) * s) for x, y in pts.tolist()]
    draw.line(xy, fill=255, width=max(1, round(line_width * s)), joint="curve")
    r = line_width * s / 2.0
    for x, y in (xy[0], xy[-1]):  # round caps
        draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
    small = np.asarray(canvas.reduce(s), dtype=np.float32)  # box filter: covered fraction per pixel
    cover[y0:y1, x0:x1] = small * (stroke.opacity / 255.0)
    return cover


def markup_transmission(n_strokes: int, seed: int, height: int, width: int) -> np.ndarray:
    """Per-channel transmittance [3, H, W] of the image's first `n_strokes` strokes (1 = no ink).

    Computed in NumPy on one thread: a few small array operations per stroke, which torch's
    intra-op thread pool makes slower, not faster, on a busy machine.
    """
    trans = np.ones((3, height, width), dtype=np.float32)
    for stroke in plan_strokes(seed, n_strokes):
        alpha = stroke_coverage(stroke, height, width)
        ink = np.asarray(MARKER_INKS[stroke.ink], dtype=np.float32)[:, None, None]
        trans *= 1.0 - alpha[None] + alpha[None] * ink
    return trans


def draw_markup(image: torch.Tensor, n_strokes: int, seed: int) -> torch.Tensor:
    """Draw `n_strokes` pen strokes on a float RGB image ``[3, H, W]`` in [0, 1] (new tensor)."""
    import torch

    height, width = image.shape[-2:]
    return image * torch.from_numpy(markup_transmission(n_strokes, seed, height, width)).to(image.dtype)
