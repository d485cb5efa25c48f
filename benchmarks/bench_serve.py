"""`histovl serve` speed on loopback: DeepZoom tiles, a page of 200 thumbnails, memory.

The server runs in its own process (`histovl.serve.serve` on 127.0.0.1, as a user starts it) over
a temporary root holding a zero-shot-style run of 200 LC25000 tiles, plus ../shared/data/slides
(the CMU-1-Small-Region slide). Clients are threads of this process with one keep-alive
connection each; every loop is bounded by a request count. Targets (docs/serve.md, issue 16):

- warm DeepZoom tile p95 <= 50 ms and >= 100 tiles/s with 8 concurrent clients on the CMU slide
  ("warm": every tile was asked for once, so the server's tile cache holds it; the same figures
  with the cache off, every tile read from the slide and JPEG-encoded, are printed beside);
- a page of 200 thumbnails loads in under 1 s (headless chromium through Playwright when both are
  here: navigation to the last image decoded, a fresh browser context each time; else the same
  requests over 6 parallel connections, as a browser makes them);
- memory (server RSS) flat over 5,000 tile requests.

Usage:
    python benchmarks/bench_serve.py [--requests 2000] [--clients 8]
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SLIDE = "CMU-1-Small-Region.svs"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_root(base: Path, n: int = 200) -> Path:
    """A run folder whose predictions.csv names `n` LC25000 tiles (absolute paths, outside the root)."""
    found = sorted((SHARED / "lc25000-lung").rglob("*.jpeg"))
    images = found[:: max(1, len(found) // n)][:n]
    classes = ["lung_aca", "lung_n", "lung_scc"]
    run = base / "root" / "lc25000"
    run.mkdir(parents=True)
    rows = ["path,label,prediction," + ",".join(f"score:{c}" for c in classes)]
    rng = random.Random(0)
    for path in images:
        label = path.parent.name
        scores = [rng.random() for _ in classes]
        total = sum(scores)
        pred = classes[max(range(3), key=lambda i: scores[i])]
        rows.append(f"{path},{label},{pred}," + ",".join(f"{s / total:.4f}" for s in scores))
    (run / "predictions.csv").write_text("\n".join(rows) + "\n")
    (run / "metrics.json").write_text(json.dumps({"n": len(images), "class_names": classes}))
    (run / "run.json").write_text(json.dumps({"command": "histovl zeroshot", "config": {}, "time_utc": "2026-01-01T00:00:00+00:00"}))
    return base / "root"


class Server:
    """`histovl.serve.serve` in a child process on a free loopback port."""

    def __init__(self, roots: list[Path], **config: object) -> None:
        self.port = free_port()
        code = ("import sys, json; from histovl.serve import serve; "
                f"serve(json.loads(sys.argv[1]), port={self.port}, **json.loads(sys.argv[2]))")
        self.proc = subprocess.Popen([sys.executable, "-c", code, json.dumps([str(r) for r in roots]), json.dumps(config)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if get(self.port, "/api/runs")[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("the server did not start")

    def rss_mb(self) -> float:
        text = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", text).group(1)) / 1024  # type: ignore[union-attr]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


def get(port: int, path: str, conn: http.client.HTTPConnection | None = None) -> tuple[int, bytes]:
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", path)
    res = conn.getresponse()
    body = res.read()
    if own:
        conn.close()
    return res.status, body


def tile_urls(port: int) -> list[str]:
    slides = json.loads(get(port, "/api/slides")[1])
    slide = next(s for s in slides if s["name"].endswith(SLIDE))
    dzi = get(port, f"/dz/{slide['id']}.dzi")[1].decode()
    width, height = (int(re.search(rf'{k}="(\d+)"', dzi).group(1)) for k in ("Width", "Height"))  # type: ignore[union-attr]
    urls, level = [], math.ceil(math.log2(max(width, height)))  # the DeepZoom levels: full size down to 1 px
    w, h = width, height
    while level >= 0:
        cols, rows = -(-w // 254), -(-h // 254)
        urls += [f"/dz/{slide['id']}_files/{level}/{c}_{r}.jpeg" for c in range(cols) for r in range(rows)]
        w, h, level = max(1, -(-w // 2)), max(1, -(-h // 2)), level - 1
    return urls


def hammer(port: int, urls: list[str], clients: int, total: int) -> tuple[list[float], float]:
    """`total` requests of random `urls` from `clients` threads; latencies (s) and wall time."""
    per = total // clients
    latencies: list[float] = []
    lock = threading.Lock()

    def client(seed: int) -> None:
        rng, conn, mine = random.Random(seed), http.client.HTTPConnection("127.0.0.1", port, timeout=30), []
        for _ in range(per):
            start = time.perf_counter()
            status, _ = get(port, rng.choice(urls), conn)
            mine.append(time.perf_counter() - start)
            assert status == 200, status
        conn.close()
        with lock:
            latencies.extend(mine)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return latencies, time.perf_counter() - start


def report_tiles(name: str, latencies: list[float], wall: float) -> None:
    q = statistics.quantiles(latencies, n=100)
    print(f"{name:44s} p50 {1000 * q[49]:6.1f} ms  p95 {1000 * q[94]:6.1f} ms  {len(latencies) / wall:7.1f} tiles/s  (n={len(latencies)})")


def thumbnails_page(port: int, run_id: str, repeats: int = 4) -> list[tuple[float, float]]:
    """(in-page ms from navigation start to the 200th thumbnail decoded, as run.js records it;
    wall s seen by this process), in a fresh browser context each time."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return []
    if not Path(CHROMIUM).is_file():
        return []
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"]
    times = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=args)
        for _ in range(repeats):
            context = browser.new_context(viewport={"width": 1600, "height": 1200})
            page = context.new_page()
            start = time.perf_counter()
            page.goto(f"http://127.0.0.1:{port}/runs/{run_id}")
            page.wait_for_selector("#grid[data-images-ms]", timeout=60000)
            wall = time.perf_counter() - start
            assert page.locator("#grid img").count() == 200
            times.append((float(page.locator("#grid").get_attribute("data-images-ms") or "nan"), wall))
            context.close()
        browser.close()
    return times


