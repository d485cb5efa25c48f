"""`build_app`: the FastAPI application over what `histovl.serve.catalog.scan` found.

Pages are Jinja2 templates (``templates/``) with small plain scripts (``static/``); no build step.
The app has GET routes only, and `histovl.serve.security.SecurityMiddleware` wraps it all.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from histovl import __version__
from histovl.options import RunOptions
from histovl.serve.api import api_router, run_or_404, search, slide_meta
from histovl.serve.cache import ByteCache
from histovl.serve.catalog import check_roots, scan
from histovl.serve.config import ServeConfig
from histovl.serve.media import ServeState, media_router
from histovl.serve.security import SecurityMiddleware

HERE = Path(__file__).resolve().parent


def build_app(
    roots: list[str | os.PathLike[str]] | str | os.PathLike[str],
    config: ServeConfig | None = None,
    options: RunOptions | None = None,
) -> FastAPI:
    """Scan `roots` once and return the read-only app (no server started: tests and embedding).

    Example:
        >>> from fastapi.testclient import TestClient  # doctest: +SKIP
        >>> client = TestClient(build_app(["runs"]), base_url="http://127.0.0.1")  # doctest: +SKIP
        >>> client.get("/api/runs").json()[0]["command"]  # doctest: +SKIP
        'histovl zeroshot'
    """
    cfg = config or ServeConfig()
    paths = check_roots([roots] if isinstance(roots, str | os.PathLike) else list(roots))
    catalog = scan(paths, roots_only=cfg.roots_only)
    state = ServeState(catalog, cfg, options or RunOptions(), ByteCache(cfg.tile_cache_mb * 1024 * 1024))
    app = FastAPI(title="histovl serve", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.serve = state
    app.include_router(api_router(state))
    app.include_router(media_router(state))
    app.include_router(_pages(state, Jinja2Templates(directory=str(HERE / "templates"))))
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    @app.exception_handler(RequestValidationError)
    async def invalid_is_not_found(request: Request, exc: RequestValidationError) -> Response:
        return PlainTextResponse("not found", status_code=404)  # a malformed id or number is just not there

    app.add_middleware(SecurityMiddleware, config=cfg)
    return app


def _pages(state: ServeState, templates: Jinja2Templates) -> Any:
    from fastapi import APIRouter

    router = APIRouter()
    cat = state.catalog

    def page(request: Request, name: str, **context: Any) -> HTMLResponse:
        counts = {"runs": len(cat.runs), "slides": len(cat.slides), "indexes": len(cat.indexes), "boards": len(cat.boards)}
        return templates.TemplateResponse(request, name, {"counts": counts, "version": __version__, **context})

    @router.get("/")
    def home() -> RedirectResponse:
        return RedirectResponse("/runs")

    @router.get("/runs", response_class=HTMLResponse)
    def runs_page(request: Request) -> HTMLResponse:
        rows = sorted((r.row() for r in cat.runs.values()), key=lambda r: (r["date"] or "", r["name"]), reverse=True)
        return page(request, "runs.html", rows=rows, roots=[str(r) for r in cat.roots])

    @router.get("/runs/{run_id}", response_class=HTMLResponse)
    def run_page(request: Request, run_id: str) -> HTMLResponse:
        entry = run_or_404(state, run_id)
        confusion = None if entry.error else entry.confusion()
        slide = next((s for s in cat.slides.values() if s.run_id == run_id), None)
        return page(request, "run.html", run=entry, row=entry.row(), metrics=[] if entry.error else entry.summary_metrics(),
                    confusion=confusion, slide=slide, has_items="predictions.csv" in entry.files,
                    page_size=state.config.page_size, low_margin=state.config.low_margin)

    @router.get("/runs/{run_id}/report/{rel:path}")
    def run_file(run_id: str, rel: str) -> Response:
        entry = run_or_404(state, run_id)
        file_id = entry.files.get(rel)  # a key of the run's own file list, never a path
        if file_id is None:
            raise HTTPException(404)
        return RedirectResponse(f"/files/{file_id}") if rel != "report.html" else _report(state, file_id)

    @router.get("/slides", response_class=HTMLResponse)
    def slides_page(request: Request) -> HTMLResponse:
        return page(request, "slides.html", rows=[s.row() for s in cat.slides.values()])

    @router.get("/slides/{slide_id}", response_class=HTMLResponse)
    def slide_page(request: Request, slide_id: str) -> HTMLResponse:
        return page(request, "slide.html", slide=slide_meta(state, slide_id))

    @router.get("/search", response_class=HTMLResponse)
    def search_page(request: Request, index: str | None = None, text: str | None = None,
                    image: str | None = None, k: int = 24) -> HTMLResponse:
        indexes = [i.row() for i in cat.indexes.values()]
        chosen = index or (indexes[0]["id"] if indexes else None)
        result = search(state, chosen, text, image, k) if chosen and (text or image) else None
        return page(request, "search.html", indexes=indexes, chosen=chosen, text=text or "", image=image,
                    k=k, result=result)

    @router.get("/leaderboards", response_class=HTMLResponse)
    def boards_page(request: Request) -> HTMLResponse:
        return page(request, "leaderboards.html", boards=list(cat.boards.values()))

    return router


def _report(state: ServeState, file_id: str) -> Response:
    """A run's report.html, whose relative links (figures/, thumbnails/) resolve under the
    run's report route by the base URL the browser is already on."""
    entry = state.file(file_id)
    return HTMLResponse(entry.path.read_text(encoding="utf-8", errors="replace"))
