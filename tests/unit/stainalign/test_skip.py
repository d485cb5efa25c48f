"""`stainalign fit / eval` with unreadable tiles: raise names the file, skip keeps the rest and records it."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from histovl.errors import ImageReadError
from tests.helpers.synthetic import stainalign_pairs

PARAMS = {"epochs": 2, "batch_size": 4, "hidden_dim": 8, "attention_dim": 4, "projection_dim": 4}
NOT_AN_IMAGE = b"this is text, not a PNG"


def _break(folder: Path, name: str = "tile_x0_y0.png") -> Path:
    """Overwrite one tile (the first in name order, the one the mosaic takes its size from)."""
    bad = folder / name
    bad.write_bytes(NOT_AN_IMAGE)
    return bad


@pytest.fixture
def encoder_dir(tiny_clip, tmp_path: Path) -> str:  # type: ignore[no-untyped-def]
    from histovl.models import save_model_dir

    return str(save_model_dir(tiny_clip, tmp_path / "encoder"))


def _run_json(folder: Path) -> dict:
    return json.loads((folder / "run.json").read_text())


def test_fit_raise_names_the_unreadable_tile(tmp_path: Path, encoder_dir: str) -> None:
    from histovl.stainalign import stainalign_fit

    pairs = stainalign_pairs(tmp_path)
    bad = _break(tmp_path / "he" / "s3", "tile_x32_y32.png")
    with pytest.raises(ImageReadError, match="tile_x32_y32.png") as info:
        stainalign_fit(pairs, tmp_path / "fit", model=encoder_dir, params=PARAMS, cv_folds=2, n_boot=0)
    assert Path(str(info.value.path)).resolve() == bad.resolve()


def test_fit_skip_keeps_the_rest_records_tiles_and_drops_a_pair_without_readable_tiles(
    tmp_path: Path, encoder_dir: str
) -> None:
    from histovl.stainalign import stainalign_fit

    pairs = stainalign_pairs(tmp_path)
    bad_tile = _break(tmp_path / "he" / "s1")  # one of four tiles: the slide stays, with 3 tiles
    for tile in sorted((tmp_path / "ihc" / "s6").iterdir()):  # truncated: headers open, pixels do not
        tile.write_bytes(tile.read_bytes()[:60])  # no readable tile: pair 6 is dropped
    metrics = stainalign_fit(pairs, tmp_path / "fit", model=encoder_dir, params=PARAMS, cv_folds=2, n_boot=0,
                             on_error="skip")
    assert metrics["n"] == 7 and metrics["n_dropped_pairs"] == 1
    assert metrics["n_skipped_tiles"] == 5 and metrics["n_skipped"] == 6  # 1 + 4 tiles, 1 slide
    run = _run_json(tmp_path / "fit")
    paths = [Path(s["path"]).resolve() for s in run["skipped"]]
    assert bad_tile.resolve() in paths and (tmp_path / "ihc" / "s6").resolve() in paths
    assert all(s["reason"] for s in run["skipped"])
    assert [Path(p["ihc_slide"]).name for p in run["extra"]["dropped_pairs"]] == ["s6"]
    assert run["n_inputs"] == 16  # every slide the run considered, before skips
    preds = pd.read_csv(tmp_path / "fit" / "predictions.csv")
    assert len(preds) == 7 and "he/s6" not in set(preds["path"])
    on_disk = json.loads((tmp_path / "fit" / "metrics.json").read_text())
    assert on_disk["n_skipped"] == 6 and on_disk["n_dropped_pairs"] == 1


def test_fit_skip_with_no_readable_pair_is_a_clear_error(tmp_path: Path, encoder_dir: str) -> None:
    from histovl.stainalign import stainalign_fit

    pairs = stainalign_pairs(tmp_path, n=2)
    for slide in (tmp_path / "he").iterdir():
        for tile in slide.iterdir():
            tile.write_bytes(NOT_AN_IMAGE)
    with pytest.raises(ValueError, match="none of the 2 pairs has readable slides"):
        stainalign_fit(pairs, tmp_path / "fit", model=encoder_dir, params=PARAMS, cv_folds=2, n_boot=0, on_error="skip")


def test_eval_raise_names_the_file_and_skip_keeps_the_rest(tmp_path: Path, encoder_dir: str) -> None:
    from histovl.stainalign import stainalign_eval, stainalign_fit

    pairs = stainalign_pairs(tmp_path)
    stainalign_fit(pairs, tmp_path / "fit", model=encoder_dir, params=PARAMS, cv_folds=2, n_boot=0)
    bad = _break(tmp_path / "he" / "s2", "tile_x32_y0.png")
    with pytest.raises(ImageReadError, match="tile_x32_y0.png"):
        stainalign_eval(tmp_path / "fit", pairs, tmp_path / "eval-raise", n_boot=0)

    for tile in sorted((tmp_path / "he" / "s5").iterdir()):  # not even the mosaic opens: slide dropped
        _break(tile.parent, tile.name)
    ev = stainalign_eval(tmp_path / "fit", pairs, tmp_path / "eval", n_boot=0, on_error="skip")
    assert ev["n"] == 7 and ev["n_dropped_pairs"] == 1 and ev["n_skipped_tiles"] == 1 and ev["n_skipped"] == 2
    run = _run_json(tmp_path / "eval")
    paths = [Path(s["path"]).resolve() for s in run["skipped"]]
    assert bad.resolve() in paths and (tmp_path / "he" / "s5").resolve() in paths
    assert len(pd.read_csv(tmp_path / "eval" / "predictions.csv")) == 7
    assert len(list((tmp_path / "eval" / "heatmaps").glob("*.png"))) == 7


def test_cli_on_error_skip_is_passed_through(tmp_path: Path, encoder_dir: str) -> None:
    from histovl.cli.app import app

    pairs = stainalign_pairs(tmp_path)
    _break(tmp_path / "he" / "s0")
    args = ["stainalign", "fit", "--pairs", str(pairs), "--out", str(tmp_path / "fit"), "--model", encoder_dir,
            "--epochs", "1", "--batch-size", "4", "--cv-folds", "2", "--n-boot", "0"]
    failed = CliRunner().invoke(app, args)
    assert failed.exit_code != 0 and "tile_x0_y0.png" in str(failed.exception or failed.output)
    result = CliRunner().invoke(app, [*args, "--on-error", "skip"])
    assert result.exit_code == 0, result.output
    assert "skipped 1 unreadable tile(s)" in result.output
    assert [Path(s["path"]).name for s in _run_json(tmp_path / "fit")["skipped"]] == ["tile_x0_y0.png"]
