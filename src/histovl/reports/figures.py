"""Figures for reports, built on `matplotlib.figure.Figure` directly.

Using the object API (never ``pyplot``) means no global backend switch and no figure registry:
importing histovl does not change a user's matplotlib state, figures are garbage-collected like
any object, and rendering works headless (``Figure.savefig`` uses the Agg canvas for PNG).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from histovl._io import atomic_path
from histovl.reports import layout
from histovl.reports.table import Table

if TYPE_CHECKING:  # matplotlib is imported by the functions that draw (~1 s): not by a memoised report
    import pandas as pd
    from matplotlib.figure import Figure


def save_figure(fig: Figure, target: str | Path, *, dpi: int = layout.DPI) -> Path:
    """Render ``fig`` to a PNG at ``target`` atomically (temp file, then rename).

    A figure laid out by `histovl.reports.layout` is drawn once, as it is (`layout.write_png`);
    any other is cropped to its content (``bbox_inches="tight"``, which draws it twice). Both are
    written with zlib level 1: the same pixels, files within ~5 % of level 6's, in half the time.
    """
    target = Path(target)
    with atomic_path(target, suffix=".png") as tmp:
        if layout.is_fitted(fig) and dpi == fig.dpi:
            layout.write_png(fig, tmp)
        else:
            fig.savefig(tmp, format="png", dpi=dpi, bbox_inches=None if layout.is_fitted(fig) else "tight",
                        pil_kwargs={"compress_level": 1})
    return target


def confusion_matrix_figure(
    matrix: ArrayLike, class_names: Sequence[str], *, title: str = "Confusion matrix"
) -> Figure:
    """Two panels: raw counts and row-normalised rates (rows = true class, columns = predicted).

    Example:
        >>> fig = confusion_matrix_figure([[5, 1], [2, 7]], ["benign", "tumour"])
        >>> len(fig.axes) >= 2
        True
    """
    from matplotlib.figure import Figure

    cm = np.asarray(matrix, dtype=np.float64)
    n = len(class_names)
    if cm.shape != (n, n):
        raise ValueError(
            f"confusion matrix has shape {cm.shape}, expected ({n}, {n}) for {n} classes"
        )
    support = cm.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = np.where(support > 0, cm / np.maximum(support, 1), np.nan)
    side = max(3.2, 0.55 * n + 1.8)
    fig = Figure(figsize=(2 * side + 1.0, side), dpi=layout.DPI)
    axes = [fig.add_axes((0.1 + 0.5 * k, 0.2, 0.3, 0.6)) for k in range(2)]  # placed by fit_squares
    bars = [fig.add_axes((0.42 + 0.5 * k, 0.2, 0.02, 0.6)) for k in range(2)]
    panels = (
        (cm, "counts", "{:.0f}", None),
        (rates, "row-normalised (recall on the diagonal)", "{:.2f}", (0.0, 1.0)),
    )
    for ax, bar, (values, subtitle, fmt, limits) in zip(axes, bars, panels, strict=True):
        vmin, vmax = (
            limits
            if limits
            else (0.0, max(float(np.nanmax(values)) if np.isfinite(values).any() else 1.0, 1.0))
        )
        image = ax.imshow(np.nan_to_num(values, nan=0.0), cmap="Blues", vmin=vmin, vmax=vmax)
        fig.colorbar(image, cax=bar)
        ax.set_title(subtitle, fontsize=9)
        ax.set_xticks(range(n), labels=list(class_names), rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(n), labels=list(class_names), fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        if n <= 25:
            threshold = vmin + 0.6 * (vmax - vmin)
            for i in range(n):
                for j in range(n):
                    v = values[i, j]
                    text = "–" if not np.isfinite(v) else fmt.format(v)
                    colour = "white" if np.isfinite(v) and v > threshold else "black"
                    ax.text(j, i, text, ha="center", va="center", fontsize=7, color=colour)
    layout.fit_squares(fig, list(zip(axes, bars, strict=True)), title=fig.suptitle(title))
    return fig


def per_class_bar_figure(
    values: Mapping[str, float | None],
    *,
    intervals: Mapping[str, Sequence[float | None]] | None = None,
    metric_name: str = "F1",
    title: str | None = None,
) -> Figure:
    """Horizontal bars of one metric per class, with CI whiskers where given.

    ``None`` values (undefined metric) are drawn as an empty slot labelled "n/a".
    """
    from matplotlib.figure import Figure

    labels = list(values)
    vals = np.array([np.nan if values[k] is None else float(values[k]) for k in labels])  # type: ignore[arg-type]
    fig = Figure(figsize=(6.0, max(2.0, 0.35 * len(labels) + 1.0)), dpi=layout.DPI)
    ax = fig.subplots()
    ypos = np.arange(len(labels))
    ax.barh(ypos, np.nan_to_num(vals, nan=0.0), color="#4C72B0")
    text_x = np.nan_to_num(vals, nan=0.0)
    if intervals:
        for i, (y, label) in enumerate(zip(ypos, labels, strict=True)):
            lo, hi = (list(intervals.get(label) or [None, None]) + [None, None])[:2]
            if lo is not None and hi is not None:
                ax.plot([lo, hi], [y, y], color="black", linewidth=1.2)
                ax.plot([lo, lo], [y - 0.15, y + 0.15], color="black", linewidth=1.2)
                ax.plot([hi, hi], [y - 0.15, y + 0.15], color="black", linewidth=1.2)
                text_x[i] = max(text_x[i], hi)
    for y, v, x in zip(ypos, vals, text_x, strict=True):
        ax.text(
            float(x) + 0.01, float(y), "n/a" if np.isnan(v) else f"{v:.3f}", va="center", fontsize=7
        )
    ax.set_yticks(ypos, labels=labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0.0, 1.12)
    ax.set_xlabel(metric_name + (" (whiskers: 95% CI)" if intervals else ""))
    ax.set_title(title or f"{metric_name} per class", fontsize=10)
    layout.fit_grid(fig, [[ax]])
    return fig


def select_confident_examples(
    predictions: pd.DataFrame,
    *,
    k: int = 8,
    label_column: str = "label",
    prediction_column: str = "prediction",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ``k`` most confident right and the ``k`` most confident wrong predictions.

    Confidence is the score of the predicted class (column ``score:<prediction>``), as written
    by `histovl.reports.predictions_frame`. Returns ``(right, wrong)`` frames sorted by
    decreasing confidence, each with an added ``confidence`` column. Ties keep input order.
    `confident_example_rows` does the same on a `Table`, without pandas.
    """
    frame = predictions.copy()
    columns = {c: frame[c].tolist() for c in (label_column, prediction_column) if c in frame.columns}
    scores = {c: frame[c].to_numpy(dtype=np.float64) for c in frame.columns if str(c).startswith("score:")}
    right, wrong, confidence = _confident_indices(
        Table({**columns, **scores}), k, label_column, prediction_column, have=list(frame.columns)
    )
    frame["confidence"] = confidence
    return frame.iloc[right], frame.iloc[wrong]


