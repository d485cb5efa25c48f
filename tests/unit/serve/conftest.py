"""Fixtures of the serve tests: the served tree, the app, a client, and a live server on loopback."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from histovl.serve import ServeConfig, build_app  # noqa: E402
from tests.unit.serve.fixtures import Tree, build_tree  # noqa: E402


@pytest.fixture(scope="session")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Tree:
    return build_tree(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="session")
def app(tree: Tree):
    return build_app([tree.root])


@pytest.fixture(scope="session")
def client(app) -> TestClient:
    return TestClient(app, base_url="http://127.0.0.1")


def ids_by_name(client: TestClient, what: str) -> dict[str, str]:
    return {row["name"]: row["id"] for row in client.get(f"/api/{what}").json()}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveServer:
    """uvicorn serving `app` on 127.0.0.1 in a thread, stopped at teardown."""

    def __init__(self, app, port: int) -> None:
        import uvicorn

        self.url = f"http://127.0.0.1:{port}"
        self.port = port
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="session")
def live(app) -> Iterator[LiveServer]:
    with LiveServer(app, free_port()) as server:
        yield server


def token_app(root: Path, token: str):
    return build_app([root], ServeConfig(host="0.0.0.0", token=token))


@pytest.fixture(scope="session")
def indexed_tree(tmp_path_factory: pytest.TempPathFactory) -> Tree:
    """The fixture tree plus a real index (tiny open_clip model) under ``root/index``."""
    pytest.importorskip("faiss")
    from histovl.retrieval import build_index
    from tests.golden.cases import build_fixture

    base = tmp_path_factory.mktemp("serve-indexed")
    tree = build_tree(base)
    files = build_fixture(base / "model")
    build_index(files["model"], files["manifest"], tree.root / "index", use_cache=False, workers=0, progress=False)
    return tree


@pytest.fixture(scope="session")
def indexed_app(indexed_tree: Tree):
    return build_app([indexed_tree.root])
