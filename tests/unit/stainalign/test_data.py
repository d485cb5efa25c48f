"""Pairs CSV checks, DeepLIIF label counting, and fit/eval end to end on synthetic tile folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from histovl.data.paths import UnsafePathError
from histovl.stainalign import read_pairs
from histovl.stainalign.deepliif import build_deepliif_pairs, crop_label, nucleus_centroids
from tests.helpers.synthetic import tile_folder as _folder


def test_read_pairs_resolves_checks_and_defaults_group(tmp_path: Path) -> None:
    _folder(tmp_path / "he" / "a", (200, 100, 160))
    _folder(tmp_path / "ihc" / "a", (120, 80, 40))
    pd.DataFrame({"he_slide": ["he/a"], "ihc_slide": ["ihc/a"], "label": ["pos"], "marker": ["Ki67"]}).to_csv(tmp_path / "p.csv", index=False)
    frame = read_pairs(tmp_path / "p.csv")
    assert Path(frame["he_slide"][0]).is_absolute() and frame["group"][0] == frame["he_slide"][0]
    pd.DataFrame({"he_slide": ["../x"], "ihc_slide": ["ihc/a"], "label": ["p"], "marker": ["Ki67"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(UnsafePathError, match="outside"):
        read_pairs(tmp_path / "bad.csv")
    pd.DataFrame({"he_slide": ["he/zz"], "ihc_slide": ["ihc/a"], "label": ["p"], "marker": ["Ki67"]}).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(FileNotFoundError, match="do not exist"):
        read_pairs(tmp_path / "m.csv")
    pd.DataFrame({"he_slide": ["he/a"], "label": ["p"]}).to_csv(tmp_path / "c.csv", index=False)
    with pytest.raises(ValueError, match="lacks column"):
        read_pairs(tmp_path / "c.csv")


def test_a_pairs_csv_without_rows_is_empty_data(tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_text("he_slide,ihc_slide,label,marker\n")
    with pytest.raises(ValueError, match=r"empty\.csv has no rows"):
        read_pairs(tmp_path / "empty.csv")


def test_nucleus_counting_by_centroid() -> None:
    mask = np.zeros((64, 64, 3), np.uint8)
    mask[2:6, 2:6] = (255, 0, 0)  # positive in crop (0, 0)
    mask[40:44, 40:44] = (0, 0, 255)  # negative in crop (32, 32)
    mask[30:36, 2:6] = (0, 0, 255)  # negative straddling rows 30-35: centroid row 32.5 -> crop (32, 0)
    mask[10:12, 10:30] = (0, 255, 0)  # outline colour: ignored
    pos, neg = nucleus_centroids(mask)
    assert len(pos) == 1 and len(neg) == 2
    assert crop_label(pos, neg, 0, 0, 32).positive == 1 and crop_label(pos, neg, 0, 0, 32).negative == 0
    assert crop_label(pos, neg, 32, 0, 32).negative == 1
    assert crop_label(pos, neg, 32, 32, 32).index == 0.0


def test_build_deepliif_pairs_on_a_synthetic_strip(tmp_path: Path) -> None:
    strip = np.full((512, 3072, 3), 230, np.uint8)
    strip[:, 0:512] = (150, 110, 80)  # IHC panel
    strip[:, 512:1024] = (110, 110, 190)  # hematoxylin panel
    mask = strip[:, 2560:3072]
    mask[:] = 0
    mask[10:20, 10:20] = (255, 0, 0)  # crop r0_c0: 1 positive, 1 negative -> 0.5 high
    mask[40:50, 40:50] = (0, 0, 255)
    mask[300:310, 300:310] = (0, 0, 255)  # crop r256_c256: 0 positive -> low
    (tmp_path / "src" / "Sample_Dataset" / "train").mkdir(parents=True)
    (tmp_path / "src" / "Sample_Dataset" / "val").mkdir(parents=True)
    Image.fromarray(strip).save(tmp_path / "src" / "Sample_Dataset" / "train" / "S.png")
    Image.fromarray(strip).save(tmp_path / "src" / "Sample_Dataset" / "val" / "S.png")  # duplicate: dropped
    frame = build_deepliif_pairs(tmp_path / "src", tmp_path / "out", crop_size=256, tile_size=128)
    assert list(frame["label"]) == ["high", "low"] and list(frame["group"]) == ["S_q0", "S_q3"]
    pairs = read_pairs(tmp_path / "out" / "pairs.csv")
    assert len(pairs) == 2
    tiles = sorted(p.name for p in (tmp_path / "out" / "he" / "S_r256_c256").iterdir())
    assert tiles == ["tile_x256_y256.png", "tile_x256_y384.png", "tile_x384_y256.png", "tile_x384_y384.png"]
    he_tile = np.asarray(Image.open(tmp_path / "out" / "he" / "S_r0_c0" / "tile_x0_y0.png"))
    assert tuple(he_tile[0, 0]) == (110, 110, 190)


def test_fit_and_eval_end_to_end_on_tile_folders(tmp_path: Path, tiny_clip) -> None:  # type: ignore[no-untyped-def]
    from histovl.models import save_model_dir
    from histovl.stainalign import stainalign_eval, stainalign_fit

    rows = []
    for i in range(8):
        label = "pos" if i % 2 else "neg"
        he_colour = (200, 90, 160) if label == "pos" else (230, 170, 210)
        ihc_colour = (120, 70, 30) if label == "pos" else (140, 150, 200)
        _folder(tmp_path / "he" / f"s{i}", he_colour)
        _folder(tmp_path / "ihc" / f"s{i}", ihc_colour)
        rows.append({"he_slide": f"he/s{i}", "ihc_slide": f"ihc/s{i}", "label": label, "marker": "Ki67", "group": f"p{i // 2}"})
    pd.DataFrame(rows).to_csv(tmp_path / "pairs.csv", index=False)
    model_dir = save_model_dir(tiny_clip, tmp_path / "encoder")
    metrics = stainalign_fit(
        tmp_path / "pairs.csv", tmp_path / "fit", model=str(model_dir),
        params={"epochs": 3, "batch_size": 4, "hidden_dim": 16, "attention_dim": 8, "projection_dim": 8},
        cv_folds=2, n_boot=20,
    )
    for key in ("n", "f1_weighted", "f1_macro", "accuracy", "auroc", "ci95"):
        assert key in metrics and key in metrics["baseline"]
    assert metrics["n"] == 8 and set(metrics["ci95"]) == {"f1_weighted", "f1_macro", "accuracy", "auroc"}
    for name in ("metrics.json", "predictions.csv", "run.json", "report.html", "stainalign.json", "baseline/stainalign.json"):
        assert (tmp_path / "fit" / name).is_file(), name
    preds = pd.read_csv(tmp_path / "fit" / "predictions.csv")
    assert {"path", "label", "prediction", "score:neg", "score:pos", "baseline_prediction", "fold"} <= set(preds.columns)
    # eval must not need the IHC slides: remove them first
    import shutil

    shutil.rmtree(tmp_path / "ihc")
    for i in range(8):
        (tmp_path / "ihc" / f"s{i}").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "ihc" / f"s{i}" / "placeholder.png")
    ev = stainalign_eval(tmp_path / "fit", tmp_path / "pairs.csv", tmp_path / "eval", n_boot=20)
    assert ev["n"] == 8 and "baseline" in ev
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["f1_weighted"] == ev["f1_weighted"]
    assert len(list((tmp_path / "eval" / "heatmaps").glob("*.png"))) == 8
