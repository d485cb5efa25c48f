"""`histovl bench`: parse options, call `histovl.bench.bench`, print where the leaderboard is."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from histovl.cli.common import OutOpt, with_run_options
from histovl.options import RunOptions


@with_run_options(help_overrides={"seed": "Seeds every cell and the leaderboard's paired bootstrap.",
                                  "runtime": "Encoder engine of every cell: torch, onnx or onnx-int8 (docs/runtime.md); a finished cell of another runtime is refused."})
def bench_command(
    suite: Annotated[Path, typer.Argument(help="SUITE.yaml: models, datasets (name, path, prompts) and tasks with their options (docs/bench.md).")],
    out: OutOpt,
    options: RunOptions,
    engine: Annotated[str, typer.Option("--engine", help="local (cells one after another) or ray (cells as Ray tasks).")] = "local",
) -> None:
    """Run a models x data sets x tasks grid (resumable) and write leaderboard.csv/.html."""
    from histovl.bench import BenchConfig, bench

    res = bench(suite, out, BenchConfig(engine=engine), options)  # type: ignore[arg-type]
    counts = res.counts()
    typer.echo(f"cells: {counts['computed']} computed, {counts['reused']} reused; "
               f"leaderboard: {out / 'leaderboard.html'}")
