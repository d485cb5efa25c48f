"""The `histovl` command line: a thin typer layer over the library.

Each command group lives in its own module with a `register(app)` function; this file only
collects them. No command module holds logic: it parses options into typed configs and calls the
library function of the same name.
"""

from __future__ import annotations

import importlib
import sys

import typer

from histovl.errors import HistovlError

app = typer.Typer(
    name="histovl",
    help="Vision-language toolkit for histopathology: zero-shot, robustness, retrieval, adaptation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# One module per command group (see STYLE.md): add yours here.
COMMAND_MODULES = [
    "histovl.cli.slides_cmd",
    "histovl.cli.stainalign_cmd",
    "histovl.cli.models_cmd",
    "histovl.cli.embed_cmd",
    "histovl.cli.zeroshot_cmd",
    "histovl.cli.fusion_cmd",
    "histovl.cli.multilabel_cmd",
    "histovl.cli.cmm_cmd",
    "histovl.cli.data_cmd",
    "histovl.cli.finetune_cmd",
    "histovl.cli.retrieve_cmd",
    "histovl.cli.prompts_cmd",
    "histovl.cli.robustness_cmd",
]


def _register_all() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(app)


_register_all()


def main() -> None:
    """Console-script entry point: user errors print one clear line, not a traceback."""
    try:
        app()
    except HistovlError as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except (ValueError, FileNotFoundError) as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
