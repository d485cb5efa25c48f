"""One bench cell = one model x data set x task, run by the command's own library function.

A cell's folder ``cells/<dataset>/<task>/<model-slug>/`` is an ordinary run folder: the command
writes it through `histovl.outputs_guard.staged_folder`, with ``run.json`` last, so a cell is
finished exactly when its ``run.json`` exists (`is_done`). `run_cell` is a plain module-level
function of picklable arguments, so the Ray engine can ship it to a worker unchanged.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from histovl.bench.models import model_slug
from histovl.bench.suite import TASKS, Suite
from histovl.options import RunOptions


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
    """Run one cell with its command's library function; returns its timing row.

    Only the total time is measured: the embedding engine does not report read/decode and
    model time separately (decode runs in worker processes, overlapped with the model).
    """
    module, fn_name, _, _ = TASKS[cell.kind]
    fn = getattr(importlib.import_module(module), fn_name)
    start = time.perf_counter()
    out = str(cell.folder)
    if cell.kind == "fewshot":
        fn(cell.spec, cell.data, None, cell.prompts, out, cell.config, cell.options, command="histovl bench")
    elif cell.kind == "retrieve":
        fn(cell.spec, cell.data, out, cell.config, cell.options, command="histovl bench")
    elif cell.kind == "multilabel":
        fn(cell.spec, cell.data, cell.prompts, out, cell.config, cell.options)
    else:  # zeroshot, robustness: (model, data, prompts, out, config, options)
        fn(cell.spec, cell.data, cell.prompts, out, cell.config, cell.options, command="histovl bench")
    return {"seconds": round(time.perf_counter() - start, 3)}
