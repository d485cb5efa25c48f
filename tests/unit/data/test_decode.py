"""read_rgb on every awkward and broken input in tests/data/bad: exact pixels or exact errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histovl.data import read_rgb
from histovl.errors import ImageReadError
from tests.data.bad import images as bad


def pixels(img: Image.Image) -> list[tuple[int, int, int]]:
    assert img.mode == "RGB"
    return [tuple(int(v) for v in px) for px in np.asarray(img).reshape(-1, 3)]


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF"])
def test_truncated_file_raises_naming_it(tmp_path: Path, fmt: str) -> None:
    path = bad.truncated(tmp_path, fmt)
    with pytest.raises(ImageReadError) as info:
        read_rgb(path)
    assert info.value.path == path
    assert str(path) in str(info.value)
    assert "truncated or corrupt" in str(info.value) or "cannot open" in str(info.value)


def test_truncated_jpeg_says_truncated(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="truncated"):
        read_rgb(bad.truncated(tmp_path, "JPEG"))


def test_zero_byte_file(tmp_path: Path) -> None:
    path = bad.zero_byte(tmp_path)
    with pytest.raises(ImageReadError, match="zero-byte") as info:
        read_rgb(path)
    assert str(path) in str(info.value)


def test_not_an_image(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="not a recognised image"):
        read_rgb(bad.not_an_image(tmp_path))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="file not found"):
        read_rgb(tmp_path / "nope.png")


def test_decompression_bomb_refused_and_guard_unchanged(tmp_path: Path) -> None:
    limit_before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageReadError, match="decompression-bomb guard") as info:
        read_rgb(bad.decompression_bomb_png(tmp_path))
    assert "slides tile" in str(info.value)
    assert Image.MAX_IMAGE_PIXELS == limit_before is not None


def test_rgba_composited_on_white(tmp_path: Path) -> None:
    got = pixels(read_rgb(bad.rgba_png(tmp_path)))
    assert got[0] == (255, 255, 255)  # fully transparent red -> white, not red or black
    assert got[1] == (0, 255, 0)  # opaque kept exactly
    # half-transparent blue over white: 255*(1-a) + 0*a with a = 128/255
    assert got[2][2] == 255 and abs(got[2][0] - 127) <= 1 and got[2][0] == got[2][1]


def test_la_composited_on_white(tmp_path: Path) -> None:
    assert pixels(read_rgb(bad.la_png(tmp_path))) == [(255, 255, 255), (40, 40, 40)]


def test_palette_with_transparency(tmp_path: Path) -> None:
    assert pixels(read_rgb(bad.palette_transparent_png(tmp_path))) == [(255, 255, 255), (10, 200, 30)]


def test_palette_without_transparency(tmp_path: Path) -> None:
    assert pixels(read_rgb(bad.palette_png(tmp_path))) == [(0, 0, 0), (10, 200, 30)]


def test_greyscale_and_bilevel(tmp_path: Path) -> None:
    assert pixels(read_rgb(bad.greyscale_png(tmp_path))) == [(0, 0, 0), (77, 77, 77), (255, 255, 255)]
    assert pixels(read_rgb(bad.bilevel_png(tmp_path))) == [(0, 0, 0), (255, 255, 255)]


def test_cmyk_tiff(tmp_path: Path) -> None:
    assert pixels(read_rgb(bad.cmyk_tiff(tmp_path))) == [(0, 255, 255), (255, 255, 255), (0, 0, 0)]


def test_cmyk_jpeg_close_to_magenta(tmp_path: Path) -> None:
    arr = np.asarray(read_rgb(bad.cmyk_jpeg(tmp_path))).astype(int)
    assert np.abs(arr - np.array([255, 0, 255])).max() <= 6


@pytest.mark.parametrize(
    "make", [bad.sixteen_bit_png, bad.sixteen_bit_big_endian_tiff, bad.int32_tiff], ids=["I;16", "I;16B", "I"]
)
def test_sixteen_bit_rescaled_not_clipped(tmp_path: Path, make) -> None:
    got = pixels(read_rgb(make(tmp_path)))
    assert got == [(0, 0, 0), (100, 100, 100), (255, 255, 255), (128, 128, 128)]
    # Pillow's own convert("L") clips at 255, which is what this guards against:
    with Image.open(make(tmp_path)) as raw:
        assert np.asarray(raw.convert("L"))[0, 1] != 100


def test_float_image(tmp_path: Path) -> None:
    assert pixels(read_rgb(bad.float_tiff(tmp_path))) == [(0, 0, 0), (128, 128, 128), (255, 255, 255)]


def test_exif_orientation_applied(tmp_path: Path) -> None:
    img = read_rgb(bad.exif_rotated_jpeg(tmp_path))
    assert img.size == (20, 40)  # width, height after the 90° rotation
    arr = np.asarray(img).astype(int)
    assert arr[2, 10, 0] > 200 and arr[2, 10, 2] < 60  # top is red
    assert arr[-3, 10, 2] > 200 and arr[-3, 10, 0] < 60  # bottom is blue


def test_plain_rgb_unchanged_and_detached(tmp_path: Path) -> None:
    arr = np.random.default_rng(1).integers(0, 256, size=(9, 7, 3), dtype=np.uint8)
    path = tmp_path / "rgb.png"
    Image.fromarray(arr).save(path)
    img = read_rgb(path)
    np.testing.assert_array_equal(np.asarray(img), arr)
    path.unlink()  # the decoded image must not depend on the file any more
    np.testing.assert_array_equal(np.asarray(img), arr)


def test_multiframe_gives_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (4, 4), c) for c in [(255, 0, 0), (0, 0, 255)]]
    path = tmp_path / "pages.tif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert pixels(read_rgb(path))[0] == (255, 0, 0)
