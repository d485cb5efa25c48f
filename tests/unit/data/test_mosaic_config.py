"""`mosaic(data, out, MosaicConfig, RunOptions)` and `histovl data mosaic` through the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from histovl.cli.app import app
from histovl.data.mosaic import MosaicConfig, mosaic
from histovl.options import RunOptions


def test_typed_and_keyword_forms_write_the_same_mosaics(class_folder: Path, tmp_path: Path) -> None:
    cfg = MosaicConfig(n_train=6, n_test=3, tile_size=8, test_fraction=0.5)
    typed = mosaic(class_folder, tmp_path / "typed", cfg, RunOptions(seed=4))
    loose = mosaic(class_folder, tmp_path / "loose", n_train=6, n_test=3, tile_size=8, test_fraction=0.5, seed=4)
    assert typed.manifest.read_text() == loose.manifest.read_text()
    assert (typed.n_train, typed.n_test) == (6, 3)
    with pytest.raises(ValueError, match="tile_size >= 8"):
        MosaicConfig(tile_size=4)
    with pytest.raises(TypeError, match="MosaicConfig fields"):
        mosaic(class_folder, tmp_path / "x", n_trains=6)


def test_data_mosaic_command(class_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    res = CliRunner().invoke(app, ["data", "mosaic", "--data", str(class_folder), "--out", str(out), "--n-train", "6",
                                   "--n-test", "3", "--tile-size", "8", "--test-fraction", "0.5", "--seed", "4"])
    assert res.exit_code == 0, res.output
    assert "6 train + 3 test mosaics of 2x2" in res.output
    reference = mosaic(class_folder, tmp_path / "ref", n_train=6, n_test=3, tile_size=8, test_fraction=0.5, seed=4)
    assert (out / "mosaics.csv").read_text() == reference.manifest.read_text()
    assert CliRunner().invoke(app, ["data", "mosaic", "--data", str(class_folder), "--out", str(out),
                                    "--batch-size", "3"]).exit_code == 2  # not a mosaic option
