"""`CMMHead.fit` and `histovl cmm fit` on 2 gloo CPU ranks equal one process at the same global batch.

Two levels:

* the estimator in 2 real gloo processes (`torch.multiprocessing` spawn, as
  tests/unit/train/test_distributed.py) on synthetic tokens, in both key/value modes, with shards
  of different sizes and an empty shard (a last global batch of one image);
* the command itself under `torchrun --nproc-per-node 2 --no-python histovl cmm fit` on a tiny
  CLIP, compared with the library run in this process, with an audit hook showing that rank 1
  wrote nothing into the output folder.

Tolerance: the per-step loss (and the fitted logits) agree to 1e-5. Both runs see the same global
batches, so only float summation order differs (the loss is summed per rank, DDP all-reduces the
gradients, the tiny model encodes the images in two blocks instead of one); measured differences
are ~1e-7 (see the printed figures). Dropout is 0: with dropout each rank draws its own masks.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from histovl.heads import CMMHead
from tests.helpers.synthetic import cmm_tokens as _synthetic
from tests.helpers.synthetic import multilabel_set
from tests.helpers.torchrun import audited_env, spawn_gloo_ranks, torchrun

WORLD = 2
TOL = 1e-5
PARAMS = {"n_heads": 2, "ffn_dim": 16, "epochs": 3, "warmup_epochs": 1, "lr": 3e-3, "dropout": 0.0, "random_state": 0}
# tokens: 13 images in batches 6, 6, 1 -> the last batch leaves rank 1 empty;
# pooled: 11 images in batches 4, 4, 3 -> shards of 2 and 1, and the softmax runs over the global batch
CASES = {"tokens": (13, 6), "pooled": (11, 4)}


def _data(kv_mode: str, n: int) -> tuple[torch.Tensor, np.ndarray, torch.Tensor]:
    x, y, classes = _synthetic(n, seed=5)
    if kv_mode == "pooled":
        x = torch.nn.functional.normalize(x.mean(1), dim=-1)
    return x, y, classes


def _fit_all() -> dict[str, tuple[list[float], np.ndarray]]:
    out = {}
    for kv_mode, (n, batch) in CASES.items():
        x, y, classes = _data(kv_mode, n)
        head = CMMHead(kv_mode=kv_mode, batch_size=batch, **PARAMS).fit(x, y, class_embeddings=classes)  # type: ignore[arg-type]
        out[kv_mode] = (head.step_loss_history_, head.decision_function(x))
    return out


def _fit_on_rank(rank: int) -> dict[str, tuple[list[float], np.ndarray]]:
    return _fit_all()


@pytest.mark.slow
def test_cmm_head_on_two_gloo_ranks_matches_one_process(tmp_path: Path) -> None:
    ranks = spawn_gloo_ranks(_fit_on_rank, tmp_path, WORLD)
    one = _fit_all()
    for kv_mode, (n, batch) in CASES.items():
        steps_one, logits_one = one[kv_mode]
        assert len(steps_one) == PARAMS["epochs"] * -(-n // batch)
        for r in ranks:
            steps_two, logits_two = r[kv_mode]
            diff = float(np.max(np.abs(np.array(steps_one) - np.array(steps_two))))
            logit_diff = float(np.abs(logits_one - logits_two).max())
            print(f"{kv_mode}: per-step loss max|diff|={diff:.1e}, logits max|diff|={logit_diff:.1e}")
            assert diff <= TOL and logit_diff <= TOL
        assert abs(steps_one[0] - steps_one[-1]) > 100 * TOL  # training moves the loss: the check can fail


# ---- the command under torchrun ------------------------------------------------------------

@pytest.mark.slow
def test_cmm_fit_under_torchrun_matches_one_process_and_only_rank0_writes(tmp_path: Path) -> None:
    from histovl.heads.cmm_run import cmm_fit
    from histovl.models import save_model_dir
    from tests.helpers.tiny import tiny_encoder

    model_dir = save_model_dir(tiny_encoder(0), tmp_path / "tiny-model")
    manifest, prompts = multilabel_set(tmp_path / "data")
    # 11 images, global batch 4: steps of 4, 4, 3 images (shards 2+2, 2+2, 2+1)
    # the command's defaults for the head's size (8 heads, FFN 1024)
    opts = {"epochs": 3, "warmup_epochs": 1, "lr": 3e-3, "train_batch_size": 4, "dropout": 0.0, "n_boot": 10, "seed": 0}
    one = cmm_fit(str(model_dir), manifest, prompts, tmp_path / "one", use_cache=False, **opts)  # type: ignore[arg-type]

    out = tmp_path / "two"
    env, log = audited_env(tmp_path, out)
    args = ["cmm", "fit", "--model", str(model_dir), "--data", str(manifest), "--prompts", str(prompts),
            "--out", str(out), "--no-cache", "--epochs", "3", "--warmup-epochs", "1", "--lr", "3e-3",
            "--train-batch-size", "4", "--dropout", "0", "--n-boot", "10", "--seed", "0"]  # fmt: skip
    proc = torchrun(args, env)

    meta = json.loads((out / "head.json").read_text())
    steps_one, steps_two = np.array(one.head.step_loss_history_), np.array(meta["step_loss_history"])
    diff = float(np.abs(steps_one - steps_two).max())
    print(f"cmm fit per-step loss: one {steps_one.round(6).tolist()} two ranks {steps_two.round(6).tolist()} max|diff|={diff:.1e}")
    assert len(steps_one) == 9 and diff <= TOL
    assert abs(steps_one[0] - steps_one[-1]) > 100 * TOL
    assert np.abs(np.array(one.head.loss_history_) - np.array(meta["loss_history"])).max() <= TOL
    assert json.loads((out / "run.json").read_text())["extra"]["world_size"] == 2  # it really ran as 2 ranks
    for name in ("metrics.json", "predictions.csv", "report.html", "head.safetensors", "train_log.csv"):
        assert (out / name).is_file(), name
    writes = {r: [json.loads(line) for line in Path(f"{log}.rank{r}").read_text().splitlines()] for r in range(WORLD)}
    assert writes[1] == [] and any(p.endswith("head.json") for _, p in writes[0])
    assert proc.stdout.count("report:") == 1  # the summary is printed once (by rank 0)
