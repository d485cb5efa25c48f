"""leaderboard.html: one ranked table per data set and task, then the cells and their times."""

from __future__ import annotations

from typing import Any

import pandas as pd

from histovl.bench.suite import Suite
from histovl.options import RunOptions
from histovl.reports import Report

MARK_TEXT = ("✓ = not significantly worse than the best: the 95% paired bootstrap CI of (best − model) "
             "includes 0 (same resamples for both, groups respected; zeroshot only, from the cells' "
             "predictions.csv). n/a = the task has no per-image class probabilities to pair.")


def leaderboard_report(board: pd.DataFrame, cells: pd.DataFrame, suite: Suite, opts: RunOptions) -> Report:
    """The HTML leaderboard (the same numbers as leaderboard.csv, plus cells.csv)."""
    n_done = int((cells["status"] != "not done").sum())
    report = Report(
        f"Leaderboard — {suite.source.name}",
        subtitle=f"{len(suite.models)} models × {len(suite.datasets)} data sets × {len(suite.tasks)} tasks · "
                 f"{n_done}/{len(cells)} cells finished · {opts.n_boot} bootstrap resamples",
    )
    if board.empty:
        report.add_text("No cell has finished yet.")
    for (dataset, task), block in board.groupby(["dataset", "task"], sort=False):
        report.add_table(_display(block), title=f"{dataset} · {task}", caption=MARK_TEXT)
    finished = cells["status"].map(lambda s: "not done" if s == "not done" else "finished")
    report.add_table(cells.assign(status=finished), title="Cells",
                     caption="finished = its run.json exists (cells.csv says whether the last run computed "
                             "or reused it); times are those of the run that computed it. seconds = total; "
                             "read_decode_s = hashing the images and waiting for decoded batches (decoding "
                             "runs in worker processes, overlapped with the model); model_s = image and "
                             "text forward passes; other_s = the rest (model_load_s included).")
    return report


def _display(block: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for r in block.itertuples():
        rows.append({
            "rank": r.rank, "model": r.model, "metric": r.metric,
            "value [95% CI]": f"{_f(r.value)} [{_f(r.ci_low)}, {_f(r.ci_high)}]",
            "best − model [95% CI]": "" if r.diff_vs_best is None or r.diff_vs_best != r.diff_vs_best
            else f"{_f(r.diff_vs_best)} [{_f(r.diff_ci_low)}, {_f(r.diff_ci_high)}]",
            "not worse than best": {"yes": "✓", "best": "best", "no": "✗"}.get(r.not_worse_than_best, "n/a"),
            "time s (read/decode · model · rest)":
                f"{_s(r.seconds)} ({_s(r.read_decode_s)} · {_s(r.model_s)} · {_s(r.other_s)})",
        })
    return pd.DataFrame(rows)


def _s(value: Any) -> str:
    return "–" if value is None or value != value else f"{float(value):.1f}"


def _f(value: Any) -> str:
    if value is None or value != value:
        return "–"
    return f"{float(value):.3f}"
