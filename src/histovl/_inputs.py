"""Input limits and readers that name the file when it is not what it should be.

* `read_text_file`: a UTF-8 text file (a manifest, a prompt set), refused with the file's name,
  the line and a hint when it is in another encoding (a Latin-1 export from a spreadsheet) or
  larger than a limit (docs/reliability.md, "manifest not UTF-8", "huge prompt file").
* `max_image_pixels` / `check_image_size`: the pixel limit every image reader enforces on open,
  before decoding (docs/reliability.md, "huge image / decompression bomb").

Imports nothing from histovl but `histovl.errors`.
"""

from __future__ import annotations

import os
from pathlib import Path

from histovl.errors import HistovlError

#: Default pixel limit: Pillow's own default `MAX_IMAGE_PIXELS` (89,478,485 = 0.25 GiB of RGB).
DEFAULT_MAX_PIXELS = 89_478_485
PIXELS_ENV = "HISTOVL_MAX_PIXELS"


class InputFileError(HistovlError, ValueError):
    """A text input is in the wrong encoding or too large."""


def read_text_file(path: str | os.PathLike[str], *, what: str, max_bytes: int | None = None) -> str:
    """The file's text, decoded as UTF-8 (a leading BOM is dropped).

    Raises:
        FileNotFoundError: the file does not exist (the message names it).
        InputFileError: the file is larger than `max_bytes`, or not UTF-8 (line and byte named).
    """
    p = Path(path)
    if max_bytes is not None:
        size = p.stat().st_size
        if size > max_bytes:
            raise InputFileError(
                f"{what} {p} is {size / 2**20:.1f} MiB; histovl refuses {what}s over {max_bytes / 2**20:.0f} MiB "
                "(a hand-written file is a few KB: is this the right file?)"
            )
    data = p.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputFileError(_encoding_message(p, data, err, what)) from None


def _encoding_message(path: Path, data: bytes, err: UnicodeDecodeError, what: str) -> str:
    line = data.count(b"\n", 0, err.start) + 1
    column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
    byte = data[err.start : err.start + 1].hex()
    try:
        data.decode("cp1252")
        guess = "it looks like Latin-1/Windows-1252 (e.g. a spreadsheet export)"
    except UnicodeDecodeError:
        guess = "its encoding is not UTF-8"
    return (
        f"{what} {path} is not UTF-8: byte 0x{byte} at line {line}, column {column}; {guess}. "
        "Save it as UTF-8 (in Python: open(path, encoding='latin-1').read() then write it with encoding='utf-8')"
    )


def max_image_pixels() -> int | None:
    """The pixel limit for one decoded image: ``$HISTOVL_MAX_PIXELS`` (0 or ``none``: no limit),
    else Pillow's ``Image.MAX_IMAGE_PIXELS`` as it is now (raised by
    `histovl.slides.allow_large_images`), else `DEFAULT_MAX_PIXELS`."""
    text = os.environ.get(PIXELS_ENV, "").strip().lower()
    if text:
        if text in ("0", "none", "off"):
            return None
        try:
            return int(float(text))
        except ValueError:
            raise InputFileError(f"{PIXELS_ENV}={text!r} is not a number of pixels (or 0/none for no limit)") from None
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    return int(limit) if limit is not None else None


def image_size_problem(size: tuple[int, int], limit: int | None = None) -> str | None:
    """Why an image of `size` (width, height) is refused, or None when it is within the limit."""
    limit = max_image_pixels() if limit is None else limit
    w, h = int(size[0]), int(size[1])
    if limit is None or w * h <= limit:
        return None
    return (
        f"{w}x{h} = {w * h / 1e6:.0f} Mpx is above the limit of {limit / 1e6:.0f} Mpx for one image "
        f"(it would take {w * h * 3 / 2**30:.1f} GiB decoded); tile a whole-slide image with `histovl "
        f"slides tile`, or raise the limit with {PIXELS_ENV}=<pixels> if you trust the file"
    )
