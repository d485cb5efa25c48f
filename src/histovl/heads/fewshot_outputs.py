"""Writing the `histovl fewshot eval` output folder (every file atomically, through `histovl._io`,
into a staged folder that replaces the previous one as a whole: docs/reliability.md, "run interrupted").

fewshot.csv       one row per method x shots x seed (and the zero-shot row): the five metrics
metrics.json      per method x shots: mean and std over seeds, bootstrap CI of the seed mean
support_ids.csv   the drawn supports (seed, shots, class, path, group): a run can be replayed
split.csv         every image with its role (pool, query, removed) and leakage unit
fewshot_f1.png    macro F1 against shots, one line per method, zero-shot as a horizontal line
run.json          the run record; report.html: the figure and tables with CIs

Paths in the CSV files are relative to ``run.json``'s ``extra.paths_root``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from histovl._io import atomic_write_json, atomic_write_text
from histovl.outputs_guard import staged_folder
from histovl.reports import Report, build_run_record, save_figure

FIGURE_NAME = "fewshot_f1.png"


def write_fewshot_outputs(
    out: Path,
    *,
    command: str,
    table: pd.DataFrame,
    metrics: dict[str, Any],
    supports: pd.DataFrame,
    split_table: pd.DataFrame,
    encoder: Any,
    prompt_set: Any,
    config: dict[str, Any],
    inputs: Sequence[str],
    skipped: list[dict[str, str]],
    seed: int,
) -> None:
    """Write every output of a few-shot evaluation into `out`, staged: the files replace the
    previous run's as a whole (`histovl.outputs_guard.staged_folder`)."""
    with staged_folder(out) as stage:
        _write_fewshot_files(stage, command=command, table=table, metrics=metrics, supports=supports,
                             split_table=split_table, encoder=encoder, prompt_set=prompt_set, config=config,
                             inputs=inputs, skipped=skipped, seed=seed)


def _write_fewshot_files(
    out: Path, *, command: str, table: pd.DataFrame, metrics: dict[str, Any], supports: pd.DataFrame,
    split_table: pd.DataFrame, encoder: Any, prompt_set: Any, config: dict[str, Any], inputs: Sequence[str],
    skipped: list[dict[str, str]], seed: int,
) -> None:
    root = _common_root(inputs)
    csv_table = _with_zero_shot_row(table, metrics)
    atomic_write_text(out / "fewshot.csv", csv_table.to_csv(index=False))
    atomic_write_json(out / "metrics.json", metrics)
    atomic_write_text(out / "support_ids.csv", _relative_paths(supports, root).to_csv(index=False))
    atomic_write_text(out / "split.csv", _relative_paths(split_table, root).to_csv(index=False))
    figure = f1_figure(metrics, title=f"Few-shot macro F1 — {encoder.card.name}")
    save_figure(figure, out / FIGURE_NAME)
    record = build_run_record(
        command=command, config=config, models=[encoder.card], prompt_set=prompt_set, seed=seed,
        inputs=list(inputs), skipped=skipped,
        extra={"weights_id": encoder.weights_id, "paths_root": root,
               "chosen": {m: {s: b["chosen"] for s, b in by.items()} for m, by in metrics["results"].items()}},
    )
    atomic_write_json(out / "run.json", record)
    build_fewshot_report(metrics, record, figure, title=f"Few-shot evaluation — {encoder.card.name}").write(out)


def _with_zero_shot_row(table: pd.DataFrame, metrics: Mapping[str, Any]) -> pd.DataFrame:
    zs = metrics.get("zero_shot")
    if zs is None:
        return table
    row = {"method": "zero-shot", "shots": 0, "seed": metrics["seeds"][0], **{k: zs[k] for k in table.columns[3:]}}
    return pd.concat([pd.DataFrame([row], columns=table.columns), table], ignore_index=True)


def _common_root(paths: Sequence[str]) -> str:
    if not paths:
        return ""
    parents = [os.path.dirname(os.path.abspath(p)) for p in paths]
    return os.path.commonpath(parents)


def _relative_paths(frame: pd.DataFrame, root: str) -> pd.DataFrame:
    if frame.empty or not root:
        return frame
    return frame.assign(path=[Path(os.path.relpath(p, root)).as_posix() for p in frame["path"]])


def _shot_label(shots: str) -> str:
    return "all" if shots == "all" else str(shots)


