"""`histovl cmm fit` / `histovl cmm eval`: the Cross-Modal Matching head (HistoCLIP)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from histovl._compat import StrEnum
from histovl.cli.common import (
    RUNTIME_OPTIONS,
    AllowMissingOpt,
    DataOpt,
    OneModelOpt,
    OutOpt,
    PromptsOpt,
    with_run_options,
)
from histovl.options import RunOptions


class KVChoice(StrEnum):
    tokens = "tokens"
    pooled = "pooled"


class TokenChoice(StrEnum):
    auto = "auto"
    patch = "patch"
    crops = "crops"


#: The run options of both commands: the forward batch defaults to 32 (`CMM_OPTIONS`); decoding
#: runs in the main process and no progress bars are drawn.
cmm_run_options = with_run_options(
    exclude=("workers", "progress", *RUNTIME_OPTIONS), batch_size=32,
    help_overrides={"batch_size": "Images per forward pass of the image tower."},
)


@cmm_run_options
def cmm_fit_command(
    model: OneModelOpt,
    data: DataOpt,
    prompts: PromptsOpt,
    out: OutOpt,
    options: RunOptions,
    kv: Annotated[KVChoice, typer.Option("--kv", help="Keys/values: per-image tokens, or the paper's pooled batch form.")] = KVChoice.tokens,
    tokens: Annotated[TokenChoice, typer.Option("--tokens", help="Token source: ViT patch tokens, crops, or auto.")] = TokenChoice.auto,
    grid: Annotated[int, typer.Option("--grid", min=1, help="Token grid (patch pooling or crops per side).")] = 2,
    epochs: Annotated[int, typer.Option("--epochs", min=1)] = 100,
    warmup_epochs: Annotated[int, typer.Option("--warmup-epochs", min=0)] = 5,
    lr: Annotated[float, typer.Option("--lr")] = 1e-3,
    weight_decay: Annotated[float, typer.Option("--weight-decay")] = 1e-4,
    train_batch_size: Annotated[int, typer.Option("--train-batch-size", min=1, help="Images per head training step (global batch under torchrun).")] = 64,
    dropout: Annotated[float, typer.Option("--dropout", min=0.0, max=1.0, help="Dropout in the head while training.")] = 0.1,
    allow_missing_classes: AllowMissingOpt = False,
) -> None:
    """Train a CMM head; writes the head plus metrics/predictions/report on the training data.

    Runs unchanged under `torchrun --nproc-per-node N --no-python histovl cmm fit ...`
    (docs/scale-out.md): features split over the ranks, the head trained with DDP, rank 0 writes.
    """
    from histovl.cli.multilabel_cmd import print_multilabel_summary
    from histovl.distributed import DistContext
    from histovl.heads.cmm_run import CmmFitConfig, cmm_fit

    config = CmmFitConfig(
        kv_mode=kv.value, tokens=tokens.value, grid=grid, epochs=epochs, warmup_epochs=warmup_epochs,  # type: ignore[arg-type]
        lr=lr, weight_decay=weight_decay, train_batch_size=train_batch_size, dropout=dropout,
        allow_missing_classes=allow_missing_classes,
    )
    res = cmm_fit(model, data, prompts, out, config, options)
    if DistContext.from_env().is_main:  # under torchrun: rank 0 reports
        print_multilabel_summary(res.metrics, out)


@cmm_run_options
def cmm_eval_command(
    head: Annotated[Path, typer.Option("--head", help="Folder written by `histovl cmm fit`.")],
    data: DataOpt,
    out: OutOpt,
    options: RunOptions,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Override the model recorded in the head (same weights).")] = None,
) -> None:
    """Evaluate a trained CMM head on a multi-label set."""
    from histovl.cli.multilabel_cmd import print_multilabel_summary
    from histovl.heads.cmm_run import cmm_eval

    res = cmm_eval(head, data, out, options, model=model)
    print_multilabel_summary(res.metrics, out)
