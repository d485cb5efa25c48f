"""Prompt sensitivity: the variants, their metrics on shared resamples, and `zeroshot --per-template`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from histovl.metrics import classification_metrics
from histovl.options import RunOptions
from histovl.prompts import PromptSet
from histovl.zeroshot.classifier import build_text_classifier
from histovl.zeroshot.sensitivity import prompt_sensitivity, prompt_variants

PROMPTS = {
    "name": "sens",
    "classes": {"lung_aca": ["adenocarcinoma", "glandular tumour"], "lung_n": ["benign lung"],
                "lung_scc": ["squamous carcinoma"]},
    "templates": ["an H&E image of {}.", "{}", "a tile showing {}."],
}


def test_variants_are_the_ensemble_each_template_and_each_description():
    variants = prompt_variants(PromptSet(**PROMPTS))
    assert [v.kind for v in variants] == ["ensemble"] + ["template"] * 3 + ["description"] * 2
    assert variants[2].prompt_set.templates == ["{}"] and variants[2].prompt_set.classes == PROMPTS["classes"]
    only = variants[5].prompt_set.classes
    assert only["lung_aca"] == ["glandular tumour"] and only["lung_n"] == ["benign lung"]
    single = PromptSet(name="one", classes={"a": ["x"], "b": ["y"]}, templates=["{}"])
    assert [v.kind for v in prompt_variants(single)] == ["ensemble"]


def test_every_variant_is_scored_like_the_ensemble_and_the_spread_has_an_interval(tiny_clip):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(40, 32))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    y = rng.integers(0, 3, 40)
    prompt_set = PromptSet(**PROMPTS)
    names = list(prompt_set.classes)
    res = prompt_sensitivity(tiny_clip, prompt_set, emb, y, None, names, "mean", RunOptions(n_boot=100, seed=1))
    table = res.table
    assert len(table) == 6 and res.summary["n_variants"] == 6
    probs = build_text_classifier(tiny_clip, prompt_set, memoise=False).probabilities(emb)
    expected = classification_metrics(y, probs, names, n_boot=100, seed=1)
    assert table.loc[0, "accuracy"] == pytest.approx(expected["accuracy"])
    assert [table.loc[0, "f1_macro_lo"], table.loc[0, "f1_macro_hi"]] == pytest.approx(expected["ci95"]["f1_macro"])
    spread = res.summary["spread"]["template"]["accuracy"]
    templates = table[table["kind"] == "template"]["accuracy"]
    assert spread["range"] == pytest.approx(templates.max() - templates.min())
    lo, hi = spread["range_ci95"]
    assert 0 <= lo <= hi
    assert res.summary["spread"]["description"]["n_variants"] == 2


@pytest.fixture
def prompts_file(tmp_path: Path) -> Path:
    p = tmp_path / "sens.yaml"
    p.write_text(yaml.safe_dump(PROMPTS))
    return p


def test_zeroshot_per_template_writes_the_table_the_block_and_the_section(tiny_clip, class_folder, prompts_file, tmp_path):
    from histovl.zeroshot import zeroshot

    out = tmp_path / "run"
    res = zeroshot(tiny_clip, class_folder, prompts_file, out, cache=tmp_path / "c", n_boot=30, progress=False,
                   per_template=True)
    table = pd.read_csv(out / "prompt_sensitivity.csv")
    assert list(table["variant"])[:2] == ["ensemble", "template 1"] and len(table) == 6
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["prompt_sensitivity"]["n_variants"] == 6
    assert set(metrics["prompt_sensitivity"]["spread"]) == {"template", "description"}
    assert table.loc[0, "accuracy"] == pytest.approx(metrics["accuracy"])  # the ensemble is the run
    assert "Prompt sensitivity" in (out / "report.html").read_text()
    assert res.prompt_sensitivity is not None


def test_per_template_off_leaves_the_outputs_as_they_were(tiny_clip, class_folder, prompts_file, tmp_path):
    from histovl.zeroshot import zeroshot

    out = tmp_path / "run"
    zeroshot(tiny_clip, class_folder, prompts_file, out, use_cache=False, n_boot=0, progress=False)
    assert not (out / "prompt_sensitivity.csv").exists()
    assert "prompt_sensitivity" not in json.loads((out / "metrics.json").read_text())


def test_per_template_with_several_models_is_refused(tiny_clip, class_folder, prompts_file):
    from histovl.zeroshot import zeroshot

    with pytest.raises(ValueError, match="per-template"):
        zeroshot([tiny_clip, tiny_clip], class_folder, prompts_file, None, fusion="mean-prob", per_template=True,
                 use_cache=False, progress=False)


def test_cli_flag(tmp_path, class_folder, prompts_file):
    from tests.golden.cases import build_fixture

    files = build_fixture(tmp_path / "fx")
    res = CliRunner().invoke(__import__("histovl.cli.app", fromlist=["app"]).app, [
        "zeroshot", "-m", files["model"], "-d", str(class_folder), "-p", str(prompts_file), "-o", str(tmp_path / "o"),
        "--per-template", "--n-boot", "20", "--quiet", "--workers", "0", "--cache", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "o" / "prompt_sensitivity.csv").is_file() and "prompt_sensitivity.csv" in res.output
