"""`histovl doctor`: the installation check (`histovl.doctor.doctor`) as a table or as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

_STYLE = {"ok": "green", "missing": "red", "warn": "yellow"}


def doctor_command(
    json_output: Annotated[bool, typer.Option("--json", help="Print the rows as JSON (one entry per row) for scripts.")] = False,
    deep: Annotated[bool, typer.Option("--deep", help="Also import torch and torchvision and run one operation on the device (a few seconds).")] = False,
    hub_cache: Annotated[Path | None, typer.Option("--hub-cache", help="Hugging Face hub cache to look in (default: HF_HUB_CACHE/HF_HOME).")] = None,
) -> None:
    """Check this installation: what works, and the command that fixes what does not.

    Rows: Python, dependencies, torch and its device, optional extras, models with weights here,
    the embedding cache, the hub cache and offline mode. Exit status 0 when the core works, 1
    otherwise.
    """
    from histovl.doctor import doctor

    report = doctor(deep=deep, hub_cache=hub_cache)
    if json_output:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        raise typer.Exit(report.exit_code)
    table = Table(title="histovl doctor", caption="* core: histovl works only when every core row is ok")
    for column in ("check", "status", "detail", "fix"):
        table.add_column(column, overflow="fold", no_wrap=column in ("check", "status"))
    for row in report.rows:
        name = Text(row.name + (" *" if row.core else ""))
        table.add_row(name, Text(row.status, style=_STYLE[row.status]), Text(row.detail), Text(row.fix))
    console = Console(width=max(140, Console().width))
    console.print(table)
    verdict = "[green]core: ok[/green]" if report.ok else "[red]core: not working (see the rows marked * that are not ok)[/red]"
    console.print(f"{verdict}  ({report.seconds:.2f} s)")
    raise typer.Exit(report.exit_code)
