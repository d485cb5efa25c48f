"""Mosaic builder: labels are the cells' classes, splits share no source group, seeded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from histovl.data.mosaic import mosaic
from histovl.errors import HistovlError


def _grouped_manifest(root: Path) -> Path:
    """6 tiles per class in 3 groups of 2 (near-duplicates), each tile a flat class colour."""
    rows = []
    for ci, cls in enumerate(["aca", "n", "scc"]):
        for i in range(6):
            rel = f"{cls}/{i}.png"
            (root / cls).mkdir(parents=True, exist_ok=True)
            colour = [0, 0, 0]
            colour[ci] = 100 + 20 * i
            Image.new("RGB", (20, 30), tuple(colour)).save(root / rel)
            rows.append({"path": rel, "label": cls, "group": f"{cls}-g{i // 2}"})
    pd.DataFrame(rows).to_csv(root / "tiles.csv", index=False)
    return root / "tiles.csv"


def test_mosaic_labels_layout_and_group_split(tmp_path: Path) -> None:
    manifest = _grouped_manifest(tmp_path / "src")
    s = mosaic(manifest, tmp_path / "out", n_train=30, n_test=12, grid=2, tile_size=16, test_fraction=0.34, seed=3)
    assert s.classes == ("aca", "n", "scc")
    df = pd.read_csv(s.manifest, keep_default_na=False)
    assert len(df) == 42 and set(df["split"]) == {"train", "test"}
    assert len(pd.read_csv(s.train_manifest)) == 30 and len(pd.read_csv(s.test_manifest)) == 12
    for _, row in df.iterrows():
        cell_labels = {row[f"cell{i}_label"] for i in range(4)}
        assert row["labels"].split(";") == [c for c in s.classes if c in cell_labels]
        img = np.asarray(Image.open(s.out / row["path"]))
        assert img.shape == (32, 32, 3)
        for i in range(4):  # the pixels of each quadrant carry its source class's colour channel
            quad = img[(i // 2) * 16 : (i // 2 + 1) * 16, (i % 2) * 16 : (i % 2 + 1) * 16]
            assert int(np.argmax(quad.reshape(-1, 3).mean(0))) == s.classes.index(row[f"cell{i}_label"])
    groups = {split: {row[f"cell{i}_group"] for _, row in df[df.split == split].iterrows() for i in range(4)}
              for split in ("train", "test")}
    assert not groups["train"] & groups["test"]
    sources = {split: {row[f"cell{i}_source"] for _, row in df[df.split == split].iterrows() for i in range(4)}
               for split in ("train", "test")}
    assert not sources["train"] & sources["test"]


def test_mosaic_is_seeded(tmp_path: Path) -> None:
    manifest = _grouped_manifest(tmp_path / "src")
    a = mosaic(manifest, tmp_path / "a", n_train=8, n_test=4, tile_size=8, seed=1)
    b = mosaic(manifest, tmp_path / "b", n_train=8, n_test=4, tile_size=8, seed=1)
    c = mosaic(manifest, tmp_path / "c", n_train=8, n_test=4, tile_size=8, seed=2)
    assert a.manifest.read_text() == b.manifest.read_text()
    assert a.manifest.read_text() != c.manifest.read_text()


def test_mosaic_max_labels_and_refusals(tmp_path: Path, class_folder: Path) -> None:
    s = mosaic(class_folder, tmp_path / "one", n_train=10, n_test=5, tile_size=8, max_labels=1)
    assert all(";" not in labels for labels in pd.read_csv(s.manifest)["labels"])
    with pytest.raises(ValueError, match="max_labels"):
        mosaic(class_folder, tmp_path / "x", max_labels=4)
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    with pytest.raises(HistovlError, match="git working tree"):
        mosaic(class_folder, repo / "mosaics")
