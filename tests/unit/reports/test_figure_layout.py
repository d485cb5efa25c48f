"""The measured layout of report figures (histovl.reports.layout): no text leaves the canvas or
runs into another panel's text, however long or many the class names, and the PNG is the figure
as laid out (no tight crop, one draw)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.text import Text
from PIL import Image

from histovl.metrics.calibration import reliability_curve
from histovl.reports import layout
from histovl.reports.figures import confusion_matrix_figure, per_class_bar_figure, save_figure
from histovl.reports.reliability import reliability_figure

LONG = [
    "lung adenocarcinoma", "benign lung tissue", "lung squamous cell carcinoma",
    "squamous cell carcinoma, keratinising, moderately differentiated", "tumour stroma", "necrosis",
    "lymphocytes", "mucus", "debris and background", "smooth muscle", "adipose tissue", "normal colon mucosa",
]


def _texts(fig: Figure) -> list[Text]:
    """The texts a draw of `fig` renders: visible, non-empty, and tick labels only of the ticks
    drawn (an axis keeps Tick objects beyond its view limits that it does not draw)."""
    ticks = [tick for ax in fig.axes for axis in ax._axis_map.values() for tick in axis.get_major_ticks()]
    drawn = {id(tick) for ax in fig.axes for axis in ax._axis_map.values() for tick in axis._update_ticks()}
    hidden = {id(label) for tick in ticks if id(tick) not in drawn for label in (tick.label1, tick.label2)}
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip() and id(t) not in hidden]


def _check_inside_and_apart(fig: Figure, png: Path) -> None:
    render = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    width, height = fig.bbox.width, fig.bbox.height
    png_w, png_h = Image.open(png).size
    assert abs(png_w - width) <= 1 and abs(png_h - height) <= 1, "a fitted figure is saved uncropped"
    texts = _texts(fig)
    boxes = [t.get_window_extent(render) for t in texts]
    for text, box in zip(texts, boxes, strict=True):
        assert box.x0 >= -0.5 and box.y0 >= -0.5 and box.x1 <= width + 0.5 and box.y1 <= height + 0.5, (
            f"{text.get_text()!r} reaches outside the {width:.0f}x{height:.0f} canvas: {box}"
        )
    # Text outside every axes box (tick labels, axis labels, titles) never overlaps such a text of
    # another axes (or the figure title); rotated neighbours' boxes on one axis may.
    inside = [any(ax.bbox.contains(b.x0 + 1, b.y0 + 1) and ax.bbox.contains(b.x1 - 1, b.y1 - 1) for ax in fig.axes)
              for b in boxes]
    owner = {id(label): ax for ax in fig.axes for axis in ax._axis_map.values() for tick in axis.get_major_ticks()
             for label in (tick.label1, tick.label2)}
    outer = [(t, b) for t, b, i in zip(texts, boxes, inside, strict=True) if not i]
    for (t1, b1), (t2, b2) in itertools.combinations(outer, 2):
        same = owner.get(id(t1), t1.axes) is owner.get(id(t2), t2.axes)
        assert same or not b1.overlaps(b2), (
            f"{t1.get_text()!r} overlaps {t2.get_text()!r}"
        )


def _rates(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n, 250)
    logits = rng.normal(size=(250, n)) + 2.0 * np.eye(n)[y]
    return y, np.exp(logits) / np.exp(logits).sum(1, keepdims=True)


@pytest.mark.parametrize("n", [2, 3, 12])
def test_confusion_matrix_labels_stay_on_the_canvas(tmp_path: Path, n: int) -> None:
    y, probs = _rates(n)
    matrix = np.zeros((n, n))
    np.add.at(matrix, (y, probs.argmax(1)), 1)
    fig = confusion_matrix_figure(matrix, LONG[:n])
    assert layout.is_fitted(fig)
    _check_inside_and_apart(fig, save_figure(fig, tmp_path / "cm.png"))


def test_per_class_bars_labels_stay_on_the_canvas(tmp_path: Path) -> None:
    values = {name: (None if k == 3 else 0.1 + 0.07 * k) for k, name in enumerate(LONG)}
    intervals = {name: [0.05, 0.99] for name in LONG}
    fig = per_class_bar_figure(values, intervals=intervals, metric_name="F1")
    _check_inside_and_apart(fig, save_figure(fig, tmp_path / "f1.png"))


@pytest.mark.parametrize("runs", [1, 3, 8])  # 8: titles wider than the columns (histovl compare)
def test_reliability_labels_stay_on_the_canvas(tmp_path: Path, runs: int) -> None:
    y, probs = _rates(4)
    crowded = np.full_like(probs, 0.02)  # one bin holds nearly everything: the counts axis goes symlog
    crowded[np.arange(len(y)), y] = 0.94
    crowded[:12] = probs[:12]
    curves = [[(y, probs), (y, crowded), (y, probs[:, ::-1])][k % 3] for k in range(runs)]
    names = ["zero-shot ViT-B-32 with a long run name", "crowded", "reversed", *(f"run {k}" for k in range(3, 8))][:runs]
    fig = reliability_figure(
        {n: reliability_curve(a, b, 15, "uniform") for n, (a, b) in zip(names, curves, strict=True)},
        {n: reliability_curve(a, b, 15, "quantile") for n, (a, b) in zip(names, curves, strict=True)},
    )
    _check_inside_and_apart(fig, save_figure(fig, tmp_path / "rel.png"))
    _check_legends_clear_of_data(fig)


def _check_legends_clear_of_data(fig: Figure) -> None:
    """No legend covers a bar, a marker or a line vertex of its axes (in the PNG as drawn)."""
    from matplotlib.collections import PathCollection
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    render = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is None:
            continue
        box = legend.get_window_extent(render)
        for bar in (p for p in ax.patches if isinstance(p, Rectangle) and p.get_height() > 0):
            assert not box.overlaps(bar.get_window_extent(render)), "the legend covers a bar"
        points = [ax.transData.transform(line.get_xydata()) for line in ax.get_lines() if isinstance(line, Line2D)]
        points += [ax.transData.transform(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection)]
        for xy in points:
            inside = (xy[:, 0] >= box.x0) & (xy[:, 0] <= box.x1) & (xy[:, 1] >= box.y0) & (xy[:, 1] <= box.y1)
            assert not inside.any(), "the legend covers a point of a curve"


def test_a_figure_not_laid_out_here_is_still_cropped_tight(tmp_path: Path) -> None:
    fig = Figure(figsize=(4, 3))
    fig.subplots().set_ylabel("a label")
    save_figure(fig, tmp_path / "plain.png")
    assert not layout.is_fitted(fig)
    png_w, png_h = Image.open(tmp_path / "plain.png").size
    assert (png_w, png_h) != (4 * layout.DPI, 3 * layout.DPI)  # cropped to its content
