"""`histovl ablate-fusion`: parse options, call `histovl.zeroshot.ablate_fusion`, print the table."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from histovl.cli.common import (
    AllowMissingOpt,
    DataOpt,
    ModelOpt,
    OutOpt,
    PromptsOpt,
    with_run_options,
)
from histovl.options import RunOptions

if TYPE_CHECKING:  # importing histovl.zeroshot loads torch: every `histovl` command would pay for it
    from histovl.zeroshot.ablation import AblationResult


@with_run_options()
def ablate_fusion_command(
    model: ModelOpt,
    data: DataOpt,
    prompts: PromptsOpt,
    out: OutOpt,
    options: RunOptions,
    view: Annotated[list[str] | None, typer.Option("--view", help="Image views for many-to-many (repeat): identity, hflip, vflip, rot90, zoom-0.75.")] = None,
    aggregator: Annotated[str, typer.Option("--aggregator", help="Many-to-many aggregation: mean, max, lse, topk-mean.")] = "mean",
    allow_cross_pairs: Annotated[bool, typer.Option("--allow-cross-pairs", help="Also score encoder A's images against encoder B's texts (only meaningful for aligned spaces).")] = False,
    allow_missing_classes: AllowMissingOpt = False,
) -> None:
    """Compare single encoders, cross pairs, joint fusion and many-to-many fusion."""
    from histovl.zeroshot import FusionAblationConfig, ablate_fusion
    from histovl.zeroshot.views import DEFAULT_VIEWS

    config = FusionAblationConfig(
        views=tuple(view) if view else DEFAULT_VIEWS, aggregator=aggregator,
        allow_cross_pairs=allow_cross_pairs, allow_missing_classes=allow_missing_classes,
    )
    print_ablation(ablate_fusion(model, data, prompts, out, config, options), out)


def print_ablation(res: AblationResult, out: Path) -> None:
    """The ablation table's fixed columns, then the cost line."""
    from histovl.zeroshot.ablation import ABLATION_COLUMNS

    table = Table(*ABLATION_COLUMNS)
    for _, row in res.table.iterrows():
        table.add_row(*[f"{row[c]:.4f}" if isinstance(row[c], float) else str(row[c]) for c in ABLATION_COLUMNS])
    con = Console()
    con.print(table)
    con.print(f"encoder passes: {res.cost.image_passes}; prompts encoded: {res.cost.prompts_encoded}; report: {out / 'report.html'}")
