"""The sweep's output folder: CSVs, figures, degradation tables, metrics.json, run.json, report.

- ``robustness.csv``: exactly ``model,corruption,severity,accuracy,f1_macro,f1_weighted,ha@5,ha@10``
  (docs/interfaces.md); stain-normalised rows name the model ``<model>+macenko``.
- ``robustness_detail.csv``: the same rows first-columns-first, plus mitigation, the level's raw
  parameter, n, 95 % CI bounds and the other metrics (balanced accuracy, AUROC, recall@K, ...).
- ``metrics.json``: per model the clean scores, the degradation tables and every condition.
- ``predictions.csv``: one row per model × condition × image (docs/interfaces.md columns + condition).
- ``report.html`` with ``figures/``: metric vs level (one panel per corruption, one line per
  model), the degradation tables, the gallery of one tile under every corruption, provenance.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from histovl._io import atomic_open
from histovl.outputs_guard import staged_folder
from histovl.reports import Report, build_run_record, write_evaluation_outputs
from histovl.robustness.results import CSV_COLUMNS, GalleryTile, RobustnessResult

if TYPE_CHECKING:  # drawing imports matplotlib, the gallery torch: a memoised report needs neither
    from matplotlib.figure import Figure

FIGURE_METRICS = ("accuracy", "f1_macro", "f1_weighted", "ha@5", "ha@10")


def metric_vs_level_figure(table: pd.DataFrame, metric: str) -> Figure:
    """One panel per corruption: `metric` against level (0 = clean), one line per model."""
    from matplotlib.figure import Figure

    corrupted = [c for c in dict.fromkeys(table["corruption"]) if c != "none"]
    n_panels = max(1, len(corrupted))
    n_cols = min(4, n_panels)
    n_rows = int(np.ceil(n_panels / n_cols))
    fig = Figure(figsize=(3.0 * n_cols, 2.5 * n_rows))
    axes = np.atleast_1d(fig.subplots(n_rows, n_cols, squeeze=False)).ravel()
    series = list(dict.fromkeys(zip(table["model"], table["mitigation"], strict=True)))
    for ax, corruption in zip(axes, corrupted, strict=False):
        for model, mitigation in series:
            sel = table[(table["model"] == model) & (table["mitigation"] == mitigation)]
            clean = sel[sel["corruption"] == "none"]
            part = sel[sel["corruption"] == corruption]
            pts = pd.concat([clean.assign(severity=0), part]).sort_values("severity")
            label = model if mitigation == "none" else f"{model}+{mitigation}"
            ax.plot(pts["severity"], pts[metric], marker="o", ms=3, lw=1.2,
                    ls="-" if mitigation == "none" else "--", label=label)
            lo, hi = f"{metric}_lo", f"{metric}_hi"
            if lo in pts and pts[lo].notna().all():
                ax.fill_between(pts["severity"], pts[lo].astype(float), pts[hi].astype(float), alpha=0.12)
        ax.set_ylim(-0.02, 1.02)  # every metric is a fraction: panels stay comparable
        ax.set_title(corruption, fontsize=9)
        ax.set_xlabel("level (0 = clean)", fontsize=7)
        ax.set_ylabel(metric, fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[len(corrupted):]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def degradation_table(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per model (× mitigation): the clean score, the mean change per corruption over its
    levels, the mean change over all corrupted conditions, and the worst condition."""
    rows = []
    for (model, mitigation), sel in table.groupby(["model", "mitigation"], sort=False):
        clean_rows = sel[sel["corruption"] == "none"]
        if clean_rows.empty:
            continue
        clean = float(clean_rows[metric].iloc[0])
        corrupted = sel[sel["corruption"] != "none"]
        row: dict[str, Any] = {"model": model if mitigation == "none" else f"{model}+{mitigation}", f"clean {metric}": clean}
        for corruption, part in corrupted.groupby("corruption", sort=False):
            row[f"Δ {corruption}"] = float(part[metric].mean()) - clean
        if not corrupted.empty:
            row["mean Δ"] = float(corrupted[metric].mean()) - clean
            worst = corrupted.loc[corrupted[metric].idxmin()]
            row["worst Δ"] = float(worst[metric]) - clean
            row["worst condition"] = f"{worst['corruption']}:{int(worst['severity'])}"
        rows.append(row)
    return pd.DataFrame(rows)


def write_robustness_outputs(out: Path, result: RobustnessResult, **parts: Any) -> None:
    """Write every output atomically into a staged folder that replaces `out` as a whole, so a
    failure leaves the previous results or none (docs/reliability.md, "run interrupted")."""
    with staged_folder(out) as stage:
        _write_robustness_outputs(stage, result, **parts)


