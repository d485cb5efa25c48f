"""`histovl robustness` with two models on real LC25000 tiles: CSV, figures and report.

The two models are the tiny test architecture with two seeds, saved as model directories and
named by path on the command line, so the whole CLI path (load, sweep, outputs) runs in about a
minute. Tiles are copied into tmp (never into the repository).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from histovl.cli.app import app
from histovl.models import save_model_dir
from histovl.robustness import CSV_COLUMNS
from tests.helpers.tiny import tiny_encoder

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lung_sample(shared_data, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lung")
    for cls in ("lung_aca", "lung_n", "lung_scc"):
        (root / cls).mkdir()
        for p in sorted((shared_data / "lc25000-lung" / cls).glob("*.jpeg"))[:8]:
            shutil.copy(p, root / cls / p.name)
    return root


def test_two_models_write_csv_figures_and_report(lung_sample, tmp_path):
    models = [save_model_dir(tiny_encoder(seed), tmp_path / f"tiny-{seed}") for seed in (0, 1)]
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "robustness", "--model", str(models[0]), "--model", str(models[1]), "--data", str(lung_sample),
        "--prompts", "lung-he-v1", "--out", str(out), "--cache", str(tmp_path / "cache"), "--n-boot", "50",
        "--quiet",
    ])
    assert result.exit_code == 0, result.output
    csv = pd.read_csv(out / "robustness.csv")
    assert tuple(csv.columns) == CSV_COLUMNS
    assert len(csv) == 2 * 29 and csv["model"].nunique() == 2
    assert set(csv["corruption"]) == {"none", "brightness", "contrast", "blur", "resolution", "saturation", "hue", "markup"}
    assert csv[list(CSV_COLUMNS[3:])].notna().all().all()
    for fig in ("robustness_accuracy", "robustness_f1_macro", "robustness_ha_at_5", "robustness_ha_at_10", "corruption_gallery"):
        assert (out / "figures" / f"{fig}.png").stat().st_size > 1000
    html = (out / "report.html").read_text()
    assert "Degradation: accuracy" in html and "corruption_gallery.png" in html
    run = json.loads((out / "run.json").read_text())
    assert len(run["models"]) == 2 and run["config"]["corruptions"]
    # A second run is served entirely from the cache and gives the same CSV.
    again = CliRunner().invoke(app, [
        "robustness", "--model", str(models[0]), "--model", str(models[1]), "--data", str(lung_sample),
        "--prompts", "lung-he-v1", "--out", str(tmp_path / "out2"), "--cache", str(tmp_path / "cache"),
        "--n-boot", "50", "--quiet", "--no-predictions",
    ])
    assert again.exit_code == 0, again.output
    metrics = json.loads((tmp_path / "out2" / "metrics.json").read_text())
    assert all(s["n_encoded"] == 0 for s in metrics["encode_stats"])
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "out2" / "robustness.csv"), csv)
