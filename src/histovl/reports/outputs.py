"""The output folder every evaluation command writes (docs/interfaces.md, "Evaluation outputs").

``metrics.json``, ``predictions.csv``, ``run.json`` and ``report.html`` with its figures and
thumbnails, each written atomically (temp file + rename), so an interrupted run leaves whole
files or none. ``run.json`` is written last: its presence means the folder is complete. The
folder is staged (`histovl.outputs_guard.staged_folder`): it is written beside ``out_dir`` and
moved into place as a whole, so a failure (disk full, Ctrl-C, SIGTERM) leaves the previous
results or none, never a new figure beside an old ``metrics.json`` (docs/reliability.md).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

from histovl._io import atomic_open, atomic_write_json
from histovl.errors import NonFiniteError
from histovl.metrics.calibration import DEFAULT_BINS, is_probability_matrix, reliability_curve
from histovl.outputs_guard import staged_folder
from histovl.reports.figures import (
    confident_example_rows,
    confusion_matrix_figure,
    per_class_bar_figure,
)
from histovl.reports.html import GridItem, Report
from histovl.reports.reliability import reliability_figure
from histovl.reports.table import Table

if TYPE_CHECKING:
    import pandas as pd

SUMMARY_METRICS = ("accuracy", "balanced_accuracy", "f1_macro", "f1_weighted", "auroc_macro")


def write_evaluation_outputs(
    out_dir: str | Path,
    *,
    metrics: Mapping[str, Any],
    predictions: pd.DataFrame | Table,
    run_record: Mapping[str, Any],
    report: Report | None,
    extra_tables: Mapping[str, pd.DataFrame | Table] | None = None,
) -> dict[str, Path]:
    """Write metrics.json, predictions.csv, report.html (+ PNGs) and run.json into ``out_dir``.

    ``extra_tables`` (file name -> table) are written as CSV files before run.json, so a
    command's own tables (``prompt_sensitivity.csv``) belong to the same complete folder. Tables
    are pandas DataFrames or `Table` (the same bytes, without importing pandas).

    Raises:
        NonFiniteError: a NaN/Inf is anywhere in ``metrics`` or ``run_record`` (named by its key
            path); undefined values must be ``None`` so the JSON stays valid. Nothing is written.

    Example:
        >>> # paths = write_evaluation_outputs("out", metrics=m, predictions=df,
        >>> #                                  run_record=rec, report=build_classification_report(...))
    """
    find_non_finite(metrics, "metrics")
    find_non_finite(run_record, "run_record")
    final = Path(out_dir)
    names: dict[str, str] = {}
    with staged_folder(final) as out:
        if report is not None:
            names["report"] = report.write(out).name
        names["metrics"] = "metrics.json"
        atomic_write_json(out / names["metrics"], dict(metrics))
        names["predictions"] = "predictions.csv"
        with atomic_open(out / names["predictions"], "w", encoding="utf-8", newline="") as fh:
            _write_csv(predictions, fh)
        for name, table in (extra_tables or {}).items():
            names[name] = name
            with atomic_open(out / name, "w", encoding="utf-8", newline="") as fh:
                _write_csv(table, fh)
        names["run"] = "run.json"
        atomic_write_json(out / names["run"], dict(run_record))
    return {key: final / name for key, name in names.items()}


def _write_csv(table: pd.DataFrame | Table, fh: IO[str]) -> None:
    if isinstance(table, Table):
        table.write_csv(fh)
    else:
        table.to_csv(fh, index=False)


def find_non_finite(obj: Any, where: str) -> None:
    """Raise `NonFiniteError` naming the first NaN/Inf float inside nested dicts/lists."""
    if isinstance(obj, float | np.floating):
        if not math.isfinite(float(obj)):
            raise NonFiniteError(
                f"{where} is {obj}; report undefined values as None, never NaN/Inf"
            )
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            find_non_finite(value, f"{where}[{key!r}]")
    elif isinstance(obj, list | tuple):
        for i, value in enumerate(obj):
            find_non_finite(value, f"{where}[{i}]")
    elif isinstance(obj, np.ndarray) and obj.dtype.kind == "f" and not np.isfinite(obj).all():
        raise NonFiniteError(f"{where} holds NaN/Inf; report undefined values as None")


def predictions_frame(
    paths: Sequence[str | Path],
    labels: Sequence[str] | None,
    scores: ArrayLike,
    class_names: Sequence[str],
    *,
    groups: Sequence[str | None] | None = None,
    root: str | Path | None = None,
) -> pd.DataFrame:
    """The single-label ``predictions.csv`` table: path, label, prediction, score:<class>...

    ``prediction`` is the argmax of ``scores``. Paths are written relative to ``root`` when given
    (portable outputs). ``group`` is added when ``groups`` is given. `predictions_table` is the
    same table without pandas.
    """
    return predictions_table(paths, labels, scores, class_names, groups=groups, root=root).to_frame()


def predictions_table(
    paths: Sequence[str | Path],
    labels: Sequence[str] | None,
    scores: ArrayLike,
    class_names: Sequence[str],
    *,
    groups: Sequence[str | None] | None = None,
    root: str | Path | None = None,
) -> Table:
    """`predictions_frame` as a `Table`: written and reported without importing pandas."""
    s = np.asarray(scores, dtype=np.float64)
    names = [str(c) for c in class_names]
    if s.shape != (len(paths), len(names)):
        raise ValueError(f"scores has shape {s.shape}, expected ({len(paths)}, {len(names)})")
    columns: dict[str, Any] = {"path": [_relative(p, root) for p in paths]}
    if labels is not None:
        columns["label"] = [str(x) for x in labels]
    if groups is not None:
        columns["group"] = list(groups)
    columns["prediction"] = [names[i] for i in s.argmax(axis=1)] if len(s) else []
    for c, name in enumerate(names):
        columns[f"score:{name}"] = s[:, c].copy()
    return Table(columns)


def multilabel_predictions_frame(
    paths: Sequence[str | Path],
    labels: Sequence[Sequence[str]] | None,
    decisions: ArrayLike,
    scores: ArrayLike,
    class_names: Sequence[str],
    *,
    groups: Sequence[str | None] | None = None,
    root: str | Path | None = None,
) -> pd.DataFrame:
    """The multi-label ``predictions.csv``: path, labels, predictions (``;``-joined), score:<class>.
    `multilabel_predictions_table` is the same table without pandas."""
    return multilabel_predictions_table(paths, labels, decisions, scores, class_names, groups=groups, root=root).to_frame()


def multilabel_predictions_table(
    paths: Sequence[str | Path],
    labels: Sequence[Sequence[str]] | None,
    decisions: ArrayLike,
    scores: ArrayLike,
    class_names: Sequence[str],
    *,
    groups: Sequence[str | None] | None = None,
    root: str | Path | None = None,
) -> Table:
    """`multilabel_predictions_frame` as a `Table`: written without importing pandas."""
    d = np.asarray(decisions, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    names = [str(c) for c in class_names]
    if d.shape != (len(paths), len(names)) or s.shape != d.shape:
        raise ValueError(
            f"decisions {d.shape} and scores {s.shape} must both be ({len(paths)}, {len(names)})"
        )
    columns: dict[str, Any] = {"path": [_relative(p, root) for p in paths]}
    if labels is not None:
        columns["labels"] = [";".join(str(x) for x in row) for row in labels]
    if groups is not None:
        columns["group"] = list(groups)
    columns["predictions"] = [
        ";".join(n for n, on in zip(names, row, strict=True) if on) for row in d
    ]
    for c, name in enumerate(names):
        columns[f"score:{name}"] = s[:, c].copy()
    return Table(columns)


def build_classification_report(
    title: str,
    metrics: Mapping[str, Any],
    predictions: pd.DataFrame | Table,
    run_record: Mapping[str, Any] | None = None,
    *,
    image_root: str | Path | None = None,
    n_examples: int = 8,
    subtitle: str = "",
    figure_cache: str | Path | None = None,
) -> Report:
    """The standard single-label report: summary with CIs, confusion matrices, per-class table and
    F1 chart, the most confident right and wrong images, and provenance.

    ``predictions`` is a `predictions_frame` or `predictions_table`; its ``path`` column is
    resolved against ``image_root`` for the thumbnails. With `figure_cache` (the run's cache folder) figures drawn
    from the same numbers before are copied, not drawn again (`Report.figure_cache`).
    """
    report = Report(title, subtitle=subtitle, figure_cache=Path(figure_cache) if figure_cache is not None else None)
    predictions = predictions if isinstance(predictions, Table) else Table.from_frame(predictions)
    report.add_metrics(
        metrics,
        names=[m for m in SUMMARY_METRICS if m in metrics] + ["n"],
        title="Summary",
        caption=_ci_caption(metrics),
    )
    names = list(metrics["class_names"])
    matrix = metrics["confusion_matrix"]
    report.add_figure(
        "confusion_matrix",
        lambda: confusion_matrix_figure(matrix, names),
        title="Confusion matrix",
        key=_figure_key("confusion_matrix_figure", matrix, names),
    )
    _add_reliability(report, metrics, predictions, names)
    per_class = metrics.get("per_class") or {}
    if per_class:
        table = Table.from_rows(
            [
                {
                    "class": k,
                    **{f: v.get(f) for f in ("support", "precision", "recall", "f1", "auroc")},
                    "f1 95% CI": _interval_text(v.get("f1_ci95")),
                }
                for k, v in per_class.items()
            ]
        )
        report.add_table(table, title="Per class")
        f1 = {k: v.get("f1") for k, v in per_class.items()}
        intervals = {k: v.get("f1_ci95") or [None, None] for k, v in per_class.items()}
        report.add_figure(
            "f1_per_class",
            lambda: per_class_bar_figure(f1, intervals=intervals),
            title="F1 per class",
            key=_figure_key("per_class_bar_figure", f1, intervals),
        )
    right, wrong = confident_example_rows(predictions, k=n_examples)
    for rows, heading, correct in (
        (right, "Most confident correct predictions", True),
        (wrong, "Most confident wrong predictions", False),
    ):
        items = [
            GridItem(
                _resolve(str(row["path"]), image_root),
                f"true: {row['label']} / pred: {row['prediction']} ({row['confidence']:.3f})",
                correct,
            )
            for row in rows
        ]
        report.add_image_grid(items, title=heading)
    if run_record is not None:
        report.add_provenance(run_record)
    return report


def _add_reliability(report: Report, metrics: Mapping[str, Any], predictions: Table, names: list[str]) -> None:
    """The reliability diagram, when the predictions hold class probabilities and known labels."""
    columns = [f"score:{c}" for c in names]
    if "label" not in predictions or not set(columns) <= set(predictions.columns) or not len(predictions):
        return
    probs = np.column_stack([np.asarray(predictions[c], dtype=np.float64) for c in columns])
    index = {c: i for i, c in enumerate(names)}
    labels = [index.get(str(v), -1) for v in predictions["label"]]
    if min(labels) < 0 or not is_probability_matrix(probs):
        return
    bins = int(metrics.get("ece_bins") or DEFAULT_BINS)
    y = np.asarray(labels, dtype=np.int64)

    def figure() -> Any:
        return reliability_figure(
            {"": reliability_curve(y, probs, bins, "uniform")}, {"": reliability_curve(y, probs, bins, "quantile")},
            title="Reliability diagram",
        )

    numbers = ", ".join(f"{k} = {metrics[k]:.4f}" for k in ("ece", "brier", "nll") if metrics.get(k) is not None)
    report.add_figure(
        "reliability", figure, title="Calibration",
        caption=f"{numbers} (ECE: top-label, {bins} equal-width bins). Bars: accuracy per confidence bin; "
                "red ticks: mean confidence in the bin; orange: equal-mass bins; dashed: perfect calibration. "
                "See docs/compare.md.",
        key=_figure_key("reliability_figure", bins, hashlib.sha256(y.tobytes() + probs.tobytes()).hexdigest()),
    )


def _figure_key(function: str, *inputs: Any) -> str:
    """The memo key of a figure (`Report.add_figure`): the drawing function and its inputs, exactly."""
    return json.dumps([function, *inputs], sort_keys=True, default=repr)


def _ci_caption(metrics: Mapping[str, Any]) -> str:
    unit = metrics.get("bootstrap_unit", "item")
    level = metrics.get("ci_level", 0.95)
    n_boot = metrics.get("n_boot")
    if not n_boot:
        return "No bootstrap intervals were computed (n_boot = 0)."
    groups = f" over {metrics.get('n_groups')} groups" if unit == "group" else ""
    return f"{level:.0%} percentile bootstrap intervals from {n_boot} resamples of {unit}s{groups}."


def _interval_text(interval: Any) -> str:
    if not interval or interval[0] is None or interval[1] is None:
        return "–"
    return f"[{interval[0]:.3f}, {interval[1]:.3f}]"


def _relative(path: str | Path, root: str | Path | None) -> str:
    p = Path(path)
    if root is not None:
        try:
            return p.resolve().relative_to(Path(root).resolve()).as_posix()
        except ValueError:
            return str(p)
    return str(p)


def _resolve(path: str, root: str | Path | None) -> Path:
    p = Path(path)
    return p if p.is_absolute() or root is None else Path(root) / p
