"""`stainalign fit / eval` with a typed config, and `stainalign eval`'s spellings: ``--head`` (the
fitted folder) and ``--model`` (the tile encoder), with last release's ``--model FOLDER`` and
``--encoder`` still accepted with a deprecation warning."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from histovl.options import RunOptions
from histovl.stainalign import StainAlignFitConfig, StainAlignParams
from tests.helpers.synthetic import stainalign_pairs

SMALL = StainAlignParams(epochs=2, batch_size=4, hidden_dim=8, attention_dim=4, projection_dim=4)


def test_config_takes_typed_or_partial_params() -> None:
    assert StainAlignFitConfig(params={"epochs": 3}).params == StainAlignParams(epochs=3)  # type: ignore[arg-type]
    assert StainAlignFitConfig(params=SMALL).params is SMALL
    with pytest.raises(TypeError, match="epoch"):
        StainAlignFitConfig(params={"epoch": 3})  # type: ignore[arg-type]
    recorded = StainAlignFitConfig(params=SMALL, cv_folds=3).record()
    assert recorded["cv_folds"] == 3 and recorded["params"]["epochs"] == 2
    assert "align" not in recorded["params"] and "random_state" not in recorded["params"]  # set per model


# ---- the CLI spellings (the library call is recorded, not run) -----------------------------------


@pytest.fixture
def recorded_eval(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    import histovl.stainalign

    calls: list[dict[str, Any]] = []

    def fake(head: Any, pairs: Any, out: Any, options: RunOptions, *, model: Any = None) -> dict[str, Any]:
        calls.append({"head": Path(head), "model": model, "options": options})
        return {"n": 2, "f1_weighted": 1.0, "f1_macro": 1.0, "accuracy": 1.0, "auroc": None, "ci95": {}}

    monkeypatch.setattr(histovl.stainalign, "stainalign_eval", fake)
    return calls


def _fitted_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "fit"
    folder.mkdir()
    (folder / "stainalign.json").write_text("{}")
    return folder


def _eval(tmp_path: Path, *args: str) -> Any:
    from histovl.cli.app import app

    base = ["stainalign", "eval", "--pairs", str(tmp_path / "pairs.csv"), "--out", str(tmp_path / "o"), "--n-boot", "0"]
    return CliRunner().invoke(app, [*base, *args])


def test_eval_new_spelling_head_and_model(tmp_path: Path, recorded_eval: list[dict[str, Any]]) -> None:
    head = _fitted_folder(tmp_path)
    result = _eval(tmp_path, "--head", str(head), "--model", "some-encoder")
    assert result.exit_code == 0, result.output
    assert "deprecated" not in result.output
    assert recorded_eval[0]["head"] == head and recorded_eval[0]["model"] == "some-encoder"
    assert recorded_eval[0]["options"].n_boot == 0
    assert "f1_weighted" in result.output


def test_eval_old_spellings_still_work_with_a_warning(tmp_path: Path, recorded_eval: list[dict[str, Any]]) -> None:
    head = _fitted_folder(tmp_path)
    only_folder = _eval(tmp_path, "--model", str(head))
    assert only_folder.exit_code == 0, only_folder.output
    assert "--model <folder written by `stainalign fit`> is deprecated" in only_folder.output and "use --head" in only_folder.output
    assert recorded_eval[-1]["head"] == head and recorded_eval[-1]["model"] is None

    with_encoder = _eval(tmp_path, "-m", str(head), "--encoder", "some-encoder")
    assert with_encoder.exit_code == 0, with_encoder.output
    assert "--encoder is deprecated" in with_encoder.output
    assert recorded_eval[-1]["head"] == head and recorded_eval[-1]["model"] == "some-encoder"

    new_head_old_encoder = _eval(tmp_path, "--head", str(head), "--encoder", "some-encoder")
    assert new_head_old_encoder.exit_code == 0, new_head_old_encoder.output
    assert recorded_eval[-1]["model"] == "some-encoder"


def test_eval_without_a_fitted_folder_is_a_usage_error(tmp_path: Path, recorded_eval: list[dict[str, Any]]) -> None:
    missing = _eval(tmp_path, "--model", "histovl-lite")  # an encoder spec, not a fitted folder
    assert missing.exit_code == 2 and "--head" in missing.output
    both = _eval(tmp_path, "--head", str(_fitted_folder(tmp_path)), "--model", "a", "--encoder", "b")
    assert both.exit_code == 2 and "give only --model" in both.output
    assert recorded_eval == []


def test_fit_cli_passes_the_schedule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import histovl.stainalign
    from histovl.cli.app import app

    seen: list[StainAlignFitConfig] = []

    def fake(pairs: Any, out: Any, config: StainAlignFitConfig, options: RunOptions, *, model: Any) -> dict[str, Any]:
        seen.append(config)
        block: dict[str, Any] = {"n": 2, "f1_weighted": 1.0, "f1_macro": 1.0, "accuracy": 1.0, "auroc": None, "ci95": {}}
        return {**block, "baseline": block, "evaluation": "cv"}

    monkeypatch.setattr(histovl.stainalign, "stainalign_fit", fake)
    base = ["stainalign", "fit", "--pairs", str(tmp_path / "pairs.csv"), "--out", str(tmp_path / "o")]
    default = CliRunner().invoke(app, base)
    joint = CliRunner().invoke(app, [*base, "--schedule", "joint"])
    assert default.exit_code == 0 and joint.exit_code == 0, default.output + joint.output
    assert [c.params.schedule for c in seen] == ["auto", "joint"]
    assert CliRunner().invoke(app, [*base, "--schedule", "sideways"]).exit_code == 2


# ---- end to end: a typed fit, then eval through the CLI with both spellings ------------------------


def test_fit_typed_then_eval_with_new_and_old_spelling_agree(tmp_path: Path, tiny_clip) -> None:  # type: ignore[no-untyped-def]
    from histovl.cli.app import app
    from histovl.models import save_model_dir
    from histovl.stainalign import stainalign_fit

    pairs = stainalign_pairs(tmp_path)
    encoder = str(save_model_dir(tiny_clip, tmp_path / "encoder"))
    fit = stainalign_fit(pairs, tmp_path / "fit", StainAlignFitConfig(params=SMALL, cv_folds=2),
                         RunOptions(n_boot=0, use_cache=False), model=encoder)
    config = json.loads((tmp_path / "fit" / "run.json").read_text())["config"]
    assert config["cv_folds"] == 2 and config["params"]["epochs"] == 2 and config["cache"] is None
    assert fit["n"] == 8

    common = ["stainalign", "eval", "--pairs", str(pairs), "--no-cache", "--n-boot", "0"]
    new = CliRunner().invoke(app, [*common, "--head", str(tmp_path / "fit"), "--out", str(tmp_path / "new")])
    old = CliRunner().invoke(app, [*common, "--model", str(tmp_path / "fit"), "--out", str(tmp_path / "old")])
    assert new.exit_code == 0 and old.exit_code == 0, new.output + old.output
    assert "deprecated" in old.output and "deprecated" not in new.output
    metrics = [json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("new", "old")]
    assert metrics[0]["f1_weighted"] == metrics[1]["f1_weighted"] and metrics[0]["n"] == 8
    assert json.loads((tmp_path / "new" / "run.json").read_text())["config"]["head"] == str(tmp_path / "fit")
