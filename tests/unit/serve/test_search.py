"""Search over a real `histovl index` folder (tiny open_clip model): text -> image and image ->
image give exactly what `histovl.retrieval.query_index` gives."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.unit.serve.conftest import ids_by_name

pytestmark = pytest.mark.slow


def test_text_and_image_search_match_query_index(indexed_app, indexed_tree):
    from histovl.retrieval import query_index

    client = TestClient(indexed_app, base_url="http://127.0.0.1")
    index = ids_by_name(client, "indexes")["root/index"]
    body = client.get("/api/search", params={"index": index, "text": "an image of red tissue.", "k": 5}).json()
    assert body["error"] is None and len(body["results"]) == 5
    expected = query_index(indexed_tree.root / "index", text="an image of red tissue.", k=5)
    assert [r["path"] for r in body["results"]] == list(expected["path"])
    assert [r["score"] for r in body["results"]] == pytest.approx(list(expected["score"]), abs=1e-5)
    assert all(r["image"] for r in body["results"])
    first = body["results"][0]
    similar = client.get("/api/search", params={"index": index, "image": first["image"], "k": 4}).json()
    assert similar["error"] is None and len(similar["results"]) == 4
    assert first["path"] not in [r["path"] for r in similar["results"]]  # the query image itself is left out
    page = client.get("/search", params={"index": index, "text": "an image of red tissue.", "k": 5})
    assert page.status_code == 200 and page.text.count('<figure class="tile">') == 5
    assert client.get("/api/search", params={"index": "nope", "text": "x"}).status_code == 404
