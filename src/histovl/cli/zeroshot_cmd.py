"""`histovl zeroshot`: parse options, call `histovl.zeroshot.zeroshot`, print the summary."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer
from rich.console import Console

from histovl.cli.common import (
    AbsPathsOpt,
    BatchOpt,
    CacheOpt,
    DataOpt,
    DeviceOpt,
    ModelOpt,
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


class AggregateChoice(StrEnum):
    mean = "mean"
    max = "max"


def register(app: typer.Typer) -> None:
    @app.command("zeroshot")
    def zeroshot_command(
        model: ModelOpt,
        data: DataOpt,
        prompts: PromptsOpt,
        out: OutOpt,
        fusion: Annotated[str | None, typer.Option("--fusion", help="How to combine several models (mean-prob, mean-logit-z, m2m).")] = None,
        view: Annotated[list[str] | None, typer.Option("--view", help="With several models: image views for m2m (repeat): identity, hflip, vflip, rot90, zoom-0.75. Default: identity, hflip, vflip, zoom-0.75.")] = None,
        aggregator: Annotated[str, typer.Option("--aggregator", help="With --fusion m2m: aggregate the views x prompts similarities by mean, max, lse or topk-mean.")] = "mean",
        fusion_weight: Annotated[list[float] | None, typer.Option("--fusion-weight", help="One weight per --model, in order (weighted fusion); default equal weights.")] = None,
        aggregate: Annotated[AggregateChoice, typer.Option("--aggregate", help="Class score: mean of prompt embeddings, or best description.")] = AggregateChoice.mean,
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
        """Zero-shot classify a labelled image set; writes metrics, predictions, run record, report."""
        from histovl.zeroshot import zeroshot
        from histovl.zeroshot.views import DEFAULT_VIEWS

        res = zeroshot(
            model if len(model) > 1 else model[0], data, prompts, out,
            fusion=fusion, fusion_weights=fusion_weight, m2m_aggregator=aggregator,
            views=tuple(view) if view else DEFAULT_VIEWS,
            aggregate=aggregate.value, cache=cache, use_cache=not no_cache,
            batch_size=batch_size, num_workers=workers, on_error=on_error.value,
            allow_missing_classes=allow_missing_classes, allow_absolute_paths=allow_absolute_paths,
            device=device, trust_checkpoint=trust_checkpoint, n_boot=n_boot, seed=seed, progress=not quiet,
        )
        m = res.metrics
        con = Console()
        for key in ("accuracy", "balanced_accuracy", "f1_macro", "f1_weighted", "auroc_macro"):
            lo, hi = m.get("ci95", {}).get(key) or (None, None)
            ci = f"  [95% CI {lo:.4f}–{hi:.4f}]" if lo is not None and hi is not None else ""
            con.print(f"{key:>18}: {m[key]:.4f}{ci}")
        if res.skipped:
            con.print(f"[yellow]skipped {len(res.skipped)} unreadable image(s); listed in run.json[/yellow]")
        con.print(f"n = {m['n']}; report: {out / 'report.html'}")
