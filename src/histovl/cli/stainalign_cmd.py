"""`histovl stainalign fit / eval / build-deepliif`: thin options layer over `histovl.stainalign`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from histovl._compat import StrEnum
from histovl.cli.common import (
    OutOpt,
    deprecated_alias,
    print_metrics,
    with_run_options,
)
from histovl.options import RunOptions


class ScheduleChoice(StrEnum):
    auto = "auto"
    two_stage = "two-stage"
    joint = "joint"


PairsOpt = Annotated[Path, typer.Option("--pairs", help="Pairs CSV: he_slide, ihc_slide, label (may be empty), marker[, group].")]

#: The summary lines of each model (aligned, baseline).
STAINALIGN_KEYS = ("f1_weighted", "f1_macro", "accuracy", "auroc")

#: `--batch-size` is the training batch of paired slides (fit) and tile decoding stays in the
#: main process without progress bars, so those run options are not offered. `--runtime` encodes
#: the tiles (docs/runtime.md).
stainalign_run_options = with_run_options(exclude=("batch_size", "workers", "progress"))


def _print_summary(metrics: dict[str, Any], out: Path, console: Console) -> None:
    for name, m in (("aligned", metrics), ("baseline", metrics.get("baseline"))):
        if m is not None:
            console.print(f"{name} model (n={m['n']}):")
            print_metrics(m, STAINALIGN_KEYS, console=console)
    if metrics.get("n_skipped"):
        console.print(f"skipped {metrics['n_skipped_tiles']} unreadable tile(s) and dropped {metrics['n_dropped_pairs']} "
                      f"pair(s) (listed under 'skipped' in {out / 'run.json'})")


@stainalign_run_options
def stainalign_fit_command(
    pairs: PairsOpt,
    out: OutOpt,
    options: RunOptions,
    model: Annotated[str, typer.Option("--model", "-m", help="Tile encoder (see `histovl models`).")] = "histovl-lite",
    size: Annotated[int, typer.Option("--size", min=1, help="Tile size for slide files (folders of tiles are used as they are).")] = 224,
    mpp: Annotated[float | None, typer.Option("--mpp", help="Tile µm/px for slide files [default: native].")] = None,
    slide_mpp: Annotated[float | None, typer.Option("--slide-mpp", help="µm per level-0 pixel when slide files record none.")] = None,
    epochs: Annotated[int, typer.Option("--epochs", min=1)] = 60,
    align_weight: Annotated[float, typer.Option("--align-weight", min=0.0, help="Weight of the contrastive alignment loss.")] = 1.0,
    temperature: Annotated[float, typer.Option("--temperature", min=1e-4)] = 0.1,
    batch_size: Annotated[int, typer.Option("--batch-size", min=2, help="Paired slides per training step (global batch under torchrun).")] = 16,
    dropout: Annotated[float, typer.Option("--dropout", min=0.0, max=1.0, help="Dropout in the attention-MIL pooling while training.")] = 0.1,
    schedule: Annotated[ScheduleChoice, typer.Option("--schedule", help="two-stage: align, then a classifier on the frozen H&E embedding; joint: both losses together; auto: two-stage when some labels are empty, else joint (docs/stainalign.md).")] = ScheduleChoice.auto,
    cv_folds: Annotated[int, typer.Option("--cv-folds", min=2, help="Grouped cross-validation folds.")] = 5,
) -> None:
    """Grouped CV of the aligned model vs the no-alignment baseline; save both trained on all pairs.

    Runs unchanged under `torchrun --nproc-per-node N --no-python histovl stainalign fit ...`
    (docs/scale-out.md): slides embedded in shards, models trained with DDP, rank 0 writes.
    """
    from histovl.distributed import DistContext
    from histovl.slides import TileSpec
    from histovl.stainalign import StainAlignFitConfig, StainAlignParams, stainalign_fit

    config = StainAlignFitConfig(
        spec=TileSpec(size=size, mpp=mpp), slide_mpp=slide_mpp, cv_folds=cv_folds,
        params=StainAlignParams(epochs=epochs, align_weight=align_weight, temperature=temperature,
                                batch_size=batch_size, dropout=dropout, schedule=str(schedule)),
    )
    metrics = stainalign_fit(pairs, out, config, options, model=model)
    if not DistContext.from_env().is_main:  # under torchrun: rank 0 reports
        return
    console = Console()
    console.print(metrics["evaluation"])
    _print_summary(metrics, out, console)
    console.print(f"model saved in {out} (baseline in {out / 'baseline'})")


@stainalign_run_options
def stainalign_eval_command(
    pairs: PairsOpt,
    out: OutOpt,
    options: RunOptions,
    head: Annotated[Path | None, typer.Option("--head", help="Folder written by `histovl stainalign fit`.")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Override the tile encoder recorded in the head (same weights).")] = None,
    encoder: Annotated[str | None, typer.Option("--encoder", hidden=True, help="Old spelling of --model.")] = None,
) -> None:
    """Predict the IHC status from the H&E slides only; metrics with CIs and attention heatmaps."""
    from histovl.stainalign import stainalign_eval

    head, model = _head_and_model(head, model, encoder)
    metrics = stainalign_eval(head, pairs, out, options, model=model)
    _print_summary(metrics, out, Console())


def _head_and_model(head: Path | None, model: str | None, encoder: str | None) -> tuple[Path, str | None]:
    """``--head`` and ``--model``, also from last release's spellings (with a warning): ``--model``
    naming the folder `stainalign fit` wrote (now ``--head``) and ``--encoder`` (now ``--model``)."""
    from histovl.stainalign.model import is_model_folder

    if head is None and model is not None and is_model_folder(model):
        head = deprecated_alias(Path(model), None, old="--model <folder written by `stainalign fit`>", new="--head")
        model = None
    model = deprecated_alias(encoder, model, old="--encoder", new="--model")
    if head is None:
        raise typer.BadParameter("give the folder written by `histovl stainalign fit`", param_hint="--head")
    return head, model


def stainalign_build_deepliif_command(
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
