"""The leaderboard: per data set and task, models ranked by the task's headline metric.

Headline metrics (higher is better for all of them):

* zeroshot: ``accuracy`` with its bootstrap CI; the "not significantly worse than the best" mark
  comes from the paired bootstrap CI of (best - model) accuracy on the cells' predictions.csv
  (`histovl.compare.stats.paired_bootstrap_difference`, groups respected): the mark is ``yes``
  when that interval includes 0;
* fewshot: ``f1_macro`` (mean over seeds, with its CI) of the model's best method at the largest
  shot count;
* retrieve: ``map@5``; multilabel: ``f1_macro``; robustness: the mean accuracy change under the
  corruptions (``mean Δ``, no CI).

Tasks without per-image class probabilities (all but zeroshot) get ``n/a`` in the mark column:
the paired test needs them. The last columns are each cell's time split (seconds, read/decode,
model, the rest; from its run.json): apart from them, a resumed grid gives the same bytes as one
run in one go.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from histovl.bench.cells import Cell, cell_timing

#: The cell's time split (from its run.json ``timing``): the only columns that differ between a
#: grid run in one go and the same grid killed and resumed.
TIMING_COLUMNS = ["seconds", "read_decode_s", "model_s", "other_s"]
COLUMNS = ["dataset", "task", "rank", "model", "metric", "value", "ci_low", "ci_high",
           "diff_vs_best", "diff_ci_low", "diff_ci_high", "not_worse_than_best", "cell", *TIMING_COLUMNS]


def leaderboard_frame(cells: Sequence[Cell], out: Path, *, n_boot: int, seed: int) -> pd.DataFrame:
    """One row per finished cell, ranked within each (data set, task)."""
    rows: list[dict[str, Any]] = []
    groups: dict[tuple[str, str], list[Cell]] = {}
    for cell in cells:
        if (cell.folder / "run.json").is_file():
            groups.setdefault((cell.dataset, cell.task), []).append(cell)
    for (dataset, task), members in groups.items():
        block = [_headline(c) | {"dataset": dataset, "task": task, "model": c.model, "cell": c.relative}
                 | _timing(c) for c in members]
        block.sort(key=lambda r: (-_num(r["value"]), r["model"]))
        for rank, row in enumerate(block, start=1):
            row["rank"] = rank
        _mark(block, members, n_boot=n_boot, seed=seed)
        rows.extend(block)
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame


def _timing(cell: Cell) -> dict[str, Any]:
    timing = cell_timing(cell)
    return {"seconds": timing["total_s"], **{k: timing[k] for k in TIMING_COLUMNS[1:]}}


def _num(value: Any) -> float:
    return float("-inf") if value is None or value != value else float(value)


def _headline(cell: Cell) -> dict[str, Any]:
    metrics = json.loads((cell.folder / "metrics.json").read_text(encoding="utf-8"))
    if cell.kind == "zeroshot":
        return _with_ci("accuracy", metrics.get("accuracy"), metrics.get("ci95", {}).get("accuracy"))
    if cell.kind in ("multilabel",):
        return _with_ci("f1_macro", metrics.get("f1_macro"), metrics.get("ci95", {}).get("f1_macro"))
    if cell.kind == "retrieve":
        key = "map@5" if "map@5" in metrics else next((k for k in metrics if k.startswith("map@")), "map@5")
        return _with_ci(key, metrics.get(key), metrics.get("ci95", {}).get(key))
    if cell.kind == "fewshot":
        return _fewshot_headline(metrics)
    degradation = metrics.get("degradation", {}).get("accuracy") or [{}]
    return _with_ci("mean Δ accuracy", degradation[0].get("mean Δ"), None)


def _fewshot_headline(metrics: dict[str, Any]) -> dict[str, Any]:
    shots = metrics.get("shots", [])
    best: dict[str, Any] | None = None
    for method, per_shot in metrics.get("results", {}).items():
        block = per_shot.get(shots[-1]) if shots else None
        if not block:
            continue
        value = block["mean"].get("f1_macro")
        if best is None or _num(value) > _num(best["value"]):
            best = _with_ci(f"f1_macro ({method}, {shots[-1]}-shot)", value, block["ci95"].get("f1_macro"))
    return best or _with_ci("f1_macro", None, None)


def _with_ci(metric: str, value: Any, ci: Any) -> dict[str, Any]:
    lo, hi = (ci if isinstance(ci, list | tuple) and len(ci) == 2 else (None, None))
    return {"metric": metric, "value": value, "ci_low": lo, "ci_high": hi, "diff_vs_best": None,
            "diff_ci_low": None, "diff_ci_high": None, "not_worse_than_best": "n/a"}


def _mark(block: list[dict[str, Any]], members: Sequence[Cell], *, n_boot: int, seed: int) -> None:
    """The paired test of each model against the best (zeroshot cells with predictions)."""
    if members[0].kind != "zeroshot" or not block:
        return
    from histovl.compare.runs import label_indices, load_runs
    from histovl.compare.stats import paired_bootstrap_difference

    block[0]["not_worse_than_best"] = "best"
    by_model = {c.model: c for c in members}
    if len(block) < 2:
        return
    folders = [by_model[r["model"]].folder for r in block]
    runs = load_runs(folders)
    y = label_indices(runs[0])
    groups = list(runs[0].groups) if runs[0].groups is not None and all(runs[0].groups) else None
    for row, run in zip(block[1:], runs[1:], strict=True):
        diff, lo, hi = paired_bootstrap_difference(y, runs[0].probs, run.probs, "accuracy",
                                                   groups=groups,  # type: ignore[arg-type]
                                                   n_boot=n_boot, seed=seed)
        row.update(diff_vs_best=diff, diff_ci_low=lo, diff_ci_high=hi,
                   not_worse_than_best="n/a" if lo != lo else ("yes" if lo <= 0.0 else "no"))
