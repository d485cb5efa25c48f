"""The generic HTML report builder and figures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from PIL import Image

from histovl.reports import (
    GridItem,
    Report,
    confusion_matrix_figure,
    per_class_bar_figure,
    select_confident_examples,
)


def test_sections_render_in_order_and_escape(tmp_path: Path) -> None:
    img = tmp_path / "rgba.png"
    Image.new("RGBA", (300, 200), (255, 0, 0, 128)).save(img)
    report = Report("Report <one>", subtitle="sub & title")
    report.add_text("first paragraph\n\nsecond <b>paragraph</b>", title="Notes")
    report.add_metrics(
        {"accuracy": 0.9, "n": 10, "ci95": {"accuracy": [0.8, 0.95]}}, names=["accuracy", "n"]
    )
    report.add_table(
        pd.DataFrame({"class": ["<script>alert(1)</script>"], "f1": [0.12345678]}), title="Table"
    )
    fig = Figure()
    fig.subplots().plot([0, 1], [1, 0])
    report.add_figure("my curve/1", fig, title="Figure", caption="a caption")
    report.add_image_grid(
        [
            GridItem(img, "true a / pred a", True),
            GridItem(tmp_path / "missing.png", "gone", False),
            GridItem(Image.new("RGB", (20, 20)), "in memory", None),
        ],
        title="Grid",
    )
    path = report.write(tmp_path / "out")
    page = path.read_text()
    assert (
        page.index("<h2>Notes</h2>") < page.index("<h2>Summary</h2>") < page.index("<h2>Table</h2>")
    )
    assert (
        page.index("<h2>Table</h2>") < page.index("<h2>Figure</h2>") < page.index("<h2>Grid</h2>")
    )
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "Report &lt;one&gt;" in page and "second &lt;b&gt;paragraph&lt;/b&gt;" in page
    assert "[0.8000, 0.9500]" in page and "0.1235" in page
    assert (tmp_path / "out" / "figures" / "my_curve_1.png").is_file()
    thumbs = sorted((tmp_path / "out" / "thumbnails").iterdir())
    assert len(thumbs) == 2  # the unreadable image becomes a placeholder, not a failure
    with Image.open(thumbs[0]) as t:
        assert max(t.size) <= 160 and t.mode == "RGB"
    assert "image unreadable" in page
    assert "http" not in page.replace('name="viewport"', "")  # nothing fetched from the network


def test_confusion_matrix_figure_checks_shape() -> None:
    fig = confusion_matrix_figure(np.array([[3, 1], [0, 0]]), ["a", "b"])  # empty row is fine
    assert len(fig.axes) == 4  # two panels + two colour bars
    with pytest.raises(ValueError, match="expected"):
        confusion_matrix_figure(np.ones((2, 3)), ["a", "b"])


def test_per_class_bar_figure_handles_missing_values() -> None:
    fig = per_class_bar_figure(
        {"a": 0.5, "b": None}, intervals={"a": [0.4, 0.6], "b": [None, None]}
    )
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "0.500" in texts and "n/a" in texts


def test_select_confident_examples() -> None:
    frame = pd.DataFrame(
        {
            "path": ["p0", "p1", "p2", "p3", "p4"],
            "label": ["a", "a", "b", "b", "a"],
            "prediction": ["a", "b", "b", "a", "a"],
            "score:a": [0.6, 0.1, 0.3, 0.95, 0.99],
            "score:b": [0.4, 0.9, 0.7, 0.05, 0.01],
        }
    )
    right, wrong = select_confident_examples(frame, k=2)
    assert list(right["path"]) == ["p4", "p2"]
    assert list(wrong["path"]) == ["p3", "p1"]
    assert list(wrong["confidence"]) == [0.95, 0.9]


def test_import_and_render_leave_matplotlib_global_state_alone(tmp_path: Path) -> None:
    # In a fresh interpreter: no pyplot (no backend switch, no figure registry), rcParams untouched.
    # (Reading rcParams['backend'] itself imports pyplot in matplotlib 3.11, so it is not read.)
    code = (
        "import sys, matplotlib as m; snap = lambda: {k: m.rcParams[k] for k in m.rcParams if k != 'backend'}; "
        "before = snap(); import histovl.reports as r; "
        "fig = r.confusion_matrix_figure([[1, 0], [0, 1]], ['a', 'b']); "
        f"r.save_figure(fig, {str(tmp_path / 'cm.png')!r}); "
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'; "
        "assert snap() == before, 'rcParams changed'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert (tmp_path / "cm.png").is_file()