def confident_example_rows(
    predictions: Table, *, k: int = 8, label_column: str = "label", prediction_column: str = "prediction"
) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """`select_confident_examples` of a `Table`: the rows as dicts (every column plus
    ``confidence``), right ones then wrong ones."""
    right, wrong, confidence = _confident_indices(predictions, k, label_column, prediction_column)

    def rows(index: np.ndarray) -> list[dict[str, object]]:
        return [{**{c: predictions[c][i] for c in predictions.columns}, "confidence": float(confidence[i])} for i in index]

    return rows(right), rows(wrong)


def _confident_indices(
    table: Table, k: int, label_column: str, prediction_column: str, *, have: list[str] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices of the ``k`` most confident right and wrong predictions (a stable sort by
    decreasing confidence, missing confidence last) and every row's confidence."""
    missing = {label_column, prediction_column} - set(table.columns)
    if missing:
        raise ValueError(
            f"predictions lacks column(s) {sorted(missing)}; have {have if have is not None else table.columns}"
        )
    score_columns = [c for c in table.columns if str(c).startswith("score:")]
    column_of = {str(c)[len("score:") :]: i for i, c in enumerate(score_columns)}
    scores = (
        np.column_stack([np.asarray(table[c], dtype=np.float64) for c in score_columns])
        if score_columns and len(table)
        else np.empty((len(table), 0))
    )
    predicted = [str(p) for p in table[prediction_column]]
    col = np.array([column_of.get(p, -1) for p in predicted], dtype=np.int64)
    confidence = np.full(len(table), np.nan)
    known = col >= 0
    confidence[known] = scores[np.flatnonzero(known), col[known]]
    correct = np.array([str(a) == p for a, p in zip(table[label_column], predicted, strict=True)], dtype=bool)
    order = np.argsort(-confidence, kind="stable")  # NaN (no confidence) sorts last, as in pandas
    return order[correct[order]][:k], order[~correct[order]][:k], confidence
