"""Measured layout for report figures: one measurement of each axes' labels, then one draw.

matplotlib's constrained layout plus ``bbox_inches="tight"`` draws a figure twice per save (once,
unrendered, to lay it out; once to render) and measures every axes twice more in its solver: ~2/3
of a report figure's time (docs/performance.md). Here each axes' reach past its box (tick labels,
axis labels, title: `Axes.get_tightbbox`, measured with the Agg renderer the save then reuses) is
measured once, the boxes are placed by arithmetic, and the save draws once. A figure's requested
size is the room its content gets, as with constrained layout; the PNG adds a `PAD` border and
leaves out room the content does not use, as the tight crop (``pad_inches=0.1``) did. A layout
that does not fit grows the figure instead of shrinking a panel below its minimum, so no label is
ever clipped (tests/unit/reports/test_figure_layout.py checks every text against the canvas).

Only figures laid out here are saved without ``bbox_inches="tight"`` (`is_fitted`); any other
figure `histovl.reports.save_figure` writes keeps the tight crop.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # matplotlib is imported where a figure is drawn (histovl.reports.figures says why)
    from matplotlib.axes import Axes
    from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg
    from matplotlib.figure import Figure
    from matplotlib.text import Text

#: Resolution of report PNGs; figures are created at it, so the measuring renderer is the saving one.
DPI = 110
#: Inches of white space around the content and between panels.
PAD = 0.1
#: Extra inches kept around measured labels (tick labels chosen again at the final size may differ).
SLACK = 0.04

#: Inches between an image and its colorbar, and the colorbar's width.
BAR_GAP = 0.1
BAR_WIDTH = 0.14

_FITTED: weakref.WeakSet[Figure] = weakref.WeakSet()


@dataclass(frozen=True)
class Margins:
    """How far an axes' labels, ticks and title reach past its box, in inches, whatever the box's
    size; the texts centred on the box (title and x label across, y label along it) only reach past
    it when the box is smaller than they are, so their sizes are kept apart (`wide`, `tall`)."""

    left: float
    bottom: float
    right: float
    top: float
    wide: float = 0.0
    tall: float = 0.0


def renderer(fig: Figure) -> RendererAgg:
    """The Agg renderer `write_png` will draw with (text sizes are cached on it)."""
    return _agg_canvas(fig).get_renderer()


def _agg_canvas(fig: Figure) -> FigureCanvasAgg:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    return fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)


def margins(ax: Axes, render: RendererAgg) -> Margins:
    """`Margins` of `ax` as it is now drawn: ticks, tick labels, axis labels and title. Its other
    artists (bars, texts, legends) are not measured: the figures here keep them inside the box."""
    tight = ax.get_tightbbox(render, bbox_extra_artists=[], for_layout_only=True)
    box = ax.get_window_extent(render)
    if tight is None:
        return Margins(0.0, 0.0, 0.0, 0.0)
    dpi = float(render.dpi)
    reach = (box.x0 - tight.x0, box.y0 - tight.y0, tight.x1 - box.x1, tight.y1 - box.y1)
    left, bottom, right, top = (max(0.0, r / dpi) + SLACK for r in reach)
    across = [t.get_window_extent(render).width for t in (ax.title, ax.xaxis.label) if _shown(t)]
    along = [ax.yaxis.label.get_window_extent(render).height] if _shown(ax.yaxis.label) else []
    return Margins(left, bottom, right, top, max(across, default=0.0) / dpi, max(along, default=0.0) / dpi)


def _shown(text: Text) -> bool:
    return bool(text.get_visible() and text.get_text())


def wide_enough(lefts: Sequence[float], rights: Sequence[float], wide: Sequence[float]) -> float:
    """The narrowest boxes of a row over which texts `wide` inches wide, centred on each box, stay
    within the box's own margins (`lefts`, `rights`) and half the `PAD` to a neighbour: never
    over a neighbour's labels (whose top tick label pokes up beside a title), nor off the row."""
    n = len(wide)
    rooms = [min(lefts[c] + (PAD / 2 if c else 0.0), rights[c] + (PAD / 2 if c < n - 1 else 0.0)) for c in range(n)]
    return max(w - 2 * room for w, room in zip(wide, rooms, strict=True))


def title_height(title: Text | None, render: RendererAgg) -> float:
    """Inches a figure title (`Figure.suptitle`'s artist) takes at the top, with a gap below it
    (0 without one)."""
    if title is None or not title.get_text():
        return 0.0
    return float(title.get_window_extent(render).height) / float(render.dpi) + PAD


def place_title(title: Text | None, height: float) -> None:
    """Hang the figure title `PAD` below the top of a figure `height` inches tall."""
    if title is not None:
        title.set_y(1.0 - PAD / height)
        title.set_verticalalignment("top")


