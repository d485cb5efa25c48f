"""`histovl ablate-fusion`: the encoder-combination ablation (HistoAlign Table III layout)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

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


def register(app: typer.Typer) -> None:
    @app.command("ablate-fusion")
    def ablate_fusion_command(
        model: ModelOpt,
        data: DataOpt,
        prompts: PromptsOpt,
        out: OutOpt,
        view: Annotated[list[str] | None, typer.Option("--view", help="Image views for many-to-many (repeat): identity, hflip, vflip, rot90, zoom-0.75.")] = None,
        aggregator: Annotated[str, typer.Option("--aggregator", help="Many-to-many aggregation: mean, max, lse, topk-mean.")] = "mean",
        allow_cross_pairs: Annotated[bool, typer.Option("--allow-cross-pairs", help="Also score encoder A's images against encoder B's texts (only meaningful for aligned spaces).")] = False,
        allow_missing_classes: Annotated[bool, typer.Option("--allow-missing-classes", help="Allow prompt-set classes with no images.")] = False,
        allow_absolute_paths: AbsPathsOpt = False,
        cache: CacheOpt = None,
        no_cache: NoCacheOpt = False,
        batch_size: BatchOpt = 64,
        workers: WorkersOpt = None,
        on_error: OnErrorOpt = OnErrorChoice.raise_,
        device: DeviceOpt = "cpu",
        trust_checkpoint: TrustOpt = False,
        n_boot: NBootOpt = 1000,
        seed: SeedOpt = 0,
        quiet: QuietOpt = False,
    ) -> None:
        """Compare single encoders, cross pairs, joint fusion and many-to-many fusion."""
        from histovl.zeroshot.ablation import ABLATION_COLUMNS, ablate_fusion
        from histovl.zeroshot.views import DEFAULT_VIEWS

        res = ablate_fusion(
            model, data, prompts, out, views=view or DEFAULT_VIEWS, aggregator=aggregator,
            allow_cross_pairs=allow_cross_pairs, cache=cache, use_cache=not no_cache, batch_size=batch_size,
            num_workers=workers, on_error=on_error.value, allow_missing_classes=allow_missing_classes,
            allow_absolute_paths=allow_absolute_paths,
            device=device, trust_checkpoint=trust_checkpoint, n_boot=n_boot, seed=seed, progress=not quiet,
        )
        table = Table(*ABLATION_COLUMNS)
        for _, row in res.table.iterrows():
            table.add_row(*[f"{row[c]:.4f}" if isinstance(row[c], float) else str(row[c]) for c in ABLATION_COLUMNS])
        con = Console()
        con.print(table)
        con.print(f"encoder passes: {res.cost.image_passes}; prompts encoded: {res.cost.prompts_encoded}; report: {out / 'report.html'}")
