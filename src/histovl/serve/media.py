"""Routes that send bytes: allowed files, thumbnails and large views, DeepZoom tiles, overlays and
tile crops. Every one looks its target up by id (`histovl.serve.files`, the catalog) and answers
404 for anything else, before touching the file system."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import Response
from PIL import Image

from histovl.options import RunOptions
from histovl.serve.cache import ByteCache
from histovl.serve.catalog import Catalog
from histovl.serve.config import THUMBNAIL_SIZES, ServeConfig
from histovl.serve.deepzoom import SlideUnavailableError, encode_jpeg
from histovl.serve.files import FileEntry
from histovl.serve.overlay import render_overlay
from histovl.serve.slides import SlideEntry

#: JPEG quality of thumbnails (<= 256 px): a page of 200 weighs about a third less than at 80.
THUMBNAIL_QUALITY = 70
#: Longest side of an image's large view.
LARGE_VIEW = 1600
IMMUTABLE = {"cache-control": "private, max-age=3600"}


@dataclass
class ServeState:
    """What every route reads: the catalog found at start, the settings and the byte cache."""

    catalog: Catalog
    config: ServeConfig
    options: RunOptions
    cache: ByteCache

    def file(self, file_id: str) -> FileEntry:
        entry = self.catalog.registry.get(file_id)
        if entry is None:
            raise HTTPException(404)
        return entry

    def slide(self, slide_id: str) -> SlideEntry:
        entry = self.catalog.slides.get(slide_id)
        if entry is None:
            raise HTTPException(404)
        return entry


def not_found() -> HTTPException:
    return HTTPException(404)


def render_image(entry: FileEntry, size: int, quality: int) -> bytes:
    """An allowed image decoded and re-encoded as JPEG, at most `size` pixels a side."""
    with Image.open(entry.path) as opened:
        if opened.format == "JPEG":
            opened.draft("RGB", (size, size))  # decode at a reduced scale: much faster
        opened.thumbnail((size, size))
        image: Image.Image = opened
        if image.mode in ("RGBA", "LA", "P"):
            rgba = image.convert("RGBA")
            image = Image.new("RGB", rgba.size, (255, 255, 255))
            image.paste(rgba, mask=rgba.getchannel("A"))
        return encode_jpeg(image, quality)


def media_router(state: ServeState) -> APIRouter:
    router = APIRouter()

    @router.get("/files/{file_id}")
    def send_file(file_id: str) -> Response:
        entry = state.file(file_id)
        if entry.raw_type is None:
            raise not_found()
        return Response(entry.path.read_bytes(), media_type=entry.raw_type, headers=IMMUTABLE)

    @router.get("/thumb/{file_id}")
    def thumbnail(file_id: str, size: int = Query(160, ge=1, le=4096)) -> Response:
        return _image(state, file_id, snap_thumbnail_size(size))

    @router.get("/view/{file_id}")
    def large_view(file_id: str) -> Response:
        return _image(state, file_id, LARGE_VIEW)

    _slide_routes(router, state)
    return router


def image_bytes(state: ServeState, file_id: str, size: int) -> bytes | None:
    """An allowed image as JPEG at `size` (through the cache); None when it is not an allowed
    image or does not decode."""
    entry = state.catalog.registry.get(file_id)
    if entry is None or not entry.is_image:
        return None
    try:
        quality = min(state.config.jpeg_quality, THUMBNAIL_QUALITY) if size <= 256 else state.config.jpeg_quality
        return state.cache.get_or_make(("img", file_id, size), lambda: render_image(entry, size, quality))
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def snap_thumbnail_size(size: int) -> int:
    return min(THUMBNAIL_SIZES, key=lambda s: abs(s - size))


def _image(state: ServeState, file_id: str, size: int) -> Response:
    data = image_bytes(state, file_id, size)
    if data is None:
        raise not_found()
    return Response(data, media_type="image/jpeg", headers=IMMUTABLE)


def _slide_routes(router: APIRouter, state: ServeState) -> None:
    @router.get("/dz/{slide_id}.dzi")
    def dzi(slide_id: str) -> Response:
        source = _deepzoom(state, state.slide(slide_id))
        return Response(source.dzi(), media_type="application/xml")

    @router.get("/dz/{slide_id}_files/{level:int}/{col:int}_{row:int}.jpeg")
    def dz_tile(slide_id: str, level: int, col: int, row: int) -> Response:
        entry = state.slide(slide_id)
        source = _deepzoom(state, entry)
        data = state.cache.get_or_make(("dz", slide_id, level, col, row), lambda: source.tile(level, col, row) or b"")
        if not data:
            raise not_found()
        return Response(data, media_type="image/jpeg", headers=IMMUTABLE)

    @router.get("/slides/{slide_id}/overlay.png")
    def overlay(slide_id: str, key: str = Query(..., max_length=300)) -> Response:
        entry = state.slide(slide_id)
        data = state.cache.get_or_make(("overlay", slide_id, key), lambda: render_overlay(entry, key) or b"")
        if not data:
            raise not_found()
        return Response(data, media_type="image/png", headers=IMMUTABLE)

    @router.get("/slides/{slide_id}/tile/{index:int}.jpg")
    def tile_crop(slide_id: str, index: int) -> Response:
        entry = state.slide(slide_id)
        if entry.tiles is None or not 0 <= index < len(entry.tiles):
            raise not_found()
        own = entry.tile_images[index] if index < len(entry.tile_images) else None
        data = image_bytes(state, own, 256) if own else None  # the tile as it was scored
        if data is None:
            box = entry.tile_info(index)
            source = _deepzoom(state, entry)
            data = state.cache.get_or_make(("crop", slide_id, index),
                                           lambda: source.region(box["x"], box["y"], box["width"], box["height"]))
        return Response(data, media_type="image/jpeg", headers=IMMUTABLE)


def _deepzoom(state: ServeState, entry: SlideEntry) -> Any:
    try:
        return entry.deepzoom(state.config.jpeg_quality)
    except SlideUnavailableError as err:
        raise HTTPException(404, str(err)) from None
