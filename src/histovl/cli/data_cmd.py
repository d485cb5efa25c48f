"""`histovl data ...`: data-set builders (`mosaic`: multi-label mosaics from single-label tiles).

Parse options, call `histovl.data.mosaic.mosaic`, print a summary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from histovl.cli.common import ALL_RUN_OPTIONS, DataOpt, with_run_options
from histovl.options import RunOptions

MOSAIC_OPTIONS = ("allow_absolute_paths", "seed")


@with_run_options(
    exclude=[f for f in ALL_RUN_OPTIONS if f not in MOSAIC_OPTIONS],
    help_overrides={"seed": "Drives the group split, the mosaic layouts and the tile choice."},
)
def data_mosaic_command(
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (outside any git repository).")],
    options: RunOptions,
    n_train: Annotated[int, typer.Option("--n-train", min=0)] = 400,
    n_test: Annotated[int, typer.Option("--n-test", min=0)] = 200,
    grid: Annotated[int, typer.Option("--grid", min=1, help="Cells per side (2 -> 2x2).")] = 2,
    tile_size: Annotated[int, typer.Option("--tile-size", min=8, help="Pixels per cell.")] = 112,
    test_fraction: Annotated[float, typer.Option("--test-fraction", help="Share of source groups per class kept for test.")] = 0.3,
    max_labels: Annotated[int | None, typer.Option("--max-labels", min=1, help="Most classes per mosaic.")] = None,
    allow_inside_git: Annotated[bool, typer.Option("--allow-inside-git")] = False,
) -> None:
    """Compose single-label tiles into multi-label mosaics with a group-aware train/test split."""
    from histovl.data.mosaic import MosaicConfig, mosaic

    config = MosaicConfig(
        n_train=n_train, n_test=n_test, grid=grid, tile_size=tile_size, test_fraction=test_fraction,
        max_labels=max_labels, allow_inside_git=allow_inside_git,
    )
    s = mosaic(data, out, config, options)
    Console().print(
        f"{s.n_train} train + {s.n_test} test mosaics of {grid}x{grid} over {', '.join(s.classes)}; "
        f"source groups train/test: {s.n_source_groups_train}/{s.n_source_groups_test}\n"
        f"train: {s.train_manifest}\ntest:  {s.test_manifest}"
    )
