"""`histovl compare` end to end: tiny zero-shot runs, synthetic run folders, bad inputs."""

from __future__ import annotations

import json
import shutil
import sys
from contextlib import redirect_stderr
from io import StringIO
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from histovl.cli.app import app, main
from histovl.compare import CompareConfig, compare
from histovl.compare.pairwise import COMPARISON_COLUMNS
from histovl.reports import predictions_frame

CLASSES = ["lung_aca", "lung_n", "lung_scc"]


def _write_run(folder: Path, probs: np.ndarray, labels: list[str], paths: list[str], *,
               groups: list[str] | None = None, input_hash: str = "0" * 64, classes: list[str] = CLASSES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    predictions_frame(paths, labels, probs, classes, groups=groups).to_csv(folder / "predictions.csv", index=False)
    record = {"command": "histovl zeroshot", "input_hash": input_hash, "models": [{"name": "tiny"}],
              "prompt_set": {"name": folder.name}, "config": {}}
    (folder / "run.json").write_text(json.dumps(record))
    return folder


def _synthetic_runs(root: Path, n_runs: int = 3, n: int = 60, n_classes: int = 3, groups: bool = True) -> list[Path]:
    rng = np.random.default_rng(0)
    classes = CLASSES[:n_classes] if n_classes <= 3 else [f"c{i}" for i in range(n_classes)]
    y = rng.integers(0, n_classes, n)
    labels = [classes[i] for i in y]
    paths = [f"tiles/{i:03d}.png" for i in range(n)]
    out = []
    for k in range(n_runs):
        z = rng.normal(size=(n, n_classes))
        z[np.arange(n), y] += 1.0 + k
        p = np.exp(z * (1 + k)) / np.exp(z * (1 + k)).sum(axis=1, keepdims=True)
        out.append(_write_run(root / f"run{k}", p, labels, paths, classes=classes,
                              groups=[f"p{i // 4}" for i in range(n)] if groups else None))
    return out


def test_zero_shot_runs_with_two_prompt_sets_compare_end_to_end(tiny_clip, class_folder, tmp_path):
    from histovl.zeroshot import zeroshot

    runs = []
    for name, templates in (("plain", ["{}"]), ("sentence", ["an H&E image of {}.", "a tile of {}."])):
        prompts = tmp_path / f"{name}.yaml"
        prompts.write_text(yaml.safe_dump({"name": name, "templates": templates, "classes": {
            "lung_aca": ["adenocarcinoma"], "lung_n": ["benign lung"], "lung_scc": ["squamous carcinoma"]}}))
        zeroshot(tiny_clip, class_folder, prompts, tmp_path / name, cache=tmp_path / "c", n_boot=20, progress=False)
        runs.append(tmp_path / name)
    out = tmp_path / "cmp"
    res = CliRunner().invoke(app, ["compare", *map(str, runs), "--out", str(out), "--n-boot", "50"])
    assert res.exit_code == 0, res.output
    assert "plain − sentence  accuracy" in res.output
    table = pd.read_csv(out / "comparison.csv")
    assert tuple(table.columns) == COMPARISON_COLUMNS and len(table) == len(CompareConfig().metrics) + 3  # + 3 one-vs-rest DeLong rows
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 12 and [r["prompt_set"] for r in metrics["runs"]] == ["plain", "sentence"]
    assert metrics["runs"][0]["calibration"]["n_bins"] == 15
    assert {"ece_uniform", "ece_quantile", "brier", "nll"} <= set(metrics["runs"][0]["calibration"])
    run = json.loads((out / "run.json").read_text())
    assert run["command"] == "histovl compare" and run["extra"]["images_input_hash"] == metrics["input_hash"]
    html = (out / "report.html").read_text()
    assert "reliability.png" in html and "differences.png" in html
    # the zero-shot runs themselves now report calibration and draw it
    assert json.loads((runs[0] / "metrics.json").read_text())["ece_bins"] == 15
    assert "Calibration" in (runs[0] / "report.html").read_text()


def test_three_runs_get_holm_and_groups_from_the_predictions(tmp_path):
    runs = _synthetic_runs(tmp_path)
    res = compare(runs, tmp_path / "o", n_boot=100)
    assert res.metrics["holm"] and res.metrics["bootstrap_unit"] == "group" and res.metrics["n_groups"] == 15
    acc = res.table[res.table["metric"] == "accuracy"]
    assert len(acc) == 3 and (acc["test"] == "mcnemar_exact").all()
    assert (acc["p_holm"] >= acc["p_value"] - 1e-15).all()
    assert res.table[res.table["metric"] == "auroc_macro"]["test"].isna().all()  # 3 classes: bootstrap only
    ovr = res.table[res.table["test"] == "delong_ovr"]
    assert len(ovr) == 3 * 3 and set(ovr["metric"]) == {f"auroc_ovr:{c}" for c in CLASSES}
    assert (ovr["p_holm"] >= ovr["p_value"] - 1e-15).all() and (ovr["ci_low"] <= ovr["difference"]).all()
    first = res.metrics["pairs"][0]["delong_one_vs_rest"]
    assert [t["class"] for t in first] == CLASSES and all(len(t["ci95"]) == 2 for t in first)


def test_two_runs_are_not_adjusted_and_binary_runs_get_delong(tmp_path):
    runs = _synthetic_runs(tmp_path, n_runs=2, n_classes=2, groups=False)
    res = compare(runs, None, n_boot=50)
    assert not res.metrics["holm"] and res.metrics["bootstrap_unit"] == "item"
    auroc = res.table[res.table["metric"] == "auroc_macro"].iloc[0]
    assert auroc["test"] == "delong" and 0 <= auroc["p_value"] <= 1 and auroc["p_holm"] == auroc["p_value"]


def test_a_run_against_itself_differs_by_exactly_zero(tmp_path):
    run = _synthetic_runs(tmp_path, n_runs=1)[0]
    shutil.copytree(run, tmp_path / "copy")
    res = compare([run, tmp_path / "copy"], None, n_boot=100)
    assert (res.table[["difference", "ci_low", "ci_high"]] == 0).all().all()
    assert (res.table.loc[res.table["metric"] == "accuracy", "p_value"] == 1.0).all()


def test_calibrate_fits_a_temperature_per_run_on_a_group_split(tmp_path):
    runs = _synthetic_runs(tmp_path, n_runs=2, n=120)
    res = compare(runs, tmp_path / "o", calibrate=0.4, n_boot=20)
    scaling = res.metrics["temperature_scaling"]
    assert scaling["split_unit"] == "group" and scaling["n_calibration"] + scaling["n_evaluation"] == 120
    assert 0.25 * 120 <= scaling["n_calibration"] <= 0.55 * 120 and scaling["n_calibration"] % 4 == 0
    for res_run in scaling["runs"].values():
        assert res_run["calibration_nll_after"] <= res_run["calibration_nll_before"] + 1e-12
        assert res_run["after"]["accuracy"] == res_run["before"]["accuracy"]
    assert (tmp_path / "o" / "figures" / "reliability_after_scaling.png").is_file()


def _invoke(args: list[str]) -> tuple[int, str]:
    """Run the console entry point (user errors: one line on stderr, exit status 2)."""
    err = StringIO()
    old = sys.argv
    sys.argv = ["histovl", *args]
    try:
        with redirect_stderr(err), pytest.raises(SystemExit) as exit_info:
            main()
    finally:
        sys.argv = old
    return int(exit_info.value.code or 0), err.getvalue()


def test_missing_predictions_is_a_one_line_error_and_nothing_is_written(tmp_path):
    runs = _synthetic_runs(tmp_path, n_runs=2)
    (runs[1] / "predictions.csv").unlink()
    code, err = _invoke(["compare", *map(str, runs), "--out", str(tmp_path / "o")])
    assert code == 2 and "run1/predictions.csv is missing" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_one_run_only_is_an_error(tmp_path):
    runs = _synthetic_runs(tmp_path, n_runs=1)
    code, err = _invoke(["compare", str(runs[0]), "--out", str(tmp_path / "o")])
    assert code == 2 and "at least two run folders" in err and not (tmp_path / "o").exists()


def test_runs_over_different_images_name_the_first_differing_image(tmp_path):
    runs = _synthetic_runs(tmp_path, n_runs=2)
    frame = pd.read_csv(runs[1] / "predictions.csv")
    frame.loc[5, "path"] = "tiles/zzz_other.png"
    frame.to_csv(runs[1] / "predictions.csv", index=False)
    code, err = _invoke(["compare", *map(str, runs), "--out", str(tmp_path / "o")])
    assert code == 2 and "tiles/005.png is in run0 but not in run1" in err
    assert not (tmp_path / "o").exists()


def test_same_paths_but_another_input_hash_is_refused(tmp_path):
    runs = _synthetic_runs(tmp_path, n_runs=2)
    record = json.loads((runs[1] / "run.json").read_text())
    record["input_hash"] = "f" * 64
    (runs[1] / "run.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="input_hash differs"):
        compare(runs, tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_multilabel_and_multi_condition_tables_are_refused(tmp_path):
    runs = _synthetic_runs(tmp_path, n_runs=2)
    frame = pd.read_csv(runs[1] / "predictions.csv")
    pd.concat([frame, frame]).to_csv(runs[1] / "predictions.csv", index=False)
    with pytest.raises(ValueError, match="more than once"):
        compare(runs, None)


def test_groups_file_and_bad_groups_file(tmp_path):
    runs = _synthetic_runs(tmp_path, n_runs=2, groups=False)
    paths = pd.read_csv(runs[0] / "predictions.csv")["path"]
    groups = tmp_path / "groups.csv"
    pd.DataFrame({"path": paths, "group": [f"g{i // 10}" for i in range(len(paths))]}).to_csv(groups, index=False)
    res = compare(runs, None, groups=groups, n_boot=20)
    assert res.metrics["n_groups"] == 6 and res.metrics["groups_source"].startswith("file")
    pd.DataFrame({"path": paths[:3], "group": ["a", "b", "c"]}).to_csv(groups, index=False)
    with pytest.raises(ValueError, match="has no row for"):
        compare(runs, None, groups=groups)


def _with_split(runs: list[Path], split_of: dict[str, str]) -> None:
    """Add a `split` column (by group) to every run's predictions.csv."""
    for run in runs:
        frame = pd.read_csv(run / "predictions.csv", dtype=str, keep_default_na=False)
        frame["split"] = [split_of.get(g, "test") for g in frame["group"]]
        frame.to_csv(run / "predictions.csv", index=False)


def test_calibrate_on_a_named_split_lowers_nll_on_it_and_reports_on_the_rest(tmp_path):
    runs = _synthetic_runs(tmp_path, n_runs=2, n=120)
    _with_split(runs, {f"p{i}": "cal" for i in range(0, 30, 3)})  # 10 of 30 groups
    res = compare(runs, tmp_path / "o", calibrate="cal", n_boot=20)
    scaling = res.metrics["temperature_scaling"]
    assert scaling["split"] == "cal" and scaling["fraction"] is None and "predictions.csv" in scaling["split_source"]
    assert (scaling["n_calibration"], scaling["n_evaluation"]) == (40, 80)
    for fitted in scaling["runs"].values():
        assert fitted["calibration_nll_after"] < fitted["calibration_nll_before"]
        assert fitted["after"]["accuracy"] == fitted["before"]["accuracy"]
    html = (tmp_path / "o" / "report.html").read_text()
    assert "split &#x27;cal&#x27;" in html or "split 'cal'" in html
    assert CompareConfig(calibrate="0.3").calibrate == 0.3 and CompareConfig(calibrate="cal").calibrate == "cal"


def test_named_calibration_split_errors(tmp_path):
    from histovl.compare.runs import CompareInputError

    runs = _synthetic_runs(tmp_path, n_runs=2, n=40)
    with pytest.raises(CompareInputError, match="no `split` column"):
        compare(runs, None, calibrate="cal", n_boot=10)
    _with_split(runs, {"p0": "cal", "p1": "cal"})
    with pytest.raises(CompareInputError, match=r"no image has split 'calib'.*\['cal', 'test'\]"):
        compare(runs, None, calibrate="calib", n_boot=10)
    for run in runs:  # one image of group p2 moves into the calibration split
        frame = pd.read_csv(run / "predictions.csv", dtype=str, keep_default_na=False)
        frame.loc[frame["group"] == "p2", "split"] = ["cal"] + ["test"] * (int((frame["group"] == "p2").sum()) - 1)
        frame.to_csv(run / "predictions.csv", index=False)
    with pytest.raises(CompareInputError, match="group 'p2' has images in split 'cal' and outside it"):
        compare(runs, tmp_path / "o", calibrate="cal", n_boot=10)
    assert not (tmp_path / "o").exists()


def test_cli_calibrate_takes_a_split_name_or_a_fraction(tmp_path):
    runs = _synthetic_runs(tmp_path, n_runs=2, n=60)
    _with_split(runs, {f"p{i}": "cal" for i in range(0, 15, 3)})
    code, err = _invoke(["compare", *map(str, runs), "--out", str(tmp_path / "o"), "--calibrate", "cal", "--n-boot", "10"])
    assert code == 0, err
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["temperature_scaling"]["split"] == "cal"
    code, err = _invoke(["compare", *map(str, runs), "--out", str(tmp_path / "o2"), "--calibrate", "1.5"])
    assert code == 2 and "calibrate" in err and not (tmp_path / "o2").exists()
