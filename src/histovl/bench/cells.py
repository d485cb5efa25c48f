"""One bench cell = one model x data set x task, run by the command's own library function.

A cell's folder ``cells/<dataset>/<task>/<model-slug>/`` is an ordinary run folder: the command
writes it through `histovl.outputs_guard.staged_folder`, with ``run.json`` last, so a cell is
finished exactly when its ``run.json`` exists (`is_done`). `run_cell` is a plain module-level
function of picklable arguments, so the Ray engine can ship it to a worker unchanged.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from histovl._io import atomic_write_json
from histovl._stopwatch import running
from histovl.bench.models import model_slug
from histovl.bench.suite import TASKS, Suite
from histovl.options import RunOptions

#: The timing keys of a cell (run.json ``timing``, cells.csv, leaderboard.csv), in seconds.
TIMING_KEYS = ("total_s", "read_decode_s", "model_s", "other_s", "model_load_s")
TIMING_DEFINITION = (
    "read_decode_s: hashing the image files and waiting for decoded batches (decode runs in worker "
    "processes, overlapped with the model); model_s: image and text forward passes; other_s: the rest "
    "(total - read_decode - model), model_load_s (building the model, reading weights) included"
)


@dataclass(frozen=True)
class Cell:
    """Everything one cell needs (picklable: strings, a frozen config, frozen RunOptions)."""

    dataset: str
    task: str  # the task's label (its name, or the command)
    kind: str  # the command: a key of TASKS
    model: str  # the model as the suite names it
    spec: str  # the spec with local paths resolved
    data: str
    prompts: str | None
    config: Any
    options: RunOptions
    folder: Path
    run_overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def relative(self) -> str:
        return f"cells/{self.dataset}/{self.task}/{model_slug(self.model)}"


def plan_cells(suite: Suite, out: Path, options: RunOptions, configs: dict[str, Any] | None = None) -> list[Cell]:
    """Every cell of the grid in a fixed order: data set, then task, then model (with `configs`
    None the cells carry no config: enough to see which are finished)."""
    cells = []
    for dataset in suite.datasets:
        for task in suite.tasks:
            overrides = suite.run_options[task.label]
            opts = options.replace(**overrides) if overrides else options
            for name, spec in suite.models:
                folder = out / "cells" / dataset.name / task.label / model_slug(name)
                cells.append(Cell(dataset.name, task.label, task.task, name, spec, dataset.path, dataset.prompts,
                                  (configs or {}).get(task.label), opts, folder, dict(overrides)))
    return cells


def is_done(cell: Cell) -> bool:
    """A cell is finished when its run.json exists (commands write it last, atomically)."""
    return (cell.folder / "run.json").is_file()


def run_cell(cell: Cell) -> dict[str, Any]:
    """Run one cell with its command's library function under a `histovl._stopwatch.Stopwatch`;
    its time split (read/decode, model, the rest) is added to the cell's run.json as ``timing``
    and returned."""
    module, fn_name, _, _ = TASKS[cell.kind]
    fn = getattr(importlib.import_module(module), fn_name)
    out = str(cell.folder)
    with running() as watch:
        if cell.kind == "fewshot":
            fn(cell.spec, cell.data, None, cell.prompts, out, cell.config, cell.options, command="histovl bench")
        elif cell.kind == "retrieve":
            fn(cell.spec, cell.data, out, cell.config, cell.options, command="histovl bench")
        elif cell.kind == "multilabel":
            fn(cell.spec, cell.data, cell.prompts, out, cell.config, cell.options)
        else:  # zeroshot, robustness: (model, data, prompts, out, config, options)
            fn(cell.spec, cell.data, cell.prompts, out, cell.config, cell.options, command="histovl bench")
    timing = watch.split()
    _record_timing(cell.folder / "run.json", timing)
    return timing


def _record_timing(run_json: Path, timing: dict[str, float]) -> None:
    """Add ``timing`` to a finished cell's run.json (rewritten atomically: a kill leaves the old
    or the new file, and the cell counts as finished either way)."""
    record = json.loads(run_json.read_text(encoding="utf-8"))
    record["timing"] = {**timing, "definition": TIMING_DEFINITION}
    atomic_write_json(run_json, record)


def cell_timing(cell: Cell) -> dict[str, float | None]:
    """The timing a finished cell's run.json records (None values when it has none)."""
    try:
        timing = json.loads((cell.folder / "run.json").read_text(encoding="utf-8")).get("timing") or {}
    except (OSError, ValueError):
        timing = {}
    return {k: timing.get(k) for k in TIMING_KEYS}
