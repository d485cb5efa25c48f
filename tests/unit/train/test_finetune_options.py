"""`finetune` as (inputs, FinetuneConfig, RunOptions): one seed, progress off, options as keywords."""

from __future__ import annotations

from pathlib import Path

import pytest

from histovl.options import RunOptions
from histovl.train import FinetuneConfig, finetune
from histovl.train.finetune import _seed_from_config
from tests.helpers.tiny import tiny_encoder


def _cfg(**kw) -> FinetuneConfig:  # type: ignore[no-untyped-def]
    return FinetuneConfig(**{"loss": "clip", "epochs": 1, "batch_size": 4, "train": "all", "seed": 0, **kw})


def test_the_seed_lives_in_the_config() -> None:
    cfg, opts = _seed_from_config(_cfg(seed=3), RunOptions())
    assert cfg.seed == 3 and opts.seed == 3
    cfg, opts = _seed_from_config(_cfg(), RunOptions(seed=5))  # an options seed alone is taken over
    assert cfg.seed == 5 and opts.seed == 5
    with pytest.raises(ValueError, match="two seeds"):
        _seed_from_config(_cfg(seed=3), RunOptions(seed=5))


def test_options_object_equals_keywords_and_progress_off_silences_epochs(class_folder: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    typed = finetune(tiny_encoder(0), class_folder, tmp_path / "typed", _cfg(), RunOptions(progress=False, workers=0),
                     progress=lines.append)
    assert lines == []  # no per-epoch line with progress=False
    loose = finetune(tiny_encoder(0), class_folder, tmp_path / "loose", loss="clip", epochs=1, batch_size=4,
                     train="all", num_workers=0, progress=None)
    assert typed.log["train_loss"].iloc[0] == pytest.approx(loose.log["train_loss"].iloc[0], rel=1e-6)
