"""`cmm_fit` / `cmm_eval` as (inputs, CmmFitConfig, RunOptions): the typed form equals the keyword
form, run.json records both, and the module-level CLI commands drive the same functions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from histovl.heads.cmm_run import CMM_OPTIONS, CmmFitConfig, cmm_eval, cmm_fit
from histovl.options import RunOptions
from tests.helpers.synthetic import multilabel_set

SMALL = {"epochs": 3, "warmup_epochs": 1, "n_heads": 2, "ffn_dim": 16, "train_batch_size": 4}


def test_typed_config_and_options_equal_the_keyword_call(tiny_clip, tmp_path: Path) -> None:
    manifest, prompts = multilabel_set(tmp_path / "data")
    typed = cmm_fit(tiny_clip, manifest, prompts, tmp_path / "typed", CmmFitConfig(**SMALL),
                    RunOptions(n_boot=10, use_cache=False, batch_size=32))
    loose = cmm_fit(tiny_clip, manifest, prompts, tmp_path / "loose", n_boot=10, use_cache=False, **SMALL)
    np.testing.assert_array_equal(typed.probabilities, loose.probabilities)
    config = json.loads((tmp_path / "typed" / "run.json").read_text())["config"]
    assert config["train_batch_size"] == 4 and config["epochs"] == 3 and config["kv_mode"] == "tokens"
    assert config["batch_size"] == CMM_OPTIONS.batch_size == 32  # the forward batch (RunOptions)
    assert {"cache", "on_error", "device", "n_boot", "seed", "token_source", "data"} <= set(config)
    assert config["cache"] is None  # use_cache=False

    # eval on the training data recomputes the same features: the same probabilities
    again = cmm_eval(tmp_path / "typed", manifest, None, RunOptions(n_boot=0, use_cache=False), model=tiny_clip)
    np.testing.assert_allclose(again.probabilities, typed.probabilities, atol=1e-6)


def test_unknown_keyword_names_both_field_lists(tiny_clip, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="CmmFitConfig fields"):
        cmm_fit(tiny_clip, tmp_path / "m.csv", "p.yaml", epoch=3)


def test_cli_eval_equals_the_library(tiny_clip, tmp_path: Path) -> None:
    from histovl.cli.app import app
    from histovl.models import save_model_dir

    manifest, prompts = multilabel_set(tmp_path / "data")
    model_dir = str(save_model_dir(tiny_clip, tmp_path / "model"))
    cmm_fit(model_dir, manifest, prompts, tmp_path / "head", CmmFitConfig(**SMALL), RunOptions(n_boot=0, use_cache=False))
    lib = cmm_eval(tmp_path / "head", manifest, tmp_path / "lib", n_boot=0, use_cache=False)
    result = CliRunner().invoke(app, ["cmm", "eval", "--head", str(tmp_path / "head"), "--data", str(manifest),
                                      "--out", str(tmp_path / "cli"), "--no-cache", "--n-boot", "0"])
    assert result.exit_code == 0, result.output
    assert "macc" in result.output
    cli_metrics = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert cli_metrics["macc"] == lib.metrics["macc"] and cli_metrics["n"] == lib.metrics["n"]
