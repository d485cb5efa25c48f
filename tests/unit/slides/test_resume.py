"""Reusing a finished tiling and resuming an interrupted one (histovl.slides.resume)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Set
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import histovl.slides.pipeline as pipeline_module
from histovl.slides import PlainImageReader, SlideReader, TileSpec, tile_slide
from histovl.slides.reader import TileReadError
from tests.unit.slides.conftest import synthetic_tissue

SPEC = TileSpec(size=64)


@pytest.fixture
def plain_slide(tmp_path: Path) -> Path:
    path = tmp_path / "slide.png"
    Image.fromarray(synthetic_tissue(512, 384)).save(path)
    return path


class CountingReader(PlainImageReader):
    """A plain-image reader that logs every tile-sized read (the thumbnail read is whole-image)."""

    def __init__(self, path: Path, log: list[tuple[int, int]], fail: Set[tuple[int, int]] = frozenset()) -> None:
        super().__init__(path, mpp=None)
        self.log, self.fail = log, fail

    def _read(self, x: int, y: int, level: int, size: tuple[int, int]) -> Image.Image:
        if size == (SPEC.size, SPEC.size):
            self.log.append((x, y))
            if (x, y) in self.fail:
                raise TileReadError(f"injected fault at {(x, y)}")
        return super()._read(x, y, level, size)


def counting(path: Path, log: list[tuple[int, int]], fail: Set[tuple[int, int]] = frozenset()) -> Callable[[], SlideReader]:
    def factory() -> SlideReader:
        return CountingReader(path, log, fail)

    return factory


def refuse() -> SlideReader:
    raise AssertionError("the slide must not be opened when the tiling is reused")


def outputs(out: Path) -> dict[str, bytes]:
    """Every output file's bytes, except tiling.json (it records timings)."""
    files = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    files.pop("tiling.json")
    return files


