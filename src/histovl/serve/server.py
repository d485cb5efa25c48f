"""`histovl serve`: start the read-only web app (docs/serve.md)."""

from __future__ import annotations

import os
import sys
from typing import Any

from histovl.options import RunOptions, split_overrides
from histovl.serve.config import ServeConfig, check_binding


def serve(
    roots: list[str | os.PathLike[str]] | str | os.PathLike[str],
    config: ServeConfig | None = None,
    options: RunOptions | None = None,
    **overrides: Any,
) -> None:
    """Serve the runs, slides, indexes and leaderboards under `roots` until interrupted.

    Binds 127.0.0.1 by default; any other host is refused unless `config.token` is set
    (`check_binding`, before anything listens). Everything is found once at start; restart to
    see new runs. `options` gives the device and checkpoint trust used by search queries.

    Args:
        roots: folders to look in (runs, predict/slides outputs, index folders, bench folders).
        config: host, port, token and limits (`ServeConfig`).
        options: the shared run options (``device``, ``trust_checkpoint`` matter here).
        overrides: fields of either, as keywords (``port=9000``).

    Example:
        >>> serve(["runs"], port=8765)  # doctest: +SKIP
    """
    cfg, opts = split_overrides(overrides, config, ServeConfig, options)
    check_binding(cfg)
    import uvicorn

    from histovl.serve.app import build_app

    app = build_app(roots, cfg, opts)
    catalog = app.state.serve.catalog
    host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    print(f"histovl serve: {catalog.summary()}", file=sys.stderr)
    print(f"histovl serve: open http://{host}:{cfg.port}/{'?token=<your token>' if cfg.token else ''} "
          "(Ctrl-C stops it)", file=sys.stderr)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning", access_log=False,
                server_header=False, date_header=False)
