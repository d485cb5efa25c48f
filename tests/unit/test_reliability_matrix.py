"""Rows of ../shared/guide/RELIABILITY.md that no package test covered (see docs/reliability.md).

Each test builds its own broken input (tests/data/bad generators or a few bytes written here),
runs the real command function with a tiny model, and asserts the exact outcome.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import histovl.embed
from histovl._io import atomic_open, atomic_write_text
from histovl.data.paths import UnsafePathError
from histovl.embed import cache as cache_module
from histovl.embed import encode_images
from histovl.errors import HistovlError, UnknownNameError
from histovl.prompts import PromptSet
from tests.data.bad import manifests
from tests.helpers.tiny import tiny_encoder

PROMPTS = PromptSet(
    name="reliability-test",
    classes={"lung_aca": ["adenocarcinoma"], "lung_n": ["benign lung"], "lung_scc": ["squamous carcinoma"]},
    templates=["an H&E image of {}."],
    negative="an image with nothing in it.",
)


def _tile(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, size=(24, 24, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def multilabel_manifest(tmp_path: Path) -> Path:
    """8 tiles with `labels` covering every class, plus a zero-byte ``broken.png`` row."""
    root = tmp_path / "ml"
    rows = ["path,labels"]
    label_sets = ["lung_aca", "lung_n", "lung_scc", "lung_aca;lung_n", "lung_n;lung_scc", "lung_aca;lung_scc",
                  "lung_aca", "lung_scc"]
    for i, labs in enumerate(label_sets):
        _tile(root / f"t{i}.png", i)
        rows.append(f"t{i}.png,{labs}")
    (root / "broken.png").write_bytes(b"")
    rows.append("broken.png,lung_n")
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    return root / "m.csv"


def _run_json(out: Path) -> dict[str, Any]:
    return json.loads((out / "run.json").read_text())


# ---- corrupt file + on_error="skip": the run goes on, the skip is recorded, valid results kept ----

def test_multilabel_skip_records_the_bad_file_and_keeps_the_rest(tiny_clip, multilabel_manifest: Path, tmp_path: Path) -> None:
    from histovl.zeroshot.multilabel.pipeline import multilabel

    with pytest.raises(HistovlError, match="broken.png"):
        multilabel(tiny_clip, multilabel_manifest, PROMPTS, strategy="baseline", use_cache=False, n_boot=0,
                   num_workers=0, progress=False)
    res = multilabel(tiny_clip, multilabel_manifest, PROMPTS, tmp_path / "o", strategy="baseline", on_error="skip",
                     use_cache=False, n_boot=10, num_workers=0, progress=False)
    assert res.metrics["n"] == 8 and res.metrics["n_skipped"] == 1
    run = _run_json(tmp_path / "o")
    assert [Path(s["path"]).name for s in run["skipped"]] == ["broken.png"]
    assert "zero-byte" in run["skipped"][0]["reason"]


def test_cmm_fit_skip_records_the_bad_file_and_keeps_the_rest(tiny_clip, multilabel_manifest: Path, tmp_path: Path) -> None:
    from histovl.heads.cmm_run import cmm_fit

    res = cmm_fit(tiny_clip, multilabel_manifest, PROMPTS, tmp_path / "head", epochs=2, warmup_epochs=1, n_heads=2,
                  ffn_dim=16, n_boot=10, on_error="skip", use_cache=False)
    assert res.metrics["n"] == 8 and res.probabilities.shape == (8, 3)
    run = _run_json(tmp_path / "head")
    assert [Path(s["path"]).name for s in run["skipped"]] == ["broken.png"]


def test_robustness_skip_records_the_bad_file_and_keeps_the_rest(class_folder: Path, tmp_path: Path) -> None:
    from histovl.robustness import robustness

    (class_folder / "lung_n" / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    res = robustness([tiny_encoder(0)], class_folder, PROMPTS, tmp_path / "o", corruptions=["blur"],
                     levels={"blur": [1]}, n_boot=10, use_cache=False, on_error="skip", num_workers=0, progress=False)
    assert len(res.table) == 2
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["n"] == 12
    run = _run_json(tmp_path / "o")
    assert [Path(s["path"]).name for s in run["skipped"]] == ["truncated.png"]


# ---- label / prompt mismatches and strategy inputs: refused before any model or image work -------

def test_multilabel_label_typo_is_named_with_a_suggestion_before_the_model_loads(multilabel_manifest: Path) -> None:
    from histovl.zeroshot.multilabel.pipeline import multilabel

    text = multilabel_manifest.read_text().replace("t0.png,lung_aca", "t0.png,lung_ACA")
    multilabel_manifest.write_text(text)
    # an unknown model spec proves the data check comes first: it never gets to loading a model
    with pytest.raises(ValueError, match=r"'lung_ACA': 1 image\(s\)\. Did you mean 'lung_aca'"):
        multilabel("no-such-model", multilabel_manifest, PROMPTS, use_cache=False, progress=False)


@pytest.mark.parametrize("case", ["no-negative", "powerset-17"])
def test_multilabel_strategy_inputs_are_checked_before_encoding(
    tiny_clip, multilabel_manifest: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    from histovl.zeroshot.multilabel.pipeline import multilabel

    def no_encoding(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("images were encoded before the strategy inputs were checked")

    monkeypatch.setattr(histovl.embed, "encode_images", no_encoding)
    if case == "no-negative":
        prompts, strategy, match, error = PROMPTS.model_copy(update={"negative": None}), "topk", "negative", ValueError
    else:
        classes = {**PROMPTS.classes, **{f"extra{i}": [f"tissue {i}"] for i in range(14)}}
        prompts, strategy, match, error = PROMPTS.model_copy(update={"classes": classes}), "powerset", r"2\^17", HistovlError
    with pytest.raises(error, match=match):
        multilabel(tiny_clip, multilabel_manifest, prompts, strategy=strategy, allow_missing_classes=True,
                   on_error="skip", use_cache=False, progress=False)


def test_finetune_validation_label_typo_is_refused_before_training(class_folder: Path, tmp_path: Path) -> None:
    from histovl.train import FinetuneConfig, finetune

    val = tmp_path / "val"
    (val / "lung_ACA").mkdir(parents=True)
    _tile(val / "lung_ACA" / "v.png", 0)
    cfg = FinetuneConfig(epochs=1, batch_size=4, train="projections")
    with pytest.raises(ValueError, match=r"'lung_ACA'.*Did you mean 'lung_aca'"):
        finetune(tiny_encoder(0), class_folder, tmp_path / "ft", config=cfg, val_data=val, val_prompts=PROMPTS,
                 progress=None)
    assert not (tmp_path / "ft" / "checkpoint.pt").exists()
    with pytest.raises(ValueError, match="both val_data and val_prompts"):
        finetune(tiny_encoder(0), class_folder, tmp_path / "ft", config=cfg, val_data=val, progress=None)


# ---- unknown model name through a command ---------------------------------------------------------

def test_zeroshot_unknown_model_lists_close_matches_and_how_to_list(class_folder: Path) -> None:
    from histovl.zeroshot import zeroshot

    with pytest.raises(UnknownNameError, match=r"histovl-lite.*histovl models|histovl models.*histovl-lite") as err:
        zeroshot("histovl-lyte", class_folder, PROMPTS, use_cache=False, progress=False)
    assert "histovl-lyte" in str(err.value)


# ---- path traversal in a manifest: every command that reads data refuses it before a model loads --

def _commands() -> dict[str, Any]:
    from histovl.embed import embed
    from histovl.heads.cmm_run import cmm_fit
    from histovl.retrieval import retrieve
    from histovl.robustness import robustness
    from histovl.zeroshot import zeroshot
    from histovl.zeroshot.multilabel.pipeline import multilabel

    return {
        "zeroshot": lambda m, **kw: zeroshot("no-such-model", m, PROMPTS, use_cache=False, progress=False, **kw),
        "multilabel": lambda m, **kw: multilabel("no-such-model", m, PROMPTS, use_cache=False, progress=False, **kw),
        "cmm-fit": lambda m, **kw: cmm_fit("no-such-model", m, PROMPTS, use_cache=False, **kw),
        "retrieve": lambda m, **kw: retrieve("no-such-model", m, out=None, use_cache=False, progress=False, **kw),
        "robustness": lambda m, **kw: robustness("no-such-model", m, PROMPTS, use_cache=False, progress=False, **kw),
        "embed": lambda m, **kw: embed("no-such-model", m, cache=m.parent / "cache", progress=False, **kw),
    }


@pytest.mark.parametrize("command", ["zeroshot", "multilabel", "cmm-fit", "retrieve", "robustness", "embed"])
@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_every_command_refuses_manifest_paths_outside_the_root(tmp_path: Path, command: str, kind: str) -> None:
    manifest = manifests.traversal_manifest(tmp_path, kind=kind)
    with pytest.raises(UnsafePathError, match="allow-absolute-paths"):
        _commands()[command](manifest)


@pytest.mark.parametrize(
    ("command", "next_error"),
    [("zeroshot", "have no prompts"), ("multilabel", "labels"), ("retrieve", "no-such-model"), ("embed", "no-such-model")],
)
def test_allow_absolute_paths_is_passed_through(tmp_path: Path, command: str, next_error: str) -> None:
    manifest = manifests.traversal_manifest(tmp_path, kind="absolute")
    # with the flag the data loads, so the next check (labels, then the unknown model) is what fails
    with pytest.raises((UnknownNameError, ValueError), match=next_error) as err:
        _commands()[command](manifest, allow_absolute_paths=True)
    assert not isinstance(err.value, UnsafePathError)


# ---- out of memory: halve down to 1 and report the size used -------------------------------------

def test_encode_images_backs_off_on_oom_and_reports_the_batch_size(
    class_folder: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    encoder = tiny_encoder(0)
    paths = sorted(class_folder.rglob("*.png"))
    plain = encode_images(encoder, paths, batch_size=12, num_workers=0, progress=False)
    real = encoder.encode_image

    limit = 3

    def small_memory(pixels: torch.Tensor) -> torch.Tensor:
        if len(pixels) > limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(pixels)

    monkeypatch.setattr(encoder, "encode_image", small_memory)
    with caplog.at_level(logging.WARNING, logger="histovl.embed.engine"):
        res = encode_images(encoder, paths, batch_size=12, num_workers=0, progress=False)
    assert res.batch_size_used == 3 and plain.batch_size_used == 12  # 12 -> 6 -> 3
    assert "batch size 6" in caplog.text and "batch size 3" in caplog.text
    np.testing.assert_allclose(res.embeddings, plain.embeddings, atol=1e-5)
    limit = 0  # not even one image fits: the error surfaces after trying batch size 1
    with pytest.raises(torch.OutOfMemoryError):
        encode_images(encoder, paths, batch_size=12, num_workers=0, progress=False)
    assert "batch size 1" in caplog.text


def test_zeroshot_records_the_batch_size_used_in_run_json(class_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    import yaml

    from histovl.zeroshot import zeroshot

    encoder = tiny_encoder(0)
    real = encoder.encode_image

    def small_memory(pixels: torch.Tensor) -> torch.Tensor:
        if len(pixels) > 4:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(pixels)

    monkeypatch.setattr(encoder, "encode_image", small_memory)
    prompts = tmp_path / "p.yaml"
    prompts.write_text(yaml.safe_dump({"name": "p", "classes": {c: [c] for c in ("lung_aca", "lung_n", "lung_scc")},
                                       "templates": ["{}"]}))
    zeroshot(encoder, class_folder, prompts, tmp_path / "run", batch_size=12, num_workers=0, use_cache=False,
             n_boot=0, progress=False)
    config = json.loads((tmp_path / "run" / "run.json").read_text())["config"]
    assert config["batch_size"] == 12 and config["batch_size_used"] == 3


# ---- stale cache: the format version is part of the key -------------------------------------------

def test_cache_key_changes_with_the_cache_format_version(monkeypatch: pytest.MonkeyPatch) -> None:
    args = dict(weights_id="w", preprocessing="p", transform="blur:1")
    before = cache_module.namespace_key(**args)
    monkeypatch.setattr(cache_module, "CACHE_FORMAT_VERSION", cache_module.CACHE_FORMAT_VERSION + 1)
    assert cache_module.namespace_key(**args) != before


# ---- atomic writes: a failed write keeps the old file and leaves no temp file ---------------------

def test_interrupted_atomic_write_keeps_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    atomic_write_text(target, '{"n": 1}\n')
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(target, "w", encoding="utf-8") as fh:
            fh.write('{"n": 2, "trunc')
            raise KeyboardInterrupt  # Ctrl-C in the middle of writing
    assert target.read_text() == '{"n": 1}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


# ---- one seed drives Python, NumPy, torch and data-loader workers ---------------------------------

def _draws(seed: int) -> tuple[float, float, float, list[int]]:
    import random

    from torch.utils.data import DataLoader

    from histovl.reproducibility import seed_everything

    gen = seed_everything(seed)
    worker_draws = [int(x) for x in DataLoader(range(4), batch_size=1, shuffle=True, generator=gen)]
    return random.random(), float(np.random.rand()), float(torch.rand(1)), worker_draws


def test_seed_everything_drives_every_random_source() -> None:
    assert _draws(3) == _draws(3)
    assert _draws(3)[:3] != _draws(4)[:3]
    with pytest.raises(ValueError, match="seed must be"):
        _draws(-1)