def test_rerun_reuses_finished_tiling_without_opening_slide(plain_slide: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = tile_slide(plain_slide, out, SPEC, save_tiles=True, num_workers=1)
    assert not first.reused and first.n_tiles_read == len(first.tiles) > 5
    before = outputs(out)
    again = tile_slide(plain_slide, out, SPEC, save_tiles=True, reader_factory=refuse)
    assert again.reused and again.n_tiles_read == 0
    assert outputs(out) == before
    pd.testing.assert_frame_equal(again.tiles, first.tiles)
    np.testing.assert_array_equal(again.mask, first.mask)
    np.testing.assert_array_equal(np.asarray(again.thumbnail), np.asarray(first.thumbnail))
    assert again.resolution == first.resolution and again.level0_size == first.level0_size
    source = json.loads((out / "tiling.json").read_text())["source"]
    assert source["slide"]["path"] == os.fspath(plain_slide.resolve()) and source["spec"]["size"] == 64
    assert not (out / "tiling.partial.json").exists()
    # a plan-only tiling is reused too, and a forced run reads every tile again
    assert not tile_slide(plain_slide, tmp_path / "plan", SPEC).reused
    assert tile_slide(plain_slide, tmp_path / "plan", SPEC, reader_factory=refuse).reused
    log: list[tuple[int, int]] = []
    forced = tile_slide(plain_slide, out, SPEC, save_tiles=True, num_workers=1, force=True, reader_factory=counting(plain_slide, log))
    assert not forced.reused and len(log) == len(first.tiles) and outputs(out) == before


def test_interrupted_tiling_resumes_reading_only_missing_tiles(plain_slide: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fresh = tile_slide(plain_slide, tmp_path / "fresh", SPEC, save_tiles=True, num_workers=1)
    n = len(fresh.tiles)
    real_save = pipeline_module._save_tile
    saved = []

    def save_then_die(img: Image.Image, path: Path) -> None:
        if len(saved) == 4:
            raise KeyboardInterrupt
        real_save(img, path)
        saved.append(path)

    out = tmp_path / "out"
    monkeypatch.setattr(pipeline_module, "_save_tile", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        tile_slide(plain_slide, out, SPEC, save_tiles=True, num_workers=2)
    monkeypatch.setattr(pipeline_module, "_save_tile", real_save)
    assert not (out / "tiling.json").exists() and (out / "tiling.partial.json").exists()
    assert len(list((out / "tiles").glob("*.png"))) == 4
    log: list[tuple[int, int]] = []
    resumed = tile_slide(plain_slide, out, SPEC, save_tiles=True, num_workers=1, reader_factory=counting(plain_slide, log))
    assert resumed.n_tiles_read == len(log) == n - 4 and not resumed.reused
    assert outputs(out) == outputs(tmp_path / "fresh")
    assert not (out / "tiling.partial.json").exists()


def test_resume_rereads_substituted_tiles_and_reports_them_again(plain_slide: Path, tmp_path: Path) -> None:
    fresh = tile_slide(plain_slide, tmp_path / "plan", SPEC)
    bad = {(int(fresh.tiles["x"].iloc[2]), int(fresh.tiles["y"].iloc[2]))}
    out = tmp_path / "out"
    first = tile_slide(plain_slide, out, SPEC, save_tiles=True, num_workers=1, reader_factory=counting(plain_slide, [], bad))
    assert len(first.bad_tiles) == 1 and first.bad_tiles[0].index == 2
    before = outputs(out)
    (out / first.tiles["path"].iloc[0]).unlink()  # one tile lost: read it and the substitute again
    log: list[tuple[int, int]] = []
    again = tile_slide(plain_slide, out, SPEC, save_tiles=True, num_workers=1, reader_factory=counting(plain_slide, log, bad))
    assert again.n_tiles_read == 2 and bad <= set(log)
    assert [b.index for b in again.bad_tiles] == [2] and outputs(out) == before
    assert json.loads((out / "tiling.json").read_text())["substituted_tiles"][0]["index"] == 2


def test_deleted_tile_file_is_read_again(plain_slide: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = tile_slide(plain_slide, out, SPEC, save_tiles=True, num_workers=1)
    before = outputs(out)
    lost = first.tiles.iloc[3]
    (out / lost["path"]).unlink()
    log: list[tuple[int, int]] = []
    again = tile_slide(plain_slide, out, SPEC, save_tiles=True, num_workers=1, reader_factory=counting(plain_slide, log))
    assert not again.reused and log == [(lost["x"], lost["y"])]
    assert outputs(out) == before


def test_a_killed_writers_temporary_tile_file_is_removed_on_resume(plain_slide: Path, tmp_path: Path) -> None:
    """SIGKILL mid-write leaves ``tiles/.tile_x.._y...png.<random>.png`` (atomic write, no cleanup);
    the next tiling of the folder deletes it, so the folder equals an uninterrupted run's."""
    out = tmp_path / "out"
    first = tile_slide(plain_slide, out, SPEC, save_tiles=True, num_workers=1)
    before = outputs(out)
    lost = first.tiles.iloc[2]
    (out / lost["path"]).unlink()  # the tile being written when the process was killed
    stale = out / "tiles" / f".{Path(lost['path']).name}.ngx0sk_i.png"
    stale.write_bytes(b"")
    (out / "tiles" / "notes.txt").write_text("mine")  # not histovl's: kept
    tile_slide(plain_slide, out, SPEC, save_tiles=True, num_workers=1)
    assert not stale.exists() and (out / "tiles" / "notes.txt").exists()
    (out / "tiles" / "notes.txt").unlink()
    assert outputs(out) == before


def test_a_killed_writers_temporary_output_files_are_removed_on_rerun(plain_slide: Path, tmp_path: Path) -> None:
    """SIGKILL while tiles.csv (or a figure, or the record) was written leaves ``.tiles.csv.<random>.tmp``
    in the tiling folder; the next tiling deletes it (the fault test caught one surviving the rerun)."""
    out = tmp_path / "out"
    tile_slide(plain_slide, out, SPEC, save_tiles=True, num_workers=1)
    before = outputs(out)
    (out / "tiling.json").unlink()  # killed before the commit point
    stale = [out / ".tiles.csv.a4r6o2h5.tmp", out / ".thumbnail.png.x1y2z3.png", out / ".tiling.json.q9.tmp"]
    for path in stale:
        path.write_bytes(b"half")
    (out / ".notes.tmp").write_text("mine")  # not one of histovl's outputs: kept
    tile_slide(plain_slide, out, SPEC, save_tiles=True, num_workers=1)
    assert not any(p.exists() for p in stale) and (out / ".notes.tmp").exists()
    (out / ".notes.tmp").unlink()
    assert outputs(out) == before


def test_changed_slide_or_parameters_retile_from_scratch(plain_slide: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = tile_slide(plain_slide, out, SPEC, save_tiles=True, num_workers=1)
    n = len(first.tiles)
    # touch: same bytes, new mtime
    st = plain_slide.stat()
    os.utime(plain_slide, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    log: list[tuple[int, int]] = []
    touched = tile_slide(plain_slide, out, SPEC, save_tiles=True, num_workers=1, reader_factory=counting(plain_slide, log))
    assert not touched.reused and len(log) == n
    # rewritten with other pixels (same size and name): new tiles, none of the old files kept
    image = synthetic_tissue(512, 384)
    image[:, :, 1] = 255 - image[:, :, 1]
    Image.fromarray(image).save(plain_slide)
    log.clear()
    rewritten = tile_slide(plain_slide, out, SPEC, save_tiles=True, num_workers=1, reader_factory=counting(plain_slide, log))
    assert not rewritten.reused and len(log) == len(rewritten.tiles)
    row = rewritten.tiles.iloc[0]
    np.testing.assert_array_equal(
        np.asarray(Image.open(out / row["path"])), image[row.y : row.y + 64, row.x : row.x + 64]
    )
    # other tile size: a new grid; stale tile files of the old grid are removed
    log.clear()
    bigger = tile_slide(plain_slide, out, TileSpec(size=96), save_tiles=True, num_workers=1)
    assert not bigger.reused and bigger.n_tiles_read == len(bigger.tiles)
    assert {p.name for p in (out / "tiles").iterdir()} == {Path(p).name for p in bigger.tiles["path"]}
    fresh = tile_slide(plain_slide, tmp_path / "fresh", TileSpec(size=96), save_tiles=True, num_workers=1)
    assert outputs(out) == outputs(tmp_path / "fresh")
    assert fresh.n_tiles_read == len(fresh.tiles)


def test_slide_without_identity_is_never_reused(tmp_path: Path) -> None:
    from tests.unit.slides.conftest import FakeSlide

    image = synthetic_tissue(256, 192)
    for _ in range(2):
        res = tile_slide("not-on-disk", tmp_path / "out", TileSpec(size=32), reader_factory=lambda: FakeSlide(image, (1,)))
        assert not res.reused
    assert json.loads((tmp_path / "out" / "tiling.json").read_text())["source"] is None
