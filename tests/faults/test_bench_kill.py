"""kill -KILL of a `histovl bench` grid half-way (issue 15, docs/bench.md "Resume semantics").

A bench subprocess (2 tiny models x zeroshot + retrieve = 4 cells, its own empty cache) is killed
with SIGKILL as soon as its first cell has finished. Then the same command, resumed:

* recomputes no finished cell (their run.json keep their bytes and mtime; cells.csv says reused),
* computes the rest,
* and writes a leaderboard.csv equal, field for field, to the one of an uninterrupted run of the
  same grid, but for the timing columns (the last four).
"""

from __future__ import annotations

import csv
import os
import signal
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.faults.conftest import FaultLog, run_main, spawn


def _suite(fx: dict[str, Path], root: Path) -> Path:
    from histovl.models import save_model_dir
    from tests.helpers.tiny import tiny_encoder

    second = root / "model2"
    if not second.is_dir():
        save_model_dir(tiny_encoder(8), second)
    suite = root / "suite.yaml"
    suite.write_text(
        f'models:\n  - "{fx["model"]}"\n  - "{second}"\n'
        f'datasets:\n  - name: tiles\n    path: "{fx["manifest"]}"\n    prompts: "{fx["prompts"]}"\n'
        "tasks:\n  - task: zeroshot\n  - task: retrieve\n    options: {k: [3]}\n"
    )
    return suite


def _argv(suite: Path, out: Path, cache: Path) -> list[str]:
    return ["bench", str(suite), "--out", str(out), "--cache", str(cache), "--n-boot", "50", "--seed", "3",
            "--workers", "0", "--quiet"]


def _finished(out: Path) -> dict[str, tuple[int, bytes]]:
    return {p.parent.relative_to(out).as_posix(): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(out.glob("cells/*/*/*/run.json"))}


def _board_without_timing(out: Path) -> list[list[str]]:
    from histovl.bench.leaderboard import TIMING_COLUMNS

    with (out / "leaderboard.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][-len(TIMING_COLUMNS):] == TIMING_COLUMNS
    return [row[: -len(TIMING_COLUMNS)] for row in rows]


def test_sigkill_mid_grid_then_resume_equals_uninterrupted(fx: dict[str, Path], tmp_path: Path, faults: FaultLog) -> None:
    suite = _suite(fx, tmp_path)
    whole = tmp_path / "whole"
    assert run_main(_argv(suite, whole, tmp_path / "cache-whole")) == 0

    out = tmp_path / "killed"
    argv = _argv(suite, out, tmp_path / "cache-killed")
    proc = spawn(argv)
    deadline = time.monotonic() + 240
    while not _finished(out) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    if proc.poll() is not None:
        pytest.fail(f"the grid ended before the kill (exit {proc.returncode}): {proc.communicate()[1][-2000:]}")
    os.killpg(proc.pid, signal.SIGKILL)
    faults.inject("kill -KILL bench mid-grid")
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    before = _finished(out)
    assert 1 <= len(before) < 4, f"kill not mid-grid: {len(before)} cells finished"

    assert run_main(argv) == 0
    after = _finished(out)
    assert len(after) == 4 and {k: after[k] for k in before} == before  # no finished cell recomputed
    cells = pd.read_csv(out / "cells.csv")
    status = dict(zip(cells["cell"], cells["status"], strict=True))
    assert {c for c, s in status.items() if s == "reused"} == set(before)
    assert {c for c, s in status.items() if s == "computed"} == set(after) - set(before)
    assert _board_without_timing(out) == _board_without_timing(whole)
