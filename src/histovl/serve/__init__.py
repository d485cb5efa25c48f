"""`histovl serve`: a read-only local web app over run folders, slides, indexes and leaderboards.

Beside `histovl.cli` at the top of the package graph: it reads what the other commands wrote and
calls the library (`histovl.retrieval.query_index` for search); nothing imports it. FastAPI,
uvicorn and Jinja2 come with the ``serve`` extra (``pip install 'histovl[serve]'``); the slide
viewer also needs the ``slides`` extra (OpenSlide). See docs/serve.md.

Example:
    >>> import histovl
    >>> histovl.serve(["runs"], port=8765)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from histovl._command_module import make_callable
from histovl.options import RunOptions
from histovl.serve.config import ServeConfig, check_binding, is_loopback
from histovl.serve.server import serve

if TYPE_CHECKING:
    from fastapi import FastAPI


def build_app(
    roots: list[str | os.PathLike[str]] | str | os.PathLike[str],
    config: ServeConfig | None = None,
    options: RunOptions | None = None,
) -> FastAPI:
    """The app `serve` runs, without a server (for tests and embedding); see
    `histovl.serve.app.build_app`. Imported on use: it needs the ``serve`` extra."""
    from histovl.serve.app import build_app as _build_app

    return _build_app(roots, config, options)


__all__ = ["ServeConfig", "build_app", "check_binding", "is_loopback", "serve"]

make_callable(__name__, serve)  # histovl.serve(...) runs the command
