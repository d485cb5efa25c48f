"""`histovl multilabel`: parse options, call `histovl.zeroshot.multilabel.multilabel`, print a summary."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console

from histovl._compat import StrEnum
from histovl.cli.common import (
    AllowMissingOpt,
    DataOpt,
    OneModelOpt,
    OutOpt,
    PromptsOpt,
    print_metrics,
    print_skipped,
    with_run_options,
)
from histovl.options import RunOptions

#: The summary lines every multi-label evaluation prints (`histovl multilabel`, `histovl cmm`).
MULTILABEL_KEYS = ("macc", "f1_macro", "f1_micro", "exact_match")


class StrategyChoice(StrEnum):
    baseline = "baseline"
    ovr = "ovr"
    powerset = "powerset"
    topk = "topk"


def print_multilabel_summary(metrics: dict[str, Any], out: Any) -> None:
    """One line per headline metric with its 95% CI, then n and the report (shared with `histovl cmm`)."""
    con = Console()
    print_metrics(metrics, MULTILABEL_KEYS, width=12, console=con)
    con.print(f"n = {metrics.get('n')}; report: {out / 'report.html'}")


@with_run_options()
def multilabel_command(
    model: OneModelOpt,
    data: DataOpt,
    prompts: PromptsOpt,
    out: OutOpt,
    options: RunOptions,
    strategy: Annotated[StrategyChoice, typer.Option("--strategy", help="HistoCLIP zero-shot strategy.")] = StrategyChoice.baseline,
    force_powerset: Annotated[bool, typer.Option("--force-powerset", help="Allow power-set prompting beyond 16 labels (2^n prompts).")] = False,
    allow_missing_classes: AllowMissingOpt = False,
) -> None:
    """Multi-label zero-shot (baseline, one-vs-rest, power-set or top-k prompting)."""
    from histovl.zeroshot.multilabel import MultilabelConfig, multilabel

    config = MultilabelConfig(strategy=strategy.value, force_powerset=force_powerset,
                              allow_missing_classes=allow_missing_classes)
    res = multilabel(model, data, prompts, out, config, options)
    print_multilabel_summary(res.metrics, out)
    print_skipped(res.skipped)
