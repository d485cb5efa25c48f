"""`histovl embed`: fill the resumable embedding cache (local or Ray), optionally export.

The cache folder is the shared ``--cache`` (default: the default cache folder, as for every
command). ``--no-cache`` is not offered: filling the cache is what this command is for. Nor are
``--n-boot`` (no metric is computed) and ``--seed`` (encoding without a transform is
deterministic, nothing is drawn).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from histovl._compat import StrEnum
from histovl.cli.common import DataOpt, OneModelOpt, with_run_options
from histovl.options import RunOptions

#: Skipped inputs named one by one on screen; the rest are counted (all are in the export's list).
SHOWN_FAILURES = 20


class EngineChoice(StrEnum):
    local = "local"
    ray = "ray"


@with_run_options(
    exclude=("use_cache", "n_boot", "seed"),
    help_overrides={"cache": "Embedding cache folder to fill; re-running resumes where it stopped "
                             "(default: ~/.cache/histovl/embeddings, or $HISTOVL_CACHE)."},
)
def embed_command(
    model: OneModelOpt,
    data: DataOpt,
    options: RunOptions,
    engine: Annotated[EngineChoice, typer.Option("--engine", help="local, or ray (Ray Data workers and model actors).")] = EngineChoice.local,
    export: Annotated[Path | None, typer.Option("--export", help="Also write path + embedding columns to this Parquet file.")] = None,
    address: Annotated[str | None, typer.Option("--address", help="Ray cluster address (default: a local Ray instance).")] = None,
    ray_actors: Annotated[int, typer.Option("--ray-actors", min=1, help="Ray: encoder actors (one model load each; one GPU each when CUDA exists).")] = 1,
    ray_actor_cpus: Annotated[int, typer.Option("--ray-actor-cpus", min=1, help="Ray: CPUs (and torch threads) per encoder actor.")] = 1,
) -> None:
    """Encode a data set into the embedding cache; re-running resumes where it stopped."""
    from histovl.embed import EmbedConfig, embed
    from histovl.embed.run import skipped_list_path

    config = EmbedConfig(engine=engine.value, export=export, ray_address=address, ray_actors=ray_actors,
                         ray_actor_cpus=ray_actor_cpus)
    s = embed(model, data, config, options)
    con = Console()
    for f in s.result.failures[:SHOWN_FAILURES]:
        con.print(f"[yellow]skipped {f.path}: {f.reason}[/yellow]")
    if len(s.result.failures) > SHOWN_FAILURES:
        con.print(f"[yellow]... and {len(s.result.failures) - SHOWN_FAILURES} more[/yellow]")
    con.print(
        f"{s.n} images: {s.n_cached} from cache, {s.n_encoded} encoded, {s.n_failed} failed; cache {s.cache}"
        + (f"; exported {s.export}" if s.export else "")
        + (f" (skipped inputs listed in {skipped_list_path(s.export)})" if s.export and s.n_failed else "")
    )
