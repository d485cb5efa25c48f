"""Generators for awkward and broken image files; each writes one file into a folder.

Each function documents what `read_rgb` must give for its file; the tests in
``tests/unit/data/test_decode.py`` assert exactly that.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

# Three pixels of an RGBA strip: fully transparent red, opaque green, half-transparent blue.
RGBA_PIXELS = [(255, 0, 0, 0), (0, 255, 0, 255), (0, 0, 255, 128)]
SIXTEEN_BIT_VALUES = np.array([[0, 25700, 65535, 32896]], dtype=np.uint16)  # -> 0, 100, 255, 128


def _noise_rgb(size: tuple[int, int] = (96, 64), seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))


def truncated(folder: Path, fmt: str) -> Path:
    """A JPEG/PNG/TIFF cut to half its bytes: `ImageReadError` naming the file."""
    ext = {"JPEG": "jpg", "PNG": "png", "TIFF": "tif"}[fmt]
    buf = io.BytesIO()
    _noise_rgb().save(buf, fmt)
    data = buf.getvalue()
    path = folder / f"truncated.{ext}"
    path.write_bytes(data[: len(data) // 2])
    return path


def zero_byte(folder: Path) -> Path:
    """An empty ``.png``: `ImageReadError` saying "zero-byte"."""
    path = folder / "empty.png"
    path.write_bytes(b"")
    return path


def not_an_image(folder: Path) -> Path:
    """Text saved as ``.jpg``: `ImageReadError` saying it is not a recognised image."""
    path = folder / "notes.jpg"
    path.write_text("this is not an image\n")
    return path


def rgba_png(folder: Path) -> Path:
    """RGBA strip `RGBA_PIXELS`: transparent -> (255,255,255), opaque green kept, half blue ~ (127,127,255)."""
    img = Image.new("RGBA", (3, 1))
    img.putdata(RGBA_PIXELS)
    path = folder / "rgba.png"
    img.save(path)
    return path


def la_png(folder: Path) -> Path:
    """Greyscale+alpha: (value 0, alpha 0) -> white; (value 40, alpha 255) -> (40,40,40)."""
    img = Image.new("LA", (2, 1))
    img.putdata([(0, 0), (40, 255)])
    path = folder / "la.png"
    img.save(path)
    return path


def palette_transparent_png(folder: Path) -> Path:
    """Palette image whose index 0 is transparent: pixel 0 -> white, pixel 1 -> (10,200,30)."""
    img = Image.new("P", (2, 1))
    img.putpalette([0, 0, 0, 10, 200, 30] + [0] * (256 * 3 - 6))
    img.putdata([0, 1])
    path = folder / "palette_transparent.png"
    img.save(path, transparency=0)
    return path


def palette_png(folder: Path) -> Path:
    """Palette image without transparency: pixels -> (0,0,0) and (10,200,30)."""
    img = Image.new("P", (2, 1))
    img.putpalette([0, 0, 0, 10, 200, 30] + [0] * (256 * 3 - 6))
    img.putdata([0, 1])
    path = folder / "palette.png"
    img.save(path)
    return path


def greyscale_png(folder: Path) -> Path:
    """8-bit greyscale [0, 77, 255] -> each grey value repeated in R, G, B."""
    img = Image.fromarray(np.array([[0, 77, 255]], dtype=np.uint8), mode="L")
    path = folder / "grey.png"
    img.save(path)
    return path


def bilevel_png(folder: Path) -> Path:
    """1-bit image [black, white] -> (0,0,0), (255,255,255)."""
    img = Image.new("1", (2, 1))
    img.putpixel((1, 0), 1)
    path = folder / "bilevel.png"
    img.save(path)
    return path


def cmyk_tiff(folder: Path) -> Path:
    """CMYK TIFF: pure cyan -> (0,255,255), white -> (255,255,255), full black ink -> (0,0,0)."""
    img = Image.new("CMYK", (3, 1))
    for x, px in enumerate([(255, 0, 0, 0), (0, 0, 0, 0), (0, 0, 0, 255)]):
        img.putpixel((x, 0), px)
    path = folder / "cmyk.tif"
    img.save(path)
    return path


def cmyk_jpeg(folder: Path) -> Path:
    """A flat CMYK JPEG of pure magenta: reads back close to (255,0,255) (JPEG is lossy)."""
    img = Image.new("CMYK", (16, 16), (0, 255, 0, 0))
    path = folder / "cmyk.jpg"
    img.save(path, quality=95)
    return path


def sixteen_bit_png(folder: Path) -> Path:
    """I;16 PNG `SIXTEEN_BIT_VALUES` -> greys [0, 100, 255, 128] (rescaled, not clipped)."""
    path = folder / "grey16.png"
    Image.fromarray(SIXTEEN_BIT_VALUES).save(path)
    return path


def sixteen_bit_big_endian_tiff(folder: Path) -> Path:
    """I;16B TIFF of `SIXTEEN_BIT_VALUES` -> greys [0, 100, 255, 128]."""
    path = folder / "grey16be.tif"
    Image.fromarray(SIXTEEN_BIT_VALUES.astype(">u2")).save(path)
    return path


def int32_tiff(folder: Path) -> Path:
    """32-bit ``I`` TIFF holding 16-bit values -> greys [0, 100, 255, 128]."""
    path = folder / "grey32.tif"
    Image.fromarray(SIXTEEN_BIT_VALUES.astype(np.int32)).save(path)
    return path


def float_tiff(folder: Path) -> Path:
    """Float ``F`` TIFF in 0-1: [0, 0.5, 1.0] -> greys [0, 128, 255]."""
    path = folder / "float.tif"
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)).save(path)
    return path


def exif_rotated_jpeg(folder: Path) -> Path:
    """A 40x20 JPEG, left half red, right half blue, with EXIF orientation 6 (rotate 90° clockwise).

    Displayed upright it is 20x40 with red on top and blue at the bottom.
    """
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = folder / "rotated.jpg"
    img.save(path, exif=exif.tobytes(), quality=95)
    return path


def decompression_bomb_png(folder: Path, side: int = 20000) -> Path:
    """A 100-byte PNG whose header claims side x side pixels (default 400 Mpx, over 2x Pillow's limit).

    Pillow refuses it on open, before any memory is used: `ImageReadError` mentioning the bomb guard.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    path = folder / "bomb.png"
    path.write_bytes(data)
    return path
