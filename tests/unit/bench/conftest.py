"""The bench tests' fixture: the golden cases' tiles, prompts and tiny model, plus a second tiny model."""

from __future__ import annotations

import pytest

from tests.golden.cases import build_fixture
from tests.helpers.tiny import save_safetensors, tiny_open_clip_model


@pytest.fixture(scope="package")
def fixture(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("bench")
    files = build_fixture(root)
    arch = files["model"].split(":")[1]
    other = save_safetensors(tiny_open_clip_model(3), root / "tiny3.safetensors")
    files["model2"] = f"open_clip:{arch}:{other}"
    files["root"] = str(root)
    return files
