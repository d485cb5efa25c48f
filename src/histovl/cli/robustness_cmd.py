"""`histovl robustness`: parse options, call `histovl.robustness.robustness`, print a summary."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from histovl.cli.common import (
    AllowMissingOpt,
    DataOpt,
    ModelOpt,
    OutOpt,
    PromptsOpt,
    print_skipped,
    with_run_options,
)
from histovl.options import RunOptions


@with_run_options()
def robustness_command(
    model: ModelOpt,
    data: DataOpt,
    prompts: PromptsOpt,
    out: OutOpt,
    options: RunOptions,
    corruption: Annotated[list[str] | None, typer.Option("--corruption", "-c", help="Corruption to run; repeat for several (default: all seven).")] = None,
    level: Annotated[list[int] | None, typer.Option("--level", "-l", help="Level to run; repeat for several (default: every level).")] = None,
    k: Annotated[list[int] | None, typer.Option("--k", help="Retrieval cut-offs (5 and 10 always).")] = None,
    stain_normalisation: Annotated[bool, typer.Option("--stain-normalisation", help="Also run every condition after Macenko normalisation (needs torchstain: pip install 'histovl\\[stain]').")] = False,
    stain_reference: Annotated[str | None, typer.Option("--stain-reference", help="Reference tile for Macenko (default: the first image).")] = None,
    no_group_exclusion: Annotated[bool, typer.Option("--no-group-exclusion", help="Let a query retrieve images of its own group.")] = False,
    allow_missing_classes: AllowMissingOpt = False,
    no_predictions: Annotated[bool, typer.Option("--no-predictions", help="Skip the per-image predictions.csv.")] = False,
) -> None:
    """Zero-shot and retrieval under seven corruptions x four levels, for one or more models."""
    from histovl.robustness import RobustnessConfig, robustness

    config = RobustnessConfig(
        corruptions=tuple(corruption) if corruption else None, levels=tuple(level) if level else None,
        k=tuple(k) if k else (5, 10), stain_normalisation=stain_normalisation, stain_reference=stain_reference,
        exclude_same_group=not no_group_exclusion, allow_missing_classes=allow_missing_classes,
        save_predictions=not no_predictions,
    )
    res = robustness(list(model), data, prompts, out, config, options)
    con = Console()
    clean = res.table[res.table["corruption"] == "none"]
    for _, row in clean.iterrows():
        con.print(f"{row['model']} [{row['mitigation']}] clean: accuracy {row['accuracy']:.4f}, ha@5 {row['ha@5']:.4f}")
    for note in res.notes:
        con.print(f"[yellow]{note}[/yellow]")
    print_skipped(res.skipped, con)
    con.print(f"{len(res.table)} rows; report: {out / 'report.html'}")
