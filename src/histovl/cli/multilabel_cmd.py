"""`histovl multilabel`: parse options, call `histovl.zeroshot.multilabel.multilabel`, print a summary."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.console import Console

from histovl.cli.common import (
    AbsPathsOpt,
    BatchOpt,
    CacheOpt,
    DataOpt,
    DeviceOpt,
    NBootOpt,
    NoCacheOpt,
    OnErrorChoice,
    OnErrorOpt,
    OutOpt,
    PromptsOpt,
    QuietOpt,
    SeedOpt,
    TrustOpt,
    WorkersOpt,
)


class StrategyChoice(StrEnum):
    baseline = "baseline"
    ovr = "ovr"
    powerset = "powerset"
    topk = "topk"


def print_multilabel_summary(metrics: dict[str, Any], out: Any) -> None:
    """One line per headline metric with its 95% CI (shared with `histovl cmm`)."""
    con = Console()
    cis = metrics.get("ci95") or {}
    for key in ("macc", "f1_macro", "f1_micro", "exact_match"):
        value = metrics.get(key)
        lo, hi = (cis.get(key) or [None, None])[:2]
        ci = f"  [95% CI {lo:.4f}–{hi:.4f}]" if lo is not None and hi is not None else ""
        con.print(f"{key:>12}: {value:.4f}{ci}" if isinstance(value, int | float) else f"{key:>12}: n/a")
    con.print(f"n = {metrics.get('n')}; report: {out / 'report.html'}")


def register(app: typer.Typer) -> None:
    @app.command("multilabel")
    def multilabel_command(
        model: Annotated[str, typer.Option("--model", "-m", help="Model spec (see `histovl models`).")],
        data: DataOpt,
        prompts: PromptsOpt,
        out: OutOpt,
        strategy: Annotated[StrategyChoice, typer.Option("--strategy", help="HistoCLIP zero-shot strategy.")] = StrategyChoice.baseline,
        force_powerset: Annotated[bool, typer.Option("--force-powerset", help="Allow power-set prompting beyond 16 labels (2^n prompts).")] = False,
        allow_missing_classes: Annotated[bool, typer.Option("--allow-missing-classes", help="Allow prompt-set classes with no images.")] = False,
        cache: CacheOpt = None,
        no_cache: NoCacheOpt = False,
        batch_size: BatchOpt = 64,
        workers: WorkersOpt = None,
        on_error: OnErrorOpt = OnErrorChoice.raise_,
        device: DeviceOpt = "cpu",
        trust_checkpoint: TrustOpt = False,
        allow_absolute_paths: AbsPathsOpt = False,
        n_boot: NBootOpt = 1000,
        seed: SeedOpt = 0,
        quiet: QuietOpt = False,
    ) -> None:
        """Multi-label zero-shot (baseline, one-vs-rest, power-set or top-k prompting)."""
        from histovl.zeroshot.multilabel.pipeline import multilabel

        res = multilabel(
            model, data, prompts, out, strategy=strategy.value, force_powerset=force_powerset,
            cache=cache, use_cache=not no_cache, batch_size=batch_size, num_workers=workers,
            on_error=on_error.value, allow_missing_classes=allow_missing_classes,
            allow_absolute_paths=allow_absolute_paths, device=device, trust_checkpoint=trust_checkpoint,
            n_boot=n_boot, seed=seed, progress=not quiet,
        )
        print_multilabel_summary(res.metrics, out)
