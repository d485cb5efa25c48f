"""`zeroshot` / `ablate-fusion` end to end on a tiny model and synthetic tiles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from histovl.cli.app import app
from histovl.zeroshot import ablate_fusion, zeroshot
from histovl.zeroshot.ablation import ABLATION_COLUMNS
from tests.helpers.tiny import tiny_encoder

KEYS = ("n", "accuracy", "balanced_accuracy", "f1_macro", "f1_weighted", "auroc_macro", "ci95")


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump({
        "name": "test-lung",
        "classes": {"lung_aca": ["adenocarcinoma"], "lung_n": ["benign lung", "normal lung"], "lung_scc": ["squamous carcinoma"]},
        "templates": ["an H&E image of {}.", "{}"],
    }))
    return p


def test_zeroshot_writes_every_output(tiny_clip, class_folder, prompts, tmp_path):
    out = tmp_path / "run"
    res = zeroshot(tiny_clip, class_folder, prompts, out, cache=tmp_path / "c", n_boot=50, progress=False)
    metrics = json.loads((out / "metrics.json").read_text())
    assert all(k in metrics for k in KEYS) and metrics["n"] == 12
    preds = pd.read_csv(out / "predictions.csv")
    assert list(preds.columns[:3]) == ["path", "label", "prediction"]
    assert [c for c in preds.columns if c.startswith("score:")] == ["score:lung_aca", "score:lung_n", "score:lung_scc"]
    np.testing.assert_allclose(preds.filter(like="score:").sum(axis=1), 1.0, atol=1e-9)
    assert not preds["path"].str.startswith("/").any()  # portable: relative to the data root
    run = json.loads((out / "run.json").read_text())
    assert run["prompt_set"]["classes"]["lung_n"] == ["benign lung", "normal lung"]
    assert "an H&E image of benign lung." in json.dumps(run["extra"]["prompts_used"])
    html = (out / "report.html").read_text()
    assert "Confusion matrix" in html
    assert res.metrics["accuracy"] == pytest.approx((preds["label"] == preds["prediction"]).mean())


def test_skip_keeps_valid_results_and_records_the_bad_file(tiny_clip, class_folder, prompts, tmp_path):
    bad = class_folder / "lung_n" / "zero.png"
    bad.write_bytes(b"")
    res = zeroshot(tiny_clip, class_folder, prompts, tmp_path / "o", on_error="skip", use_cache=False, n_boot=20, progress=False)
    assert res.metrics["n"] == 12 and res.metrics["n_skipped"] == 1
    run = json.loads((tmp_path / "o" / "run.json").read_text())
    assert run["skipped"][0]["path"].endswith("zero.png")


def test_label_missing_from_prompts_is_a_clear_error(tiny_clip, class_folder, tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump({"name": "x", "classes": {"lung_aca": ["a"], "lung_n": ["b"]}, "templates": ["{}"]}))
    with pytest.raises(ValueError, match="lung_scc"):
        zeroshot(tiny_clip, class_folder, p, None, use_cache=False, progress=False)


def test_several_models_need_a_fusion(tiny_clip, class_folder, prompts):
    with pytest.raises(ValueError, match="--fusion"):
        zeroshot([tiny_clip, tiny_encoder(1)], class_folder, prompts, None, use_cache=False, progress=False)


@pytest.mark.parametrize("fusion", ["mean-prob", "mean-logit-z", "m2m"])
def test_fused_zeroshot(fusion, tiny_clip, class_folder, prompts, tmp_path):
    res = zeroshot([tiny_clip, tiny_encoder(1)], class_folder, prompts, tmp_path / fusion, fusion=fusion,
                   cache=tmp_path / "c", n_boot=20, progress=False, views=("identity", "hflip"))
    assert res.metrics["n"] == 12 and res.probabilities.shape == (12, 3)
    assert (tmp_path / fusion / "report.html").is_file()


def test_fusing_a_model_with_itself_equals_the_model(tiny_clip, class_folder, prompts, tmp_path):
    single = zeroshot(tiny_clip, class_folder, prompts, None, cache=tmp_path / "c", n_boot=0, progress=False)
    with pytest.warns(UserWarning, match="counted once"):
        fused = zeroshot([tiny_clip, tiny_clip], class_folder, prompts, None, fusion="mean-prob",
                         cache=tmp_path / "c", n_boot=0, progress=False)
    np.testing.assert_allclose(fused.probabilities, single.probabilities, atol=1e-9)


def test_ablation_table(tiny_clip, class_folder, prompts, tmp_path):
    out = tmp_path / "abl"
    res = ablate_fusion([tiny_clip, tiny_encoder(1)], class_folder, prompts, out, views=("identity", "vflip"),
                        allow_cross_pairs=True, cache=tmp_path / "c", n_boot=20, progress=False)
    table = pd.read_csv(out / "ablation.csv")
    assert list(table.columns[: len(ABLATION_COLUMNS)]) == ABLATION_COLUMNS
    alignments = set(table["alignment"])
    assert {"one-to-one", "many-to-many", "joint fusion (mean-prob)", "many-to-many fusion (m2m)"} <= alignments
    assert table["configuration"].str.contains("cross pair").sum() == 2
    assert res.cost.image_passes == 4  # 2 encoders x 2 views, each encoded once
    for f in ("metrics.json", "predictions.csv", "run.json", "report.html"):
        assert (out / f).is_file()


def test_cli_zeroshot_with_a_model_directory(class_folder, prompts, tmp_path):
    from histovl.models import save_model_dir

    model_dir = save_model_dir(tiny_encoder(0), tmp_path / "tiny-model")
    out = tmp_path / "cli"
    r = CliRunner().invoke(app, ["zeroshot", "--model", str(model_dir), "--data", str(class_folder), "--prompts",
                                 str(prompts), "--out", str(out), "--no-cache", "--n-boot", "20", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "f1_macro" in r.output and (out / "metrics.json").is_file()


def test_cli_unknown_prompt_set_is_one_clear_line(class_folder, tmp_path):
    import sys

    from histovl.cli.app import main

    argv = sys.argv
    sys.argv = ["histovl", "zeroshot", "--model", "histovl-lite", "--data", str(class_folder), "--prompts", "lung-he-v9",
                "--out", str(tmp_path / "x")]
    try:
        with pytest.raises(SystemExit) as exc:
            main()
    finally:
        sys.argv = argv
    assert exc.value.code == 2


def test_cli_fusion_weights_views_and_aggregator(class_folder, prompts, tmp_path):
    """Weight 1/0 on two different models gives the first model's own probabilities."""
    from histovl.models import save_model_dir

    a = save_model_dir(tiny_encoder(0), tmp_path / "a")
    b = save_model_dir(tiny_encoder(1), tmp_path / "b")
    base = ["--data", str(class_folder), "--prompts", str(prompts), "--no-cache", "--n-boot", "0", "--quiet"]
    runner = CliRunner()
    r = runner.invoke(app, ["zeroshot", "--model", str(a), "--out", str(tmp_path / "single"), *base])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["zeroshot", "--model", str(a), "--model", str(b), "--fusion", "mean-prob",
                            "--fusion-weight", "1", "--fusion-weight", "0", "--out", str(tmp_path / "w"), *base])
    assert r.exit_code == 0, r.output
    single = pd.read_csv(tmp_path / "single" / "predictions.csv")
    weighted = pd.read_csv(tmp_path / "w" / "predictions.csv")
    cols = [c for c in single.columns if c.startswith("score:")]
    np.testing.assert_allclose(weighted[cols].to_numpy(), single[cols].to_numpy(), atol=1e-6)
    r = runner.invoke(app, ["zeroshot", "--model", str(a), "--model", str(b), "--fusion", "m2m", "--view", "identity",
                            "--view", "hflip", "--aggregator", "max", "--out", str(tmp_path / "m2m"), *base])
    assert r.exit_code == 0, r.output
    run = json.loads((tmp_path / "m2m" / "run.json").read_text())
    assert "hflip" in json.dumps(run) and "max" in json.dumps(run)
    r = runner.invoke(app, ["zeroshot", "--model", str(a), "--model", str(b), "--fusion", "mean-prob",
                            "--fusion-weight", "1", "--out", str(tmp_path / "bad"), *base])
    assert r.exit_code != 0 and "fusion weights" in str(r.exception)
