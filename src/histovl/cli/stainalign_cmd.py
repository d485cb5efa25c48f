"""`histovl stainalign fit / eval / build-deepliif`: thin options layer over `histovl.stainalign`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from histovl.cli.common import (
    AbsPathsOpt,
    DeviceOpt,
    NBootOpt,
    OnErrorChoice,
    OnErrorOpt,
    OutOpt,
    SeedOpt,
    TrustOpt,
)

PairsOpt = Annotated[Path, typer.Option("--pairs", help="Pairs CSV: he_slide, ihc_slide, label, marker[, group].")]
CacheOpt = Annotated[Path | None, typer.Option("--cache", help="Embedding cache folder (tile embeddings are reused across runs).")]


def _line(name: str, m: dict[str, Any]) -> str:
    ci = m["ci95"]["f1_weighted"]
    ci_text = f" [95% CI {ci[0]:.3f}-{ci[1]:.3f}]" if ci and ci[0] is not None else ""
    auroc = f"{m['auroc']:.3f}" if m["auroc"] is not None else "n/a"
    return f"{name:9s} weighted F1 {m['f1_weighted']:.3f}{ci_text}  accuracy {m['accuracy']:.3f}  AUROC {auroc}  (n={m['n']})"


def _skip_line(m: dict[str, Any], out: Path) -> str | None:
    if not m.get("n_skipped"):
        return None
    return (f"skipped {m['n_skipped_tiles']} unreadable tile(s) and dropped {m['n_dropped_pairs']} pair(s) "
            f"(listed under 'skipped' in {out / 'run.json'})")


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="HistoStainAlign: predict IHC status from H&E via paired-slide alignment.", no_args_is_help=True)
    app.add_typer(group, name="stainalign")

    @group.command("fit")
    def fit_command(
        pairs: PairsOpt,
        out: OutOpt,
        model: Annotated[str, typer.Option("--model", "-m", help="Tile encoder (see `histovl models`).")] = "histovl-lite",
        size: Annotated[int, typer.Option("--size", min=1, help="Tile size for slide files (folders of tiles are used as they are).")] = 224,
        mpp: Annotated[float | None, typer.Option("--mpp", help="Tile µm/px for slide files [default: native].")] = None,
        slide_mpp: Annotated[float | None, typer.Option("--slide-mpp", help="µm per level-0 pixel when slide files record none.")] = None,
        epochs: Annotated[int, typer.Option("--epochs", min=1)] = 60,
        align_weight: Annotated[float, typer.Option("--align-weight", min=0.0, help="Weight of the contrastive alignment loss.")] = 1.0,
        temperature: Annotated[float, typer.Option("--temperature", min=1e-4)] = 0.1,
        batch_size: Annotated[int, typer.Option("--batch-size", min=2, help="Paired slides per training step (global batch under torchrun).")] = 16,
        dropout: Annotated[float, typer.Option("--dropout", min=0.0, max=1.0, help="Dropout in the attention-MIL pooling while training.")] = 0.1,
        cv_folds: Annotated[int, typer.Option("--cv-folds", min=2, help="Grouped cross-validation folds.")] = 5,
        cache: CacheOpt = None,
        n_boot: NBootOpt = 1000,
        seed: SeedOpt = 0,
        device: DeviceOpt = "cpu",
        trust_checkpoint: TrustOpt = False,
        allow_absolute_paths: AbsPathsOpt = False,
        on_error: OnErrorOpt = OnErrorChoice.raise_,
    ) -> None:
        """Grouped CV of the aligned model vs the no-alignment baseline; save both trained on all pairs.

        Runs unchanged under `torchrun --nproc-per-node N --no-python histovl stainalign fit ...`
        (docs/scale-out.md): slides embedded in shards, models trained with DDP, rank 0 writes.
        """
        from histovl.distributed import DistContext
        from histovl.slides import TileSpec
        from histovl.stainalign import stainalign_fit

        metrics = stainalign_fit(
            pairs, out, model=model, spec=TileSpec(size=size, mpp=mpp), slide_mpp=slide_mpp, cache_dir=cache,
            params={"epochs": epochs, "align_weight": align_weight, "temperature": temperature,
                    "batch_size": batch_size, "dropout": dropout},
            cv_folds=cv_folds, n_boot=n_boot, seed=seed, device=device, trust_checkpoint=trust_checkpoint,
            allow_absolute_paths=allow_absolute_paths, on_error=on_error.value,
        )
        if not DistContext.from_env().is_main:  # under torchrun: rank 0 reports
            return
        console = Console()
        console.print(metrics["evaluation"])
        console.print(_line("aligned", metrics))
        console.print(_line("baseline", metrics["baseline"]))
        console.print(f"model saved in {out} (baseline in {out / 'baseline'})")
        if (line := _skip_line(metrics, out)) is not None:
            console.print(line)

    @group.command("eval")
    def eval_command(
        model_dir: Annotated[Path, typer.Option("--model", "-m", help="Folder written by `histovl stainalign fit`.")],
        pairs: PairsOpt,
        out: OutOpt,
        encoder: Annotated[str | None, typer.Option("--encoder", help="Override the recorded tile encoder spec (same weights).")] = None,
        cache: CacheOpt = None,
        n_boot: NBootOpt = 1000,
        seed: SeedOpt = 0,
        device: DeviceOpt = "cpu",
        trust_checkpoint: TrustOpt = False,
        allow_absolute_paths: AbsPathsOpt = False,
        on_error: OnErrorOpt = OnErrorChoice.raise_,
    ) -> None:
        """Predict the IHC status from the H&E slides only; metrics with CIs and attention heatmaps."""
        from histovl.stainalign import stainalign_eval

        metrics = stainalign_eval(
            model_dir, pairs, out, model=encoder, cache_dir=cache, n_boot=n_boot, seed=seed, device=device,
            trust_checkpoint=trust_checkpoint, allow_absolute_paths=allow_absolute_paths,
            on_error=on_error.value,
        )
        console = Console()
        console.print(_line("aligned", metrics))
        if "baseline" in metrics:
            console.print(_line("baseline", metrics["baseline"]))
        if (line := _skip_line(metrics, out)) is not None:
            console.print(line)

    @group.command("build-deepliif")
    def build_deepliif_command(
        deepliif: Annotated[Path, typer.Option("--deepliif", help="The deepliif-ki67 folder.")],
        out: OutOpt,
        crop_size: Annotated[int, typer.Option("--crop-size", help="Side of one 'slide' crop (divides 512).")] = 128,
        tile_size: Annotated[int, typer.Option("--tile-size", help="Tile side inside a crop.")] = 32,
        high_threshold: Annotated[float, typer.Option("--high-threshold", help="Ki67 index at or above which a crop is 'high'.")] = 0.10,
    ) -> None:
        """Write a small real Ki67 pairs set (hematoxylin ↔ IHC crops) to OUT (keep it outside git)."""
        from histovl.stainalign import build_deepliif_pairs

        frame = build_deepliif_pairs(deepliif, out, crop_size=crop_size, tile_size=tile_size, high_threshold=high_threshold)
        counts = json.dumps(frame["label"].value_counts().to_dict())
        Console().print(f"{len(frame)} pairs in {frame['group'].nunique()} groups, labels {counts}: {out / 'pairs.csv'}")
