"""Run records: fields, input hash, git info, JSON safety."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from histovl.reports import build_run_record, git_info, input_hash, package_versions


def _files(root: Path, names: dict[str, bytes]) -> list[Path]:
    out = []
    for name, data in names.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        out.append(p)
    return out


@dataclass(frozen=True)
class _Card:
    name: str
    source: Path


class _PromptSetLike:
    def model_dump(self, mode: str = "python") -> dict:
        return {"name": "lung", "classes": {"a": ["x"]}, "templates": ["{}"], "negative": None}


def test_record_fields(tmp_path: Path) -> None:
    paths = _files(tmp_path / "d", {"a/1.png": b"12", "b/2.png": b"345"})
    record = build_run_record(
        command="zeroshot",
        config={"data": tmp_path / "d", "models": ("m1",)},
        models=[_Card("tiny", tmp_path / "w.safetensors")],
        prompt_set=_PromptSetLike(),
        seed=7,
        inputs=paths,
        skipped=[{"path": paths[1], "reason": "truncated"}],
        extra={"fusion": None},
    )
    for key in (
        "command",
        "time_utc",
        "seed",
        "config",
        "models",
        "prompt_set",
        "versions",
        "platform",
        "histovl_git",
        "cwd_git",
        "input_hash",
        "n_inputs",
        "n_skipped",
        "skipped",
        "extra",
    ):
        assert key in record, key
    assert record["seed"] == 7 and record["n_inputs"] == 2 and record["input_bytes"] == 5
    assert record["n_skipped"] == 1 and record["skipped"][0]["path"] == str(paths[1])
    assert record["prompt_set"]["templates"] == ["{}"]
    assert record["models"][0]["source"].endswith("w.safetensors")
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00$", record["time_utc"])
    json.dumps(record, allow_nan=False)


def test_versions_cover_the_result_changing_packages() -> None:
    versions = package_versions()
    for key in (
        "python",
        "histovl",
        "torch",
        "torchvision",
        "open_clip",
        "transformers",
        "numpy",
        "scikit-learn",
        "pillow",
        "faiss",
    ):
        assert key in versions
    assert versions["numpy"] is not None and versions["scikit-learn"] is not None


def test_input_hash_is_relative_and_order_free(tmp_path: Path) -> None:
    a = _files(tmp_path / "one", {"x/1.png": b"1", "y/2.png": b"22"})
    b = _files(tmp_path / "elsewhere" / "two", {"x/1.png": b"1", "y/2.png": b"22"})
    h_a = input_hash(a)[0]
    assert h_a == input_hash(list(reversed(b)))[0]  # same relative layout, other mount point
    (tmp_path / "one" / "y" / "2.png").write_bytes(b"222")  # a replaced file of another size
    assert input_hash(a)[0] != h_a
    assert input_hash([])[1] == 0
    single = input_hash([a[0]])
    assert single[3] == str((tmp_path / "one" / "x").resolve())


def test_git_info_outside_a_repository(tmp_path: Path) -> None:
    info = git_info(tmp_path)
    assert info["commit"] is None or re.fullmatch(
        r"[0-9a-f]{40}", info["commit"]
    )  # tmp may sit in a repo


def test_git_info_of_the_source_checkout() -> None:
    src = Path(__file__).resolve().parents[3]
    if not (src / ".git").exists():
        pytest.skip("not a git checkout")
    info = git_info(src)
    assert re.fullmatch(r"[0-9a-f]{40}", info["commit"])
    assert isinstance(info["dirty"], bool)


def test_unrecordable_model_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match="ModelCard"):
        build_run_record(
            command="x", config={}, models=[object()], prompt_set=None, seed=0, inputs=[]
        )
