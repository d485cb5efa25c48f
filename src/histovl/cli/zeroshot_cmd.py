"""`histovl zeroshot`: parse options, call `histovl.zeroshot.zeroshot`, print the summary."""

from __future__ import annotations

from typing import Annotated

import typer

from histovl._compat import StrEnum
from histovl.cli.common import (
    AllowMissingOpt,
    DataOpt,
    ModelOpt,
    OutOpt,
    PromptsOpt,
    print_metrics,
    print_skipped,
    with_run_options,
)
from histovl.options import RunOptions

#: The summary lines every single-label evaluation prints.
CLASSIFICATION_KEYS = ("accuracy", "balanced_accuracy", "f1_macro", "f1_weighted", "auroc_macro")


class AggregateChoice(StrEnum):
    mean = "mean"
    max = "max"


@with_run_options()
def zeroshot_command(
    model: ModelOpt,
    data: DataOpt,
    prompts: PromptsOpt,
    out: OutOpt,
    options: RunOptions,
    fusion: Annotated[str | None, typer.Option("--fusion", help="How to combine several models (mean-prob, mean-logit-z, m2m).")] = None,
    view: Annotated[list[str] | None, typer.Option("--view", help="With several models: image views for m2m (repeat): identity, hflip, vflip, rot90, zoom-0.75. Default: identity, hflip, vflip, zoom-0.75.")] = None,
    aggregator: Annotated[str, typer.Option("--aggregator", help="With --fusion m2m: aggregate the views x prompts similarities by mean, max, lse or topk-mean.")] = "mean",
    fusion_weight: Annotated[list[float] | None, typer.Option("--fusion-weight", help="One weight per --model, in order (weighted fusion); default equal weights.")] = None,
    aggregate: Annotated[AggregateChoice, typer.Option("--aggregate", help="Class score: mean of prompt embeddings, or best description.")] = AggregateChoice.mean,
    allow_missing_classes: AllowMissingOpt = False,
    per_template: Annotated[bool, typer.Option("--per-template", help="Also score each template alone and each class description alone; writes prompt_sensitivity.csv with the spread and its CIs.")] = False,
) -> None:
    """Zero-shot classify a labelled image set; writes metrics, predictions, run record, report."""
    from histovl.zeroshot import ZeroshotConfig, zeroshot
    from histovl.zeroshot.views import DEFAULT_VIEWS

    config = ZeroshotConfig(
        fusion=fusion, fusion_weights=tuple(fusion_weight) if fusion_weight else None,
        views=tuple(view) if view else DEFAULT_VIEWS, m2m_aggregator=aggregator,
        aggregate=aggregate.value, allow_missing_classes=allow_missing_classes, per_template=per_template,
    )
    res = zeroshot(model if len(model) > 1 else model[0], data, prompts, out, config, options)
    print_metrics(res.metrics, CLASSIFICATION_KEYS)
    print_skipped(res.skipped)
    typer.echo(f"n = {res.metrics['n']}; report: {out / 'report.html'}")
    if res.prompt_sensitivity is not None:
        typer.echo(f"prompt sensitivity ({res.metrics['prompt_sensitivity']['n_variants']} variants): "
                   f"{out / 'prompt_sensitivity.csv'}")
