"""`histovl fewshot eval` / `fit` end to end with the tiny open_clip model, and their errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from histovl.cli.app import app, main
from tests.golden.cases import PROMPTS_YAML
from tests.helpers.tiny import register_tiny_open_clip_arch, save_safetensors, tiny_open_clip_model

CLASSES = ("lung_aca", "lung_n", "lung_scc")


def write_tiles(root: Path, name: str, per_class: int, seed: int, per_group: int = 2) -> Path:
    """Coloured-noise tiles, `per_group` tiles of one class per patient group; returns the manifest."""
    rng = np.random.default_rng(seed)
    rows = ["path,label,group"]
    for ci, cls in enumerate(CLASSES):
        (root / name / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = np.zeros((40, 48, 3), dtype=np.int16)
            base[..., ci] = 140 + 8 * (i % 4)
            arr = np.clip(base + rng.integers(0, 100, size=base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / name / cls / f"{cls}_{i}.png")
            rows.append(f"{name}/{cls}/{cls}_{i}.png,{cls},{name}-{cls}-p{i // per_group}")
    manifest = root / f"{name}.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


@pytest.fixture(scope="module")
def fixture(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("fewshot")
    arch = register_tiny_open_clip_arch(root)
    weights = save_safetensors(tiny_open_clip_model(7), root / "tiny.safetensors")
    other = save_safetensors(tiny_open_clip_model(8), root / "other.safetensors")
    (root / "prompts.yaml").write_text(PROMPTS_YAML)
    return {
        "model": f"open_clip:{arch}:{weights}", "other_model": f"open_clip:{arch}:{other}",
        "data": str(write_tiles(root, "site_a", 12, seed=1)), "query": str(write_tiles(root, "site_b", 5, seed=2)),
        "prompts": str(root / "prompts.yaml"), "cache": str(root / "cache"),
    }


def run(args: list[str]):
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def common(f: dict[str, str]) -> list[str]:
    return ["--cache", f["cache"], "--n-boot", "30", "--quiet", "--workers", "0"]


def test_eval_one_data_set_split_by_group(fixture, tmp_path):
    out = tmp_path / "run"
    result = run(["fewshot", "eval", "--model", fixture["model"], "--data", fixture["data"], "--prompts",
                  fixture["prompts"], "--out", str(out), "--shots", "1,2,all", "--seeds", "2", *common(fixture)])
    assert "zero-shot" in result.output and "text-linear" in result.output
    for name in ("fewshot.csv", "metrics.json", "support_ids.csv", "split.csv", "fewshot_f1.png", "run.json", "report.html"):
        assert (out / name).is_file(), name
    table = pd.read_csv(out / "fewshot.csv")
    assert list(table.columns) == ["method", "shots", "seed", "accuracy", "balanced_accuracy", "f1_macro", "f1_weighted", "auroc_macro"]
    assert set(table["method"]) == {"zero-shot", "linear", "knn", "simpleshot", "tip", "text-linear"}
    assert len(table) == 1 + 5 * (2 + 2 + 1)  # zero-shot, then 1 and 2 shots x 2 seeds, all x 1
    split = pd.read_csv(out / "split.csv")
    query, pool = split[split["role"] == "query"], split[split["role"] == "pool"]
    assert set(query["group"]).isdisjoint(pool["group"]) and set(query["unit"]).isdisjoint(pool["unit"])
    supports = pd.read_csv(out / "support_ids.csv")
    assert set(supports["path"]) <= set(pool["path"]) and set(supports["path"]).isdisjoint(query["path"])
    assert (supports[supports["shots"] == "2"].groupby(["seed", "class"]).size() == 2).all()
    metrics = json.loads((out / "metrics.json").read_text())
    block = metrics["results"]["linear"]["2"]
    assert block["n_seeds"] == 2 and set(block["ci95"]) == set(block["mean"]) and block["std"]["f1_macro"] is not None
    assert metrics["zero_shot"]["f1_macro"] is not None and metrics["bootstrap_unit"] == "group"
    run_record = json.loads((out / "run.json").read_text())
    assert run_record["config"]["shots"] == ["1", "2", "all"] and run_record["config"]["n_boot"] == 30


def test_eval_is_reproducible_and_cross_site(fixture, tmp_path):
    outs = []
    for name in ("a", "b"):
        outs.append(tmp_path / name)
        run(["fewshot", "eval", "--model", fixture["model"], "--support", fixture["data"], "--query", fixture["query"],
             "--out", str(outs[-1]), "--shots", "1,4", "--seeds", "2", "--method", "linear", "--method", "knn", *common(fixture)])
    for name in ("fewshot.csv", "support_ids.csv", "metrics.json"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
    table = pd.read_csv(outs[0] / "fewshot.csv")
    assert set(table["method"]) == {"linear", "knn"}  # no prompts: no zero-shot row
    split = pd.read_csv(outs[0] / "split.csv")
    assert (split["role"] == "query").sum() == 15


def test_fit_writes_a_head_that_predicts_and_checks_its_encoder(fixture, tmp_path):
    from histovl.errors import HistovlError
    from histovl.heads import load_head
    from histovl.models import load_model

    out = tmp_path / "head"
    run(["fewshot", "fit", "--model", fixture["model"], "--data", fixture["data"], "--prompts", fixture["prompts"],
         "--method", "tip", "--out", str(out), "--cache", fixture["cache"], "--quiet", "--workers", "0"])
    head = load_head(out)
    assert head.method == "tip" and head.classes == list(CLASSES) and (out / "run.json").is_file()
    encoder = load_model(fixture["model"])
    head.check_encoder(encoder)
    assert head.weights_id == encoder.weights_id
    from histovl.embed import encode_images

    emb = encode_images(encoder, sorted(Path(fixture["query"]).parent.glob("site_b/*/*.png")), progress=False).embeddings
    probs = head.predict_proba(emb)
    assert probs.shape == (15, 3) and np.allclose(probs.sum(axis=1), 1.0)
    with pytest.raises(HistovlError, match="fitted on"):
        head.check_encoder(load_model(fixture["other_model"]))


def exit_code_and_error(monkeypatch, capsys, args: list[str]) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["histovl", *args])
    with pytest.raises(SystemExit) as stop:
        main()
    return int(stop.value.code), capsys.readouterr().err


def test_bad_input_exits_2_with_one_line_and_writes_nothing(fixture, tmp_path, monkeypatch, capsys):
    out = tmp_path / "bad"
    base = ["fewshot", "eval", "--model", fixture["model"], "--data", fixture["data"], "--out", str(out), *common(fixture)]
    code, err = exit_code_and_error(monkeypatch, capsys, [*base, "--shots", "1,40"])
    assert code == 2 and "'lung_aca'" in err and "12 image(s)" in err and "--shots 40" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
    code, err = exit_code_and_error(monkeypatch, capsys, [*base, "--shots", "9"])  # fits the data, not the pool
    assert code == 2 and "support pool" in err and not out.exists()
    code, err = exit_code_and_error(monkeypatch, capsys, [*base, "--method", "tip"])
    assert code == 2 and "--prompts" in err
    code, err = exit_code_and_error(monkeypatch, capsys, ["fewshot", "eval", "--model", fixture["model"], "--out", str(out)])
    assert code == 2 and "--data" in err


def test_all_shots_runs_whatever_the_class_sizes(fixture, tmp_path):
    out = tmp_path / "all"
    run(["fewshot", "eval", "--model", fixture["model"], "--data", fixture["data"], "--out", str(out),
         "--shots", "all", "--method", "simpleshot", *common(fixture)])
    assert len(pd.read_csv(out / "fewshot.csv")) == 1