def f1_figure(metrics: Mapping[str, Any], *, metric: str = "f1_macro", title: str = "") -> Figure:
    """Mean `metric` against shots, one line per method with its CI band; zero-shot as a line."""
    shots = list(metrics["shots"])
    xs = np.arange(len(shots))
    fig = Figure(figsize=(7.0, 4.2), layout="constrained")
    ax = fig.subplots()
    shown: list[float] = []
    for method, by_shot in metrics["results"].items():
        mean = [_value(by_shot.get(s, {}), "mean", metric) for s in shots]
        ci = [by_shot.get(s, {}).get("ci95", {}).get(metric) or [None, None] for s in shots]
        (line,) = ax.plot(xs, _nan(mean), marker="o", label=method)
        ax.fill_between(xs, _nan([c[0] for c in ci]), _nan([c[1] for c in ci]), color=line.get_color(), alpha=0.12)
        shown += [v for v in [*mean, *(c[0] for c in ci)] if v is not None]
    zs = metrics.get("zero_shot")
    if zs is not None and zs.get(metric) is not None:
        ax.axhline(zs[metric], color="black", linestyle="--", linewidth=1.2, label="zero-shot")
        lo, hi = (zs.get("ci95", {}).get(metric) or [None, None])[:2]
        if lo is not None and hi is not None:
            ax.axhspan(lo, hi, color="grey", alpha=0.12)
        shown += [v for v in (zs[metric], lo) if v is not None]
    ax.set_xticks(xs, labels=[_shot_label(s) for s in shots])
    ax.set_xlabel("labelled images per class (shots)")
    ax.set_ylabel(metric.replace("_", " ") + " (band: 95% CI of the seed mean)")
    ax.set_ylim(max(0.0, min(shown, default=0.0) - 0.05), 1.01)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def _value(block: Mapping[str, Any], kind: str, metric: str) -> float | None:
    return (block.get(kind) or {}).get(metric)


def _nan(values: Sequence[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def summary_table(metrics: Mapping[str, Any], metric: str = "f1_macro", kind: str = "mean") -> pd.DataFrame:
    """Methods x shots: ``mean [CI low, high]`` (or the std over seeds) of `metric`; zero-shot in column 0."""
    shots = list(metrics["shots"])
    zs = metrics.get("zero_shot")
    rows = []
    if zs is not None and kind == "mean":
        rows.append({"method": "zero-shot", "0": _cell(zs.get(metric), (zs.get("ci95") or {}).get(metric)), **dict.fromkeys(shots, "")})
    for method, by_shot in metrics["results"].items():
        cells = {}
        for s in shots:
            block = by_shot.get(s, {})
            value = _value(block, kind, metric)
            cells[s] = _cell(value, (block.get("ci95") or {}).get(metric)) if kind == "mean" else ("n/a" if value is None else f"{value:.3f}")
        rows.append({"method": method, "0": "", **cells})
    columns = ["method", "0", *shots] if zs is not None and kind == "mean" else ["method", *shots]
    return pd.DataFrame(rows, columns=columns)


def _cell(value: float | None, interval: Sequence[float | None] | None) -> str:
    if value is None:
        return "n/a"
    lo, hi = (list(interval or [None, None]) + [None, None])[:2]
    return f"{value:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else "")


def build_fewshot_report(metrics: Mapping[str, Any], record: Mapping[str, Any], figure: Figure, *, title: str) -> Report:
    """The report: protocol summary, the F1 figure, tables of F1 and AUROC with CIs, provenance."""
    report = Report(title, subtitle=(
        f"{len(metrics['classes'])} classes · support pool {metrics['n_support_pool']} images · "
        f"query {metrics['n_query']} images · seeds {len(metrics['seeds'])}"
    ))
    report.add_text(
        "Each cell is the mean over seeds of the metric on the query set; the interval is a 95% "
        f"percentile bootstrap of that mean ({metrics['n_boot']} resamples of the query set by "
        f"{metrics['bootstrap_unit']}, each resample scored for every seed). Supports never share a "
        "group or near-duplicate copy with the query set (split.csv); the drawn supports are in "
        "support_ids.csv.", title="Protocol")
    report.add_figure("fewshot_f1", figure, title="Macro F1 against shots")
    report.add_table(summary_table(metrics, "f1_macro"), title="Macro F1 [95% CI]")
    report.add_table(summary_table(metrics, "f1_macro", kind="std"), title="Macro F1: standard deviation over seeds",
                     caption="The spread over support draws; the intervals above cover query sampling only.")
    report.add_table(summary_table(metrics, "balanced_accuracy"), title="Balanced accuracy [95% CI]")
    report.add_table(summary_table(metrics, "auroc_macro"), title="Macro AUROC [95% CI]")
    report.add_provenance(record)
    return report
