"""`finetune` with unreadable images: raise names the file, skip drops the pair and records it.

Also the frozen-backbone feature pass (`extract_image_features`): skip, raise, and the
out-of-memory back-off giving the un-split features.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from histovl.errors import ImageReadError
from histovl.models._open_clip import OpenClipEncoder
from histovl.train import FinetuneConfig, finetune
from histovl.train.features import SplitTowers, extract_image_features
from tests.helpers.tiny import tiny_encoder

NOT_AN_IMAGE = b"this is text, not a PNG"


def _cfg(**kw) -> FinetuneConfig:  # type: ignore[no-untyped-def]
    base = {"loss": "clip", "epochs": 1, "batch_size": 4, "lr": 1e-3, "train": "all", "seed": 0}
    base.update(kw)
    return FinetuneConfig(**base)


def _break(class_folder: Path) -> Path:
    bad = class_folder / "lung_n" / "lung_n_1.png"
    bad.write_bytes(NOT_AN_IMAGE)
    return bad


def test_raise_names_the_unreadable_image(class_folder: Path, tmp_path: Path) -> None:
    bad = _break(class_folder)
    with pytest.raises(ImageReadError, match="lung_n_1.png") as info:
        finetune(tiny_encoder(0), class_folder, tmp_path / "ft", config=_cfg(), progress=None)
    assert Path(str(info.value.path)) == bad


def test_skip_drops_the_pair_trains_on_the_rest_and_records_it(class_folder: Path, tmp_path: Path) -> None:
    bad = _break(class_folder)
    val = tmp_path / "val"
    (val / "lung_aca").mkdir(parents=True)
    for p in sorted((class_folder / "lung_aca").iterdir())[:2]:
        (val / "lung_aca" / p.name).write_bytes(p.read_bytes())
    (val / "lung_aca" / "zero.png").write_bytes(b"")
    lines: list[str] = []
    res = finetune(tiny_encoder(0), class_folder, tmp_path / "ft", config=_cfg(), val_data=val,
                   val_prompts="lung-he-v1", on_error="skip", progress=lines.append)
    record = json.loads((tmp_path / "ft" / "finetune.json").read_text())
    assert record["n_inputs"] == 12 and record["n_train"] == 11 and record["n_skipped"] == 2
    assert [(Path(s["path"]).name, s["split"]) for s in record["skipped"]] == [("lung_n_1.png", "train"), ("zero.png", "val")]
    assert Path(record["skipped"][0]["path"]) == bad and all(s["reason"] for s in record["skipped"])
    assert lines[0].startswith("skipped 2 unreadable image(s)")
    assert len(res.log) == 1 and res.log["train_loss"].iloc[0] > 0 and "val_f1_macro" in res.log.columns

    # the same as training on the 11 readable images from the start
    kept = [{"path": str(p), "label": p.parent.name} for p in sorted(class_folder.rglob("*.png")) if p != bad]
    pd.DataFrame(kept).to_csv(tmp_path / "kept.csv", index=False)
    clean = finetune(tiny_encoder(0), tmp_path / "kept.csv", tmp_path / "clean", config=_cfg(),
                     allow_absolute_paths=True, progress=None)
    assert clean.log["train_loss"].iloc[0] == pytest.approx(res.log["train_loss"].iloc[0], rel=1e-5)


def test_cli_on_error_is_passed_through(class_folder: Path, tmp_path: Path) -> None:
    from histovl.cli.app import app
    from histovl.models import save_model_dir

    _break(class_folder)
    base = save_model_dir(tiny_encoder(0), tmp_path / "base")
    args = ["finetune", "--model", str(base), "--data", str(class_folder), "--epochs", "1", "--batch-size", "4",
            "--out", str(tmp_path / "o")]
    failed = CliRunner().invoke(app, args)
    assert failed.exit_code != 0 and "lung_n_1.png" in str(failed.exception or failed.output)
    ok = CliRunner().invoke(app, [*args, "--on-error", "skip"])
    assert ok.exit_code == 0, ok.output
    assert "skipped 1 unreadable image(s)" in ok.output
    assert json.loads((tmp_path / "o" / "finetune.json").read_text())["n_skipped"] == 1


# ---- the frozen-backbone feature pass -------------------------------------------------------


class _SplitTiny(OpenClipEncoder):
    """The tiny CLIP split at its image projection (enough for the feature pass)."""

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.visual(pixels.to(self.device))

    def project_image(self, features: torch.Tensor) -> torch.Tensor:
        return features

    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        raise NotImplementedError

    def project_text(self, features: torch.Tensor) -> torch.Tensor:
        return features


def _split_tiny() -> _SplitTiny:
    enc = tiny_encoder(0)
    split = _SplitTiny.__new__(_SplitTiny)
    split.__dict__.update(enc.__dict__)
    assert isinstance(split, SplitTowers)
    return split


def test_feature_pass_skips_or_names_unreadable_files_and_caches_only_good_ones(class_folder: Path, tmp_path: Path) -> None:
    enc = _split_tiny()
    paths = sorted(class_folder.rglob("*.png"))
    clean = extract_image_features(enc, paths, num_workers=0)
    bad = _break(class_folder)
    missing = class_folder / "lung_aca" / "gone.png"
    with pytest.raises(ImageReadError, match="lung_n_1.png"):
        extract_image_features(enc, paths, num_workers=0)
    res = extract_image_features(enc, [*paths, missing], num_workers=0, on_error="skip", cache_dir=tmp_path / "c")
    i = paths.index(bad)
    assert res.failures == {i: res.failures[i], len(paths): "file not found"} and res.failures[i]
    good = [j for j in range(len(paths)) if j != i]
    torch.testing.assert_close(res.features[good], clean.features[good], rtol=1e-5, atol=1e-6)
    assert res.features.shape[0] == len(paths) + 1 and not res.features[i].any()
    stored = torch.load(next((tmp_path / "c").iterdir()), weights_only=True)
    assert len(stored["keys"]) == len(paths) - 1


def test_feature_pass_backs_off_on_oom_and_equals_the_unsplit_run(
    class_folder: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    enc = _split_tiny()
    paths = sorted(class_folder.rglob("*.png"))
    plain = extract_image_features(enc, paths, batch_size=12, num_workers=0)
    real = enc.image_features

    def small_memory(pixels: torch.Tensor) -> torch.Tensor:
        if len(pixels) > 3:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(pixels)

    monkeypatch.setattr(enc, "image_features", small_memory)
    with caplog.at_level(logging.INFO):
        res = extract_image_features(enc, paths, batch_size=12, num_workers=0)
    assert plain.batch_size_used == 12 and res.batch_size_used == 3  # 12 -> 6 -> 3
    assert "batch size 6" in caplog.text and "batch size 3" in caplog.text
    torch.testing.assert_close(res.features, plain.features, rtol=1e-5, atol=1e-6)