def fit_grid(
    fig: Figure,
    grid: Sequence[Sequence[Axes]],
    *,
    title: Text | None = None,
    height_ratios: Sequence[float] | None = None,
    min_width: float = 1.0,
    min_height: float = 0.6,
) -> None:
    """Place a rows x columns grid of axes (equal widths, heights by `height_ratios`) so that every
    label fits: column gaps from the widest labels of the neighbouring columns, row gaps likewise."""
    render = renderer(fig)
    n_rows, n_cols = len(grid), len(grid[0])
    m = [[margins(ax, render) for ax in row] for row in grid]
    lefts = [max(m[r][c].left for r in range(n_rows)) for c in range(n_cols)]
    rights = [max(m[r][c].right for r in range(n_rows)) for c in range(n_cols)]
    tops = [max(x.top for x in m[r]) for r in range(n_rows)]
    bottoms = [max(x.bottom for x in m[r]) for r in range(n_rows)]
    ratios = list(height_ratios or [1.0] * n_rows)
    wide = [max(m[r][c].wide for r in range(n_rows)) for c in range(n_cols)]
    tall = max(x.tall / ratios[r] for r in range(n_rows) for x in m[r])
    fixed_w = 2 * PAD + sum(lefts) + sum(rights) + PAD * (n_cols - 1)
    title_h = title_height(title, render)
    fixed_h = 2 * PAD + title_h + sum(tops) + sum(bottoms) + PAD * (n_rows - 1)
    width, height = fig.get_size_inches() + 2 * PAD  # the figure's size is the content's (see module doc)
    col_w = max(min_width, wide_enough(lefts, rights, wide), (width - fixed_w) / n_cols)
    unit_h = max(min_height / min(ratios), tall, (height - fixed_h) / sum(ratios))
    width, height = fixed_w + n_cols * col_w, fixed_h + unit_h * sum(ratios)
    fig.set_size_inches(width, height)
    place_title(title, height)
    y = height - PAD - title_h
    for r, row in enumerate(grid):
        y -= tops[r] + unit_h * ratios[r]
        x = PAD
        for c, ax in enumerate(row):
            x += lefts[c]
            ax.set_position((x / width, y / height, col_w / width, unit_h * ratios[r] / height))
            x += col_w + rights[c] + PAD
        y -= bottoms[r] + PAD
    mark_fitted(fig)


def fit_squares(
    fig: Figure, panels: Sequence[tuple[Axes, Axes]], *, title: Text | None = None, min_side: float = 1.0
) -> None:
    """Place a row of square image axes, each with its colorbar axes to its right, as large as the
    figure allows once every label fits; the figure is then cut to what they use."""
    render = renderer(fig)
    reach = [(margins(image, render), margins(bar, render)) for image, bar in panels]
    top = max(max(a.top, b.top) for a, b in reach)
    bottom = max(max(a.bottom, b.bottom) for a, b in reach)
    title_h = title_height(title, render)
    fixed_w = 2 * PAD + PAD * (len(panels) - 1) + sum(a.left + BAR_GAP + BAR_WIDTH + b.right for a, b in reach)
    fixed_h = 2 * PAD + title_h + top + bottom
    width, height = fig.get_size_inches() + 2 * PAD
    lefts, rights = [a.left for a, _ in reach], [BAR_GAP + BAR_WIDTH + b.right for _, b in reach]
    fits = max(wide_enough(lefts, rights, [a.wide for a, _ in reach]), max(a.tall for a, _ in reach))
    side = max(min_side, fits, min((width - fixed_w) / len(panels), height - fixed_h))
    width, height = fixed_w + side * len(panels), fixed_h + side
    fig.set_size_inches(width, height)
    place_title(title, height)
    x, y = PAD, PAD + bottom
    for (image, bar), (a, b) in zip(panels, reach, strict=True):
        x += a.left
        image.set_position((x / width, y / height, side / width, side / height))
        x += side + BAR_GAP
        bar.set_position((x / width, y / height, BAR_WIDTH / width, side / height))
        x += BAR_WIDTH + b.right + PAD
    mark_fitted(fig)


def write_png(fig: Figure, target: str | Path) -> None:
    """Draw `fig` once at its own dpi and write the Agg buffer as a PNG (zlib level 1: the same
    pixels, files within ~5 % of level 6's in half the time), RGB when opaque: ~8 % less than
    `Figure.savefig`'s RGBA route, same pixels. The ``savefig.*`` rcParams do not apply."""
    from PIL import Image

    canvas = _agg_canvas(fig)
    canvas.draw()
    image = Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba(), "raw", "RGBA", 0, 1)
    if image.getchannel("A").getextrema()[0] == 255:
        image = image.convert("RGB")
    image.save(target, format="png", compress_level=1, dpi=(fig.dpi, fig.dpi))


def mark_fitted(fig: Figure) -> None:
    """Record that `fig` is laid out (no layout engine, nothing outside the canvas)."""
    fig.set_layout_engine("none")
    _FITTED.add(fig)


def is_fitted(fig: Figure) -> bool:
    """Whether `fig` was laid out here (and is saved as it is, without a tight crop)."""
    return fig in _FITTED
