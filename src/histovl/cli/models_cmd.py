"""`histovl models`: the registry as a table (name, source, sizes, weights present here?)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table


def register(app: typer.Typer) -> None:
    @app.command("models")
    def models_command(
        cache_dir: Annotated[
            Path | None,
            typer.Option("--cache-dir", help="Hugging Face hub cache to look in (default: HF_HUB_CACHE/HF_HOME)."),
        ] = None,
    ) -> None:
        """List registered models and whether their weights are on this machine now."""
        from histovl.models import model_statuses

        table = Table(title="histovl models", caption="also: open_clip:<ARCH>:<PATH>, hf-clip:<DIR>, hf-hub:<ORG/NAME>, a model directory")
        for column in ("name", "family", "source", "image size", "context", "weights here"):
            table.add_column(column, no_wrap=column != "source", overflow="fold")
        for row in model_statuses(cache_dir=cache_dir):
            present = "[green]yes[/green]" if row.weights_present else "[yellow]no[/yellow]"
            table.add_row(row.name, row.family, row.source, str(row.image_size), str(row.context_length), present)
        Console(width=max(120, Console().width)).print(table)
