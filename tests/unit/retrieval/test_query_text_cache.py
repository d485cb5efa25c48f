"""`histovl index query --text` reads the prompt-embedding cache: a repeated text loads no model."""

from __future__ import annotations

from pathlib import Path

import pytest

from histovl.models import lazy
from histovl.retrieval.query import build_index, query_index
from tests.golden.cases import build_fixture


def test_a_repeated_text_query_loads_no_model_and_finds_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from histovl.models import loading

    f = build_fixture(tmp_path / "fx")
    cache = tmp_path / "cache"
    build_index(f["model"], f["manifest"], tmp_path / "index", cache=cache, workers=0, progress=False)
    first = query_index(tmp_path / "index", text="red tissue", k=3, cache=cache)
    lazy.forget_loaded_models()
    calls: list[str] = []
    real = loading.load_model
    monkeypatch.setattr(loading, "load_model", lambda spec, **kw: calls.append(str(spec)) or real(spec, **kw))
    again = query_index(tmp_path / "index", text="red tissue", k=3, cache=cache)
    assert calls == [] and again.equals(first)
    query_index(tmp_path / "index", text="blue tissue", k=3, cache=cache)  # a new text: the model loads
    assert calls == [f["model"]]
