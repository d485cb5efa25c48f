"""`histovl bench`: a models x data sets x tasks grid from one suite file, resumable.

suite.yaml -> `load_suite` (every model, task and option checked; nothing written on error)
           -> plan the cells -> skip finished cells (run.json present) -> run the rest with the
           local or the Ray engine (each cell = the command's own library function, embeddings
           through the one cache, timed by phase into its run.json) -> cells.csv (status and time
           split per cell) -> leaderboard.csv,
           leaderboard.html.

Steps: `_prepare`, `_run_pending` (engines `_run_local`, `_run_ray`), `_write_outputs`.
docs/bench.md describes the suite format, the outputs and the resume semantics.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from histovl._io import atomic_write_text
from histovl.bench.cells import TIMING_KEYS, Cell, cell_timing, is_done, plan_cells, run_cell
from histovl.bench.suite import Suite, load_suite
from histovl.errors import HistovlError
from histovl.options import PathArg, RunOptions, split_overrides
from histovl.outputs_guard import check_output_folder, output_lock

if TYPE_CHECKING:
    import pandas as pd

Engine = Literal["local", "ray"]
ENGINES: tuple[Engine, ...] = ("local", "ray")
#: Digest of the inputs of the current leaderboard files (`_leaderboard_key`).
LEADERBOARD_KEY = ".leaderboard-key"
CELL_COLUMNS = ["dataset", "task", "model", "cell", "status", "seconds", "read_decode_s", "model_s", "other_s",
                "model_load_s"]


class BenchError(HistovlError, RuntimeError):
    """A cell of the grid failed (the finished cells stay; a re-run resumes)."""


@dataclass(frozen=True)
class BenchConfig:
    """What `histovl bench` does (the run options, shared by every cell, are in `RunOptions`).

    Attributes:
        engine: ``local`` runs the cells one after another in this process; ``ray`` runs them as
            Ray tasks (``ray.init()`` joins a running cluster when ``RAY_ADDRESS`` is set).
        ray_cpus: CPUs each Ray cell asks for.
    """
    TAKES_RUNTIME: ClassVar[bool] = True  # passed to every cell: --runtime onnx|onnx-int8 (docs/runtime.md)

    engine: Engine = "local"
    ray_cpus: float = 1.0

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {self.engine!r}")


@dataclass
class BenchResult:
    """What a bench run produced (also written to `out`). The tables are pandas frames built on
    first access, so a re-run of a finished grid need not import pandas."""

    out: Path
    cell_rows: list[dict[str, Any]]
    _leaderboard: pd.DataFrame | None = field(default=None, repr=False)

    @property
    def cells(self) -> pd.DataFrame:
        """cells.csv: one row per cell, its status in this run and its timing."""
        import pandas as pd

        return pd.DataFrame(self.cell_rows, columns=CELL_COLUMNS)

    @property
    def leaderboard(self) -> pd.DataFrame:
        """leaderboard.csv (read from `out` when this run did not recompute it)."""
        if self._leaderboard is None:
            import pandas as pd

            self._leaderboard = pd.read_csv(self.out / "leaderboard.csv")
        return self._leaderboard

    def counts(self) -> dict[str, int]:
        """How many cells were computed, reused or are not done."""
        statuses = [row["status"] for row in self.cell_rows]
        return {s: statuses.count(s) for s in ("computed", "reused", "not done")}


def bench(
    suite: PathArg | Suite, out: PathArg, config: BenchConfig | None = None,
    options: RunOptions | None = None, **overrides: Any,
) -> BenchResult:
    """Run (or resume) every cell of a suite and write the leaderboard.

    Args:
        suite: a SUITE.yaml path (docs/bench.md) or a loaded `Suite`.
        out: the bench folder: ``cells/<dataset>/<task>/<model-slug>/`` run folders,
            ``cells.csv``, ``leaderboard.csv``, ``leaderboard.html``.
        config: engine choice (`BenchConfig`).
        options: run options shared by every cell; a task's ``options`` in the suite override
            them for that task's cells.

    Raises:
        SuiteError: the suite names an unknown model, task or option (nothing is written).
        BenchError: a cell failed; the cells finished before it stay and a re-run resumes.
    """
    cfg, opts = split_overrides(overrides, config, BenchConfig, options)
    loaded, out_dir = _prepare(suite, out)
    with output_lock(out_dir):
        cells = plan_cells(loaded, out_dir, opts)
        _check_runtimes(cells)
        times, failure = _run_pending(cells, loaded, cfg)
        table = _cells_table(cells, set(times))
        board = _write_outputs(cells, table, out_dir, loaded, opts)
    if failure is not None:
        cell, err = failure
        raise BenchError(f"cell {cell.relative} ({cell.model}) failed: {err}; "
                         f"fix it and re-run the same command: finished cells are kept") from err
    return BenchResult(out_dir, table, board)


def _prepare(suite: str | os.PathLike[str] | Suite, out: str | os.PathLike[str]) -> tuple[Suite, Path]:
    """Everything checked before any cell runs: the suite and the output folder."""
    loaded = suite if isinstance(suite, Suite) else load_suite(Path(suite))
    out_dir = check_output_folder(out)
    return loaded, out_dir


def _check_runtimes(cells: Sequence[Cell]) -> None:
    """A finished cell is reused only under the runtime and precision it was computed with: a
    leaderboard never mixes torch and ONNX cells, nor fp32 and autocast ones (run.json's
    ``config.runtime`` / ``config.precision``; older cells are torch's, ``auto``)."""
    for cell in cells:
        if not is_done(cell):
            continue
        try:
            config = json.loads((cell.folder / "run.json").read_text(encoding="utf-8")).get("config", {})
        except (OSError, ValueError):
            continue  # an unreadable run.json is reported where the cell is read
        for option, default, wanted in (("runtime", "torch", cell.options.runtime), ("precision", "auto", cell.options.precision)):
            done = config.get(option) or default
            if done != wanted:
                raise HistovlError(
                    f"cell {cell.relative} was computed with --{option} {done}, not {wanted}; run this "
                    f"{option} into another --out folder (or re-run with --{option} {done})"
                )


def _run_pending(cells: Sequence[Cell], suite: Suite, cfg: BenchConfig) -> tuple[dict[str, dict[str, Any]], tuple[Cell, Exception] | None]:
    pending = [c for c in cells if not is_done(c)]
    if not pending:  # a finished grid: the commands are not even imported
        return {}, None
    configs = suite.build_configs()  # every config value checked before the first cell runs
    pending = [dataclasses.replace(c, config=configs[c.task]) for c in pending]
    if cfg.engine == "ray":
        return _run_ray(pending, cfg)
    return _run_local(pending)


def _run_local(pending: Sequence[Cell]) -> tuple[dict[str, dict[str, Any]], tuple[Cell, Exception] | None]:
    """One cell after another; stops at the first failure (what is finished stays)."""
    times: dict[str, dict[str, Any]] = {}
    for cell in pending:
        try:
            times[cell.relative] = run_cell(cell)
        except Exception as err:  # noqa: BLE001 - any failure: keep the finished cells, report this one
            return times, (cell, err)
    return times, None


def _run_ray(pending: Sequence[Cell], cfg: BenchConfig) -> tuple[dict[str, dict[str, Any]], tuple[Cell, Exception] | None]:
    """Every pending cell as a Ray task; all run, the first failure is reported."""
    try:
        import ray
    except ImportError as err:
        raise HistovlError("--engine ray needs Ray: pip install 'histovl[ray]'") from err
    if not ray.is_initialized():
        ray.init(ignore_reinit_error=True, log_to_driver=False)
    remote = ray.remote(num_cpus=cfg.ray_cpus)(run_cell)
    refs = [(cell, remote.remote(cell)) for cell in pending]
    times: dict[str, dict[str, Any]] = {}
    failure: tuple[Cell, Exception] | None = None
    for cell, ref in refs:
        try:
            times[cell.relative] = ray.get(ref)
        except Exception as err:  # noqa: BLE001 - a failed task: report the first one after all have run
            failure = failure or (cell, err)
    return times, failure


def _cells_table(cells: Sequence[Cell], computed: set[str]) -> list[dict[str, Any]]:
    """One row per cell: its status and the timing its run.json records (a reused cell keeps the
    timing of the run that computed it)."""
    rows = []
    for cell in cells:
        key = cell.relative
        done = is_done(cell)
        status = "computed" if key in computed else ("reused" if done else "not done")
        timing = cell_timing(cell) if done else dict.fromkeys(TIMING_KEYS)
        rows.append({"dataset": cell.dataset, "task": cell.task, "model": cell.model, "cell": key,
                     "status": status, "seconds": timing["total_s"],
                     **{k: timing[k] for k in TIMING_KEYS if k != "total_s"}})
    return rows


def _csv_text(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """rows as CSV without pandas (None as an empty field, floats as repr: what pandas writes)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _write_outputs(cells: Sequence[Cell], table: list[dict[str, Any]], out_dir: Path, suite: Suite,
                   opts: RunOptions) -> pd.DataFrame | None:
    """cells.csv every time; leaderboard.csv and .html only when what they are computed from
    changed (`_leaderboard_key`): a re-run of a finished grid imports none of the statistics
    (scipy) or the report code, and leaves both files as they were."""
    atomic_write_text(out_dir / "cells.csv", _csv_text(table, CELL_COLUMNS))
    key = _leaderboard_key(cells, suite, opts)
    key_file = out_dir / LEADERBOARD_KEY
    if (key_file.is_file() and key_file.read_text(encoding="utf-8") == key
            and (out_dir / "leaderboard.csv").is_file() and (out_dir / "leaderboard.html").is_file()):
        return None
    import pandas as pd

    from histovl.bench.leaderboard import leaderboard_frame
    from histovl.bench.report import leaderboard_report

    board = leaderboard_frame(cells, out_dir, n_boot=opts.n_boot, seed=opts.seed)
    atomic_write_text(out_dir / "leaderboard.csv", board.to_csv(index=False))
    cells_frame = pd.DataFrame(table, columns=CELL_COLUMNS)
    leaderboard_report(board, cells_frame, suite, opts).write(out_dir, filename="leaderboard.html")
    atomic_write_text(key_file, key)  # last: a kill before it only costs a recomputation
    return board


def _leaderboard_key(cells: Sequence[Cell], suite: Suite, opts: RunOptions) -> str:
    """A digest of everything the leaderboard files are computed from: the suite file, the
    bootstrap settings, and the size and mtime of each finished cell's run.json, metrics.json
    and predictions.csv (cells are only ever written whole, so these change when a cell does)."""
    try:
        suite_digest = hashlib.sha256(suite.source.read_bytes()).hexdigest()
    except OSError:
        suite_digest = str(suite.source)
    parts: list[Any] = [suite_digest, opts.n_boot, opts.seed]
    for cell in cells:
        stats: list[list[Any]] = []
        for name in ("run.json", "metrics.json", "predictions.csv"):
            try:
                st = (cell.folder / name).stat()
                stats.append([name, st.st_size, st.st_mtime_ns])
            except OSError:
                stats.append([name, None, None])
        parts.append([cell.relative, stats])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()
