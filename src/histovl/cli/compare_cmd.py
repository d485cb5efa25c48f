"""`histovl compare`: parse options, call `histovl.compare.compare`, print the pairwise summary."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from histovl.cli.common import RUNTIME_OPTIONS, OutOpt, with_run_options
from histovl.options import RunOptions

#: RunOptions compare has no use for: it reads finished runs, it encodes nothing.
_NOT_USED = ("cache", "use_cache", "batch_size", "workers", "on_error", "device", "trust_checkpoint",
             "allow_absolute_paths", "progress", *RUNTIME_OPTIONS)


@with_run_options(exclude=_NOT_USED, help_overrides={"seed": "Seeds the paired bootstrap and the calibration split."})
def compare_command(
    runs: Annotated[list[Path], typer.Argument(help="Two or more run folders (each with predictions.csv and run.json), all over the same images.")],
    out: OutOpt,
    options: RunOptions,
    calibrate: Annotated[str | None, typer.Option("--calibrate", help="Fit temperature scaling on a calibration split and report calibration before/after on the rest: a fraction (0.3: that share of the images, whole groups) or a split name (the images whose `split` column is that name; docs/compare.md).")] = None,
    groups: Annotated[Path | None, typer.Option("--groups", help="CSV with path,group columns (default: the runs' group column or their data manifest).")] = None,
    n_bins: Annotated[int, typer.Option("--bins", min=1, help="Bins of the ECE and the reliability diagrams.")] = 15,
) -> None:
    """Compare runs on the same images: paired bootstrap CIs, McNemar, DeLong, Holm, calibration."""
    from histovl.compare import CompareConfig, compare
    from histovl.compare.pairwise import summary_lines

    config = CompareConfig(n_bins=n_bins, calibrate=calibrate, groups=groups)
    res = compare(runs, out, config, options)
    for line in summary_lines(res.table):
        typer.echo(line)
    typer.echo(f"n = {res.metrics['n']}; report: {out / 'report.html'}")
