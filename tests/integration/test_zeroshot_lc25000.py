"""`histovl zeroshot` on real LC25000 tiles with an open_clip ViT-B-32 from a local safetensors
file: every output is written and predictions equal those computed directly with open_clip."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import open_clip
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from histovl.cli.app import app

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def vit_b32_weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    path = tmp_path_factory.mktemp("w") / "vit-b-32.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def lung_sample(shared_data, tmp_path_factory) -> Path:
    """10 tiles per class, copied into a class-folder tree in tmp (never into the repo)."""
    root = tmp_path_factory.mktemp("lung")
    for cls in ("lung_aca", "lung_n", "lung_scc"):
        (root / cls).mkdir()
        for p in sorted((shared_data / "lc25000-lung" / cls).glob("*.jpeg"))[:10]:
            shutil.copy(p, root / cls / p.name)
    return root


def test_zeroshot_cli_matches_open_clip(vit_b32_weights, lung_sample, tmp_path):
    from histovl.prompts import load_prompt_set

    shipped = load_prompt_set("lung-he-v1")
    # One description per class, so open_clip's own classifier builder applies unchanged.
    single = {"name": "lung-one-desc", "classes": {c: [d[0]] for c, d in shipped.classes.items()},
              "templates": list(shipped.templates)}
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text(yaml.safe_dump(single))
    out = tmp_path / "run"
    spec = f"open_clip:ViT-B-32:{vit_b32_weights}"
    result = CliRunner().invoke(
        app,
        ["zeroshot", "--model", spec, "--data", str(lung_sample), "--prompts", str(prompts), "--out", str(out),
         "--cache", str(tmp_path / "cache"), "--n-boot", "200", "--quiet"],
    )
    assert result.exit_code == 0, result.output
    for name in ("metrics.json", "predictions.csv", "run.json", "report.html"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("n", "accuracy", "balanced_accuracy", "f1_macro", "f1_weighted", "auroc_macro", "ci95"):
        assert key in metrics
    assert metrics["n"] == 30
    run = json.loads((out / "run.json").read_text())
    assert run["seed"] == 0 and "lung_aca" in json.dumps(run)

    # Reference: plain open_clip, its own transform, tokenizer and classifier builder.
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=str(vit_b32_weights))
    model.eval()
    tok = open_clip.get_tokenizer("ViT-B-32")
    names = list(single["classes"])
    weights = open_clip.build_zero_shot_classifier(
        model, tok, [single["classes"][c][0] for c in names], single["templates"], num_classes_per_batch=None
    )
    preds = pd.read_csv(out / "predictions.csv")
    files = [lung_sample / p for p in preds["path"]]
    with torch.inference_mode():
        x = torch.stack([preprocess(Image.open(f).convert("RGB")) for f in files])
        img = torch.nn.functional.normalize(model.encode_image(x), dim=-1)
        probs = (model.logit_scale.exp() * img @ weights).softmax(dim=-1).numpy()
    ours = preds[[f"score:{c}" for c in names]].to_numpy()
    np.testing.assert_allclose(ours, probs, atol=1e-4)
    assert (preds["prediction"].to_numpy() == np.array(names)[probs.argmax(1)]).all()
