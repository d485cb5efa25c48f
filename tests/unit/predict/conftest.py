"""Fixtures for `histovl predict`: prompts, unlabelled images, a synthetic slide, a stand-in head.

`StandInHead` implements exactly the interface `predict` codes against
(`histovl.heads.fewshot.load_head(folder)` -> ``.classes``, ``.weights_id``, ``.predict_proba``,
``.check_encoder``), so the head path is tested whether or not the real heads are installed.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from histovl.errors import HistovlError
from tests.unit.slides.conftest import synthetic_tissue

CLASSES = ["lung_aca", "lung_n", "lung_scc"]


class StandInHead:
    """A linear softmax head: probabilities = softmax(10 * embeddings @ W)."""

    def __init__(self, classes: list[str], weights_id: str, dim: int = 32, seed: int = 0) -> None:
        self.classes = list(classes)
        self.weights_id = weights_id
        self.w = np.random.default_rng(seed).normal(size=(dim, len(classes)))

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        z = 10.0 * np.asarray(embeddings, dtype=np.float64) @ self.w
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def check_encoder(self, encoder) -> None:  # type: ignore[no-untyped-def]
        if encoder.weights_id != self.weights_id:
            raise HistovlError(f"this head was fitted on encoder {self.weights_id}, not {encoder.weights_id}")


def write_stand_in_head(folder: Path, classes: list[str], weights_id: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "head.json").write_text(json.dumps({"classes": classes, "weights_id": weights_id}))
    return folder


def _load_stand_in(folder: Path) -> StandInHead:
    meta = json.loads((Path(folder) / "head.json").read_text())
    return StandInHead(meta["classes"], meta["weights_id"])


@pytest.fixture
def stand_in_heads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `histovl.heads.fewshot.load_head` read stand-in head folders."""
    module = types.ModuleType("histovl.heads.fewshot")
    module.load_head = _load_stand_in  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "histovl.heads.fewshot", module)


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump({
        "name": "test-lung",
        "classes": {"lung_aca": ["adenocarcinoma"], "lung_n": ["benign lung"], "lung_scc": ["squamous carcinoma"]},
        "templates": ["an H&E image of {}.", "{}"],
    }))
    return p


@pytest.fixture
def nested_folder(tmp_path: Path) -> Path:
    """Unlabelled images: 3 loose, 2 + 2 in sub-folders named after slides (not classes)."""
    rng = np.random.default_rng(3)
    root = tmp_path / "unlabelled"
    for rel in ["a.png", "b.jpg", "c.png", "slideA/1.png", "slideA/2.png", "slideB/deep/3.png", "slideB/4.png"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / rel)
    return root


@pytest.fixture
def slide_png(tmp_path: Path) -> Path:
    """A 256 x 192 synthetic 'slide' (a plain image: `histovl slides` opens it as one level)."""
    path = tmp_path / "slide.png"
    Image.fromarray(synthetic_tissue(256, 192)).save(path)
    return path
