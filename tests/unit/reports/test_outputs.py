"""write_evaluation_outputs: every file, atomically, JSON without NaN, the standard report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from PIL import Image

from histovl.errors import NonFiniteError
from histovl.metrics import classification_metrics
from histovl.outputs_guard import MANIFEST_FILE
from histovl.reports import (
    Report,
    build_classification_report,
    build_run_record,
    multilabel_predictions_frame,
    predictions_frame,
    write_evaluation_outputs,
)

CLASSES = ["lung_aca", "lung_n", "lung_scc"]


@pytest.fixture
def evaluation(tmp_path: Path) -> tuple[dict, pd.DataFrame, dict, Path]:
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    paths, labels = [], []
    for i in range(24):
        label = CLASSES[i % 3]
        path = root / label / f"tile_{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(path)
        paths.append(path)
        labels.append(label)
    y = np.arange(24) % 3
    logits = rng.normal(size=(24, 3))
    logits[np.arange(24), y] += 1.0
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    metrics = classification_metrics(labels, probs, CLASSES, n_boot=50)
    frame = predictions_frame(paths, labels, probs, CLASSES, root=root)
    record = build_run_record(
        command="zeroshot",
        config={"data": root, "batch_size": 8},
        models=[{"name": "tiny", "architecture": "tiny-ViT", "source": "test"}],
        prompt_set={
            "name": "lung",
            "classes": {c: [c.replace("_", " ")] for c in CLASSES},
            "templates": ["{}."],
        },
        seed=0,
        inputs=paths,
    )
    return metrics, frame, record, root


def _no_temp_files(folder: Path) -> bool:
    # MANIFEST_FILE lists what the run wrote (histovl.outputs_guard): not a temp file
    return not [p for p in folder.rglob("*") if (p.name.startswith(".") and p.name != MANIFEST_FILE) or p.suffix == ".tmp"]


def test_writes_every_output(evaluation, tmp_path: Path) -> None:
    metrics, frame, record, root = evaluation
    report = build_classification_report("Zero-shot", metrics, frame, record, image_root=root)
    out = tmp_path / "out"
    written = write_evaluation_outputs(
        out, metrics=metrics, predictions=frame, run_record=record, report=report
    )
    for name in ("metrics.json", "predictions.csv", "run.json", "report.html"):
        assert (out / name).is_file(), name
    assert set(written) == {"metrics", "predictions", "run", "report"}
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert json.loads((out / "run.json").read_text())["command"] == "zeroshot"
    table = pd.read_csv(out / "predictions.csv")
    assert list(table.columns) == ["path", "label", "prediction", *[f"score:{c}" for c in CLASSES]]
    assert table["path"].iloc[0] == "lung_aca/tile_0.png"  # relative to the data root
    assert _no_temp_files(out)


def test_report_sections_and_images_exist(evaluation, tmp_path: Path) -> None:
    metrics, frame, record, root = evaluation
    out = tmp_path / "out"
    report = build_classification_report("Zero-shot", metrics, frame, record, image_root=root)
    write_evaluation_outputs(
        out, metrics=metrics, predictions=frame, run_record=record, report=report
    )
    page = (out / "report.html").read_text()
    for heading in (
        "Summary",
        "Confusion matrix",
        "Per class",
        "F1 per class",
        "Most confident correct predictions",
        "Most confident wrong predictions",
        "Provenance",
    ):
        assert f"<h2>{heading}</h2>" in page, heading
    sources = re.findall(r'src="([^"]+)"', page)
    assert "figures/confusion_matrix.png" in sources
    assert any(s.startswith("thumbnails/") for s in sources)
    for src in sources:
        assert not src.startswith(("http:", "https:", "/")), src  # relative, no network
        assert (out / src).is_file(), src
    with Image.open(out / "figures" / "confusion_matrix.png") as png:
        assert png.format == "PNG"
    assert "✓" in page and "✗" in page
    assert "&quot;templates&quot;" in page and "lung aca" in page  # prompt set in full


def test_nan_in_metrics_is_refused_before_writing(evaluation, tmp_path: Path) -> None:
    metrics, frame, record, _ = evaluation
    bad = dict(metrics, auroc_macro=float("nan"))
    out = tmp_path / "out"
    with pytest.raises(NonFiniteError, match="auroc_macro"):
        write_evaluation_outputs(
            out, metrics=bad, predictions=frame, run_record=record, report=None
        )
    assert not out.exists() or not any(out.iterdir())
    nested = dict(metrics, ci95={"accuracy": [0.1, float("inf")]})
    with pytest.raises(NonFiniteError, match=r"ci95.*accuracy.*\[1\]"):
        write_evaluation_outputs(
            out, metrics=nested, predictions=frame, run_record=record, report=None
        )


def test_failed_figure_leaves_no_temp_files(
    evaluation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics, frame, record, _ = evaluation

    def broken_savefig(self: Figure, fname: object, **kwargs: object) -> None:
        Path(str(fname)).write_bytes(b"half a png")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    report = Report("broken")
    fig = Figure()
    fig.subplots().plot([0, 1])
    report.add_figure("curve", fig)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="disk full"):
        write_evaluation_outputs(
            out, metrics=metrics, predictions=frame, run_record=record, report=report
        )
    assert _no_temp_files(out)
    assert not (out / "figures" / "curve.png").exists()
    assert not (out / "run.json").exists()  # run.json comes last: its presence means complete


def test_rewrite_replaces_outputs(evaluation, tmp_path: Path) -> None:
    metrics, frame, record, _ = evaluation
    out = tmp_path / "out"
    write_evaluation_outputs(
        out, metrics=metrics, predictions=frame, run_record=record, report=None
    )
    write_evaluation_outputs(
        out, metrics=dict(metrics, n=999), predictions=frame, run_record=record, report=None
    )
    assert json.loads((out / "metrics.json").read_text())["n"] == 999
    assert _no_temp_files(out)


def test_predictions_frames() -> None:
    frame = predictions_frame(
        ["a.png", "b.png"], ["x", "y"], [[0.2, 0.8], [0.6, 0.4]], ["x", "y"], groups=["p1", "p2"]
    )
    assert list(frame["prediction"]) == ["y", "x"]
    assert list(frame.columns) == ["path", "label", "group", "prediction", "score:x", "score:y"]
    with pytest.raises(ValueError, match="shape"):
        predictions_frame(["a.png"], ["x"], [[0.2, 0.8, 0.0]], ["x", "y"])
    multi = multilabel_predictions_frame(
        ["a.png"], [("x", "z")], [[True, False, True]], [[0.9, 0.1, 0.7]], ["x", "y", "z"]
    )
    assert multi.loc[0, "labels"] == "x;z" and multi.loc[0, "predictions"] == "x;z"
    assert list(multi.columns) == ["path", "labels", "predictions", "score:x", "score:y", "score:z"]
