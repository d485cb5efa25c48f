"""Fixtures for the model loaders: tiny models of each family saved to disk, a local hub cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histovl.models import registry
from tests.helpers.tiny import (
    TINY_IMAGE_SIZE,
    make_hub_cache,
    register_tiny_open_clip_arch,
    save_safetensors,
    tiny_open_clip_cfg,
    tiny_open_clip_model,
)

PROMPTS = ["an H&E image of lung adenocarcinoma.", "benign lung tissue", "a histopathology image showing squamous cell carcinoma of the lung, with keratin pearls"]


@pytest.fixture(scope="session")
def tiny_arch(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny open_clip architecture, registered with open_clip under a test-only name."""
    return register_tiny_open_clip_arch(tmp_path_factory.mktemp("arch"))


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Safetensors weights of `tiny_open_clip_model(seed=0)`."""
    return save_safetensors(tiny_open_clip_model(0), tmp_path_factory.mktemp("w") / "tiny.safetensors")


@pytest.fixture
def pixels() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.standard_normal((2, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)).astype("float32")


@pytest.fixture
def rgb_image() -> Image.Image:
    """A non-square RGB image (so resize, crop and interpolation all matter)."""
    rng = np.random.default_rng(1)
    return Image.fromarray(rng.integers(0, 256, size=(61, 97, 3), dtype=np.uint8))


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty HF hub cache folder, with HF_HUB_OFFLINE=1 and HF_HUB_CACHE/HF_HOME pointing at it."""
    home = tmp_path / "hf_home"
    cache = home / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HISTOVL_CACHE", str(tmp_path / "histovl_cache"))
    return cache


@pytest.fixture
def open_clip_hub_repo(offline_hub: Path, tiny_weights: Path) -> tuple[str, str]:
    """An open_clip model published the way QuiltNet/BiomedCLIP are, in the local hub cache."""
    import json

    repo = "histovl-test/tiny-clip"
    rev = "a" * 40
    make_hub_cache(
        offline_hub,
        repo,
        {
            "open_clip_config.json": json.dumps({"model_cfg": tiny_open_clip_cfg(), "preprocess_cfg": {}}),
            "open_clip_model.safetensors": tiny_weights,
        },
        revision=rev,
    )
    return repo, rev


@pytest.fixture
def scratch_cards():
    """Register cards/families in a test and have them removed afterwards."""
    cards_before = dict(registry._CARDS)
    families_before = dict(registry._FAMILIES)
    registry.list_models()  # load shipped cards first so the snapshot includes them
    cards_before = dict(registry._CARDS)
    yield registry
    registry._CARDS.clear()
    registry._CARDS.update(cards_before)
    registry._FAMILIES.clear()
    registry._FAMILIES.update(families_before)


@pytest.fixture(autouse=True)
def _private_hash_memo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep weight-hash memos out of the user's ~/.cache during tests."""
    monkeypatch.setenv("HISTOVL_CACHE", str(tmp_path / "histovl_cache"))
