"""`predict` on image sets: unlabelled folders and manifests, labelled data, heads, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from histovl.cli.app import app
from histovl.embed import encode_images
from histovl.predict import PredictConfig, predict
from histovl.zeroshot import zeroshot
from tests.unit.predict.conftest import CLASSES, StandInHead, write_stand_in_head

SCORES = [f"score:{c}" for c in CLASSES]


def _check_table(frame: pd.DataFrame, labelled: bool) -> None:
    assert list(frame.columns) == ["path", *(["label"] if labelled else []), "prediction", "margin", *SCORES]
    probs = frame[SCORES].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    top2 = np.sort(probs, axis=1)[:, ::-1][:, :2]
    np.testing.assert_allclose(frame["margin"], top2[:, 0] - top2[:, 1], atol=1e-12)
    assert (frame["prediction"] == [CLASSES[i] for i in probs.argmax(axis=1)]).all()


def test_unlabelled_nested_folder(tiny_clip, nested_folder, prompts, tmp_path):
    out = tmp_path / "run"
    res = predict(tiny_clip, nested_folder, out, prompts=prompts, cache=tmp_path / "c", progress=False)
    frame = pd.read_csv(out / "predictions.csv")
    _check_table(frame, labelled=False)
    assert sorted(frame["path"]) == ["a.png", "b.jpg", "c.png", "slideA/1.png", "slideA/2.png", "slideB/4.png", "slideB/deep/3.png"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["labelled"] is False and metrics["n"] == 7 and sum(metrics["predicted_counts"].values()) == 7
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["prompts"] == "test-lung" and run["config"]["source"] == "prompts"
    assert run["config"]["labelled"] is False and run["config"]["classes"] == CLASSES
    assert {"cache", "batch_size", "n_boot", "seed"} <= set(run["config"])  # RunOptions.record()
    assert "Least certain" in (out / "report.html").read_text()
    assert res.kind == "images" and res.n_encoded == 7
    again = predict(tiny_clip, nested_folder, None, prompts=prompts, cache=tmp_path / "c", progress=False)
    assert again.n_encoded == 0 and again.n_cached == 7 and again.out is None
    np.testing.assert_allclose(again.probabilities, res.probabilities)


def test_unlabelled_manifest(tiny_clip, nested_folder, prompts, tmp_path):
    manifest = nested_folder / "m.csv"
    manifest.write_text("path\nslideA/2.png\na.png\nslideB/deep/3.png\n")
    res = predict(tiny_clip, manifest, tmp_path / "run", prompts=prompts, use_cache=False, progress=False)
    _check_table(res.predictions, labelled=False)
    assert list(res.predictions["path"]) == ["slideA/2.png", "a.png", "slideB/deep/3.png"]  # manifest order
    assert res.metrics["labelled"] is False


def test_labelled_metrics_equal_zeroshots(tiny_clip, class_folder, prompts, tmp_path):
    zs = zeroshot(tiny_clip, class_folder, prompts, tmp_path / "zs", n_boot=50, use_cache=False, progress=False)
    res = predict(tiny_clip, class_folder, tmp_path / "p", prompts=prompts, n_boot=50, use_cache=False, progress=False)
    assert res.metrics["labelled"] is True
    for key, value in zs.metrics.items():
        assert res.metrics[key] == value, key
    _check_table(res.predictions, labelled=True)
    ref = pd.read_csv(tmp_path / "zs" / "predictions.csv")
    got = pd.read_csv(tmp_path / "p" / "predictions.csv")
    pd.testing.assert_frame_equal(got.drop(columns="margin"), ref)
    assert "Confusion matrix" in (tmp_path / "p" / "report.html").read_text()


def test_labelled_manifest_with_groups_matches_zeroshot(tiny_clip, class_folder, prompts, tmp_path):
    rows = ["path,label,group"] + [f"{p.relative_to(class_folder).as_posix()},{p.parent.name},g{i % 3}"
                                   for i, p in enumerate(sorted(class_folder.rglob("*.png")))]
    manifest = class_folder / "m.csv"
    manifest.write_text("\n".join(rows) + "\n")
    zs = zeroshot(tiny_clip, manifest, prompts, None, n_boot=30, use_cache=False, progress=False)
    res = predict(tiny_clip, manifest, None, prompts=prompts, n_boot=30, use_cache=False, progress=False)
    assert res.metrics["bootstrap_unit"] == "group"
    assert {k: res.metrics[k] for k in zs.metrics} == zs.metrics


def test_class_folders_ignored_or_not_classes_are_unlabelled(tiny_clip, class_folder, prompts, tmp_path):
    res = predict(tiny_clip, class_folder, None, prompts=prompts, labels="ignore", use_cache=False, progress=False)
    assert res.metrics["labelled"] is False and "label" not in res.predictions and len(res.predictions) == 12
    (class_folder / "lung_n").rename(class_folder / "batch2")  # not a class name: just a folder
    res = predict(tiny_clip, class_folder, None, prompts=prompts, use_cache=False, progress=False)
    assert res.metrics["labelled"] is False and len(res.predictions) == 12


def test_head_scores_images(tiny_clip, nested_folder, prompts, tmp_path):
    head = StandInHead(CLASSES[::-1], tiny_clip.weights_id)
    res = predict(tiny_clip, nested_folder, tmp_path / "h", head=head, use_cache=False, progress=False)
    emb = encode_images(tiny_clip, sorted(p for p in nested_folder.rglob("*") if p.is_file()), progress=False).embeddings
    assert [c for c in res.predictions.columns if c.startswith("score:")] == [f"score:{c}" for c in CLASSES[::-1]]
    order = np.argsort(res.predictions["path"].map(lambda p: str(nested_folder / p)).to_numpy())
    np.testing.assert_allclose(res.probabilities[order], head.predict_proba(emb), atol=1e-6)
    run = json.loads((tmp_path / "h" / "run.json").read_text())
    assert run["config"]["source"] == "head" and run["extra"]["head_weights_id"] == tiny_clip.weights_id
    both = predict(tiny_clip, nested_folder, None, PredictConfig(prompts=prompts, head=head), use_cache=False, progress=False)
    np.testing.assert_allclose(both.probabilities, res.probabilities)  # the head scores; prompts only checked


def test_cli_unlabelled_folder_and_head_folder(nested_folder, prompts, tmp_path, stand_in_heads):
    from histovl.models import load_model, save_model_dir
    from tests.helpers.tiny import tiny_encoder

    model_dir = save_model_dir(tiny_encoder(0), tmp_path / "tiny-model")
    base = ["predict", "--model", str(model_dir), "--data", str(nested_folder), "--no-cache", "--quiet"]
    r = CliRunner().invoke(app, [*base, "--prompts", str(prompts), "--out", str(tmp_path / "o1")])
    assert r.exit_code == 0, r.output
    assert "predicted:" in r.output and (tmp_path / "o1" / "run.json").is_file()
    head_dir = write_stand_in_head(tmp_path / "head", CLASSES, load_model(model_dir).weights_id)
    r = CliRunner().invoke(app, [*base, "--head", str(head_dir), "--prompts", str(prompts), "--out", str(tmp_path / "o2")])
    assert r.exit_code == 0, r.output
    run = json.loads((tmp_path / "o2" / "run.json").read_text())
    assert run["config"]["source"] == "head+prompts" and run["config"]["head"] == str(head_dir)


def test_multilabel_manifest_is_refused_unless_ignored(tiny_clip, nested_folder, prompts):
    manifest = nested_folder / "ml.csv"
    manifest.write_text("path,labels\na.png,lung_n;lung_aca\nc.png,lung_n\n")
    with pytest.raises(ValueError, match="multi-label"):
        predict(tiny_clip, manifest, None, prompts=prompts, use_cache=False, progress=False)
    res = predict(tiny_clip, manifest, None, prompts=prompts, labels="ignore", use_cache=False, progress=False)
    assert len(res.predictions) == 2
