"""Options shared by several commands, so every command spells them the same way."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer


class OnErrorChoice(StrEnum):
    raise_ = "raise"
    skip = "skip"


ModelOpt = Annotated[list[str], typer.Option("--model", "-m", help="Model spec; repeat for several (see `histovl models`).")]
DataOpt = Annotated[Path, typer.Option("--data", "-d", help="Class folder or CSV manifest.")]
PromptsOpt = Annotated[str, typer.Option("--prompts", "-p", help="Prompt-set name or YAML file.")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output folder (written atomically).")]
CacheOpt = Annotated[Path | None, typer.Option("--cache", help="Embedding cache folder [default: ~/.cache/histovl/embeddings].")]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Do not read or write the embedding cache.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass (halved automatically on out-of-memory).")]
WorkersOpt = Annotated[int | None, typer.Option("--workers", min=0, help="Decode worker processes [default: cores-1].")]
OnErrorOpt = Annotated[OnErrorChoice, typer.Option("--on-error", help="'skip' records unreadable images and goes on.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:1, ...")]
TrustOpt = Annotated[bool, typer.Option("--trust-checkpoint", help="Allow .pt/.bin checkpoints (loaded with weights_only=True).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seeds Python, NumPy, torch and data-loader workers.")]
NBootOpt = Annotated[int, typer.Option("--n-boot", min=0, help="Bootstrap resamples for 95% CIs.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
AbsPathsOpt = Annotated[bool, typer.Option("--allow-absolute-paths", help="Allow manifest paths outside the manifest's folder.")]
