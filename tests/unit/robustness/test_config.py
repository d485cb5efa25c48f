"""`robustness(inputs, RobustnessConfig, RunOptions)`: the typed form, the keyword form, run.json,
and the sweep and its writer sharing their result types without importing each other."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pandas as pd
import pytest

import histovl.robustness
from histovl.options import RunOptions
from histovl.prompts import PromptSet
from histovl.robustness import Condition, RobustnessConfig, RobustnessResult, robustness
from tests.helpers.tiny import tiny_encoder

PROMPTS = PromptSet(
    name="tiny", classes={"lung_aca": ["red tissue"], "lung_n": ["green tissue"], "lung_scc": ["blue tissue"]},
    templates=["an image of {}."],
)


def test_config_normalises_its_fields() -> None:
    cfg = RobustnessConfig(corruptions=["blur"], levels={"blur": [1, 2]}, k=[3], stain_reference=Path("ref.png"))
    assert cfg.corruptions == ("blur",) and cfg.levels == {"blur": (1, 2)} and cfg.k == (3,)
    assert cfg.stain_reference == "ref.png"
    assert RobustnessConfig(levels=[1, 3]).levels == (1, 3)


def test_typed_and_keyword_forms_agree_and_run_json_records_both(class_folder: Path, tmp_path: Path) -> None:
    cfg = RobustnessConfig(corruptions=("blur",), levels={"blur": (2,)}, k=(3,), save_predictions=False)
    opts = RunOptions(use_cache=False, n_boot=0, seed=2, workers=0, progress=False)
    typed = robustness([tiny_encoder(0)], class_folder, PROMPTS, tmp_path / "typed", cfg, opts)
    loose = robustness([tiny_encoder(0)], class_folder, PROMPTS, None, corruptions=["blur"], levels={"blur": [2]},
                       k=[3], save_predictions=False, use_cache=False, n_boot=0, seed=2, workers=0, progress=False)
    assert isinstance(typed, RobustnessResult)
    pd.testing.assert_frame_equal(typed.table, loose.table)
    config = json.loads((tmp_path / "typed" / "run.json").read_text())["config"]
    assert config["corruptions"] == ["blur"] and config["levels"] == {"blur": [2]} and config["k"] == [3, 5, 10]
    assert config["models"] == ["tiny-clip"] and config["model_labels"] == ["tiny-clip"]
    assert config["cache"] is None and config["n_boot"] == 0 and config["seed"] == 2 and config["on_error"] == "raise"
    assert config["save_predictions"] is False and config["exclude_same_group"] is True
    assert config["data"] == str(class_folder)
    with pytest.raises(TypeError, match="RobustnessConfig fields"):
        robustness([tiny_encoder(0)], class_folder, PROMPTS, None, corruption=["blur"])


def test_condition_parameter() -> None:
    blur = histovl.robustness.get_corruption("blur")
    assert Condition(None, 0).name == "none" and Condition(None, 0).parameter is None
    assert Condition(blur, 2).name == "blur" and Condition(blur, 2).parameter == float(blur.parameters[2])


def test_sweep_and_outputs_do_not_import_each_other() -> None:
    root = Path(histovl.robustness.__file__).parent

    def imported(name: str) -> set[str]:
        tree = ast.parse((root / f"{name}.py").read_text())
        found = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        return found | {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}

    assert "histovl.robustness.sweep" not in imported("outputs")
    assert "histovl.robustness.outputs" in imported("sweep")
    assert "histovl.robustness.results" in imported("outputs") & imported("sweep")
