"""`histovl bench` on ../shared/data, small: histovl-lite over a few LC25000 held-out tiles and
DeepLIIF Ki67 test crops (the data of examples/bench_shared.yaml), zeroshot + fewshot + retrieve;
every cell times its phases, the leaderboard ranks, and a re-run reuses every cell.

The full suite (three models, larger subsamples) is `python scripts/bench_shared_data.py`
(docs/bench.md, "On shared data"); this test keeps to one model and about 40 images."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest

from histovl.bench import bench
from histovl.options import RunOptions

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
HELDOUT = REPO / "src" / "histovl" / "assets" / "histovl_lite" / "lc25000_heldout.txt"


def _ki67_crops(root: Path, keep: int) -> Path:
    """The DeepLIIF Ki67 test crops (scripts/train_histovl_lite.py's rule), the first `keep` of
    each (source image, label), so both labels span several groups."""
    spec = importlib.util.spec_from_file_location("train_histovl_lite", REPO / "scripts" / "train_histovl_lite.py")
    assert spec is not None and spec.loader is not None
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    _, test = train.prepare_ki67(root)
    frame = pd.read_csv(test)
    frame = frame.groupby(["group", "label"]).head(keep)
    frame.to_csv(test, index=False)
    return test


def test_small_shared_data_grid(shared_data: Path, tmp_path: Path) -> None:
    names = HELDOUT.read_text().split()
    lung = [n for cls in ("lung_aca", "lung_n", "lung_scc") for n in [m for m in names if m.startswith(cls)][:6]]
    lc = tmp_path / "lc25000-heldout.csv"
    pd.DataFrame({"path": [str(shared_data / "lc25000-lung" / n) for n in lung],
                  "label": [n.split("/")[0] for n in lung]}).to_csv(lc, index=False)
    ki67 = _ki67_crops(tmp_path / "ki67", keep=2)
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        "models: [histovl-lite]\n"
        f"datasets:\n  - {{name: lc25000-heldout, path: '{lc}', prompts: lung-he-v1}}\n"
        f"  - {{name: deepliif-ki67, path: '{ki67}', prompts: ki67-ihc-v1}}\n"
        "tasks:\n  - task: zeroshot\n"
        "  - task: fewshot\n    options: {methods: [linear], shots: [1, 2], seeds: 2, query_fraction: 0.5, near_duplicates: false}\n"
        "  - task: retrieve\n"
    )
    opts = RunOptions(cache=tmp_path / "cache", n_boot=100, seed=0, progress=False, allow_absolute_paths=True)
    res = bench(suite, tmp_path / "out", options=opts)
    assert res.counts() == {"computed": 6, "reused": 0, "not done": 0}
    board = res.leaderboard
    assert len(board) == 6 and set(board["dataset"]) == {"lc25000-heldout", "deepliif-ki67"}
    zs = board[(board["task"] == "zeroshot") & (board["dataset"] == "lc25000-heldout")].iloc[0]
    assert zs["value"] > 0.5 and zs["ci_low"] <= zs["value"] <= zs["ci_high"]  # lite scores ~0.9 here
    for row in res.cells.itertuples():
        timing = json.loads((tmp_path / "out" / row.cell / "run.json").read_text())["timing"]
        assert timing["total_s"] >= timing["read_decode_s"] + timing["model_s"] - 1e-3
    again = bench(suite, tmp_path / "out", options=opts)
    assert again.counts()["reused"] == 6
