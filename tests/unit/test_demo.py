"""`python -m histovl.demo` works offline and without ../shared/data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import histovl.demo as demo
from histovl.models._lite import bundled_weights_path


@pytest.mark.skipif(not bundled_weights_path().is_file(), reason="bundled histovl-lite weights not generated")
def test_demo_without_shared_data_writes_a_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(demo, "shared_data_dir", lambda: None)
    reports = demo.run_demo(tmp_path / "demo", progress=False)
    assert reports == [tmp_path / "demo" / "stain" / "report.html", tmp_path / "demo" / "robustness" / "report.html"]
    assert all(r.is_file() and r.stat().st_size > 1000 for r in reports)
    rows = (tmp_path / "demo" / "robustness" / "robustness.csv").read_text().splitlines()
    assert rows[0] == "model,corruption,severity,accuracy,f1_macro,f1_weighted,ha@5,ha@10" and len(rows) == 1 + 7
    metrics = json.loads((tmp_path / "demo" / "stain" / "metrics.json").read_text())
    assert metrics["n"] == 8
    assert "report:" in capsys.readouterr().out


def test_demo_assets_are_small_and_named() -> None:
    root = Path(demo.__file__).parent / "assets"
    demo_bytes = sum(f.stat().st_size for f in (root / "demo").rglob("*") if f.is_file())
    assert demo_bytes < 2_000_000
    readme = (root / "README.md").read_text()
    assert "CMU-1-Small-Region" in readme and "immunohistochemistry()" in readme
    assert bundled_weights_path().stat().st_size < 20_000_000
