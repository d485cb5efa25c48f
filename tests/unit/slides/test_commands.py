"""`slides_embed` (the library side of `histovl slides embed`) and the slides CLI: --workers, and
--readers accepted for one more release."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

import histovl.slides
from histovl.cli.app import app
from histovl.options import RunOptions
from histovl.slides import SlideEmbedConfig, TileSpec, embed_slide, slides_embed
from tests.unit.slides.conftest import synthetic_tissue

PROMPTS_YAML = """\
name: slide-test
version: 1
classes:
  tumour: [tumour]
  stroma: [stroma]
templates: ["an image of {}."]
"""


@pytest.fixture
def slide(tmp_path: Path) -> Path:
    path = tmp_path / "slide.png"
    Image.fromarray(synthetic_tissue(256, 192)).save(path)
    return path


def test_slides_embed_equals_embed_slide_and_adds_slide_zeroshot(tiny_clip, slide: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text(PROMPTS_YAML)
    config = SlideEmbedConfig(spec=TileSpec(size=32), top_j=[1, 5])
    se = slides_embed(tiny_clip, slide, tmp_path / "a", config, RunOptions(use_cache=False, workers=1, progress=False),
                      prompts=prompts)
    bare = embed_slide(tiny_clip, slide, tmp_path / "b", TileSpec(size=32), num_workers=1)
    np.testing.assert_array_equal(se.embeddings, bare.embeddings)
    assert bare.zeroshot is None and se.zeroshot is not None and list(se.zeroshot.slide_scores) == [1, 5]
    saved = json.loads((tmp_path / "a" / "zeroshot.json").read_text())
    assert saved["top_j"]["5"]["prediction"] == se.zeroshot.prediction(5)
    # keywords for either the config or the run options, as for every command
    kw = slides_embed(tiny_clip, slide, tmp_path / "c", spec=TileSpec(size=32), use_cache=False, progress=False)
    np.testing.assert_array_equal(kw.embeddings, bare.embeddings)
    assert kw.zeroshot is None and not (tmp_path / "c" / "zeroshot.json").exists()
    with pytest.raises(TypeError, match="SlideEmbedConfig fields"):
        slides_embed(tiny_clip, slide, tmp_path / "d", top_k=3)


def _spy_tile_slide(monkeypatch: pytest.MonkeyPatch) -> list[int | None]:
    seen: list[int | None] = []
    real = histovl.slides.tile_slide

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(kwargs.get("num_workers"))
        return real(*args, **kwargs)

    monkeypatch.setattr(histovl.slides, "tile_slide", spy)
    return seen


def test_slides_tile_workers_and_the_deprecated_readers_spelling(slide: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _spy_tile_slide(monkeypatch)
    base = ["slides", "tile", "--slide", str(slide), "--size", "32", "--save-tiles"]
    new = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "new"), "--workers", "2"])
    assert new.exit_code == 0, new.output
    assert "deprecated" not in new.output
    old = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "old"), "--readers", "2"])
    assert old.exit_code == 0, old.output
    assert "--readers is deprecated" in old.output and "use --workers" in old.output
    assert seen == [2, 2]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "old" / "tiles.csv"), pd.read_csv(tmp_path / "new" / "tiles.csv"))
    both = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "both"), "--readers", "2", "--workers", "3"])
    assert both.exit_code == 2 and "old spelling of --workers" in both.output
    helptext = CliRunner().invoke(app, ["slides", "tile", "--help"]).output
    assert "--workers" in helptext and "Tile-reading" in helptext and "--readers" not in helptext


def test_slides_embed_command(tiny_clip, slide: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from histovl.models import save_model_dir

    model = save_model_dir(tiny_clip, tmp_path / "model")
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text(PROMPTS_YAML)
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["slides", "embed", "--slide", str(slide), "--out", str(out), "--model", str(model),
                                   "--prompts", str(prompts), "--top-j", "1", "--top-j", "5", "--size", "32",
                                   "--cache", str(tmp_path / "cache"), "--readers", "1", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "--readers is deprecated" in res.output and "top-1:" in res.output and "top-5:" in res.output
    n = len(pd.read_csv(out / "tiles.csv"))
    assert np.load(out / "embeddings.npy").shape == (n, 32)
    assert set(json.loads((out / "zeroshot.json").read_text())["top_j"]) == {"1", "5"}
    again = CliRunner().invoke(app, ["slides", "embed", "--slide", str(slide), "--out", str(tmp_path / "again"),
                                     "--model", str(model), "--size", "32", "--cache", str(tmp_path / "cache"),
                                     "--workers", "1", "--quiet"])
    assert again.exit_code == 0, again.output
    assert f"{n} tiles: {n} from cache, 0 encoded" in again.output
