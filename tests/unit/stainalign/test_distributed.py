"""`HistoStainAlign.fit` and `histovl stainalign fit` on 2 gloo CPU ranks equal one process.

* the estimator in 2 real gloo processes (`torch.multiprocessing` spawn) on synthetic bags: class
  weights that differ per class, tile sampling (bags larger than ``max_tiles``) and a merged last
  batch of 5 pairs (shards of 3 and 2); aligned (joint), baseline, and two-stage with unlabelled
  pairs;
* the command under `torchrun --nproc-per-node 2 --no-python histovl stainalign fit` on tile
  folders and a tiny CLIP, compared with the library run here (same folds, per-step losses of
  both final models, out-of-fold probabilities), with an audit hook showing that rank 1 wrote
  nothing into the output folder.

Tolerance 1e-5 on per-step losses and probabilities; only float summation order differs (measured
~1e-7, printed). Dropout is 0 (with dropout each rank draws its own masks).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from histovl.stainalign import HistoStainAlign
from tests.helpers.synthetic import tile_folder as _folder
from tests.helpers.synthetic import toy_pairs
from tests.helpers.torchrun import audited_env, spawn_gloo_ranks, torchrun

WORLD = 2
TOL = 1e-5
PARAMS = {"epochs": 3, "batch_size": 4, "hidden_dim": 16, "attention_dim": 8, "projection_dim": 8, "lr": 3e-3,
          "dropout": 0.0, "max_tiles": 8, "random_state": 0}


def _fit_both() -> dict[str, tuple[list[dict[str, float]], np.ndarray]]:
    he, ihc, y, _ = toy_pairs(13, seed=3)  # 7 neg / 6 pos: unequal class weights; bags of 6-13 tiles
    out = {}
    for name, align in (("aligned", True), ("baseline", False)):
        model = HistoStainAlign(align=align, **PARAMS).fit(he, ihc if align else None, y)  # type: ignore[arg-type]
        out[name] = (model.step_history_, model.predict_proba(he))
    # two-stage with 4 unlabelled pairs: batches with and without labelled pairs, then the head
    model = HistoStainAlign(**PARAMS).fit(he, ihc, [*y[:9], *([""] * 4)])  # type: ignore[arg-type]
    out["two-stage, unlabelled"] = (model.step_history_, model.predict_proba(he))
    return out


def _fit_on_rank(rank: int) -> dict[str, tuple[list[dict[str, float]], np.ndarray]]:
    return _fit_both()


def _max_step_diff(a: list[dict[str, float]], b: list[dict[str, float]]) -> float:
    assert len(a) == len(b)
    return max(abs(x[k] - y[k]) for x, y in zip(a, b, strict=True) for k in ("loss", "cls", "align"))


@pytest.mark.slow
def test_histostainalign_on_two_gloo_ranks_matches_one_process(tmp_path: Path) -> None:
    ranks = spawn_gloo_ranks(_fit_on_rank, tmp_path, WORLD)
    one = _fit_both()
    for name in ("aligned", "baseline", "two-stage, unlabelled"):
        steps_one, probs_one = one[name]
        assert len(steps_one) == PARAMS["epochs"] * 3  # 13 pairs: batches of 4, 4 and 5 (the 1 is merged)
        for r in ranks:
            steps_two, probs_two = r[name]
            diff, prob_diff = _max_step_diff(steps_one, steps_two), float(np.abs(probs_one - probs_two).max())
            print(f"{name}: per-step loss max|diff|={diff:.1e}, probabilities max|diff|={prob_diff:.1e}")
            assert diff <= TOL and prob_diff <= TOL
        assert abs(steps_one[0]["loss"] - steps_one[-1]["loss"]) > 100 * TOL  # the check can fail
    assert one["aligned"][0][0]["align"] > 0 and one["baseline"][0][0]["align"] == 0


@pytest.mark.slow
def test_stainalign_fit_under_torchrun_matches_one_process_and_only_rank0_writes(tmp_path: Path) -> None:
    from histovl.models import save_model_dir
    from histovl.stainalign import stainalign_fit
    from tests.helpers.tiny import tiny_encoder

    rows = []
    for i in range(8):
        label = "pos" if i % 2 else "neg"
        _folder(tmp_path / "he" / f"s{i}", (200, 90, 160) if label == "pos" else (230, 170, 210))
        _folder(tmp_path / "ihc" / f"s{i}", (120, 70, 30) if label == "pos" else (140, 150, 200))
        rows.append({"he_slide": f"he/s{i}", "ihc_slide": f"ihc/s{i}", "label": label, "marker": "Ki67", "group": f"p{i // 2}"})
    pd.DataFrame(rows).to_csv(tmp_path / "pairs.csv", index=False)
    model_dir = save_model_dir(tiny_encoder(0), tmp_path / "encoder")
    params = {"epochs": 3, "align_weight": 1.0, "temperature": 0.1, "batch_size": 3, "dropout": 0.0}
    stainalign_fit(tmp_path / "pairs.csv", tmp_path / "one", model=str(model_dir), params=params, cv_folds=2, n_boot=10)

    out = tmp_path / "two"
    env, log = audited_env(tmp_path, out)
    args = ["stainalign", "fit", "--pairs", str(tmp_path / "pairs.csv"), "--out", str(out), "--model", str(model_dir),
            "--epochs", "3", "--batch-size", "3", "--dropout", "0", "--cv-folds", "2", "--n-boot", "10"]  # fmt: skip
    proc = torchrun(args, env)

    for sub in ("", "baseline"):
        steps_one = json.loads((tmp_path / "one" / sub / "stainalign.json").read_text())["step_history"]
        steps_two = json.loads((out / sub / "stainalign.json").read_text())["step_history"]
        diff = _max_step_diff(steps_one, steps_two)
        print(f"stainalign fit {sub or 'aligned'}: {len(steps_one)} steps, per-step loss max|diff|={diff:.1e}")
        assert len(steps_one) == 9 and diff <= TOL  # 8 pairs in batches of 3, 3, 2
    pred_one, pred_two = (pd.read_csv(d / "predictions.csv") for d in (tmp_path / "one", out))
    scores = [c for c in pred_one.columns if "score:" in c]
    assert (pred_one["fold"] == pred_two["fold"]).all()  # the same folds on every rank
    assert np.abs(pred_one[scores].to_numpy() - pred_two[scores].to_numpy()).max() <= TOL  # CV fits match too
    assert json.loads((out / "run.json").read_text())["config"]["world_size"] == 2
    writes = {r: [json.loads(line) for line in Path(f"{log}.rank{r}").read_text().splitlines()] for r in range(WORLD)}
    assert writes[1] == [] and any(p.endswith("stainalign.json") for _, p in writes[0])
    assert proc.stdout.count("model saved in") == 1
