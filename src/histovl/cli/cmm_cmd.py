"""`histovl cmm fit` / `histovl cmm eval`: the Cross-Modal Matching head (HistoCLIP)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from histovl.cli.common import (
    AbsPathsOpt,
    CacheOpt,
    DataOpt,
    DeviceOpt,
    NBootOpt,
    NoCacheOpt,
    OnErrorChoice,
    OnErrorOpt,
    OutOpt,
    PromptsOpt,
    SeedOpt,
    TrustOpt,
)


class KVChoice(StrEnum):
    tokens = "tokens"
    pooled = "pooled"


class TokenChoice(StrEnum):
    auto = "auto"
    patch = "patch"
    crops = "crops"


def register(app: typer.Typer) -> None:
    cmm = typer.Typer(help="HistoCLIP's Cross-Modal Matching head on frozen image features.", no_args_is_help=True)
    app.add_typer(cmm, name="cmm")

    @cmm.command("fit")
    def fit_command(
        model: Annotated[str, typer.Option("--model", "-m", help="Model spec (see `histovl models`).")],
        data: DataOpt,
        prompts: PromptsOpt,
        out: OutOpt,
        kv: Annotated[KVChoice, typer.Option("--kv", help="Keys/values: per-image tokens, or the paper's pooled batch form.")] = KVChoice.tokens,
        tokens: Annotated[TokenChoice, typer.Option("--tokens", help="Token source: ViT patch tokens, crops, or auto.")] = TokenChoice.auto,
        grid: Annotated[int, typer.Option("--grid", min=1, help="Token grid (patch pooling or crops per side).")] = 2,
        epochs: Annotated[int, typer.Option("--epochs", min=1)] = 100,
        warmup_epochs: Annotated[int, typer.Option("--warmup-epochs", min=0)] = 5,
        lr: Annotated[float, typer.Option("--lr")] = 1e-3,
        weight_decay: Annotated[float, typer.Option("--weight-decay")] = 1e-4,
        train_batch_size: Annotated[int, typer.Option("--train-batch-size", min=1, help="Images per head training step (global batch under torchrun).")] = 64,
        dropout: Annotated[float, typer.Option("--dropout", min=0.0, max=1.0, help="Dropout in the head while training.")] = 0.1,
        batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass of the image tower.")] = 32,
        allow_missing_classes: Annotated[bool, typer.Option("--allow-missing-classes")] = False,
        cache: CacheOpt = None,
        no_cache: NoCacheOpt = False,
        on_error: OnErrorOpt = OnErrorChoice.raise_,
        device: DeviceOpt = "cpu",
        trust_checkpoint: TrustOpt = False,
        allow_absolute_paths: AbsPathsOpt = False,
        n_boot: NBootOpt = 1000,
        seed: SeedOpt = 0,
    ) -> None:
        """Train a CMM head; writes the head plus metrics/predictions/report on the training data.

        Runs unchanged under `torchrun --nproc-per-node N --no-python histovl cmm fit ...`
        (docs/scale-out.md): features split over the ranks, the head trained with DDP, rank 0 writes.
        """
        from histovl.cli.multilabel_cmd import print_multilabel_summary
        from histovl.distributed import DistContext
        from histovl.heads.cmm_run import cmm_fit

        res = cmm_fit(
            model, data, prompts, out, kv_mode=kv.value, tokens=tokens.value, grid=grid, epochs=epochs,
            warmup_epochs=warmup_epochs, lr=lr, weight_decay=weight_decay, train_batch_size=train_batch_size,
            dropout=dropout, batch_size=batch_size, on_error=on_error.value, allow_missing_classes=allow_missing_classes,
            allow_absolute_paths=allow_absolute_paths, cache=cache, use_cache=not no_cache, device=device,
            trust_checkpoint=trust_checkpoint, n_boot=n_boot, seed=seed,
        )
        if DistContext.from_env().is_main:  # under torchrun: rank 0 reports
            print_multilabel_summary(res.metrics, out)

    @cmm.command("eval")
    def eval_command(
        head: Annotated[Path, typer.Option("--head", help="Folder written by `histovl cmm fit`.")],
        data: DataOpt,
        out: OutOpt,
        model: Annotated[str | None, typer.Option("--model", "-m", help="Override the model recorded in the head.")] = None,
        batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 32,
        cache: CacheOpt = None,
        no_cache: NoCacheOpt = False,
        on_error: OnErrorOpt = OnErrorChoice.raise_,
        device: DeviceOpt = "cpu",
        trust_checkpoint: TrustOpt = False,
        allow_absolute_paths: AbsPathsOpt = False,
        n_boot: NBootOpt = 1000,
        seed: SeedOpt = 0,
    ) -> None:
        """Evaluate a trained CMM head on a multi-label set."""
        from histovl.cli.multilabel_cmd import print_multilabel_summary
        from histovl.heads.cmm_run import cmm_eval

        res = cmm_eval(
            head, data, out, model=model, batch_size=batch_size, on_error=on_error.value,
            allow_absolute_paths=allow_absolute_paths, cache=cache, use_cache=not no_cache, device=device,
            trust_checkpoint=trust_checkpoint, n_boot=n_boot, seed=seed,
        )
        print_multilabel_summary(res.metrics, out)
