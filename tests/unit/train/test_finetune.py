"""`finetune` end to end on a tiny open_clip model and synthetic tiles (seconds)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from histovl.models import load_model
from histovl.train import FinetuneConfig, finetune
from histovl.train.features import parameter_groups
from histovl.train.finetune import lr_lambda
from tests.helpers.tiny import tiny_encoder

PROMPTS = ["an H&E image of lung adenocarcinoma.", "benign lung tissue."]


def _cfg(**kw) -> FinetuneConfig:
    base = {"loss": "his2lip", "epochs": 1, "batch_size": 4, "lr": 1e-3, "train": "all", "seed": 0}
    base.update(kw)
    return FinetuneConfig(**base)


def test_one_epoch_writes_a_loadable_model_and_log(class_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "ft"
    res = finetune(tiny_encoder(0), class_folder, out, config=_cfg(), val_data=class_folder,
                   val_prompts="lung-he-v1", progress=None)
    log = pd.read_csv(out / "train_log.csv")
    assert list(log["epoch"]) == [1]
    assert {"train_loss", "lr", "logit_scale", "val_f1_macro", "val_balanced_accuracy"} <= set(log.columns)
    assert 0.0 <= log["val_f1_macro"].iloc[0] <= 1.0
    back = load_model(str(out))
    with torch.no_grad():
        torch.testing.assert_close(back.encode_text(PROMPTS), res.encoder.encode_text(PROMPTS))
    # training changed the weights
    with torch.no_grad():
        assert not torch.allclose(back.encode_text(PROMPTS), tiny_encoder(0).encode_text(PROMPTS))


def test_projections_only_leaves_towers_untouched(class_folder: Path, tmp_path: Path) -> None:
    before = {k: v.clone() for k, v in tiny_encoder(0).state_dict().items()}
    res = finetune(tiny_encoder(0), class_folder, tmp_path / "p", config=_cfg(train="projections", lr=1e-2), progress=None)
    groups = parameter_groups(res.encoder)
    proj_ids = {id(p) for g in ("image_projection", "text_projection", "logit_scale") for p in groups[g]}
    changed = {n for n, p in res.encoder.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed, "nothing was trained"
    named = dict(res.encoder.named_parameters())
    assert all(id(named[n]) in proj_ids for n in changed), changed


class _Interrupt(Exception):
    pass


def test_resume_equals_uninterrupted_run(class_folder: Path, tmp_path: Path) -> None:
    cfg = _cfg(epochs=2, loss="clip")
    full = finetune(tiny_encoder(0), class_folder, tmp_path / "full", config=cfg, progress=None)

    calls = []

    def stop_after_first(line: str) -> None:
        calls.append(line)
        if len(calls) == 1:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        finetune(tiny_encoder(0), class_folder, tmp_path / "resumed", config=cfg, progress=stop_after_first)
    assert (tmp_path / "resumed" / "checkpoint.pt").is_file()
    resumed = finetune(tiny_encoder(0), class_folder, tmp_path / "resumed", config=cfg, resume=True, progress=None)
    pd.testing.assert_frame_equal(resumed.log, full.log)
    for (k, a), (_, b) in zip(full.encoder.state_dict().items(), resumed.encoder.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)


def test_resume_with_other_config_is_refused(class_folder: Path, tmp_path: Path) -> None:
    finetune(tiny_encoder(0), class_folder, tmp_path / "r", config=_cfg(), progress=None)
    with pytest.raises(Exception, match="another configuration"):
        finetune(tiny_encoder(0), class_folder, tmp_path / "r", config=_cfg(lr=5e-3), resume=True, progress=None)


def test_caption_column_is_used(class_folder: Path, tmp_path: Path) -> None:
    rows = [{"path": str(p.relative_to(class_folder)), "caption": f"a tile number {i}"} for i, p in enumerate(sorted(class_folder.rglob("*.png")))]
    manifest = class_folder / "pairs.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    res = finetune(tiny_encoder(0), manifest, tmp_path / "c", config=_cfg(loss="clip"), progress=None)
    assert len(res.log) == 1 and res.log["train_loss"].iloc[0] > 0


def test_unlabelled_data_without_captions_is_an_error(class_folder: Path, tmp_path: Path) -> None:
    rows = [{"path": str(p.relative_to(class_folder))} for p in sorted(class_folder.rglob("*.png"))]
    manifest = class_folder / "plain.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    with pytest.raises(ValueError, match="caption"):
        finetune(tiny_encoder(0), manifest, tmp_path / "u", config=_cfg(), progress=None)


def test_schedule_warms_up_then_decays_to_zero() -> None:
    f = lr_lambda(100, 0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(55) == pytest.approx(0.5) and f(100) == pytest.approx(0.0)
    assert all(f(i) >= f(i + 1) for i in range(10, 100))


def test_bad_config_is_refused() -> None:
    with pytest.raises(ValueError, match="train"):
        FinetuneConfig(train="heads")  # type: ignore[arg-type]
    with pytest.raises(Exception, match="his2lip"):
        FinetuneConfig(loss="his2clip")


def test_cli_finetune_writes_a_model_dir(class_folder: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from histovl.cli.app import app
    from histovl.models import save_model_dir

    base = save_model_dir(tiny_encoder(0), tmp_path / "base")
    out = tmp_path / "cli-ft"
    result = CliRunner().invoke(app, ["finetune", "--model", str(base), "--data", str(class_folder), "--loss", "clip",
                                      "--epochs", "1", "--batch-size", "6", "--train", "all", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "train_log.csv").is_file() and (out / "card.json").is_file()
    load_model(str(out))
