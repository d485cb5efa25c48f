"""`histovl finetune`: parse options into a `FinetuneConfig` and call `histovl.train.finetune`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from histovl._compat import StrEnum
from histovl.cli.common import RUNTIME_OPTIONS, DataOpt, OutOpt, with_run_options
from histovl.options import RunOptions


class LossChoice(StrEnum):
    clip = "clip"
    his2lip = "his2lip"


class TrainChoice(StrEnum):
    projections = "projections"
    lock_image = "lock-image"
    lock_text = "lock-text"
    all = "all"


@with_run_options(
    exclude=("cache", "use_cache", "batch_size", "n_boot", *RUNTIME_OPTIONS),
    help_overrides={"workers": "Image decode workers (default: 0, decode in the main process).",
                    "progress": "No per-epoch lines."},
)
def finetune_command(
    model: Annotated[str, typer.Option("--model", "-m", help="Model to start from (see `histovl models`).")],
    data: DataOpt,
    out: OutOpt,
    options: RunOptions,
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
) -> None:
    """Fine-tune a model on image-caption pairs; OUT becomes a model `--model OUT` loads.

    Runs unchanged under `torchrun --nproc-per-node N --no-python histovl finetune ...`
    (docs/scale-out.md): each rank takes a shard of every batch, rank 0 writes.
    """
    from histovl.distributed import DistContext
    from histovl.train import FinetuneConfig, finetune

    config = FinetuneConfig(
        loss=loss.value, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
        accumulation=accumulation, warmup_fraction=warmup, train=train.value, seed=options.seed,  # type: ignore[arg-type]
    )
    res = finetune(model, data, out, config, options, val_data=val_data, val_prompts=val_prompts,
                   caption_templates=captions, resume=resume, feature_cache=feature_cache)
    if DistContext.from_env().is_main:  # under torchrun only rank 0 wrote, so only rank 0 says so
        typer.echo(f"model written to {res.out} (log: {res.out / 'train_log.csv'})")
