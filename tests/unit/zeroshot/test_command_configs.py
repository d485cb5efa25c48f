"""`ablate_fusion` and `multilabel` as (inputs, their own config, RunOptions), and their CLI commands."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from histovl.cli.app import app
from histovl.options import RunOptions
from histovl.prompts import PromptSet
from histovl.zeroshot import FusionAblationConfig, MultilabelConfig, ablate_fusion
from histovl.zeroshot.multilabel import multilabel
from tests.helpers.tiny import tiny_encoder

ML_PROMPTS = PromptSet(
    name="ml-test",
    classes={"lung_aca": ["adenocarcinoma"], "lung_n": ["benign lung"], "lung_scc": ["squamous carcinoma"]},
    templates=["an H&E image of {}."],
    negative="an image with nothing in it.",
)


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump({
        "name": "test-lung",
        "classes": {"lung_aca": ["adenocarcinoma"], "lung_n": ["benign lung"], "lung_scc": ["squamous carcinoma"]},
        "templates": ["an H&E image of {}."],
    }))
    return p


@pytest.fixture
def multilabel_manifest(class_folder: Path) -> Path:
    rows = ["path,labels"]
    for img in sorted(class_folder.rglob("*.png")):
        rows.append(f"{img.relative_to(class_folder)},{img.parent.name};lung_n")
    (class_folder / "ml.csv").write_text("\n".join(rows) + "\n")
    return class_folder / "ml.csv"


def test_config_types_are_exported() -> None:
    import histovl.zeroshot as zs
    import histovl.zeroshot.multilabel as ml

    assert zs.FusionAblationConfig is FusionAblationConfig and zs.MultilabelConfig is ml.MultilabelConfig
    assert FusionAblationConfig(views=["identity"]).views == ("identity",)  # type: ignore[arg-type]  # a list becomes a tuple


def test_unknown_strategy_is_refused_by_the_config() -> None:
    with pytest.raises(ValueError, match="unknown strategy 'bogus'"):
        MultilabelConfig(strategy="bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown strategy"):
        multilabel("no-such-model", "nowhere.csv", ML_PROMPTS, strategy="bogus")


def test_a_misspelt_keyword_names_both_field_lists(class_folder: Path, prompts: Path) -> None:
    with pytest.raises(TypeError, match="FusionAblationConfig fields.*RunOptions fields"):
        ablate_fusion(["no-such-model"], class_folder, prompts, aggregater="max")
    with pytest.raises(TypeError, match="MultilabelConfig fields"):
        multilabel("no-such-model", class_folder, ML_PROMPTS, strategie="ovr")


def test_ablation_config_and_options_equal_the_keywords(tiny_clip, class_folder: Path, prompts: Path, tmp_path: Path) -> None:
    by_keywords = ablate_fusion([tiny_clip], class_folder, prompts, None, views=("identity", "hflip"),
                                aggregator="max", use_cache=False, n_boot=0, progress=False)
    cfg = FusionAblationConfig(views=("identity", "hflip"), aggregator="max")
    opts = RunOptions(use_cache=False, n_boot=0, progress=False)
    typed = ablate_fusion([tiny_clip], class_folder, prompts, tmp_path / "abl", cfg, opts)
    pd.testing.assert_frame_equal(by_keywords.table, typed.table)
    config = json.loads((tmp_path / "abl" / "run.json").read_text())["config"]
    assert config["views"] == ["identity", "hflip"] and config["aggregator"] == "max"
    assert config["n_boot"] == 0 and config["cache"] is None and config["data"] == str(class_folder)


def test_ablation_refuses_multilabel_data(multilabel_manifest: Path, prompts: Path) -> None:
    with pytest.raises(ValueError, match="histovl multilabel"):
        ablate_fusion(["no-such-model"], multilabel_manifest, prompts, use_cache=False, progress=False)


def test_multilabel_config_and_options_equal_the_keywords(tiny_clip, multilabel_manifest: Path, tmp_path: Path) -> None:
    by_keywords = multilabel(tiny_clip, multilabel_manifest, ML_PROMPTS, strategy="ovr", use_cache=False, n_boot=0,
                             workers=0, progress=False)
    typed = multilabel(tiny_clip, multilabel_manifest, ML_PROMPTS, tmp_path / "ml", MultilabelConfig(strategy="ovr"),
                       RunOptions(use_cache=False, n_boot=0, workers=0, progress=False))
    assert typed.metrics == by_keywords.metrics
    config = json.loads((tmp_path / "ml" / "run.json").read_text())["config"]
    assert {"strategy": "ovr", "force_powerset": False, "batch_size": 64, "on_error": "raise", "n_boot": 0,
            "device": "cpu"}.items() <= config.items()


def test_cli_ablate_fusion(class_folder: Path, prompts: Path, tmp_path: Path) -> None:
    from histovl.models import save_model_dir

    a = save_model_dir(tiny_encoder(0), tmp_path / "a")
    b = save_model_dir(tiny_encoder(1), tmp_path / "b")
    out = tmp_path / "abl"
    r = CliRunner().invoke(app, ["ablate-fusion", "--model", str(a), "--model", str(b), "--data", str(class_folder),
                                 "--prompts", str(prompts), "--out", str(out), "--view", "identity", "--view", "vflip",
                                 "--aggregator", "max", "--no-cache", "--n-boot", "0", "--workers", "0", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "encoder passes: 4" in r.output and (out / "ablation.csv").is_file()
    config = json.loads((out / "run.json").read_text())["config"]
    assert config["views"] == ["identity", "vflip"] and config["aggregator"] == "max" and config["workers"] == 0


def test_cli_multilabel_prints_the_summary(multilabel_manifest: Path, tmp_path: Path) -> None:
    from histovl.models import save_model_dir

    model = save_model_dir(tiny_encoder(0), tmp_path / "m")
    prompts = tmp_path / "ml.yaml"
    prompts.write_text(yaml.safe_dump(ML_PROMPTS.model_dump(mode="json")))
    out = tmp_path / "ml"
    r = CliRunner().invoke(app, ["multilabel", "--model", str(model), "--data", str(multilabel_manifest), "--prompts",
                                 str(prompts), "--out", str(out), "--strategy", "topk", "--no-cache", "--n-boot", "0",
                                 "--workers", "0", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "macc" in r.output and "n = 12" in r.output
    assert json.loads((out / "run.json").read_text())["config"]["strategy"] == "topk"
