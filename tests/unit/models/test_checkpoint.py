"""Safe loading: pickles refused without the flag, weights_only with it, strict key/shape diffs."""

from __future__ import annotations

import builtins
from pathlib import Path

import pytest
import torch

from histovl.errors import UntrustedCheckpointError
from histovl.models import CheckpointMismatchError, load_model
from histovl.models._checkpoint import load_state_dict_strict, read_checkpoint
from histovl.models._weights_id import file_sha256
from tests.helpers.tiny import save_safetensors, tiny_open_clip_model


class _RunsCodeWhenUnpickled:
    """Unpickling calls open(marker, "w"), i.e. creates a file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (str(self.marker), "w"))


@pytest.fixture
def evil_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(2), "payload": _RunsCodeWhenUnpickled(marker)}, path)
    assert not marker.exists()
    return path, marker


def test_pickle_refused_without_trust_flag(evil_checkpoint, tiny_arch) -> None:
    path, marker = evil_checkpoint
    with pytest.raises(UntrustedCheckpointError, match="--trust-checkpoint"):
        read_checkpoint(path)
    with pytest.raises(UntrustedCheckpointError, match="--trust-checkpoint"):
        load_model(f"open_clip:{tiny_arch}:{path}")
    assert not marker.exists()


def test_pickle_with_code_refused_even_with_trust_flag(evil_checkpoint, tiny_arch) -> None:
    path, marker = evil_checkpoint
    with pytest.raises(UntrustedCheckpointError, match="weights_only"):
        read_checkpoint(path, trust_checkpoint=True)
    with pytest.raises(UntrustedCheckpointError, match="weights_only"):
        load_model(f"open_clip:{tiny_arch}:{path}", trust_checkpoint=True)
    assert not marker.exists()


def test_trusted_plain_pickle_loads_and_unwraps_common_wrappers(tmp_path: Path) -> None:
    sd = {"module.a": torch.ones(2), "module.b": torch.zeros(1)}
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "w.bin")
    out = read_checkpoint(tmp_path / "w.bin", trust_checkpoint=True)
    assert set(out) == {"a", "b"} and torch.equal(out["a"], torch.ones(2))


def test_unknown_file_type_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(UntrustedCheckpointError, match="unrecognised"):
        read_checkpoint(tmp_path / "w.npz")
    with pytest.raises(FileNotFoundError):
        read_checkpoint(tmp_path / "missing.safetensors")


def test_mismatch_message_lists_missing_unexpected_and_shapes(tmp_path: Path, tiny_arch: str) -> None:
    sd = dict(tiny_open_clip_model(0).state_dict())
    del sd["ln_final.weight"]
    sd["extra.head"] = torch.zeros(3)
    sd["text_projection"] = torch.zeros(5, 7)
    path = save_safetensors(sd, tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointMismatchError) as info:
        load_model(f"open_clip:{tiny_arch}:{path}")
    msg = str(info.value)
    assert "1 missing, 1 unexpected, 1 shape mismatches" in msg
    assert "ln_final.weight" in msg and "extra.head" in msg
    assert "text_projection: (5, 7) vs (64, 32)" in msg


def test_strict_load_accepts_an_exact_match_and_ignores_only_what_it_is_told() -> None:
    model = torch.nn.Linear(2, 3)
    sd = {"weight": torch.ones(3, 2), "bias": torch.zeros(3), "decoder.x": torch.ones(1)}
    with pytest.raises(CheckpointMismatchError, match="decoder.x"):
        load_state_dict_strict(model, sd, source="t")
    load_state_dict_strict(model, sd, source="t", ignore=lambda k: k.startswith("decoder."))
    assert torch.equal(model.weight, torch.ones(3, 2))


def test_file_hash_is_sha256_and_memoised(tmp_path: Path) -> None:
    import hashlib
    import json

    path = tmp_path / "w.bin"
    path.write_bytes(b"weights" * 1000)
    memo = tmp_path / "memo.json"
    assert file_sha256(path, memo=memo) == hashlib.sha256(path.read_bytes()).hexdigest()
    table = json.loads(memo.read_text())
    (key,) = table
    table[key] = "memoised-value"  # a memo hit must not re-read the file
    memo.write_text(json.dumps(table))
    assert file_sha256(path, memo=memo) == "memoised-value"
    path.write_bytes(b"changed")  # size/mtime change -> re-hashed
    assert file_sha256(path, memo=memo) == hashlib.sha256(b"changed").hexdigest()
