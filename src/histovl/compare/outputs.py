"""Writing the compare output folder: comparison.csv, metrics.json, report.html, run.json (last)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from histovl._io import atomic_open, atomic_write_json
from histovl.compare.figures import differences_figure
from histovl.compare.pairwise import PairResult
from histovl.compare.runs import LoadedRun, label_indices
from histovl.metrics.calibration import ReliabilityCurve, is_probability_matrix, reliability_curve
from histovl.reports import Report, build_run_record, find_non_finite
from histovl.reports.reliability import reliability_figure

TESTS_TEXT = (
    "difference = run a − run b on the same images; the 95% interval is a percentile bootstrap "
    "in which both runs are scored on the same resamples (whole groups when groups are known), so "
    "it reflects the paired design. An interval that excludes 0 means the data do not support "
    "'no difference' for that metric. McNemar's exact test (accuracy row) asks whether the images "
    "only run a gets right outnumber those only run b gets right by more than chance; DeLong's test "
    "compares the two correlated AUROCs: on the auroc_macro row for binary tasks, one vs rest per "
    "class (auroc_ovr:<class> rows, with DeLong's normal 95% interval) for more than two classes. "
    "With more than two runs p_holm is Holm's adjustment across all pairs, per test; the one-vs-rest "
    "tests are one family over every pair and class. See docs/compare.md."
)


def write_compare_outputs(
    out_dir: Path, *, command: str, table: pd.DataFrame, metrics: dict[str, Any], runs: Sequence[LoadedRun],
    pairs: Sequence[PairResult], cfg: Any, config: dict[str, Any], seed: int,
) -> None:
    """Every file of the folder, each atomically; run.json last (its presence = complete)."""
    find_non_finite(metrics, "metrics")
    record = build_run_record(
        command=command, config=config,
        models=[c for r in runs for c in (r.record.get("models") or []) if isinstance(c, dict)],
        prompt_set=None, seed=seed,
        inputs=[str(r.folder / name) for r in runs for name in ("predictions.csv", "run.json")],
        extra={"runs": [{"name": r.name, "folder": str(r.folder), "input_hash": r.input_hash,
                         "command": r.record.get("command")} for r in runs],
               "images_input_hash": runs[0].input_hash},
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    _report(metrics, table, runs, pairs, cfg, record).write(out_dir)
    with atomic_open(out_dir / "comparison.csv", "w", encoding="utf-8", newline="") as fh:
        table.to_csv(fh, index=False)
    atomic_write_json(out_dir / "metrics.json", metrics)
    atomic_write_json(out_dir / "run.json", record)


def _report(
    metrics: dict[str, Any], table: pd.DataFrame, runs: Sequence[LoadedRun], pairs: Sequence[PairResult],
    cfg: Any, record: dict[str, Any],
) -> Report:
    unit = metrics["bootstrap_unit"]
    groups = f" over {metrics['n_groups']} groups ({metrics['groups_source']})" if unit == "group" else ""
    report = Report(
        "Comparison — " + ", ".join(r.name for r in runs),
        subtitle=f"n = {metrics['n']} images · classes {', '.join(metrics['class_names'])} · "
                 f"{metrics['n_boot']} paired bootstrap resamples of {unit}s{groups}",
    )
    report.add_table(runs_table(metrics["runs"]), title="Runs",
                     caption=f"Each run's metrics with its own 95% bootstrap interval; ECE with "
                             f"{cfg.n_bins} equal-width and {cfg.n_bins} equal-mass bins.")
    if pairs:
        report.add_figure("differences", differences_figure(pairs, list(cfg.metrics)), title="Paired differences")
        report.add_table(table, title="Pairwise comparisons (comparison.csv)", caption=TESTS_TEXT)
    y = label_indices(runs[0])
    curves = _curves(runs, y, cfg.n_bins)
    if curves is not None:
        report.add_figure("reliability", reliability_figure(*curves), title="Calibration: reliability diagrams",
                          caption="Bars: accuracy per equal-width confidence bin; red ticks: mean confidence "
                                  "in the bin; orange: equal-mass bins; dashed: perfect calibration.")
    if metrics.get("temperature_scaling"):
        _add_temperature(report, metrics["temperature_scaling"])
    report.add_provenance(record)
    return report


def runs_table(per_run: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """The report's per-run table: point values with their CI, then calibration."""
    rows = []
    for r in per_run:
        row: dict[str, Any] = {"run": r["name"], "model": ", ".join(m for m in r["models"] if m), "prompt set": r["prompt_set"]}
        for m in ("accuracy", "f1_macro", "auroc_macro"):
            row[m] = _with_ci(r.get(m), (r.get("ci95") or {}).get(m))
        calib = r["calibration"]
        for key in ("ece_uniform", "ece_quantile", "brier", "nll"):
            row[key] = calib.get(key)
        rows.append(row)
    return pd.DataFrame(rows)


def _with_ci(value: Any, interval: Any) -> str:
    if value is None:
        return "n/a"
    if not interval or interval[0] is None:
        return f"{value:.4f}"
    return f"{value:.4f} [{interval[0]:.4f}, {interval[1]:.4f}]"


def _curves(
    runs: Sequence[LoadedRun], y: np.ndarray, n_bins: int
) -> tuple[dict[str, ReliabilityCurve], dict[str, ReliabilityCurve]] | None:
    if not all(is_probability_matrix(r.probs) for r in runs):
        return None
    return ({r.name: reliability_curve(y, r.probs, n_bins, "uniform") for r in runs},
            {r.name: reliability_curve(y, r.probs, n_bins, "quantile") for r in runs})


def _split_text(scaling: dict[str, Any]) -> str:
    if scaling.get("split") is not None:
        return f"split {scaling['split']!r} from {scaling['split_source']}"
    return f"{scaling['fraction']:.0%}, drawn by {scaling['split_unit']}"


def _add_temperature(report: Report, scaling: dict[str, Any]) -> None:
    rows = []
    for name, res in scaling["runs"].items():
        if res.get("temperature") is None:
            continue
        for when in ("before", "after"):
            rows.append({"run": name, "temperature": res["temperature"] if when == "after" else 1.0,
                         "": when, **res[when]})
    report.add_table(
        pd.DataFrame(rows), title="Temperature scaling",
        caption=f"T fitted by NLL on {scaling['n_calibration']} images ({_split_text(scaling)}); "
                f"metrics on the other {scaling['n_evaluation']} images. "
                "Accuracy does not change: dividing the logits by T keeps the argmax.",
    )
    after = {name: ReliabilityCurve.from_dict(res["reliability_after"])
             for name, res in scaling["runs"].items() if res.get("temperature") is not None}
    if after:
        report.add_figure("reliability_after_scaling", reliability_figure(after, title="After temperature scaling"),
                          title="Reliability after temperature scaling (evaluation images)")
