"""The `histovl` command line: a thin typer layer over the library.

Each command group lives in its own module with a `register(app)` function; this file only
collects them. No command module holds logic: it parses options into typed configs and calls the
library function of the same name.
"""

from __future__ import annotations

import importlib
import os
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


# Commands written to run under `torchrun --nproc-per-node N --no-python histovl ...` (one
# training job across N processes, rank 0 writing). Any other command started N times would have
# N processes doing the same work and writing the same files, so it is refused up front.
TORCHRUN_COMMANDS = (("finetune",), ("cmm", "fit"), ("stainalign", "fit"))


def check_torchrun_command(argv: list[str], world_size: int) -> None:
    """Refuse a command that has no multi-process mode when started by torchrun (WORLD_SIZE > 1)."""
    if world_size <= 1:
        return
    words = [a for a in argv if not a.startswith("-")]
    if any(tuple(words[: len(c)]) == c for c in TORCHRUN_COMMANDS):
        return
    allowed = ", ".join("histovl " + " ".join(c) for c in TORCHRUN_COMMANDS)
    raise HistovlError(
        f"`histovl {' '.join(words[:2])}` runs in one process; under torchrun (WORLD_SIZE={world_size}) "
        f"only {allowed} are distributed. Start it without torchrun "
        "(embedding at scale: `histovl embed --engine ray`)."
    )


def main() -> None:
    """Console-script entry point: user errors print one clear line, not a traceback."""
    try:
        check_torchrun_command(sys.argv[1:], int(os.environ.get("WORLD_SIZE", "1") or 1))
        app()
    except HistovlError as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except (ValueError, FileNotFoundError) as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
