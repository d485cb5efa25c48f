"""What produced a tiling folder: the record that lets `tile_slide` reuse or resume its work.

A tiling folder is *committed* when ``tiling.json`` is written, atomically and last, with a
``source`` record: the slide's identity (resolved path, size, mtime_ns and a fingerprint of its
first and last MiB; for a tile folder, a hash of its listing), every `TileSpec` field, the
``slide_mpp`` override, whether tile images were saved, and `TILING_FORMAT_VERSION`. A later call
whose record is equal, with ``tiles.csv``, the figures and every listed tile file present, returns
the committed tiling without opening the slide.

While tile images are being written, ``tiling.partial.json`` holds the same record plus the tiles
whose files are white substitutes (failed reads). Tile files found next to a matching partial
record after an interruption therefore belong to this very request and are not read again; files
next to anything else are deleted before tiling starts, so a folder never mixes two tilings.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from histovl._io import atomic_write_json
from histovl.slides.reader import IMAGE_EXTENSIONS
from histovl.slides.tiling import TileSpec

#: Bump when the tiling outputs change for the same slide and parameters (old folders re-tile).
TILING_FORMAT_VERSION = 1
RECORD_FILE = "tiling.json"
PARTIAL_FILE = "tiling.partial.json"
MASK_FILE = "tissue_mask.png"
#: Bytes hashed at each end of a slide file for its fingerprint (cheap even for 2 GB slides).
FINGERPRINT_BYTES = 1 << 20
TILE_FILE_RE = re.compile(r"tile_x\d+_y\d+\.png")
#: A tile's temporary file while it is written atomically (`histovl._io.atomic_path`): a process
#: killed mid-write leaves one behind.
TILE_TEMP_RE = re.compile(r"\.tile_x\d+_y\d+\.png\..+")
#: Temporary names of the tiling's own outputs (`histovl._io.atomic_path`: ``.<name>.<random><suffix>``).
OUTPUT_TEMP_RE = re.compile(
    r"\.(" + "|".join(re.escape(n) for n in ("tiles.csv", "thumbnail.png", "tissue_map.png", MASK_FILE, RECORD_FILE, PARTIAL_FILE))
    + r")\..+"
)


def slide_identity(slide: str | os.PathLike[str]) -> dict[str, Any] | None:
    """JSON-ready identity of a slide file or tile folder, or None when it is not on disk.

    A file is identified by its resolved path, size, mtime_ns and the sha256 of its first and last
    `FINGERPRINT_BYTES`; a folder of tiles by its resolved path and a hash of its image files'
    names, sizes and mtime_ns. Any rewrite, touch or move therefore changes the identity.
    """
    try:
        path = Path(slide).resolve(strict=True)
        st = path.stat()
    except OSError:
        return None
    if path.is_dir():
        h = hashlib.sha256()
        for entry in sorted(path.iterdir()):
            if entry.suffix.lower() in IMAGE_EXTENSIONS and entry.is_file():
                est = entry.stat()
                h.update(f"{entry.name}\0{est.st_size}\0{est.st_mtime_ns}\n".encode())
        return {"kind": "folder", "path": os.fspath(path), "listing_sha256": h.hexdigest()}
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        h.update(fh.read(FINGERPRINT_BYTES))
        if st.st_size > FINGERPRINT_BYTES:
            fh.seek(max(FINGERPRINT_BYTES, st.st_size - FINGERPRINT_BYTES))
            h.update(fh.read(FINGERPRINT_BYTES))
    return {
        "kind": "file",
        "path": os.fspath(path),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "head_tail_sha256": h.hexdigest(),
    }


def tiling_source(
    slide: str | os.PathLike[str], spec: TileSpec, *, slide_mpp: float | None, save_tiles: bool
) -> dict[str, Any] | None:
    """The record of one tiling request, in its JSON round-tripped form (so it compares equal to
    what a previous run wrote); None when the slide has no identity on disk."""
    identity = slide_identity(slide)
    if identity is None:
        return None
    record = {
        "format": TILING_FORMAT_VERSION,
        "slide": identity,
        "spec": asdict(spec),
        "slide_mpp": slide_mpp,
        "save_tiles": save_tiles,
    }
    loaded: dict[str, Any] = json.loads(json.dumps(record))
    return loaded


def read_record(path: Path) -> dict[str, Any] | None:
    """A JSON record, or None when it is missing or unreadable (then nothing is trusted)."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def write_partial(out: Path, source: dict[str, Any], substituted: set[tuple[int, int]]) -> None:
    """Mark `out` as holding tile files of `source`; `substituted` tiles are white placeholders."""
    atomic_write_json(out / PARTIAL_FILE, {"source": source, "substituted": sorted([x, y] for x, y in substituted)})


def reusable_tile_files(out: Path, source: dict[str, Any] | None, *, force: bool) -> set[tuple[int, int]] | None:
    """Which tile files in ``out/tiles`` may be kept for `source`.

    Returns the (x, y) of tiles whose files are substitutes and must be read again, when the
    files on disk are known to belong to `source` (a matching committed or partial record);
    otherwise None, and the caller deletes them.
    """
    if source is None or force:
        return None
    committed = read_record(out / RECORD_FILE)
    if committed is not None and committed.get("source") == source:
        return {(int(b["x"]), int(b["y"])) for b in committed.get("substituted_tiles", [])}
    partial = read_record(out / PARTIAL_FILE)
    if partial is not None and partial.get("source") == source:
        return {(int(x), int(y)) for x, y in partial.get("substituted", [])}
    return None


def remove_tile_files(tile_dir: Path) -> None:
    """Delete the tile images of an unknown or outdated tiling (only histovl-named files)."""
    if not tile_dir.is_dir():
        return
    for entry in tile_dir.iterdir():
        if TILE_FILE_RE.fullmatch(entry.name) and entry.is_file():
            entry.unlink()


def remove_stale_temps(out: Path) -> None:
    """Delete the temporary files a killed run left (SIGKILL runs no cleanup): of tile images in
    ``tiles/`` and of the tiling's own outputs in `out` (a kill while tiles.csv or a figure was
    being written left ``.tiles.csv.<random>.tmp`` there, which no later run removed). A tiling
    folder has one writer at a time (its partial record says whose tiles are there), so any such
    file at the start of a tiling is stale."""
    for folder, pattern in ((out / "tiles", TILE_TEMP_RE), (out, OUTPUT_TEMP_RE)):
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            if pattern.fullmatch(entry.name) and entry.is_file():
                entry.unlink(missing_ok=True)
