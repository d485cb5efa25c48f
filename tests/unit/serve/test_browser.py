"""The pages in a real browser: Playwright (Python) driving Debian's chromium (`executable_path`,
never a downloaded browser). Marker ``browser``; skipped cleanly without playwright or chromium.

``HISTOVL_UPDATE_FIGURES=1`` with the outputs of ``make demo`` in runs/demo (or
``HISTOVL_SERVE_DEMO=<folder>``) also takes the screenshots docs/serve.md and the README show,
docs/figures/serve_*.png, of those real runs.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.unit.serve.conftest import LiveServer, free_port
from tests.unit.serve.fixtures import CLASSES, LABELS, PREDICTIONS

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = os.environ.get("HISTOVL_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]
REPO = Path(__file__).resolve().parents[3]
FIGURES = REPO / "docs" / "figures"
DEMO = Path(os.environ.get("HISTOVL_SERVE_DEMO") or REPO / "runs" / "demo")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install -y chromium)")
    with sync_api.sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS, headless=True)
        except sync_api.Error as err:  # a chromium that does not start here
            pytest.skip(f"chromium does not start: {err}")
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(indexed_app) -> Iterator[LiveServer]:
    with LiveServer(indexed_app, free_port()) as live:
        yield live


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    yield context.new_page()
    context.close()


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32)


def test_runs_table_lists_the_fixture_runs(page, server):
    page.goto(server.url + "/runs")
    names = page.locator("#runs tbody tr td:first-child a").all_inner_texts()
    assert sorted(names) == ["root/runs/broken", "root/runs/folder", "root/runs/slide", "root/runs/zs"]
    assert page.locator("#runs tr.error-row").count() == 1
    page.locator("#runs thead th", has_text="date").click()  # sorting does not lose rows
    assert page.locator("#runs tbody tr").count() == 4


def test_clicking_a_confusion_cell_shows_exactly_its_images(page, server):
    page.goto(server.url + "/runs")
    page.locator("#runs a", has_text="root/runs/zs").click()
    page.wait_for_selector("#grid[data-ready='1']")
    assert page.locator("#grid figure").count() == 12
    for true, pred in [("scc", "aca"), ("aca", "norm"), ("norm", "norm")]:
        page.evaluate("document.getElementById('grid').dataset.ready = '0'")
        page.locator(f"#confusion td[data-true='{true}'][data-pred='{pred}'] button").click()
        page.wait_for_selector("#grid[data-ready='1']")
        shown = sorted(int(i) for i in page.locator("#grid figure").evaluate_all("els => els.map(e => e.dataset.index)"))
        expected = [i for i, (t, p) in enumerate(zip(LABELS, PREDICTIONS, strict=True)) if (t, p) == (true, pred)]
        assert shown == expected, (true, pred)
        count = int(page.locator(f"#confusion td[data-true='{true}'][data-pred='{pred}']").get_attribute("data-count"))
        assert count == len(expected)
    page.locator("#grid figure").first.click()  # the large view with every class score
    page.wait_for_selector("dialog#large[open] .bars")
    assert page.locator("dialog#large .bars .bar").count() == len(CLASSES)
    page.keyboard.press("Escape")


def test_slide_viewer_draws_deepzoom_tiles_and_the_heatmap_changes_pixels(page, server):
    tiles: list[str] = []
    page.on("request", lambda r: tiles.append(r.url) if "_files/" in r.url else None)
    page.goto(server.url + "/slides")
    page.locator("#slides a", has_text="root/runs/slide").click()
    page.wait_for_selector("#osd[data-overlay-ready='1'][data-tiles-loaded]", timeout=30000)
    page.wait_for_timeout(800)
    assert tiles and all(t.endswith(".jpeg") for t in tiles)
    viewer = page.locator("#osd")
    with_overlay = viewer.screenshot()
    assert _pixels(with_overlay).var() > 100  # not blank
    page.select_option("#overlay", "")
    page.wait_for_timeout(800)
    without = viewer.screenshot()
    diff = np.abs(_pixels(with_overlay) - _pixels(without)).mean(axis=-1)
    assert (diff > 20).mean() > 0.02, "toggling the heatmap did not change the picture"
    page.select_option("#overlay", "score:tumor")
    page.wait_for_selector("#osd[data-overlay='score:tumor'][data-overlay-ready='1']")
    box = viewer.bounding_box()
    at = page.evaluate("""() => {  // the centre of the kept tile (128, 0) on screen
        const item = window.histovlViewer.world.getItemAt(0);
        const p = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(192, 64));
        return [p.x, p.y]; }""")
    page.mouse.click(box["x"] + at[0], box["y"] + at[1])  # a click shows its tile
    page.wait_for_selector("#tile-info .bars", timeout=10000)
    assert page.locator("#tile-info .bars .bar").count() == 2
    assert "x 128, y 0" in page.locator("#tile-info h2").first.inner_text()
    assert page.locator("#tile-info .neighbours img").count() == 8


def test_a_text_search_returns_a_grid(page, server):
    page.goto(server.url + "/search")
    page.fill("input[name=text]", "an image of red tissue.")
    page.fill("input[name=k]", "6")
    page.click("#search-form button[type=submit]")
    page.wait_for_selector("#results figure")
    assert page.locator("#results figure").count() == 6
    assert page.locator("#results figure img").evaluate_all("els => els.every(e => e.complete && e.naturalWidth > 0)")


def test_documentation_screenshots_of_the_demo(browser):
    """docs/figures/serve_*.png from `make demo`'s real runs (only when asked to)."""
    if os.environ.get("HISTOVL_UPDATE_FIGURES") != "1" or not (DEMO / "slide" / "run.json").is_file():
        pytest.skip("HISTOVL_UPDATE_FIGURES=1 and runs/demo from `make demo` (with its slide) are needed")
    from histovl.serve import build_app

    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    with LiveServer(build_app([DEMO]), free_port()) as live:
        page.goto(live.url + "/runs")
        page.screenshot(path=str(FIGURES / "serve_runs.png"))
        page.locator("#runs a", has_text="lc25000").click()
        page.wait_for_selector("#grid[data-ready='1']")
        cell = page.locator("#confusion td.off:not([data-count='0']) button").first
        cell.click()
        page.wait_for_selector("#grid[data-ready='1'] figure img")
        page.wait_for_timeout(500)
        page.screenshot(path=str(FIGURES / "serve_run.png"), full_page=True)
        page.goto(live.url + "/slides")
        page.locator("#slides a").first.click()
        page.wait_for_selector("#osd[data-overlay-ready='1'][data-tiles-loaded]", timeout=30000)
        page.wait_for_timeout(1000)
        box = page.locator("#osd").bounding_box()
        page.mouse.click(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.55)
        page.wait_for_timeout(1500)
        page.screenshot(path=str(FIGURES / "serve_slide.png"))
        if page.goto(live.url + "/api/indexes").json():  # runs/demo/index, see docs/serve.md
            page.goto(live.url + "/search?text=lung+adenocarcinoma&k=12")
            page.wait_for_selector("#results figure img")
            page.wait_for_timeout(800)
            page.screenshot(path=str(FIGURES / "serve_search.png"))
    context.close()