def _write_robustness_outputs(
    out: Path,
    result: RobustnessResult,
    *,
    rows: Sequence[Mapping[str, Any]],
    predictions: Sequence[pd.DataFrame],
    cards: Sequence[Any],
    weights_ids: Sequence[str],
    prompt_set: Any,
    image_set: Any,
    seed: int,
    command: str,
    config: Mapping[str, Any],
    gallery_tile: GalleryTile | None,
) -> None:
    """Write every output atomically; run.json last (its presence marks a complete folder)."""
    out.mkdir(parents=True, exist_ok=True)
    fixed = pd.DataFrame(list(rows), columns=list(CSV_COLUMNS))
    _write_csv(out / "robustness.csv", fixed)
    _write_csv(out / "robustness_detail.csv", result.table)
    table = result.table
    tables = {m: degradation_table(table, m) for m in FIGURE_METRICS}
    metrics = {
        "n": int(table["n"].iloc[0]) if not table.empty else 0,
        "models": list(dict.fromkeys(table["model"])),
        "clean": {
            str(r["model"]) + ("" if r["mitigation"] == "none" else f"+{r['mitigation']}"): {m: r[m] for m in FIGURE_METRICS}
            for _, r in table[table["corruption"] == "none"].iterrows()
        },
        "degradation": {m: _records(t) for m, t in tables.items()},
        "conditions": _records(table),
        "encode_stats": result.encode_stats,
        "notes": result.notes,
        "n_skipped": len(result.skipped),
    }
    record = build_run_record(
        command=command, config=config, models=cards, prompt_set=prompt_set, seed=seed,
        inputs=[str(p) for p in image_set.paths], skipped=result.skipped,
        extra={"weights_ids": list(weights_ids), "csv_columns": list(CSV_COLUMNS)},
    )
    report = _build_report(table, tables, record, gallery_tile, result, seed, figure_cache=config.get("cache"))
    frame = pd.concat(predictions, ignore_index=True) if predictions else pd.DataFrame(columns=["path", "label", "prediction"])
    write_evaluation_outputs(out, metrics=metrics, predictions=frame, run_record=record, report=report)


def _build_report(
    table: pd.DataFrame,
    tables: Mapping[str, pd.DataFrame],
    record: Mapping[str, Any],
    gallery_tile: GalleryTile | None,
    result: RobustnessResult,
    seed: int,
    figure_cache: str | Path | None = None,
) -> Report:
    """With `figure_cache` (the run's cache folder) figures drawn from the same numbers before
    are copied, not drawn (`histovl.reports.Report.figure_cache`)."""
    models = ", ".join(dict.fromkeys(table["model"]))
    report = Report(f"Robustness — {models}", subtitle=f"n = {int(table['n'].iloc[0])} images · {len(table)} rows",
                    figure_cache=Path(figure_cache) if figure_cache is not None else None)
    report.add_text(
        "Each image is corrupted on its model-sized tensor (before normalisation) at every level; "
        "zero-shot metrics use the model's text classifier. Retrieval: each corrupted image queries "
        "the gallery of clean images, its own clean copy (and its group, if any) excluded; HA@K = 1 "
        "when all top-K results share its class. Level 0 is the clean baseline. Shaded bands: 95 % "
        "bootstrap CIs.",
        title="Protocol",
    )
    for metric in ("accuracy", "f1_macro", "ha@5", "ha@10"):
        report.add_figure(f"robustness_{metric.replace('@', '_at_')}", lambda m=metric: metric_vs_level_figure(table, m),  # type: ignore[misc]
                          title=f"{metric} vs corruption level",
                          key=json.dumps(["metric_vs_level_figure", metric, table.to_csv(index=False)]))
    for metric in ("accuracy", "f1_macro", "ha@5", "ha@10"):
        report.add_table(tables[metric], title=f"Degradation: {metric}",
                         caption="Δ = mean over a corruption's levels minus the clean score.")
    shown = [c for c in ["model", "mitigation", "corruption", "severity", *FIGURE_METRICS] if c in table]
    report.add_table(table[shown], title="All conditions")
    if gallery_tile is not None:
        _add_gallery(report, gallery_tile, [c for c in dict.fromkeys(table["corruption"]) if c != "none"], seed)
    if result.notes:
        report.add_text("\n\n".join(result.notes), title="Notes")
    report.add_provenance(record)
    return report


def _add_gallery(report: Report, tile: GalleryTile, corruptions: list[str], seed: int) -> None:
    """The gallery figure: the tile is decoded and corrupted (torch) only when it is not memoised."""
    from histovl.embed.engine import seed_for_key

    if not corruptions:
        return
    tile_seed = seed_for_key(tile.key, seed)

    def draw() -> Figure:
        from histovl.robustness.gallery import corruption_gallery

        return corruption_gallery(tile.load(), corruptions, seed=tile_seed)

    report.add_figure("corruption_gallery", draw, title="Corruption gallery",
                      caption="The first image of the data under every corruption and level.",
                      key=json.dumps(["corruption_gallery", tile.key, tile.model, corruptions, tile_seed]))


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """JSON-ready rows (NaN -> None)."""
    clean = frame.astype(object).where(frame.notna(), None)
    return [{k: _plain(v) for k, v in row.items()} for row in clean.to_dict(orient="records")]


def _plain(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def _write_csv(path: Path, frame: pd.DataFrame) -> None:
    with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
        frame.to_csv(fh, index=False)
