"""Warm runs: prompts cached like images, the model loaded only on a miss (once per process),
and a fully cached run that neither loads the model nor imports torch (docs/performance.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from histovl.embed.encoders import open_encoder
from histovl.embed.text import encode_texts
from histovl.models import lazy
from histovl.models.identity import IDENTITY_DIR, weights_fingerprint
from histovl.options import RunOptions
from histovl.zeroshot import zeroshot
from tests.golden.cases import build_fixture
from tests.helpers.loads import count_model_loads

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def fixture(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return build_fixture(tmp_path_factory.mktemp("warm"))


@pytest.fixture(autouse=True)
def _fresh_process_models() -> None:
    lazy.forget_loaded_models()




def _run(f: dict[str, str], out: Path, cache: Path, prompts: str | None = None) -> None:
    zeroshot(f["model"], f["manifest"], prompts or f["prompts"], out, cache=cache, n_boot=20, seed=3,
             workers=0, progress=False)


def test_fully_cached_run_loads_nothing_and_writes_the_same_bytes(fixture, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    _run(fixture, tmp_path / "cold", cache)
    assert list((cache / IDENTITY_DIR).glob("*.json")), "the cold run records the model's identity"
    lazy.forget_loaded_models()
    calls = count_model_loads(monkeypatch)
    _run(fixture, tmp_path / "warm", cache)
    assert calls == []
    for name in ("metrics.json", "predictions.csv"):
        assert (tmp_path / "warm" / name).read_bytes() == (tmp_path / "cold" / name).read_bytes(), name


def test_the_model_loads_once_per_process_and_only_on_a_miss(fixture, tmp_path, monkeypatch):
    calls = count_model_loads(monkeypatch)
    _run(fixture, tmp_path / "a", tmp_path / "cache-a")
    _run(fixture, tmp_path / "b", tmp_path / "cache-b")  # every image misses again: same model
    assert calls == [fixture["model"]]


def test_editing_one_prompt_reencodes_only_that_prompt(fixture, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    _run(fixture, tmp_path / "first", cache)
    edited = tmp_path / "edited.yaml"
    edited.write_text(Path(fixture["prompts"]).read_text().replace("[green tissue]", "[greenish tissue]"))
    enc = lazy.loaded_model(fixture["model"], device="cpu", trust_checkpoint=False,
                            fingerprint=weights_fingerprint(fixture["model"]))
    seen: list[str] = []
    real = enc._encode_text

    def counting(texts):  # type: ignore[no-untyped-def]
        seen.extend(texts)
        return real(texts)

    monkeypatch.setattr(enc, "_encode_text", counting)
    _run(fixture, tmp_path / "second", cache, prompts=str(edited))
    assert sorted(seen) == ["a tile showing greenish tissue.", "an image of greenish tissue."]


def test_text_cache_returns_what_the_model_computes(fixture, tmp_path):
    enc = open_encoder(fixture["model"], RunOptions(cache=tmp_path / "c"))
    texts = ["red tissue", "blue tissue", "red tissue"]
    first = encode_texts(enc, texts)
    plain = encode_texts(enc, texts, cache=None)
    assert (first == plain).all() and (encode_texts(enc, texts) == first).all()


def test_no_cache_loads_the_model_and_records_nothing(fixture, tmp_path):
    enc = open_encoder(fixture["model"], RunOptions(cache=tmp_path / "c", use_cache=False))
    assert not getattr(enc, "is_lazy_encoder", False)
    assert not (tmp_path / "c").exists()


def _cli(f: dict[str, str], command: str, out: Path, cache: Path) -> list[str]:
    common = ["--model", f["model"], "--out", str(out), "--cache", str(cache), "--n-boot", "20", "--seed", "3", "--quiet"]
    if command == "retrieve":
        return ["retrieve", "--data", f["manifest"], "--k", "3", *common]
    if command.startswith("multilabel"):  # multilabel-topk: subset prompts through the memo too
        strategy = command.partition("-")[2] or "ovr"
        return ["multilabel", "--data", f["multilabel"], "--prompts", f["ml_prompts"], "--strategy", strategy, *common]
    if command.startswith("robustness"):  # the tile of the report's gallery is corrupted too
        stain = ["--stain-normalisation"] if command.endswith("macenko") else []
        return ["robustness", "--data", f["manifest"], "--prompts", f["prompts"], "-c", "blur", "-c", "markup",
                "-l", "1", "--k", "3", "--workers", "0", *stain, *common]
    return ["zeroshot", "--data", f["manifest"], "--prompts", f["prompts"], *common]


_TORCH = ("torch", "open_clip", "transformers", "torchvision")
#: what a fully cached run must not import: zero-shot also neither sklearn/scipy (its metrics are
#: histovl.metrics._exact) nor pandas (histovl.reports.Table), zero-shot and robustness no
#: matplotlib (their figures are memoised in the cache folder); multilabel no torch either (its
#: strategies are NumPy; tests/unit/zeroshot/test_multilabel_numpy_port.py checks them against torch)
_HEAVY = {"zeroshot": (*_TORCH, "sklearn", "scipy", "matplotlib", "pandas"), "retrieve": _TORCH,
          "robustness": (*_TORCH, "matplotlib"), "multilabel": _TORCH, "multilabel-topk": _TORCH,
          "robustness-macenko": (*_TORCH, "matplotlib", "torchstain")}
#: the outputs a warm run must write exactly as the cold one did (robustness's metrics.json also
#: holds its encode_stats, cached vs encoded: compared without them)
_SAME = {"zeroshot": ("metrics.json", "predictions.csv"), "retrieve": ("metrics.json", "predictions.csv"),
         "multilabel": ("metrics.json", "predictions.csv"), "multilabel-topk": ("metrics.json", "predictions.csv"),
         "robustness": ("robustness.csv", "robustness_detail.csv", "predictions.csv", "figures/corruption_gallery.png",
                        "figures/robustness_accuracy.png")}
_SAME["robustness-macenko"] = _SAME["robustness"]


@pytest.mark.slow
@pytest.mark.parametrize("command", ["zeroshot", "retrieve", "robustness", "multilabel", "multilabel-topk",
                                     "robustness-macenko"])
def test_a_fully_cached_cli_run_imports_no_torch(fixture, tmp_path, command):
    from typer.testing import CliRunner

    from histovl.cli.app import app

    cache = tmp_path / "cache"
    cold = CliRunner().invoke(app, _cli(fixture, command, tmp_path / "cold", cache), catch_exceptions=False)
    assert cold.exit_code == 0, cold.output
    code = (
        "import sys\n"
        f"sys.argv = ['histovl', *{_cli(fixture, command, tmp_path / 'warm', cache)!r}]\n"
        "from histovl.cli.app import main\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        f"heavy = [m for m in {_HEAVY[command]!r} if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stdout, done.stdout + done.stderr
    for name in _SAME[command]:
        assert (tmp_path / "warm" / name).read_bytes() == (tmp_path / "cold" / name).read_bytes(), name
    if command.startswith("robustness"):
        cold, warm = (json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("cold", "warm"))
        warm_stats, cold_stats = warm.pop("encode_stats"), cold.pop("encode_stats")
        assert len(warm_stats) == (6 if command.endswith("macenko") else 3)
        assert [s["n_encoded"] for s in warm_stats] == [0] * len(warm_stats)
        assert [s["n_cached"] for s in cold_stats] == [0] * len(cold_stats)
        assert [s["transform"] for s in warm_stats] == [s["transform"] for s in cold_stats]
        assert warm == cold
