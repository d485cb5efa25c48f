"""`histovl embed`: fill the resumable embedding cache (local or Ray), optionally export."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from histovl.cli.common import (
    AbsPathsOpt,
    BatchOpt,
    DataOpt,
    DeviceOpt,
    OnErrorChoice,
    OnErrorOpt,
    QuietOpt,
    TrustOpt,
    WorkersOpt,
)


class EngineChoice(StrEnum):
    local = "local"
    ray = "ray"


def register(app: typer.Typer) -> None:
    @app.command("embed")
    def embed_command(
        model: Annotated[str, typer.Option("--model", "-m", help="Model spec (see `histovl models`).")],
        data: DataOpt,
        cache: Annotated[Path, typer.Option("--cache", help="Embedding cache folder (resumable).")],
        engine: Annotated[EngineChoice, typer.Option("--engine", help="local, or ray (Ray Data workers and model actors).")] = EngineChoice.local,
        export: Annotated[Path | None, typer.Option("--export", help="Also write path + embedding columns to this Parquet file.")] = None,
        address: Annotated[str | None, typer.Option("--address", help="Ray cluster address (default: a local Ray instance).")] = None,
        ray_actors: Annotated[int, typer.Option("--ray-actors", min=1, help="Ray: encoder actors (one model load each; one GPU each when CUDA exists).")] = 1,
        ray_actor_cpus: Annotated[int, typer.Option("--ray-actor-cpus", min=1, help="Ray: CPUs (and torch threads) per encoder actor.")] = 1,
        batch_size: BatchOpt = 64,
        workers: WorkersOpt = None,
        on_error: OnErrorOpt = OnErrorChoice.raise_,
        device: DeviceOpt = "cpu",
        trust_checkpoint: TrustOpt = False,
        allow_absolute_paths: AbsPathsOpt = False,
        quiet: QuietOpt = False,
    ) -> None:
        """Encode a data set into the embedding cache; re-running resumes where it stopped."""
        from histovl.embed import embed
        from histovl.embed.run import skipped_list_path

        s = embed(
            model, data, cache=cache, engine=engine.value, export=export, batch_size=batch_size,
            num_workers=workers, on_error=on_error.value, device=device, trust_checkpoint=trust_checkpoint,
            allow_absolute_paths=allow_absolute_paths, ray_address=address, ray_actors=ray_actors,
            ray_actor_cpus=ray_actor_cpus, progress=not quiet,
        )
        con = Console()
        for f in s.result.failures[:20]:
            con.print(f"[yellow]skipped {f.path}: {f.reason}[/yellow]")
        if len(s.result.failures) > 20:
            con.print(f"[yellow]... and {len(s.result.failures) - 20} more[/yellow]")
        con.print(
            f"{s.n} images: {s.n_cached} from cache, {s.n_encoded} encoded, {s.n_failed} failed; cache {s.cache}"
            + (f"; exported {s.export}" if s.export else "")
            + (f" (skipped inputs listed in {skipped_list_path(s.export)})" if s.export and s.n_failed else "")
        )