def thumbnails_http(port: int, run_id: str) -> tuple[float, float]:
    """Seconds for the page's own requests without a browser: the page and one items request
    carrying the 200 thumbnails (what run.js asks for), and, for comparison, 200 separate
    ``/thumb`` requests over 6 parallel connections (as a browser makes them for <img> tags)."""
    start = time.perf_counter()
    get(port, f"/runs/{run_id}")
    items = json.loads(get(port, f"/api/runs/{run_id}/items?limit=200&thumbs=160")[1])["items"]
    assert len(items) == 200 and all(i["thumb"] for i in items)
    inline = time.perf_counter() - start
    start = time.perf_counter()
    with ThreadPoolExecutor(6) as pool:
        statuses = list(pool.map(lambda i: get(port, f"/thumb/{i['image']}?size=160")[0], items))
    assert statuses.count(200) == 200, statuses[:5]
    return inline, time.perf_counter() - start


def memory(server: Server, urls: list[str], total: int = 5000, step: int = 1000) -> list[float]:
    rss = [server.rss_mb()]
    for _ in range(total // step):
        hammer(server.port, urls, 8, step)
        rss.append(server.rss_mb())
    return rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="tile requests per measurement")
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    if not (SHARED / "slides" / SLIDE).is_file() or not (SHARED / "lc25000-lung").is_dir():
        sys.exit(f"needs {SHARED}/slides/{SLIDE} and {SHARED}/lc25000-lung")
    print(f"cores: {os.cpu_count()}; server: one uvicorn process on 127.0.0.1; clients: threads of this process")
    with tempfile.TemporaryDirectory() as tmp:
        root = make_root(Path(tmp))
        for label, config in (("tile cache on (default)", {}), ("tile cache off", {"tile_cache_mb": 0})):
            server = Server([root, SHARED / "slides"], **config)
            try:
                urls = tile_urls(server.port)
                first = [0.0] * len(urls)
                for i, url in enumerate(urls):  # every tile once: cold
                    start = time.perf_counter()
                    get(server.port, url)
                    first[i] = time.perf_counter() - start
                print(f"[{label}] {len(urls)} tiles in the CMU pyramid; first request of each: median "
                      f"{1000 * statistics.median(first):.1f} ms, max {1000 * max(first):.1f} ms")
                report_tiles(f"[{label}] warm, 1 client", *hammer(server.port, urls, 1, args.requests // 4))
                report_tiles(f"[{label}] warm, {args.clients} clients", *hammer(server.port, urls, args.clients, args.requests))
                rss = memory(server, urls)
                print(f"[{label}] server RSS over 5,000 tile requests (MB, every 1,000): " + ", ".join(f"{r:.0f}" for r in rss))
                if not config:
                    run_id = json.loads(get(server.port, "/api/runs")[1])[0]["id"]
                    cold = thumbnails_http(server.port, run_id)
                    warm = thumbnails_http(server.port, run_id)
                    print(f"page of 200 thumbnails over HTTP, inline in the items response: cold {cold[0]:.2f} s, warm {warm[0]:.2f} s; "
                          f"as 200 /thumb requests on 6 connections (warm): {cold[1]:.2f} s, {warm[1]:.2f} s")
                    server.stop()
                    server = Server([root, SHARED / "slides"])  # a fresh server: its first page is cold
                    run_id = json.loads(get(server.port, "/api/runs")[1])[0]["id"]
                    times = thumbnails_page(server.port, run_id)
                    if times:
                        print("page of 200 thumbnails in chromium, navigation start to the 200th image decoded "
                              f"(in-page / wall seen by the driver): first, server cold, {times[0][0] / 1000:.2f} / {times[0][1]:.2f} s; "
                              "then " + ", ".join(f"{a / 1000:.2f} / {b:.2f}" for a, b in times[1:]) + " s")
                    else:
                        print("chromium or playwright missing: no browser timing")
            finally:
                server.stop()


if __name__ == "__main__":
    main()
