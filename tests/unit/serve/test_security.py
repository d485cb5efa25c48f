"""Security (docs/serve.md): loopback by default, a token off loopback, files only by id from the
allow-list (every traversal attempt is a 404 without file contents), GET/HEAD only."""

from __future__ import annotations

import http.client
import os

import pytest
from fastapi.testclient import TestClient

from histovl.errors import HistovlError
from histovl.serve import ServeConfig, check_binding, is_loopback, serve
from tests.unit.serve.conftest import ids_by_name, token_app
from tests.unit.serve.fixtures import SECRET, Tree

TOKEN = "s3cret-token-for-tests"


def _attacks(client: TestClient, tree: Tree) -> list[str]:
    run = ids_by_name(client, "runs")["root/runs/zs"]
    slide = ids_by_name(client, "slides")["root/runs/slide"]
    secret = str(tree.secret)
    rel = os.path.relpath(tree.secret, tree.zeroshot)
    paths = []
    for prefix in ("/files/", "/thumb/", "/view/", f"/runs/{run}/report/", f"/dz/{slide}_files/0/", "/static/"):
        paths += [
            prefix + rel, prefix + "../../secret.txt", prefix + "..%2f..%2fsecret.txt", prefix + "..%2F..%2F..%2Fsecret.txt",
            prefix + "%2e%2e/%2e%2e/secret.txt", prefix + "%2e%2e%2f%2e%2e%2fsecret.txt",
            prefix + "%252e%252e%252f%252e%252e%252fsecret.txt", prefix + "..%252f..%252fsecret.txt",
            prefix + secret, prefix + "%2F" + secret.lstrip("/").replace("/", "%2F"), prefix + "/" + secret,
            prefix + "..\\..\\secret.txt", prefix + "leak.txt", prefix + "leak.png", prefix + "outside/secret.txt",
            prefix + "....//....//secret.txt", prefix + "%c0%ae%c0%ae/secret.txt",
        ]
    paths += [f"/slides/{slide}/overlay.png?key=../../secret.txt", f"/slides/{slide}/tile/..%2Fsecret.jpg",
              f"/api/search?index=x&image={secret}", "/runs/..%2F..%2Fsecret.txt", f"/dz/{slide}.dzi/../../secret.txt"]
    return paths


def test_every_traversal_attempt_is_a_404_without_contents(client, tree: Tree):
    for path in _attacks(client, tree):
        res = client.get(path)
        assert res.status_code == 404, (path, res.status_code)
        assert SECRET not in res.text, path


def test_traversal_sent_raw_to_a_live_server(live, client, tree: Tree):
    """The same paths byte for byte (http.client does not normalise `..`), through uvicorn."""
    for path in _attacks(client, tree):
        conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=10)
        conn.request("GET", path)
        res = conn.getresponse()
        body = res.read().decode("utf-8", "replace")
        conn.close()
        assert res.status in (404, 400), (path, res.status)  # 400: uvicorn refuses a malformed target
        assert SECRET not in body, path


def test_symlinks_out_of_a_root_are_not_in_the_allow_list(app, tree: Tree):
    registry = app.state.serve.catalog.registry
    for entry in list(registry._by_id.values()):
        assert entry.inside == registry.inside(entry.path)
        if not entry.inside:
            assert entry.raw_type is None and (entry.is_image or entry.kind == "slide"), entry
        assert entry.path != tree.secret.resolve()
    run = next(r for r in app.state.serve.catalog.runs.values() if r.name == "root/runs/zs")
    assert "leak.txt" not in run.files and "leak.png" not in run.files
    assert not any("outside" in r.name for r in app.state.serve.catalog.runs.values())  # symlinked folder not walked


def test_roots_only_serves_nothing_outside(tree: Tree):
    from histovl.serve import build_app

    strict = TestClient(build_app([tree.root], ServeConfig(roots_only=True)), base_url="http://127.0.0.1")
    run = ids_by_name(strict, "runs")["root/runs/zs"]
    assert all(i["image"] is None for i in strict.get(f"/api/runs/{run}/items").json()["items"])


def test_no_endpoint_writes(app, client):
    for route in app.routes:
        assert set(getattr(route, "methods", None) or {"GET"}) <= {"GET", "HEAD"}, route
    for method in ("POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
        for url in ("/runs", "/api/runs", "/files/x", "/api/search?index=x&text=y"):
            assert client.request(method, url).status_code == 405, (method, url)


def test_loopback_only_by_default_and_a_token_elsewhere(tree: Tree):
    assert ServeConfig().host == "127.0.0.1"
    for host in ("127.0.0.1", "127.1.2.3", "localhost", "::1", "[::1]"):
        assert is_loopback(host)
        check_binding(ServeConfig(host=host))
    for host in ("0.0.0.0", "::", "192.168.1.5", "example.org"):
        assert not is_loopback(host)
        with pytest.raises(HistovlError, match="--token"):
            check_binding(ServeConfig(host=host))
        check_binding(ServeConfig(host=host, token=TOKEN))
    with pytest.raises(HistovlError, match="--token"):
        serve([tree.root], host="0.0.0.0", port=1)  # refused before anything binds
    with pytest.raises(HistovlError, match="at least 8"):
        ServeConfig(token="short")


def test_the_cli_refuses_a_public_host_without_a_token(tree: Tree):
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "histovl.cli.app", "serve", str(tree.root), "--host", "0.0.0.0"],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "HISTOVL_SERVE_TOKEN": ""})
    assert res.returncode == 2 and "reachable from other machines; give --token" in res.stderr


def test_token_is_checked_on_every_request(tree: Tree):
    client = TestClient(token_app(tree.root, TOKEN), base_url="http://example.org")
    urls = ["/runs", "/api/runs", "/static/app.css", "/static/vendor/openseadragon/openseadragon.min.js", "/leaderboards"]
    run = ids_by_name(TestClient(client.app, headers={"Authorization": f"Bearer {TOKEN}"}), "runs")["root/runs/zs"]
    urls += [f"/runs/{run}", f"/api/runs/{run}/items", f"/runs/{run}/report/report.html", "/files/nope"]
    for url in urls:
        assert client.get(url).status_code == 401, url
        assert client.get(url, headers={"Authorization": "Bearer wrong-token-xyz"}).status_code == 401, url
        assert client.get(url, headers={"Authorization": f"Bearer {TOKEN}"}).status_code in (200, 404), url
    first = client.get("/runs", params={"token": TOKEN})
    assert first.status_code == 200 and "histovl_token=" in first.headers["set-cookie"]
    assert "HttpOnly" in first.headers["set-cookie"] and "SameSite=Strict" in first.headers["set-cookie"]
    assert client.get("/api/runs").status_code == 200  # the cookie now carries it
    client.cookies.clear()
    assert client.get("/api/runs").status_code == 401


def test_loopback_server_answers_only_to_local_host_names(client):
    assert client.get("/runs", headers={"host": "evil.example:8765"}).status_code == 421
    for host in ("localhost:8765", "127.0.0.1:8765", "[::1]:8765", "localhost"):
        assert client.get("/api/runs", headers={"host": host}).status_code == 200, host


def test_security_headers(client):
    res = client.get("/runs")
    assert res.headers["x-content-type-options"] == "nosniff"
    assert "script-src 'self'" in res.headers["content-security-policy"]
    assert res.headers["referrer-policy"] == "no-referrer"
