"""`histovl robustness`: parse options, call `histovl.robustness.robustness`, print a summary."""

from __future__ import annotations

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


def register(app: typer.Typer) -> None:
    @app.command("robustness")
    def robustness_command(
        model: ModelOpt,
        data: DataOpt,
        prompts: PromptsOpt,
        out: OutOpt,
        corruption: Annotated[list[str] | None, typer.Option("--corruption", "-c", help="Corruption to run; repeat for several (default: all seven).")] = None,
        level: Annotated[list[int] | None, typer.Option("--level", "-l", help="Level to run; repeat for several (default: every level).")] = None,
        k: Annotated[list[int] | None, typer.Option("--k", help="Retrieval cut-offs (5 and 10 always).")] = None,
        stain_normalisation: Annotated[bool, typer.Option("--stain-normalisation", help="Also run every condition after Macenko normalisation (needs torchstain: pip install 'histovl\\[stain]').")] = False,
        stain_reference: Annotated[str | None, typer.Option("--stain-reference", help="Reference tile for Macenko (default: the first image).")] = None,
        no_group_exclusion: Annotated[bool, typer.Option("--no-group-exclusion", help="Let a query retrieve images of its own group.")] = False,
        allow_missing_classes: Annotated[bool, typer.Option("--allow-missing-classes", help="Allow prompt-set classes with no images.")] = False,
        no_predictions: Annotated[bool, typer.Option("--no-predictions", help="Skip the per-image predictions.csv.")] = False,
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
        """Zero-shot and retrieval under seven corruptions x four levels, for one or more models."""
        from histovl.robustness import robustness

        res = robustness(
            list(model), data, prompts, out, corruptions=corruption or None, levels=level or None,
            k=k or (5, 10), n_boot=n_boot, seed=seed, stain_normalisation=stain_normalisation,
            stain_reference=stain_reference, exclude_same_group=not no_group_exclusion, cache=cache,
            use_cache=not no_cache, batch_size=batch_size, num_workers=workers, on_error=on_error.value,
            allow_missing_classes=allow_missing_classes, allow_absolute_paths=allow_absolute_paths,
            device=device, trust_checkpoint=trust_checkpoint, save_predictions=not no_predictions,
            progress=not quiet,
        )
        con = Console()
        clean = res.table[res.table["corruption"] == "none"]
        for _, row in clean.iterrows():
            con.print(f"{row['model']} [{row['mitigation']}] clean: accuracy {row['accuracy']:.4f}, ha@5 {row['ha@5']:.4f}")
        for note in res.notes:
            con.print(f"[yellow]{note}[/yellow]")
        if res.skipped:
            con.print(f"[yellow]skipped {len(res.skipped)} unreadable image(s); listed in run.json[/yellow]")
        con.print(f"{len(res.table)} rows; report: {out / 'report.html'}")
