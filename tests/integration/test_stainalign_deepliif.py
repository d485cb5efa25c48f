"""`histovl stainalign build-deepliif / fit / eval` end to end on the real DeepLIIF Ki67 strips.

Uses the tiny random-weight test encoder (fast): this checks the pipeline on real stain
colours and real labels, not the method's accuracy (see docs/stainalign.md), and that the aligned
model fits its own training pairs as well as the baseline (issue 20: the first version predicted
"high" for all 31).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

pytestmark = pytest.mark.integration


def test_fit_and_eval_on_deepliif_pairs(shared_data: Path, tmp_path: Path, tiny_clip) -> None:  # type: ignore[no-untyped-def]
    from histovl.cli.app import app
    from histovl.models import save_model_dir

    deepliif = shared_data / "deepliif-ki67"
    if not deepliif.is_dir():
        pytest.skip("../shared/data/deepliif-ki67 is not present")
    runner = CliRunner()
    pairs_dir = tmp_path / "pairs"
    built = runner.invoke(app, ["stainalign", "build-deepliif", "--deepliif", str(deepliif), "--out", str(pairs_dir)])
    assert built.exit_code == 0, built.output
    labels = (pairs_dir / "pairs.csv").read_text().splitlines()
    assert len(labels) - 1 >= 30 and any(",high," in r for r in labels) and any(",low," in r for r in labels)

    encoder_dir = save_model_dir(tiny_clip, tmp_path / "encoder")
    fit = runner.invoke(app, [
        "stainalign", "fit", "--pairs", str(pairs_dir / "pairs.csv"), "--out", str(tmp_path / "fit"),
        "--model", str(encoder_dir), "--epochs", "30", "--cv-folds", "4", "--n-boot", "200",
        "--cache", str(tmp_path / "cache"),
    ])
    assert fit.exit_code == 0, fit.output
    assert "aligned" in fit.output and "baseline" in fit.output
    metrics = json.loads((tmp_path / "fit" / "metrics.json").read_text())
    for block in (metrics, metrics["baseline"]):
        assert block["n"] >= 30
        for key in ("f1_weighted", "f1_macro", "accuracy", "auroc"):
            lo, hi = block["ci95"][key]
            assert 0.0 <= lo <= block[key] <= hi <= 1.0, (key, block)
    print("\n" + fit.output)  # aligned vs baseline with CIs, visible with -s

    ev = runner.invoke(app, [
        "stainalign", "eval", "--head", str(tmp_path / "fit"), "--pairs", str(pairs_dir / "pairs.csv"),
        "--out", str(tmp_path / "eval"), "--n-boot", "200", "--cache", str(tmp_path / "cache"),
    ])
    assert ev.exit_code == 0, ev.output
    for name in ("metrics.json", "predictions.csv", "run.json", "report.html"):
        assert (tmp_path / "eval" / name).is_file()
    assert len(list((tmp_path / "eval" / "heatmaps").glob("*.png"))) == 12
    print("\n" + ev.output)

    # issue 20: in-sample (the saved models on their own training pairs) the aligned model fits
    # as well as the baseline and does not predict one class for all (the first version did)
    in_sample = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert in_sample["auroc"] >= in_sample["baseline"]["auroc"] - 0.02, in_sample
    predictions = pd.read_csv(tmp_path / "eval" / "predictions.csv")
    assert predictions["prediction"].nunique() == 2
    assert predictions["score:high"].max() - predictions["score:high"].min() >= 0.5
    decision = json.loads((tmp_path / "fit" / "run.json").read_text())["extra"]["decision"]
    assert len(decision["aligned"]["cv_fold_thresholds"]) == 4 and decision["aligned"]["schedule"] == "joint"
