"""Decode any image file to 8-bit RGB, the one form every encoder's preprocessing expects.

Pillow's implicit conversions are wrong for several modes found in pathology exports: ``RGBA ->
RGB`` drops alpha and leaves whatever colour sat under transparent pixels (often black), ``I;16 ->
L`` clips everything above 255 to white instead of rescaling, and EXIF orientation is ignored. Each
case is handled here on purpose, and every failure becomes an `ImageReadError` naming the file.
"""

from __future__ import annotations

import os
import struct
import warnings
import zlib

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from histovl._inputs import image_size_problem
from histovl.errors import ImageReadError

WHITE = (255, 255, 255)

# Errors Pillow's decoders raise on damaged files (a truncated JPEG gives OSError, a broken PNG
# SyntaxError or zlib.error, a bad TIFF directory struct.error/KeyError/IndexError...).
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    zlib.error,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
)

_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})
_TRANSPARENCY_MODES = frozenset({"P", "L", "RGB"})  # may carry a `transparency` colour in .info


def read_rgb(path: str | os.PathLike[str]) -> Image.Image:
    """Read an image file as an 8-bit RGB `PIL.Image.Image`, fully decoded.

    Conversions: EXIF orientation applied; transparency (RGBA, LA, palette or greyscale with a
    transparent colour) composited onto white; CMYK and YCbCr converted; 16-bit greyscale
    (``I;16*``) rescaled from 0-65535 to 0-255 (rounded, not clipped); 32-bit ``I`` rescaled the
    same way when its values fit 0-65535, else stretched min-max; float ``F`` taken as 0-1, 0-255
    or 0-65535 by its range, else stretched min-max; greyscale, bilevel and palette to RGB.
    Multi-frame files (GIF, multi-page TIFF) give their first frame.

    Pillow's decompression-bomb guard stays as configured (never changed here). An image above the
    pixel limit (`histovl._inputs.max_image_pixels`: ``$HISTOVL_MAX_PIXELS``, else Pillow's
    ``MAX_IMAGE_PIXELS``) is refused from its header, before decoding: Pillow itself only warns
    between one and two times its limit.

    Raises:
        ImageReadError: The file is missing, empty, truncated, corrupt, not an image, or larger
            than the pixel limit. The message names the file and the reason.

    Example:
        >>> img = read_rgb("tile.png")  # doctest: +SKIP
        >>> img.mode
        'RGB'
    """
    try:
        with warnings.catch_warnings():  # the size is checked below, with a message that names the file
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except Image.DecompressionBombError as exc:
        raise ImageReadError(path, _bomb_reason(exc)) from None
    except UnidentifiedImageError:
        raise ImageReadError(path, _unidentified_reason(path)) from None
    except _DECODE_ERRORS as exc:
        raise ImageReadError(path, f"cannot open: {exc}") from None
    too_big = image_size_problem(im.size)  # from the header, before a byte of pixels is decoded
    if too_big is not None:
        im.close()
        raise ImageReadError(path, too_big)
    out: Image.Image | None = None
    try:
        im.load()
        ImageOps.exif_transpose(im, in_place=True)
        out = _to_rgb(im)
        if out is im and getattr(im, "n_frames", 1) > 1:
            out = im.copy()  # detach from the still-open multi-frame file
        return out
    except Image.DecompressionBombError as exc:
        raise ImageReadError(path, _bomb_reason(exc)) from None
    except _DECODE_ERRORS as exc:
        raise ImageReadError(path, f"truncated or corrupt image data ({type(exc).__name__}: {exc})") from None
    finally:
        if out is not im:
            im.close()


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert a loaded image to RGB; returns `im` itself when it is already plain RGB."""
    mode = im.mode
    if mode in _TRANSPARENCY_MODES and "transparency" in im.info:
        return _composite_on_white(im.convert("RGBA"))
    if mode == "RGB":
        return im
    if mode in _ALPHA_MODES:
        return _composite_on_white(im if mode == "RGBA" else im.convert("RGBA"))
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        return Image.fromarray(_rescale_to_uint8(np.asarray(im), mode), mode="L").convert("RGB")
    return im.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def _composite_on_white(rgba: Image.Image) -> Image.Image:
    """Blend straight-alpha RGBA over white: transparent -> white, opaque -> unchanged."""
    background = Image.new("RGB", rgba.size, WHITE)
    background.paste(rgba, (0, 0), rgba.getchannel("A"))
    return background


def _rescale_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Map high-bit-depth greyscale to 0-255 by the value range the mode implies.

    A fixed scale (not per-image min-max) keeps brightness comparable across images, which is
    what a classifier needs; min-max is the fallback only when the values fit no known range.
    """
    if values.size == 0:
        return values.astype(np.uint8)
    if mode in _SIXTEEN_BIT_MODES:
        return _scale(values, 65535.0)
    finite = values[np.isfinite(values)] if mode == "F" else values
    if finite.size == 0:
        return np.zeros(values.shape, dtype=np.uint8)
    lo, hi = float(finite.min()), float(finite.max())
    if mode == "I":
        if lo >= 0 and hi <= 65535:
            return _scale(values, 65535.0)
    elif lo >= 0 and hi <= 1.0:
        return _scale(values, 1.0)
    elif lo >= 0 and hi <= 255.0:
        return _scale(values, 255.0)
    elif lo >= 0 and hi <= 65535.0:
        return _scale(values, 65535.0)
    span = hi - lo
    if span == 0:
        return np.zeros(values.shape, dtype=np.uint8)
    return _scale(np.nan_to_num(values.astype(np.float64) - lo, nan=0.0, posinf=span, neginf=0.0), span)


def _scale(values: np.ndarray, full_scale: float) -> np.ndarray:
    scaled = np.rint(values.astype(np.float64) * (255.0 / full_scale))
    return np.clip(np.nan_to_num(scaled, nan=0.0), 0, 255).astype(np.uint8)


def _bomb_reason(exc: BaseException) -> str:
    return (
        f"{exc} Pillow's decompression-bomb guard refused it. A whole-slide image should be tiled "
        "(`histovl slides tile`); if you trust this file, raise PIL.Image.MAX_IMAGE_PIXELS in your "
        "own script."
    )


def _unidentified_reason(path: str | os.PathLike[str]) -> str:
    try:
        size = os.path.getsize(path)
    except OSError:
        size = -1
    if size == 0:
        return "zero-byte (empty) file"
    return "not a recognised image format (or the header is corrupt)"
