"""`embed(model, data, EmbedConfig, RunOptions)`: the default cache folder, and what it refuses."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from histovl.cli.app import app
from histovl.embed import EmbedConfig, embed
from histovl.models import save_model_dir
from histovl.options import RunOptions
from tests.helpers.tiny import tiny_encoder


def test_cli_embed_fills_the_default_cache_without_cache_option(class_folder, tmp_path):
    model = save_model_dir(tiny_encoder(0), tmp_path / "m")
    default = tmp_path / "default-cache"
    args = ["embed", "--model", str(model), "--data", str(class_folder), "--quiet", "--workers", "0"]
    r = CliRunner().invoke(app, args, env={"HISTOVL_CACHE": str(default), "COLUMNS": "400"})
    assert r.exit_code == 0, r.output
    assert "12 encoded" in r.output and str(default) in r.output
    assert any(default.rglob("index.sqlite"))
    again = CliRunner().invoke(app, args, env={"HISTOVL_CACHE": str(default), "COLUMNS": "400"})
    assert again.exit_code == 0 and "12 from cache, 0 encoded" in again.output


@pytest.mark.parametrize("option", [["--no-cache"], ["--n-boot", "5"], ["--seed", "1"]])
def test_cli_embed_has_no_options_it_cannot_use(class_folder, option):
    r = CliRunner().invoke(app, ["embed", "--model", "histovl-lite", "--data", str(class_folder), *option])
    assert r.exit_code == 2 and "No such option" in r.output


def test_library_embed_refuses_no_cache_and_unknown_engines(tiny_clip, class_folder, tmp_path):
    with pytest.raises(ValueError, match="fills the embedding cache"):
        embed(tiny_clip, class_folder, options=RunOptions(use_cache=False))
    with pytest.raises(ValueError, match="engine must be"):
        EmbedConfig(engine="spark")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unexpected keyword 'exprot'"):
        embed(tiny_clip, class_folder, exprot=tmp_path / "e.parquet")


def test_config_and_options_equal_the_old_keywords(tiny_clip, class_folder, tmp_path):
    typed = embed(tiny_clip, class_folder, EmbedConfig(export=tmp_path / "a.parquet"),
                  RunOptions(cache=tmp_path / "c", workers=0, progress=False))
    loose = embed(tiny_clip, class_folder, cache=tmp_path / "c", export=str(tmp_path / "b.parquet"),
                  num_workers=0, progress=False)
    assert typed.n_encoded == 12 and loose.n_cached == 12 and loose.cache == tmp_path / "c"
    assert loose.export == tmp_path / "b.parquet" and loose.export.is_file()
