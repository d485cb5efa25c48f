"""`retrieve` / `build_index` / `query_index` take a typed config and `RunOptions`; old spellings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from histovl.options import RunOptions
from histovl.retrieval import (
    IndexBuildConfig,
    IndexOptions,
    RetrieveConfig,
    build_index,
    query_index,
    retrieve,
)


def test_typed_config_equals_the_keywords_and_run_json_records_both(tiny_clip, class_folder: Path, tmp_path: Path) -> None:
    opts = RunOptions(use_cache=False, workers=0, n_boot=20, seed=2, progress=False)
    retrieve(tiny_clip, class_folder, tmp_path / "a", RetrieveConfig(k=(3,), group_by="none"), opts)
    retrieve(tiny_clip, class_folder, out=tmp_path / "b", k=[3], group_by="none", use_cache=False,
                     num_workers=0, n_boot=20, seed=2, progress=False)
    assert (tmp_path / "a" / "metrics.json").read_bytes() == (tmp_path / "b" / "metrics.json").read_bytes()
    config = json.loads((tmp_path / "a" / "run.json").read_text())["config"]
    assert config["k"] == [1, 3, 5, 10] and config["group_by"] == "none" and config["cache"] is None
    assert config["n_boot"] == 20 and config["index_options"] == IndexOptions().to_dict()
    with pytest.raises(TypeError, match="unexpected keyword 'nboot'"):
        retrieve(tiny_clip, class_folder, nboot=3)


def test_build_index_config_and_the_old_options_spelling(tiny_clip, class_folder: Path, tmp_path: Path) -> None:
    opts = RunOptions(use_cache=False, workers=0, progress=False)
    index = build_index(tiny_clip, class_folder, tmp_path / "ix", IndexBuildConfig(storage="flat-f16"), opts)
    assert index.storage == "flat-f16" and len(index) == 12
    with pytest.warns(DeprecationWarning, match="index_options="):
        old = build_index(tiny_clip, class_folder, tmp_path / "ix2", options=IndexOptions(nprobe=3),
                          use_cache=False, num_workers=0, progress=False)
    assert old.options.nprobe == 3
    table = query_index(tmp_path / "ix", text="tumour", k=2, model=tiny_clip, options=RunOptions(device="cpu"))
    assert len(table) == 2


def test_index_query_offers_only_the_run_options_it_uses(tmp_path: Path) -> None:
    from histovl.cli.app import app

    r = CliRunner().invoke(app, ["index", "query", "-i", str(tmp_path), "--text", "x", "--n-boot", "3"])
    assert r.exit_code == 2 and "No such option" in r.output
    help_text = CliRunner().invoke(app, ["index", "query", "--help"], env={"COLUMNS": "200"}).output
    assert "--device" in help_text and "--trust-checkpoint" in help_text and "--cache" not in help_text
