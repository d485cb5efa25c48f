"""The JSON routes the pages' scripts call (and tests): runs, a run's images, slide metadata and
tile scores, search, leaderboards. Read-only; unknown ids are 404."""

from __future__ import annotations

import base64
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Query

from histovl.errors import HistovlError
from histovl.serve.media import ServeState, image_bytes, not_found, snap_thumbnail_size
from histovl.serve.overlay import legend, overlay_geometry
from histovl.serve.runs import ItemQuery, RunEntry, query_items

MAX_K = 200


def run_or_404(state: ServeState, run_id: str) -> RunEntry:
    entry = state.catalog.runs.get(run_id)
    if entry is None:
        raise not_found()
    return entry


def slide_meta(state: ServeState, slide_id: str) -> dict[str, Any]:
    """What the viewer needs: overlays, their geometry, the legend, the display scale."""
    entry = state.slide(slide_id)
    scale, error, pixels = 1.0, entry.error, None
    try:
        if error is None:
            source = entry.deepzoom(state.config.jpeg_quality)
            scale, pixels = source.scale, source.kind
    except HistovlError as err:
        error = str(err)
    return {**entry.row(), "error": error, "overlays": entry.overlays(), "geometry": overlay_geometry(entry),
            "legend": legend(entry), "scale": scale, "pixels": pixels, "dzi": f"/dz/{entry.id}.dzi",
            "has_neighbours": entry.embeddings is not None}


def search(state: ServeState, index_id: str, text: str | None, image_id: str | None, k: int) -> dict[str, Any]:
    """Run one search; a problem with the index or model becomes ``error``, not a 500."""
    index = state.catalog.indexes.get(index_id)
    if index is None:
        raise not_found()
    image: Path | None = None
    if image_id:
        entry = state.catalog.registry.get(image_id)
        if entry is None or not entry.is_image:
            raise not_found()
        image = entry.path
    query_text = None if image is not None else ((text or "").strip() or None)
    if query_text is None and image is None:
        return {"index": index.row(), "results": [], "error": None}
    try:
        results = index.search(state.options, text=query_text, image=image, k=max(1, min(k, MAX_K)))
    except (HistovlError, ValueError, OSError) as err:
        return {"index": index.row(), "results": [], "error": str(err)}
    return {"index": index.row(), "results": results, "error": None}


def add_thumbnails(state: ServeState, items: list[dict[str, Any]], size: int) -> None:
    """Each item's thumbnail as a ``data:`` URI (``thumb``), made in parallel: one response
    carries a page of 200 thumbnails instead of 200 requests (docs/serve.md, "Speed")."""
    ids = [item["image"] for item in items]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        images = list(pool.map(lambda i: image_bytes(state, i, size) if i else None, ids))
    for item, data in zip(items, images, strict=True):
        item["thumb"] = "data:image/jpeg;base64," + base64.b64encode(data).decode() if data else None


def api_router(state: ServeState) -> APIRouter:
    router = APIRouter(prefix="/api")

    @router.get("/runs")
    def runs() -> list[dict[str, Any]]:
        return [r.row() for r in state.catalog.runs.values()]

    @router.get("/runs/{run_id}/items")
    def items(run_id: str, true: str | None = None, pred: str | None = None, wrong: bool = False,
              max_margin: float | None = Query(None, ge=0, le=1), sort: str = "confidence", order: str = "desc",
              offset: int = Query(0, ge=0), limit: int = Query(200, ge=1, le=1000),
              thumbs: int = Query(0, ge=0, le=512)) -> dict[str, Any]:
        entry = run_or_404(state, run_id)
        if entry.error:
            raise HTTPException(404, entry.error)
        query = ItemQuery(true, pred, wrong, max_margin, sort, order != "asc", offset, limit)
        found = query_items(entry, query)
        if thumbs:
            add_thumbnails(state, found["items"], snap_thumbnail_size(thumbs))
        return found

    @router.get("/runs/{run_id}/confusion")
    def confusion(run_id: str) -> dict[str, Any]:
        entry = run_or_404(state, run_id)
        found = None if entry.error else entry.confusion()
        return {"classes": found[0], "matrix": found[1]} if found else {"classes": [], "matrix": []}

    @router.get("/slides")
    def slides() -> list[dict[str, Any]]:
        return [s.row() for s in state.catalog.slides.values()]

    @router.get("/slides/{slide_id}")
    def slide(slide_id: str) -> dict[str, Any]:
        return slide_meta(state, slide_id)

    @router.get("/slides/{slide_id}/at")
    def tile_at(slide_id: str, x: float, y: float) -> dict[str, Any]:
        entry = state.slide(slide_id)
        row = entry.tile_at(x, y)
        if row is None:
            return {"tile": None, "neighbours": []}
        return {"tile": entry.tile_info(row), "neighbours": entry.neighbours(row)}

    @router.get("/indexes")
    def indexes() -> list[dict[str, Any]]:
        return [i.row() for i in state.catalog.indexes.values()]

    @router.get("/search")
    def search_route(index: str, text: str | None = Query(None, max_length=500), image: str | None = None,
                     k: int = Query(24, ge=1, le=MAX_K)) -> dict[str, Any]:
        return search(state, index, text, image, k)

    @router.get("/leaderboards")
    def leaderboards() -> list[dict[str, Any]]:
        return [{"id": b.id, "name": b.name, "columns": b.columns, "rows": b.rows, "error": b.error}
                for b in state.catalog.boards.values()]

    return router
