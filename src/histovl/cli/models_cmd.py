"""`histovl models`: the registry as a table (name, source, sizes, weights present here?)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from histovl.cli.common import deprecated_alias

HubCacheOpt = Annotated[
    Path | None,
    typer.Option("--hub-cache", help="Hugging Face hub cache to look in (default: HF_HUB_CACHE/HF_HOME)."),
]
# --cache means the embedding cache in every other command; the hub cache has its own name.
OldHubCacheOpt = Annotated[Path | None, typer.Option("--cache-dir", hidden=True, help="Old spelling of --hub-cache.")]


def models_command(hub_cache: HubCacheOpt = None, cache_dir: OldHubCacheOpt = None) -> None:
    """List registered models and whether their weights are on this machine now."""
    from histovl.models import model_statuses

    hub_cache = deprecated_alias(cache_dir, hub_cache, old="--cache-dir", new="--hub-cache")
    table = Table(title="histovl models", caption="also: open_clip:<ARCH>:<PATH>, hf-clip:<DIR>, hf-hub:<ORG/NAME>, a model directory")
    for column in ("name", "family", "source", "image size", "context", "weights here"):
        table.add_column(column, no_wrap=column != "source", overflow="fold")
    for row in model_statuses(cache_dir=hub_cache):
        present = "[green]yes[/green]" if row.weights_present else "[yellow]no[/yellow]"
        table.add_row(row.name, row.family, row.source, str(row.image_size), str(row.context_length), present)
    Console(width=max(120, Console().width)).print(table)
