"""Shared fixtures: tiny models, synthetic images, the shared-data location."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers.tiny import tiny_encoder

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_clip():
    """A tiny open_clip CLIP wrapped as a histovl Encoder (random weights, seed 0)."""
    return tiny_encoder(0)


@pytest.fixture
def class_folder(tmp_path: Path) -> Path:
    """A class-folder data set: 3 classes x 4 synthetic RGB tiles with distinct colours."""
    rng = np.random.default_rng(0)
    root = tmp_path / "tiles"
    for ci, cls in enumerate(["lung_aca", "lung_n", "lung_scc"]):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            base = np.zeros((40, 48, 3), dtype=np.int16)
            base[..., ci] = 180
            arr = np.clip(base + rng.integers(0, 60, size=base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / cls / f"{cls}_{i}.png")
    return root


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or skip the test cleanly when it is absent (a user's fresh clone)."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA
