"""`python -m histovl.demo` works offline and without ../shared/data."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

import histovl.demo as demo
from histovl.models._lite import bundled_weights_path

ASSETS = Path(demo.__file__).parent / "assets"


@pytest.mark.slow
@pytest.mark.skipif(not bundled_weights_path().is_file(), reason="bundled histovl-lite weights not generated")
def test_demo_without_shared_data_writes_every_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HISTOVL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(demo, "shared_data_dir", lambda: None)
    monkeypatch.setattr(demo, "FEWSHOT_SHOTS", (1, 4))
    monkeypatch.setattr(demo, "DEMO_CORRUPTIONS", {"blur": [4]})  # the full sweep is 7 conditions
    out = tmp_path / "demo"
    reports = demo.run_demo(out, progress=False)
    assert reports == [out / "zeroshot" / "report.html", out / "fewshot" / "report.html", out / "slide" / "report.html",
                       out / "robustness" / "report.html"]
    assert all(r.is_file() and r.stat().st_size > 1000 for r in reports)
    assert json.loads((out / "zeroshot" / "metrics.json").read_text())["n"] == 91
    assert (out / "slide" / "predictions.geojson").is_file() and (out / "slide" / "heatmap.png").is_file()
    rows = (out / "robustness" / "robustness.csv").read_text().splitlines()
    assert rows[0] == "model,corruption,severity,accuracy,f1_macro,f1_weighted,ha@5,ha@10" and len(rows) == 1 + 2
    printed = capsys.readouterr().out
    for step in ("1. zero-shot", "2. few-shot", "3. ", "4. slide pipeline", "5. robustness"):
        assert step in printed
    assert printed.count("report: ") == 4


def test_demo_assets_are_small_named_and_labelled() -> None:
    demo_bytes = sum(f.stat().st_size for f in (ASSETS / "demo").rglob("*") if f.is_file())
    assert demo_bytes < 2_000_000
    readme = (ASSETS / "README.md").read_text()
    assert "CMU-1-Small-Region" in readme and "CC0" in readme
    manifest = pd.read_csv(ASSETS / "demo" / "tiles" / "manifest.csv")
    assert len(manifest) >= 60 and set(manifest["label"]) == {"tissue", "background"}
    assert all((ASSETS / "demo" / "tiles" / p).is_file() for p in manifest["path"])
    assert len(list((ASSETS / "demo" / "tiles").glob("cmu1_x*_y*.jpg"))) == 9 * 13
    assert bundled_weights_path().stat().st_size < 20_000_000
