"""`histovl data ...`: data-set builders (`mosaic`: multi-label mosaics from single-label tiles)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from histovl.cli.common import AbsPathsOpt, DataOpt, SeedOpt


def register(app: typer.Typer) -> None:
    data_app = typer.Typer(help="Build and convert data sets.", no_args_is_help=True)
    app.add_typer(data_app, name="data")

    @data_app.command("mosaic")
    def mosaic_command(
        data: DataOpt,
        out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (outside any git repository).")],
        n_train: Annotated[int, typer.Option("--n-train", min=0)] = 400,
        n_test: Annotated[int, typer.Option("--n-test", min=0)] = 200,
        grid: Annotated[int, typer.Option("--grid", min=1, help="Cells per side (2 -> 2x2).")] = 2,
        tile_size: Annotated[int, typer.Option("--tile-size", min=8, help="Pixels per cell.")] = 112,
        test_fraction: Annotated[float, typer.Option("--test-fraction", help="Share of source groups per class kept for test.")] = 0.3,
        max_labels: Annotated[int | None, typer.Option("--max-labels", min=1, help="Most classes per mosaic.")] = None,
        allow_inside_git: Annotated[bool, typer.Option("--allow-inside-git")] = False,
        allow_absolute_paths: AbsPathsOpt = False,
        seed: SeedOpt = 0,
    ) -> None:
        """Compose single-label tiles into multi-label mosaics with a group-aware train/test split."""
        from histovl.data.mosaic import mosaic

        s = mosaic(
            data, out, n_train=n_train, n_test=n_test, grid=grid, tile_size=tile_size,
            test_fraction=test_fraction, max_labels=max_labels, seed=seed,
            allow_absolute_paths=allow_absolute_paths, allow_inside_git=allow_inside_git,
        )
        Console().print(
            f"{s.n_train} train + {s.n_test} test mosaics of {grid}x{grid} over {', '.join(s.classes)}; "
            f"source groups train/test: {s.n_source_groups_train}/{s.n_source_groups_test}\n"
            f"train: {s.train_manifest}\ntest:  {s.test_manifest}"
        )
