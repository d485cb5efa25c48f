"""`histovl finetune`: parse options into a `FinetuneConfig` and call `histovl.train.finetune`."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from histovl.cli.common import (
    AbsPathsOpt,
    DataOpt,
    OnErrorChoice,
    OnErrorOpt,
    OutOpt,
    SeedOpt,
    WorkersOpt,
)


class LossChoice(StrEnum):
    clip = "clip"
    his2lip = "his2lip"


class TrainChoice(StrEnum):
    projections = "projections"
    lock_image = "lock-image"
    lock_text = "lock-text"
    all = "all"


def register(app: typer.Typer) -> None:
    @app.command("finetune")
    def finetune_command(
        model: Annotated[str, typer.Option("--model", "-m", help="Model to start from (see `histovl models`).")],
        data: DataOpt,
        out: OutOpt,
        loss: Annotated[LossChoice, typer.Option("--loss", help="Contrastive loss.")] = LossChoice.his2lip,
        epochs: Annotated[int, typer.Option("--epochs", min=1)] = 10,
        train: Annotated[TrainChoice, typer.Option("--train", help="What learns: projections only, all but one tower, or all.")] = TrainChoice.projections,
        batch_size: Annotated[int, typer.Option("--batch-size", min=2, help="Pairs per contrastive batch (global batch under torchrun).")] = 128,
        accumulation: Annotated[int, typer.Option("--accumulation", min=1, help="Micro-batches per optimizer step.")] = 1,
        lr: Annotated[float, typer.Option("--lr", help="Peak learning rate (AdamW).")] = 1e-3,
        weight_decay: Annotated[float, typer.Option("--weight-decay")] = 0.01,
        warmup: Annotated[float, typer.Option("--warmup", min=0.0, max=1.0, help="Warm-up share of the steps (then cosine).")] = 0.1,
        val_data: Annotated[Path | None, typer.Option("--val-data", help="Labelled validation set (zero-shot F1 each epoch).")] = None,
        val_prompts: Annotated[str | None, typer.Option("--val-prompts", help="Prompt set for validation.")] = None,
        captions: Annotated[Path | None, typer.Option("--caption-templates", help="Caption-template YAML (for labelled data without a caption column).")] = None,
        feature_cache: Annotated[Path | None, typer.Option("--feature-cache", help="Keep frozen-backbone features here between runs.")] = None,
        resume: Annotated[bool, typer.Option("--resume", help="Continue from OUT/checkpoint.pt.")] = False,
        seed: SeedOpt = 0,
        workers: WorkersOpt = None,
        allow_absolute_paths: AbsPathsOpt = False,
        on_error: OnErrorOpt = OnErrorChoice.raise_,
    ) -> None:
        """Fine-tune a model on image-caption pairs; OUT becomes a model `--model OUT` loads."""
        from histovl.distributed import DistContext
        from histovl.train import FinetuneConfig, finetune

        cfg = FinetuneConfig(
            loss=loss.value, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
            accumulation=accumulation, warmup_fraction=warmup, train=train.value, seed=seed,  # type: ignore[arg-type]
        )
        res = finetune(
            model, data, out, config=cfg, val_data=val_data, val_prompts=val_prompts,
            caption_templates=captions, resume=resume, feature_cache=feature_cache,
            num_workers=workers or 0, allow_absolute_paths=allow_absolute_paths, on_error=on_error.value,
        )
        if DistContext.from_env().is_main:  # under torchrun only rank 0 wrote, so only rank 0 says so
            typer.echo(f"model written to {res.out} (log: {res.out / 'train_log.csv'})")
