"""LUAD-HistoSeg / BCSS-WSSS file-name label vectors and PanNuke masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histovl.data.multilabel_formats import (
    BCSS_WSSS_CLASSES,
    LUAD_HISTOSEG_CLASSES,
    LabelVectorError,
    export_pannuke,
    pannuke_label_sets,
    parse_label_vector,
    read_bcss_wsss,
    read_luad_histoseg,
    write_multilabel_manifest,
)
from histovl.prompts import load_prompt_set


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("1031280-2300-27920-[1 0 0 1].png", (1, 0, 0, 1)),
        ("436219-7159-48057-[1, 0, 1, 0].png", (1, 0, 1, 0)),
        ("TCGA-A1-A0SK-DX1_xmin45749_ymin25055_MPP-0.2500+0[1101].png", (1, 1, 0, 1)),
    ],
)
def test_parse_label_vector(name: str, expected: tuple[int, ...]) -> None:
    assert parse_label_vector(name, 4) == expected


@pytest.mark.parametrize("name", ["plain.png", "x-[1 0 1].png", "x-[1 2 0 1].png"])
def test_parse_label_vector_rejects_bad_names(name: str) -> None:
    with pytest.raises(LabelVectorError):
        parse_label_vector(name, 4)


def _touch_png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 100, 150)).save(path)


def test_read_luad_histoseg_maps_vector_to_classes_and_patient_groups(tmp_path: Path) -> None:
    _touch_png(tmp_path / "train" / "1031280-2300-27920-[1 0 0 1].png")
    _touch_png(tmp_path / "train" / "1031280-2400-27920-[0 1 1 0].png")
    _touch_png(tmp_path / "train" / "22-1-1-[0 0 0 0].png")
    _touch_png(tmp_path / "val" / "mask" / "ignored-[1 1 1 1].png")
    s = read_luad_histoseg(tmp_path)
    assert s.multilabel and len(s) == 3
    by_name = {r.path.name: r for r in s.records}
    assert by_name["1031280-2300-27920-[1 0 0 1].png"].labels == ("tumor", "stroma")
    assert LUAD_HISTOSEG_CLASSES == ("tumor", "necrosis", "lymphocyte", "stroma")
    assert by_name["1031280-2400-27920-[0 1 1 0].png"].labels == ("necrosis", "lymphocyte")
    assert by_name["22-1-1-[0 0 0 0].png"].labels == ()
    assert {r.group for r in s.records} == {"1031280", "22"}


def test_read_bcss_wsss_groups_by_tcga_patient_and_round_trips(tmp_path: Path) -> None:
    _touch_png(tmp_path / "TCGA-A1-A0SK-DX1_xmin45749_ymin25055_MPP-0.2500+0[1101].png")
    _touch_png(tmp_path / "TCGA-A1-A0SK-DX1_xmin45749_ymin25055_MPP-0.2500+1[0010].png")
    s = read_bcss_wsss(tmp_path)
    assert [r.labels for r in s.records] == [
        (BCSS_WSSS_CLASSES[0], BCSS_WSSS_CLASSES[1], BCSS_WSSS_CLASSES[3]),
        (BCSS_WSSS_CLASSES[2],),
    ]
    assert {r.group for r in s.records} == {"TCGA-A1-A0SK"}
    manifest = write_multilabel_manifest(s, tmp_path / "manifest.csv")
    text = manifest.read_text().splitlines()
    assert text[0] == "path,labels,group" and text[1].endswith(",tumor;stroma;necrosis,TCGA-A1-A0SK")
    assert set(BCSS_WSSS_CLASSES) == set(load_prompt_set("bcss-wsss-v1").classes)


def test_pannuke_label_sets_and_export(tmp_path: Path) -> None:
    masks = np.zeros((3, 16, 16, 6), dtype=np.float32)
    masks[0, 2:4, 2:4, 0] = 7  # neoplastic nucleus, 4 px
    masks[0, 5, 5, 3] = 2  # dead, 1 px
    masks[1, :, :, 5] = 1  # background only
    masks[2, 0:3, 0:3, 1] = 1  # inflammatory 9 px
    masks[2, 0:3, 0:3, 4] = 4  # epithelial 9 px
    assert pannuke_label_sets(masks) == [("neoplastic", "dead"), (), ("inflammatory", "epithelial")]
    assert pannuke_label_sets(masks, min_pixels=2) == [("neoplastic",), (), ("inflammatory", "epithelial")]
    images = np.full((3, 16, 16, 3), 128.0, dtype=np.float64)
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "masks.npy", masks)
    manifest = export_pannuke(tmp_path / "images.npy", tmp_path / "masks.npy", tmp_path / "out")
    lines = manifest.read_text().splitlines()
    assert lines == ["path,labels", "images/pannuke_00000.png,neoplastic;dead", "images/pannuke_00001.png,",
                     "images/pannuke_00002.png,inflammatory;epithelial"]
    assert Image.open(tmp_path / "out" / "images" / "pannuke_00002.png").size == (16, 16)
