"""`histovl prompts ...`: list the shipped prompt sets and show one (or a YAML file) expanded."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table


def prompts_list_command() -> None:
    """List the shipped prompt sets: name, classes, prompts, stain wording."""
    from histovl.prompts import list_prompt_sets, load_prompt_set

    table = Table("name", "classes", "prompts", "negative", "content hash")
    for name in list_prompt_sets():
        ps = load_prompt_set(name)
        table.add_row(
            name, ", ".join(ps.class_names), str(len(ps.all_prompts())), "yes" if ps.negative else "-",
            ps.content_hash()[:12],
        )
    Console().print(table)


def prompts_show_command(
    name_or_path: Annotated[str, typer.Argument(help="A shipped set name or a YAML file.")],
) -> None:
    """Validate a prompt set and print every prompt it expands to, class by class."""
    from histovl.prompts import load_prompt_set

    ps = load_prompt_set(name_or_path)
    console = Console()
    console.print(f"[bold]{ps.name}[/bold]  hash {ps.content_hash()}")
    for label in ps.class_names:
        console.print(f"[bold]{label}[/bold]")
        for prompt in ps.prompts_for(label):
            console.print(f"  {prompt}", markup=False)
    if ps.negative:
        console.print(f"[bold]negative[/bold]: {ps.negative}")
