"""`histovl fewshot eval` on real LC25000 tiles with histovl-lite: the near-duplicate-aware split
keeps every copy of an original on one side, and a small run (2 shot counts, 2 seeds, 60 tiles)
writes every output with sensible numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image, ImageOps
from typer.testing import CliRunner

from histovl.cli.app import app

pytestmark = pytest.mark.integration

CLASSES = ("lung_aca", "lung_n", "lung_scc")


@pytest.fixture(scope="module")
def lung_manifest(shared_data, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """16 real tiles per class plus a mirrored and a rotated copy of 2 of them (near-duplicates by
    construction); the copies live in tmp, never in the repository."""
    root = tmp_path_factory.mktemp("lung-fewshot")
    rows, copy_of = [], {}
    for cls in CLASSES:
        tiles = sorted((shared_data / "lc25000-lung" / cls).glob("*.jpeg"))[::90][:16]
        rows += [{"path": str(p), "label": cls} for p in tiles]
        for k, p in enumerate(tiles[:2]):
            for name, op in (("mirror", ImageOps.mirror), ("rot90", lambda im: im.rotate(90))):
                target = root / f"{cls}_{k}_{name}.png"
                op(Image.open(p).convert("RGB")).save(target)
                rows.append({"path": str(target), "label": cls})
                copy_of[str(target)] = str(p)
    manifest = root / "lung.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest, copy_of


def test_fewshot_eval_lc25000_small_run(lung_manifest, tmp_path):
    manifest, copy_of = lung_manifest
    out = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "fewshot", "eval", "--model", "histovl-lite", "--data", str(manifest), "--prompts", "lung-he-v1",
        "--out", str(out), "--shots", "1,4", "--seeds", "2", "--n-boot", "100", "--allow-absolute-paths",
        "--cache", str(tmp_path / "cache"), "--quiet",
    ], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    split = pd.read_csv(out / "split.csv")
    root = json.loads((out / "run.json").read_text())["extra"]["paths_root"]
    by_path = {str(Path(root) / p): row for p, row in zip(split["path"], split.itertuples(), strict=True)}
    for copy, original in copy_of.items():  # every copy sits with its original
        assert by_path[copy].unit == by_path[original].unit and by_path[copy].role == by_path[original].role
    query, pool = split[split["role"] == "query"], split[split["role"] == "pool"]
    assert set(query["unit"]).isdisjoint(pool["unit"]) and len(query) > 0
    supports = pd.read_csv(out / "support_ids.csv")
    assert set(supports["path"]).isdisjoint(query["path"])

    table = pd.read_csv(out / "fewshot.csv")
    assert len(table) == 1 + 5 * 2 * 2
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["zero_shot"]["f1_macro"] > 0.5  # histovl-lite knows LC25000's classes
    four = {m: metrics["results"][m]["4"]["mean"]["f1_macro"] for m in metrics["methods"]}
    assert max(four.values()) > 0.6, four
    for m in metrics["methods"]:
        lo, hi = metrics["results"][m]["4"]["ci95"]["f1_macro"]
        assert lo is not None and lo <= hi
