"""End to end with the tiny model: `retrieve`, `build_index`, `query_index` and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from histovl.retrieval import ModelMismatchError, VectorIndex, build_index, query_index, retrieve
from histovl.retrieval.evaluation import FIXED_METRICS
from tests.helpers.tiny import tiny_encoder
from tests.unit.retrieval.brute_force import brute_force_topk


@pytest.fixture
def grouped_manifest(class_folder: Path) -> Path:
    """The class folder as a CSV manifest with two images per group (a patient)."""
    rows = []
    for i, p in enumerate(sorted(class_folder.rglob("*.png"))):
        rows.append({"path": p.relative_to(class_folder).as_posix(), "label": p.parent.name, "group": f"pt{i // 2}"})
    manifest = class_folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def test_retrieve_writes_every_output_and_matches_brute_force(tiny_clip, grouped_manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = retrieve(tiny_clip, grouped_manifest, out=out, use_cache=False, num_workers=0, n_boot=50, progress=False, save_index=True)
    for name in ("metrics.json", "predictions.csv", "run.json", "report.html"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 12
    for key in FIXED_METRICS:
        assert 0.0 <= metrics[key] <= 1.0 and key in metrics["ci95"]
    preds = pd.read_csv(out / "predictions.csv")
    assert {"path", "label", "group", "prediction", "score:lung_aca", "top10_path", "top10_score"} <= set(preds.columns)
    # Brute force over the same embeddings: same neighbours, and never the query's own patient.
    emb = res.search.index.reconstruct(np.arange(12))
    groups = res.search.index.records["group"].tolist()
    ref = brute_force_topk(emb, emb, 10, exclude_ids=list(range(12)), db_groups=groups, query_groups=groups)
    for i, r in enumerate(ref):
        assert [j for j in res.search.result.ids[i] if j >= 0] == [j for j, _ in r]
    html = (out / "report.html").read_text()
    assert "Query" in html and "HA" in html
    assert VectorIndex.open(out / "index").ntotal == 12


def test_retrieve_skips_unreadable_images_when_asked(tiny_clip, class_folder: Path, tmp_path: Path) -> None:
    (class_folder / "lung_n" / "broken.png").write_bytes(b"\x89PNG not really")
    res = retrieve(tiny_clip, class_folder, out=tmp_path / "o", use_cache=False, num_workers=0, n_boot=0,
                   on_error="skip", progress=False)
    assert res.metrics["n"] == 12 and res.metrics["n_skipped"] == 1
    run = json.loads((tmp_path / "o" / "run.json").read_text())
    assert run["n_skipped"] == 1 and "broken.png" in run["skipped"][0]["path"]


def test_build_append_and_query_by_image_and_text(tiny_clip, class_folder: Path, tmp_path: Path) -> None:
    folder = tmp_path / "index"
    from histovl.data import load_image_set

    first = build_index(tiny_clip, load_image_set(class_folder).subset(range(4)), folder, use_cache=False, num_workers=0, progress=False)
    assert len(first) == 4
    again = build_index(tiny_clip, class_folder, folder, append=True, use_cache=False, num_workers=0, progress=False)
    assert len(again) == 12  # the 4 already there were not added twice
    image = sorted((class_folder / "lung_n").glob("*.png"))[0]
    table = query_index(folder, image=image, k=5, model=tiny_clip, out=tmp_path / "q.csv")
    assert len(table) == 5 and str(image) not in set(table["path"])
    assert table["score"].is_monotonic_decreasing
    with_self = query_index(folder, image=image, k=1, model=tiny_clip, include_self=True)
    assert with_self["path"][0] == str(image) and with_self["score"][0] == pytest.approx(1.0, abs=1e-5)
    by_text = query_index(folder, text="benign lung tissue", k=3, model=tiny_clip)
    expected = tiny_clip.encode_text(["benign lung tissue"]).detach().numpy()
    stored = VectorIndex.open(folder)
    ref = brute_force_topk(stored.reconstruct(np.arange(12)), expected, 3)[0]
    assert by_text["path"].tolist() == [stored.records["path"][j] for j, _ in ref]
    assert pd.read_csv(tmp_path / "q.csv").shape[0] == 5


def test_query_with_another_model_is_refused(tiny_clip, class_folder: Path, tmp_path: Path) -> None:
    build_index(tiny_clip, class_folder, tmp_path / "ix", use_cache=False, num_workers=0, progress=False)
    with pytest.raises(ModelMismatchError, match="different models"):
        query_index(tmp_path / "ix", text="x", model=tiny_encoder(1))
    with pytest.raises(ValueError, match="exactly one"):
        query_index(tmp_path / "ix", model=tiny_clip)


def test_cli_retrieve_and_index(tiny_clip, class_folder: Path, tmp_path: Path) -> None:
    from histovl.cli.app import app
    from histovl.models import save_model_dir

    model_dir = save_model_dir(tiny_clip, tmp_path / "model")
    runner = CliRunner()
    common = ["--no-cache", "--workers", "0", "--quiet"]
    r = runner.invoke(app, ["retrieve", "-m", str(model_dir), "-d", str(class_folder), "-o", str(tmp_path / "r"),
                            "--n-boot", "20", *common])
    assert r.exit_code == 0, r.output
    assert "ha@5" in r.output and (tmp_path / "r" / "metrics.json").is_file()
    r = runner.invoke(app, ["index", "build", "-m", str(model_dir), "-d", str(class_folder), "-o", str(tmp_path / "ix"),
                            "--storage", "flat-f16", *common])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["index", "query", "-i", str(tmp_path / "ix"), "--text", "tumour", "--k", "3",
                            "-o", str(tmp_path / "top.csv")])
    assert r.exit_code == 0, r.output
    assert len(pd.read_csv(tmp_path / "top.csv")) == 3
