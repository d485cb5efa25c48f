"""Building without random initialisation (`histovl.models._empty_init`) equals the plain build
plus `load_state_dict`, bit for bit, and falls back to it where it cannot be used."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from torch import nn

from histovl.models import _open_clip, load_model
from histovl.models._checkpoint import (
    CheckpointMismatchError,
    load_state_dict_strict,
    read_checkpoint,
)
from histovl.models._empty_init import build_then_load, parameters_on_meta
from tests.helpers.tiny import save_safetensors, tiny_open_clip_cfg


def _plain(cfg: dict, weights: Path) -> nn.Module:
    model = _open_clip.build_model(cfg)
    model.load_state_dict(read_checkpoint(weights), strict=True)
    return model


def _assert_same_tensors(got: nn.Module, ref: nn.Module) -> None:
    for kind in ("named_parameters", "named_buffers"):
        a, b = dict(getattr(got, kind)()), dict(getattr(ref, kind)())
        assert a.keys() == b.keys(), kind
        for k in a:
            assert not a[k].is_meta, k
            assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and a[k].stride() == b[k].stride(), k
            assert a[k].requires_grad == b[k].requires_grad, k
            assert torch.equal(a[k], b[k]), k


def test_open_clip_load_equals_the_plain_build_and_leaves_the_rng_alone(tiny_arch: str, tiny_weights: Path) -> None:
    torch.manual_seed(123)
    state = torch.get_rng_state()
    enc = load_model(f"open_clip:{tiny_arch}:{tiny_weights}")
    assert torch.equal(torch.get_rng_state(), state)  # no random init drew from the global RNG
    ref = _plain(tiny_open_clip_cfg(), tiny_weights)
    _assert_same_tensors(enc.model, ref)  # incl. the non-persistent causal attn_mask buffer
    assert "attn_mask" in dict(enc.model.named_buffers())
    assert not enc.model.training
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(enc.model.encode_image(x), ref.encode_image(x))


def test_dtype_casts_like_load_state_dict(tmp_path: Path, tiny_weights: Path) -> None:
    """A half-precision checkpoint ends in the float32 model as `copy_` would cast it."""
    half = save_safetensors({k: v.half() for k, v in read_checkpoint(tiny_weights).items()}, tmp_path / "half.safetensors")
    cfg = tiny_open_clip_cfg()
    sd = read_checkpoint(half)
    fast = build_then_load(lambda: _open_clip.build_model(cfg), lambda m, a: load_state_dict_strict(m, sd, source="t", assign=a))
    ref = _open_clip.build_model(cfg)
    ref.load_state_dict(sd, strict=True)
    _assert_same_tensors(fast, ref)
    assert next(fast.parameters()).dtype == torch.float32


def test_a_mismatched_checkpoint_is_the_users_error_not_a_fallback(tiny_weights: Path) -> None:
    sd = read_checkpoint(tiny_weights)
    sd.pop("logit_scale")
    with pytest.raises(CheckpointMismatchError, match="logit_scale"):
        build_then_load(lambda: _open_clip.build_model(tiny_open_clip_cfg()),
                        lambda m, a: load_state_dict_strict(m, sd, source="t", assign=a))


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.b.weight = self.a.weight


class _BufferFromWeight(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.register_buffer("norm", self.lin.weight.detach().norm().reshape(1), persistent=False)


@pytest.mark.parametrize("cls", [_Tied, _BufferFromWeight])
def test_falls_back_to_the_plain_build(cls: type[nn.Module]) -> None:
    torch.manual_seed(0)
    sd = {k: torch.randn_like(v) for k, v in cls().state_dict().items()}
    calls: list[bool] = []

    def load(m: nn.Module, assign: bool) -> None:
        calls.append(assign)
        load_state_dict_strict(m, sd, source="t", assign=assign)

    got = build_then_load(cls, load)
    assert calls[-1] is False  # loaded the plain way
    assert not any(t.is_meta for t in (*got.parameters(), *got.buffers()))
    if isinstance(got, _Tied):
        assert got.a.weight is got.b.weight  # tying kept


def test_only_the_calling_thread_builds_on_meta() -> None:
    other: list[torch.device] = []
    entered, done = threading.Event(), threading.Event()

    def build_elsewhere() -> None:
        entered.wait(5)
        other.append(nn.Linear(2, 2).weight.device)
        done.set()

    worker = threading.Thread(target=build_elsewhere)
    worker.start()
    with parameters_on_meta():
        entered.set()
        done.wait(5)
        assert nn.Linear(2, 2).weight.is_meta
    worker.join()
    assert other == [torch.device("cpu")]
    assert not nn.Linear(2, 2).weight.is_meta  # and nothing stays patched


def test_prefetched_weights_are_the_files_and_are_assigned_without_a_copy(tiny_arch: str, tiny_weights: Path) -> None:
    from histovl.models._checkpoint import FreshTensors, prefetch_safetensors

    prefetch_safetensors(tiny_weights)
    got = read_checkpoint(tiny_weights)
    assert isinstance(got, FreshTensors)
    plain = read_checkpoint(tiny_weights)  # the prefetch is taken once
    assert not isinstance(plain, FreshTensors)
    assert got.keys() == plain.keys() and all(torch.equal(got[k], plain[k]) for k in got)
    model = build_then_load(lambda: _open_clip.build_model(tiny_open_clip_cfg()),
                            lambda m, a: load_state_dict_strict(m, got, source="t", assign=a, owned=True))
    assert model.visual.conv1.weight.data_ptr() == got["visual.conv1.weight"].data_ptr()
    _assert_same_tensors(model, _plain(tiny_open_clip_cfg(), tiny_weights))


def test_a_prefetch_of_a_changed_or_damaged_file_is_not_used(tmp_path: Path, tiny_weights: Path) -> None:
    import os
    import shutil

    from histovl.models._checkpoint import CheckpointReadError, FreshTensors, prefetch_safetensors

    path = Path(shutil.copy(tiny_weights, tmp_path / "w.safetensors"))
    prefetch_safetensors(path)
    os.utime(path, ns=(1, 1))  # changed since (another mtime): read again
    assert not isinstance(read_checkpoint(path), FreshTensors)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated: the thread's error is raised here
    prefetch_safetensors(path)
    with pytest.raises(CheckpointReadError, match="truncated or corrupt"):
        read_checkpoint(path)


def test_hf_clip_load_equals_the_plain_build(tmp_path: Path) -> None:
    from transformers import CLIPModel

    from histovl.models._hf_clip import read_hf_config
    from tests.helpers.tiny import tiny_hf_clip_dir

    folder = tiny_hf_clip_dir(tmp_path)
    enc = load_model(f"hf-clip:{folder}")
    ref = CLIPModel(read_hf_config(enc.card, folder))
    ref.load_state_dict(read_checkpoint(folder / "model.safetensors"), strict=False)
    _assert_same_tensors(enc.model, ref)


def test_init_functions_skip_meta_tensors_only_while_building_and_are_restored() -> None:
    originals = {name: getattr(nn.init, name) for name in ("normal_", "kaiming_uniform_", "ones_")}
    real = torch.zeros(3)
    with parameters_on_meta():
        meta = nn.Linear(2, 2).weight
        assert nn.init.normal_(meta) is meta  # skipped: nothing to compute on meta
        nn.init.ones_(real)  # a real tensor is initialised as ever, even inside
    assert real.tolist() == [1.0, 1.0, 1.0]
    assert {name: getattr(nn.init, name) for name in originals} == originals
    torch.manual_seed(0)
    a = nn.init.normal_(torch.empty(4))
    torch.manual_seed(0)
    assert torch.equal(a, originals["normal_"](torch.empty(4)))


def test_building_on_meta_does_not_import_torch_dynamo() -> None:
    """nn.init on a meta tensor runs PyTorch's Python references, whose first call imports
    torch._dynamo (seconds of a cold run): the build skips them. Checked in a fresh interpreter."""
    import os
    import subprocess
    import sys

    code = ("import sys, torch\nfrom torch import nn\n"
            "from histovl.models._empty_init import parameters_on_meta\n"
            "with parameters_on_meta():\n"
            "    m = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4), nn.LayerNorm(4), nn.Conv2d(3, 4, 3))\n"
            "print(all(p.is_meta for p in m.parameters()), 'torch._dynamo' in sys.modules)\n")
    src = str(Path(__file__).resolve().parents[3] / "src")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": src})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "False"]
