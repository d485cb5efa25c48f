"""Synthetic slides for the slide tests: an in-memory pyramid with injectable read faults."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histovl.slides.reader import SlideReader, TileReadError


def synthetic_tissue(width: int = 512, height: int = 384) -> np.ndarray:
    """White glass with a pink 'tissue' ellipse and some noise (uint8 RGB)."""
    rng = np.random.default_rng(0)
    img = np.full((height, width, 3), 242, np.int16)
    yy, xx = np.mgrid[0:height, 0:width]
    blob = ((xx - width * 0.45) / (width * 0.3)) ** 2 + ((yy - height * 0.5) / (height * 0.3)) ** 2 <= 1
    img[blob] = (200, 110, 170)
    img += rng.integers(-8, 8, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


class FakeSlide(SlideReader):
    """A pyramid held in memory. `fail_once` coords fail until one reopen; `fail_always` always."""

    def __init__(
        self,
        image: np.ndarray,
        downsamples: tuple[int, ...] = (1, 4),
        mpp: float | None = 0.25,
        objective_power: float | None = None,
        fail_once: set[tuple[int, int]] | None = None,
        fail_always: set[tuple[int, int]] | None = None,
    ) -> None:
        self.path = Path("fake.svs")
        self.mpp, self.objective_power = mpp, objective_power
        base = Image.fromarray(image)
        self.levels = [base.resize((base.width // d, base.height // d)) if d > 1 else base for d in downsamples]
        self.level_dimensions = tuple(lvl.size for lvl in self.levels)
        self.level_downsamples = tuple(float(d) for d in downsamples)
        self.fail_once = set(fail_once or ())
        self.fail_always = set(fail_always or ())
        self.broken = False
        self.reopened = 0
        self.reads = 0

    def _read(self, x: int, y: int, level: int, size: tuple[int, int]) -> Image.Image:
        self.reads += 1
        if (x, y) in self.fail_always or ((x, y) in self.fail_once and not self.reopened):
            self.broken = True
            raise TileReadError(f"injected fault at {(x, y)}")
        ds = self.level_downsamples[level]
        lx, ly = round(x / ds), round(y / ds)
        rgba = Image.new("RGBA", size, (0, 0, 0, 0))  # outside = transparent, like OpenSlide
        rgba.paste(self.levels[level].crop((lx, ly, lx + size[0], ly + size[1])).convert("RGBA"), (0, 0))
        w, h = self.levels[level].size
        alpha = np.zeros((size[1], size[0]), np.uint8)
        alpha[: max(0, min(size[1], h - ly)), : max(0, min(size[0], w - lx))] = 255
        rgba.putalpha(Image.fromarray(alpha))
        return rgba

    def reopen(self) -> None:
        self.reopened += 1
        self.broken = False


@pytest.fixture
def tissue_image() -> np.ndarray:
    return synthetic_tissue()
