"""`histovl finetune` under `torchrun --nproc-per-node 2` (2 gloo CPU processes) equals one process.

The issue's "done when": the same loss curve as one process with the same global batch. Both runs
see the same global batches (the 2 ranks split each batch of 8 into 4 + 4 and gather embeddings
with gradients), so the curves agree to float rounding; the tolerance below (1e-4 on the loss,
2e-4 on the trained model's embeddings) leaves room for the different summation order of the
gather and of DDP's gradient all-reduce, and is still orders of magnitude below the change one
epoch makes (checked, so the comparison can fail).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from histovl.models import load_model, save_model_dir
from histovl.train import FinetuneConfig, finetune
from tests.helpers.tiny import tiny_encoder

LOSS_TOL = 1e-4
EMBED_TOL = 2e-4
ARGS = {"loss": "his2lip", "epochs": 3, "batch_size": 8, "lr": 1e-3, "train": "all", "seed": 0}


def _histovl_script() -> Path:
    script = Path(sys.executable).parent / "histovl"
    if not script.is_file():
        pytest.skip("the `histovl` console script is not installed next to this Python")
    return script


@pytest.mark.slow
def test_torchrun_two_cpu_ranks_match_one_process(class_folder: Path, tmp_path: Path) -> None:
    model_dir = save_model_dir(tiny_encoder(0), tmp_path / "tiny-model")
    one = finetune(str(model_dir), class_folder, tmp_path / "one", config=FinetuneConfig(**ARGS), progress=None)  # type: ignore[arg-type]

    cli_args = [
        "finetune", "--model", str(model_dir), "--data", str(class_folder), "--out", str(tmp_path / "two"),
        "--loss", ARGS["loss"], "--epochs", str(ARGS["epochs"]), "--batch-size", str(ARGS["batch_size"]),
        "--lr", str(ARGS["lr"]), "--train", ARGS["train"], "--seed", str(ARGS["seed"]),
    ]  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "--no-python", str(_histovl_script()), *cli_args]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HISTOVL_DIST_BACKEND": "gloo"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    two_log = pd.read_csv(tmp_path / "two" / "train_log.csv")
    assert list(two_log["epoch"]) == [1, 2, 3]
    curve_one, curve_two = one.log["train_loss"].to_numpy(), two_log["train_loss"].to_numpy()
    diff = abs(curve_one - curve_two).max()
    print(f"loss curves: one process {curve_one.round(6).tolist()} two ranks {curve_two.round(6).tolist()} max|diff|={diff:.2e}")
    assert diff <= LOSS_TOL
    assert abs(curve_one[0] - curve_one[-1]) > 100 * LOSS_TOL  # training moves the loss: the check can fail
    assert abs(one.log["logit_scale"].to_numpy() - two_log["logit_scale"].to_numpy()).max() <= LOSS_TOL

    # the trained weights agree too: embed the same images with both written models
    base, model_one, model_two = (load_model(str(p)) for p in (model_dir, tmp_path / "one", tmp_path / "two"))
    pixels = torch.stack([base.preprocess(_rgb(p)) for p in sorted(class_folder.rglob("*.png"))[:6]])
    with torch.inference_mode():
        emb_base, emb_one, emb_two = (m.encode_image(pixels) for m in (base, model_one, model_two))
    emb_diff = float((emb_one - emb_two).abs().max())
    print(f"trained-model image embeddings: max|diff|={emb_diff:.2e}")
    assert emb_diff <= EMBED_TOL
    assert (emb_one - emb_base).abs().max() > 100 * EMBED_TOL

    # it really ran as 2 ranks (2 independent one-process runs would also match the curve)
    import json

    assert json.loads((tmp_path / "two" / "finetune.json").read_text())["world_size"] == 2


def _rgb(path: Path):  # noqa: ANN202 - PIL image
    from histovl.data import read_rgb

    return read_rgb(path)
