"""`histovl serve`: the read-only web app over run folders, slides, indexes and leaderboards."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from histovl.cli.common import RUNTIME_OPTIONS, with_run_options
from histovl.options import RunOptions


@with_run_options(exclude=("cache", "use_cache", "batch_size", "workers", "on_error", "allow_absolute_paths",
                           "n_boot", "seed", "progress", *RUNTIME_OPTIONS),
                  help_overrides={"device": "Device of the model that encodes search queries (cpu, cuda, ...)."})
def serve_command(
    options: RunOptions,
    roots: Annotated[list[Path] | None, typer.Argument(help="Folders to show: runs, predict/slides outputs, index and bench folders (default: the current folder).")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to bind. Anything but loopback (127.0.0.1, ::1, localhost) needs --token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port.")] = 8765,
    token: Annotated[str | None, typer.Option("--token", envvar="HISTOVL_SERVE_TOKEN", help="Secret every request must carry (open the URL with ?token=... once). Required off loopback.")] = None,
    roots_only: Annotated[bool, typer.Option("--roots-only", help="Show no file outside the roots, not even the images a run's data set holds elsewhere.")] = False,
) -> None:
    """Look at runs, errors and whole slides in a browser (read-only; docs/serve.md).

    Over SSH: `ssh -L 8765:127.0.0.1:8765 server`, then open http://127.0.0.1:8765 on your laptop.
    """
    from histovl.serve import ServeConfig, serve

    serve(list(roots or [Path.cwd()]), ServeConfig(host=host, port=port, token=token or None, roots_only=roots_only), options)
