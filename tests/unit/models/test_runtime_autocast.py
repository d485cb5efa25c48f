"""torch under autocast behind the parity gate (docs/runtime.md, "GPUs"), run on the CPU with bf16:
the gate against fp32 is measured, recorded and reused; autocast embeddings live in their own cache
namespace; a broken autocast path is refused unless --allow-approximate; auto means fp32 off CUDA."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from histovl.models.runtime import RuntimeParityError, apply_runtime
from histovl.models.runtime.autocast import AutocastEncoder, autocast_dtype
from histovl.options import RunOptions, split_overrides
from tests.helpers.tiny import TINY_IMAGE_SIZE, tiny_encoder

PROMPTS = ["an H&E image of lung adenocarcinoma.", "benign lung tissue", "squamous cell carcinoma of the lung"]


def _pixels(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, generator=torch.Generator().manual_seed(seed))


def test_auto_is_fp32_off_cuda_and_explicit_dtypes_are_kept() -> None:
    assert autocast_dtype("auto", "cpu") is None and autocast_dtype("fp32", "cuda") is None
    assert autocast_dtype("bf16", "cpu") == "bf16" and autocast_dtype("fp16", "cpu") == "fp16"
    encoder = tiny_encoder()
    assert apply_runtime(encoder, RunOptions()) is encoder  # the CPU default: plain fp32 torch
    with pytest.raises(ValueError, match="precision must be one of"):
        RunOptions(precision="int4")  # type: ignore[arg-type]


def test_bf16_gate_is_measured_recorded_and_reused(tmp_path: Path) -> None:
    encoder = tiny_encoder()
    opts = RunOptions(cache=tmp_path, precision="bf16")
    auto = apply_runtime(encoder, opts)
    assert isinstance(auto, AutocastEncoder) and auto.weights_id == "tiny-seed0|runtime=torch-bf16"
    assert opts.runtime_parity[encoder.card.name]["passed"] is None  # nothing measured yet
    pixels = _pixels()
    with torch.inference_mode():
        feats = auto.encode_image(pixels)
        auto.encode_text(PROMPTS)
        reference = encoder.encode_image(pixels)
    assert feats.dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity(feats, reference, dim=-1)
    assert float(cos.min()) >= 0.99 and float(cos.min()) < 1.0  # bf16 really ran, and is close
    record = opts.runtime_parity[encoder.card.name]
    assert record["runtime"] == "torch-bf16" and record["passed"] is True and record["threshold"] == 0.99
    assert record["image"]["n"] == 6 and record["text"]["n"] == 3 and record["measured_in_this_run"] is True
    assert record["argmax_agreement"]["n_prompts"] == 3 and record["reference"] == "torch fp32 on the same device"
    meta = json.loads((auto.folder / "meta.json").read_text())
    assert meta["parity"]["image"]["cosine_min"] == record["image"]["cosine_min"]
    # a later run reads the verdict before encoding anything
    later = RunOptions(cache=tmp_path, precision="bf16")
    apply_runtime(encoder, later)
    assert later.runtime_parity[encoder.card.name]["passed"] is True
    assert later.runtime_parity[encoder.card.name]["measured_in_this_run"] is None
    assert later.record()["precision"] == "bf16"


def test_cache_keeps_autocast_and_fp32_apart(tmp_path: Path) -> None:
    from histovl.embed import EmbeddingCache, encode_images
    from tests.helpers.synthetic import lung_tiles

    manifest = lung_tiles(tmp_path / "data", per_class=2)
    paths = sorted(str(p) for p in manifest.parent.glob("tiles/*/*.png"))
    cache = EmbeddingCache(tmp_path / "cache")
    encoder = tiny_encoder()
    fp32 = encode_images(encoder, paths, cache=cache, num_workers=0, progress=False)
    auto = apply_runtime(encoder, RunOptions(cache=tmp_path / "gate", precision="bf16"))
    bf16 = encode_images(auto, paths, cache=cache, num_workers=0, progress=False)
    assert fp32.n_encoded == len(paths) and bf16.n_encoded == len(paths)  # no fp32 row reused
    again = encode_images(auto, paths, cache=cache, num_workers=0, progress=False)
    assert again.n_cached == len(paths) and np.allclose(bf16.embeddings, again.embeddings)
    assert not np.array_equal(fp32.embeddings, bf16.embeddings)


class _NoisyUnderAutocast(torch.nn.Module):
    """A deliberately broken autocast path: image features get heavy noise under CPU autocast."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.inner = encoder

    def __getattr__(self, name: str) -> object:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)

    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        feats = self.inner.encode_image(pixels, normalize)
        if torch.is_autocast_enabled("cpu"):
            feats = feats + 5 * feats.abs().mean() * torch.randn(feats.shape, generator=torch.Generator().manual_seed(0))
        return feats


def test_gate_refuses_a_broken_autocast_path(tmp_path: Path) -> None:
    broken = _NoisyUnderAutocast(tiny_encoder(seed=2))
    with pytest.raises(RuntimeParityError, match=r"--precision bf16 .*--precision fp32.*--allow-approximate"):
        apply_runtime(broken, RunOptions(cache=tmp_path, precision="bf16")).encode_image(_pixels())
    with pytest.raises(RuntimeParityError):  # the verdict is kept: refused before encoding
        apply_runtime(broken, RunOptions(cache=tmp_path, precision="bf16"))
    opts = RunOptions(cache=tmp_path, precision="bf16", allow_approximate=True)
    apply_runtime(broken, opts).encode_image(_pixels())
    record = opts.runtime_parity["tiny-clip"]
    assert record["passed"] is False and record["accepted_approximate"] is True and record["image"]["cosine_min"] < 0.99
    assert apply_runtime(broken, RunOptions(cache=tmp_path, precision="fp32")) is broken  # the opt-out


def test_autocast_is_refused_where_it_would_be_ignored() -> None:
    from dataclasses import dataclass

    from histovl.errors import HistovlError

    with pytest.raises(HistovlError, match="--precision bf16 is torch autocast"):
        apply_runtime(tiny_encoder(), RunOptions(runtime="onnx", precision="bf16"))

    @dataclass(frozen=True)
    class _TorchOnly:
        x: int = 0

    with pytest.raises(ValueError, match="precision='fp16' is not supported"):
        split_overrides({"precision": "fp16"}, None, _TorchOnly, None)
    assert split_overrides({"precision": "fp32"}, None, _TorchOnly, None)[1].precision == "fp32"


@pytest.mark.slow
def test_cli_precision_enters_run_json(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from histovl.cli.app import app
    from tests.golden.cases import build_fixture

    fixture = build_fixture(tmp_path)
    args = ["zeroshot", "--model", fixture["model"], "--data", fixture["manifest"], "--prompts", fixture["prompts"],
            "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache"), "--n-boot", "0", "--workers", "0",
            "--quiet", "--precision", "bf16"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "out" / "run.json").read_text())["config"]
    assert config["precision"] == "bf16" and config["runtime"] == "torch"
    (record,) = config["runtime_parity"].values()
    assert record["runtime"] == "torch-bf16" and record["passed"] is True and record["image"]["n"] >= 1
