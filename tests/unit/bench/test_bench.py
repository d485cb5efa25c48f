"""`histovl bench`: suite validation, a grid, resume without recomputation, the leaderboard."""

from __future__ import annotations

from pathlib import Path

import pytest

from histovl.bench import BenchConfig, BenchError, SuiteError, bench, load_suite
from histovl.options import RunOptions


def write_suite(folder: Path, files: dict[str, str], tasks: str | None = None, models: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    models = models or f'  - "{files["model"]}"\n  - "{files["model2"]}"\n'
    tasks = tasks or ("  - task: zeroshot\n"
                      "  - task: retrieve\n    options: {k: [3]}\n")
    text = (f"models:\n{models}"
            f"datasets:\n  - name: tiles\n    path: {files['manifest']}\n    prompts: {files['prompts']}\n"
            f"tasks:\n{tasks}")
    path = folder / "suite.yaml"
    path.write_text(text)
    return path


def opts(files: dict[str, str]) -> RunOptions:
    return RunOptions(cache=Path(files["root"]) / "cache", n_boot=50, seed=3, progress=False, workers=0)


def run_json_mtimes(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in sorted(out.glob("cells/*/*/*/run.json"))}


def board_without_timing(out: Path) -> list[list[str]]:
    """leaderboard.csv's fields with the timing columns (the last four) cut off."""
    import csv

    from histovl.bench.leaderboard import TIMING_COLUMNS

    with (out / "leaderboard.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][-len(TIMING_COLUMNS):] == TIMING_COLUMNS
    return [row[: -len(TIMING_COLUMNS)] for row in rows]


def test_grid_runs_and_rerun_recomputes_nothing(fixture: dict[str, str], tmp_path: Path) -> None:
    suite = write_suite(tmp_path, fixture)
    out = tmp_path / "out"
    res = bench(suite, out, options=opts(fixture))
    assert list(res.cells["status"]) == ["computed"] * 4
    assert len(run_json_mtimes(out)) == 4
    board = res.leaderboard
    assert set(board["task"]) == {"zeroshot", "retrieve"}
    zs = board[board["task"] == "zeroshot"]
    assert list(zs["rank"]) == [1, 2] and zs["not_worse_than_best"].iloc[0] == "best"
    assert zs["not_worse_than_best"].iloc[1] in {"yes", "no"}
    assert zs["diff_ci_low"].iloc[1] <= zs["diff_vs_best"].iloc[1] <= zs["diff_ci_high"].iloc[1]
    assert (out / "leaderboard.html").is_file() and board["seconds"].notna().all()
    before, board_bytes = run_json_mtimes(out), (out / "leaderboard.csv").read_bytes()
    again = bench(suite, out, options=opts(fixture))
    assert list(again.cells["status"]) == ["reused"] * 4
    assert again.cells.equals(res.cells.assign(status="reused"))  # the first run's times are kept
    assert run_json_mtimes(out) == before
    assert (out / "leaderboard.csv").read_bytes() == board_bytes


def test_killed_grid_resumes_to_the_same_leaderboard(fixture: dict[str, str], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    suite = write_suite(tmp_path, fixture)
    whole = tmp_path / "whole"
    bench(suite, whole, options=opts(fixture))

    import histovl.bench.run as run_module

    real = run_module.run_cell
    calls: list[str] = []

    def dies_on_second(cell):  # type: ignore[no-untyped-def]
        calls.append(cell.relative)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return real(cell)

    monkeypatch.setattr(run_module, "run_cell", dies_on_second)
    killed = tmp_path / "killed"
    with pytest.raises(BenchError, match="killed"):
        bench(suite, killed, options=opts(fixture))
    assert len(run_json_mtimes(killed)) == 1
    first = run_json_mtimes(killed)
    monkeypatch.setattr(run_module, "run_cell", real)
    res = bench(suite, killed, options=opts(fixture))
    assert sorted(res.cells["status"]) == ["computed"] * 3 + ["reused"]
    assert {k: v for k, v in run_json_mtimes(killed).items() if k in first} == first
    assert board_without_timing(killed) == board_without_timing(whole)


@pytest.mark.parametrize(("tasks", "models", "expected"), [
    ("  - task: zeroshoot\n", None, r"suite.yaml:\d+: tasks.0.task: .*unknown task 'zeroshoot'"),
    ("  - task: zeroshot\n    options: {aggregat: max}\n", None, r"suite.yaml:\d+: tasks.0.options.aggregat: unknown option"),
    ("  - task: zeroshot\n    optoins: {}\n", None, r"suite.yaml:\d+: tasks.0.optoins: Extra inputs"),
    ("  - task: zeroshot\n    options: {n_boot: -1}\n", None, r"tasks.0.options: n_boot must be"),
    (None, "  - no-such-model\n", r"suite.yaml:2: models.0: unknown model 'no-such-model'"),
    (None, "  - open_clip:X:missing.safetensors\n", r"models.0: model weights .*missing.safetensors not found"),
])
def test_suite_errors_name_the_line_and_field(fixture: dict[str, str], tmp_path: Path, tasks: str | None,
                                               models: str | None, expected: str) -> None:
    suite = write_suite(tmp_path, fixture, tasks=tasks, models=models)
    with pytest.raises(SuiteError, match=expected):
        load_suite(suite)
    with pytest.raises(SuiteError):
        bench(suite, tmp_path / "out", options=opts(fixture))
    assert not (tmp_path / "out").exists()


def test_a_bad_config_value_stops_before_any_cell(fixture: dict[str, str], tmp_path: Path) -> None:
    suite = write_suite(tmp_path, fixture, tasks="  - task: zeroshot\n  - task: fewshot\n    options: {seeds: 0}\n")
    load_suite(suite)  # names are fine; the value is checked by FewshotConfig before the first cell
    with pytest.raises(SuiteError, match=r"suite.yaml:\d+: task fewshot options: seeds must be at least 1"):
        bench(suite, tmp_path / "out", options=opts(fixture))
    assert not (tmp_path / "out").exists()


def test_config_fields_read_from_source_match_the_dataclasses() -> None:
    import dataclasses
    import importlib

    from histovl.bench.suite import TASKS, config_field_names

    for _, _, module, name in TASKS.values():
        real = {f.name for f in dataclasses.fields(getattr(importlib.import_module(module), name))}
        assert config_field_names(module, name) == real, name


def test_unknown_task_line_number(fixture: dict[str, str], tmp_path: Path) -> None:
    suite = write_suite(tmp_path, fixture, tasks="  - task: zeroshot\n  - task: nope\n")
    line = next(i for i, t in enumerate(suite.read_text().splitlines(), 1) if "nope" in t)
    with pytest.raises(SuiteError, match=rf"suite.yaml:{line}: tasks.1.task"):
        load_suite(suite)


def test_cli_exit_code_2_on_a_bad_suite(fixture: dict[str, str], tmp_path: Path) -> None:
    import subprocess
    import sys

    suite = write_suite(tmp_path, fixture, tasks="  - task: nope\n")
    res = subprocess.run([sys.executable, "-m", "histovl.cli.app", "bench", str(suite), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and not (tmp_path / "o").exists()
    assert "tasks.0.task: unknown task 'nope'" in res.stderr and "Traceback" not in res.stderr


def test_engine_must_be_known() -> None:
    with pytest.raises(ValueError, match="engine"):
        BenchConfig(engine="spark")  # type: ignore[arg-type]


def test_each_model_image_pair_is_encoded_once_for_the_grid(fixture: dict[str, str], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import histovl.embed.engine as engine

    real, encoded = engine.encode_pixels, []

    def counting(encoder, pixels, batch_size):  # type: ignore[no-untyped-def]
        encoded.append(len(pixels))
        return real(encoder, pixels, batch_size)

    monkeypatch.setattr(engine, "encode_pixels", counting)
    suite = write_suite(tmp_path, fixture)  # two models x (zeroshot, retrieve) on 18 images
    res = bench(suite, tmp_path / "out", options=opts(fixture).replace(cache=tmp_path / "fresh-cache"))
    assert list(res.cells["status"]) == ["computed"] * 4
    assert sum(encoded) == 2 * 18


def test_example_suite_is_valid_and_its_prompts_match_the_demo_labels() -> None:
    import pandas as pd

    from histovl.prompts import load_prompt_set

    suite = load_suite(Path(__file__).resolve().parents[3] / "examples" / "bench_demo.yaml")
    for dataset in suite.datasets:
        labels = set(pd.read_csv(dataset.path)["label"])
        assert dataset.prompts is not None
        assert labels == set(load_prompt_set(dataset.prompts).class_names), dataset.name


def test_each_cell_records_its_time_split(fixture: dict[str, str], tmp_path: Path) -> None:
    import json

    suite = write_suite(tmp_path, fixture, tasks="  - task: zeroshot\n")
    out = tmp_path / "out"
    res = bench(suite, out, options=opts(fixture).replace(cache=tmp_path / "fresh-cache"))
    for row in res.cells.itertuples():
        timing = json.loads((out / row.cell / "run.json").read_text())["timing"]
        assert timing["model_s"] > 0 and timing["read_decode_s"] > 0  # images encoded now
        parts = timing["read_decode_s"] + timing["model_s"] + timing["other_s"]
        assert abs(parts - timing["total_s"]) < 0.01 and timing["model_load_s"] <= timing["other_s"] + 1e-3
        assert row.seconds == timing["total_s"] and row.model_s == timing["model_s"]
    html = (out / "leaderboard.html").read_text()
    assert "read/decode" in html and "model_s" in html


def test_rerun_of_a_finished_grid_leaves_the_leaderboard_files_and_imports_no_statistics(
        fixture: dict[str, str], tmp_path: Path) -> None:
    import subprocess
    import sys

    suite = write_suite(tmp_path, fixture, tasks="  - task: zeroshot\n")
    out = tmp_path / "out"
    bench(suite, out, options=opts(fixture))
    files = {n: ((out / n).read_bytes(), (out / n).stat().st_mtime_ns) for n in ("leaderboard.csv", "leaderboard.html")}
    code = ("import sys; from histovl.bench import bench; from histovl.options import RunOptions; "
            f"r = bench({str(suite)!r}, {str(out)!r}, options=RunOptions(cache={fixture['root'] + '/cache'!r}, "
            "n_boot=50, seed=3, progress=False, workers=0)); "
            "print(r.counts()['reused'], *sorted(m for m in ('pandas', 'scipy', 'sklearn', 'torch', 'histovl.compare', "
            "'histovl.reports') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["2"]  # both cells reused; none of the heavy modules imported
    assert {n: ((out / n).read_bytes(), (out / n).stat().st_mtime_ns) for n in files} == files
    (out / "leaderboard.html").unlink()  # a missing output is written again
    again = bench(suite, out, options=opts(fixture))
    assert (out / "leaderboard.html").is_file() and (out / "leaderboard.csv").read_bytes() == files["leaderboard.csv"][0]
    assert list(again.leaderboard["model"]) == list(again.leaderboard.sort_values("rank")["model"])


def test_a_model_can_carry_a_display_name(fixture: dict[str, str], tmp_path: Path) -> None:
    models = f'  - "{fixture["model"]}"\n  - {{name: second-tiny, model: "{fixture["model2"]}"}}\n'
    suite = load_suite(write_suite(tmp_path, fixture, models=models))
    assert [name for name, _ in suite.models] == [fixture["model"], "second-tiny"]
    assert suite.models[1][1] == fixture["model2"]
    bad = write_suite(tmp_path / "bad", fixture, models='  - {name: x, modle: histovl-lite}\n')
    with pytest.raises(SuiteError, match=r"suite.yaml:2: models.0.model: Field required"):
        load_suite(bad)
