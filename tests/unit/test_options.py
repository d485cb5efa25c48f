"""`histovl.options`: bad run options are refused, loose keywords never pass silently."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from histovl.options import RunOptions, config_record, split_overrides


@dataclass(frozen=True)
class _Config:
    strategy: str = "baseline"
    allow_missing_classes: bool = False


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("batch_size", 0, "batch_size must be at least 1"),
        ("workers", -1, "workers must be 0 or more"),
        ("n_boot", -5, "n_boot must be 0 or more"),
        ("on_error", "ignore", "on_error must be one of raise, skip"),
    ],
)
def test_bad_values_are_refused_naming_the_field(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RunOptions(**{field: value})  # type: ignore[arg-type]


def test_keywords_go_to_the_config_or_the_options_by_field_name() -> None:
    cfg, opts = split_overrides({"strategy": "ovr", "n_boot": 0, "cache": "c"}, None, _Config, None)
    assert cfg == _Config(strategy="ovr")
    assert opts == RunOptions(n_boot=0, cache=Path("c"))
    base = RunOptions(seed=4)
    cfg, opts = split_overrides({}, _Config(allow_missing_classes=True), _Config, base)
    assert cfg.allow_missing_classes and opts is base


def test_a_misspelt_keyword_is_a_type_error_listing_both_field_sets() -> None:
    with pytest.raises(TypeError, match="unexpected keyword 'nboot'.*_Config fields: allow_missing_classes, strategy.*RunOptions fields"):
        split_overrides({"nboot": 0}, None, _Config, None)


def test_a_runtime_is_refused_by_a_command_that_encodes_with_torch_only() -> None:
    with pytest.raises(ValueError, match="runtime='onnx' is not supported by the command configured by _Config"):
        split_overrides({"runtime": "onnx"}, None, _Config, None)
    with pytest.raises(ValueError, match="torch only"):
        split_overrides({}, None, _Config, RunOptions(runtime="onnx-int8"))
    _, opts = split_overrides({"runtime": "torch"}, None, _Config, None)
    assert opts.runtime == "torch"


def test_the_commands_that_encode_through_open_encoder_take_a_runtime() -> None:
    from histovl import (
        EmbedConfig,
        FewshotConfig,
        FusionAblationConfig,
        MultilabelConfig,
        PredictConfig,
        RetrieveConfig,
        RobustnessConfig,
        ZeroshotConfig,
    )
    from histovl.heads.cmm_run import CmmFitConfig
    from histovl.train.finetune import FinetuneConfig

    for config_type in (ZeroshotConfig, MultilabelConfig, FusionAblationConfig, RetrieveConfig, RobustnessConfig, EmbedConfig,
                        FewshotConfig, PredictConfig):
        _, opts = split_overrides({"runtime": "onnx"}, None, config_type, None)
        assert opts.runtime == "onnx"
    for config_type, why in ((_Config, "torch only"), (CmmFitConfig, "patch tokens"), (FinetuneConfig, "trains the encoder")):
        with pytest.raises(ValueError, match=why):  # refused with its reason, never ignored
            split_overrides({"runtime": "onnx"}, None, config_type, None)


def test_old_keyword_spelling_warns_and_is_mapped() -> None:
    with pytest.warns(DeprecationWarning, match="num_workers= is deprecated; use workers="):
        _, opts = split_overrides({"num_workers": 3}, None, _Config, None)
    assert opts.workers == 3


def test_record_resolves_the_cache_folder_and_leaves_out_progress(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HISTOVL_CACHE", str(tmp_path))
    record = RunOptions(progress=False).record()
    assert record["cache"] == str(tmp_path)
    assert list(record) == ["cache", "batch_size", "workers", "on_error", "device", "trust_checkpoint",
                            "allow_absolute_paths", "n_boot", "seed", "runtime", "allow_approximate", "precision",
                            "runtime_parity"]
    assert RunOptions(use_cache=False).record()["cache"] is None
    assert config_record(_Config()) == {"strategy": "baseline", "allow_missing_classes": False}
