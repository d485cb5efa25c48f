"""Readers for public multi-label histology formats: LUAD-HistoSeg, BCSS-WSSS and PanNuke.

* LUAD-HistoSeg (Han et al., 2022): ``<patient>-<x>-<y>-[a b c d].png``; the bracket is the
  image-level label vector in the order tumour epithelium (TE), necrosis (NEC), lymphocyte (LYM),
  tumour-associated stroma (TAS). The group is the patient id (text before the first ``-``).
* BCSS-WSSS (derived from BCSS, Amgad et al., 2019): ``<BCSS image>+<index>[abcd].png``, order
  tumour (TUM), stroma (STR), lymphocytic infiltrate (LYM), necrosis (NEC). The group is the TCGA
  patient barcode (first three fields, ``TCGA-A1-A0SK``).
* PanNuke (Gamper et al., 2020): per fold ``images.npy`` [N, 256, 256, 3] and ``masks.npy``
  [N, 256, 256, 6] whose channels are instance maps of neoplastic, inflammatory,
  connective/soft tissue, dead and epithelial nuclei, then background. An image's label set is
  the nucleus types with at least `min_pixels` labelled pixels.

The bracket parser accepts ``[1 0 0 1]``, ``[1, 0, 0, 1]`` and ``[1001]``. Only the validation
and test folders of the WSSS sets carry pixel masks; their images also use this naming.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from histovl._io import atomic_write_text, atomic_write_with
from histovl.data.records import ImageRecord, ImageSet
from histovl.errors import HistovlError

# Label names match the shipped prompt sets luad-histoseg-v1, bcss-wsss-v1 and pannuke-v1.
LUAD_HISTOSEG_CLASSES = ("tumor", "necrosis", "lymphocyte", "stroma")  # file order TE, NEC, LYM, TAS
BCSS_WSSS_CLASSES = ("tumor", "stroma", "lymphocyte", "necrosis")  # file order TUM, STR, LYM, NEC
PANNUKE_CLASSES = ("neoplastic", "inflammatory", "connective", "dead", "epithelial")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
_BRACKET = re.compile(r"\[([01,\s]+)\][^\[\]]*$")


class LabelVectorError(HistovlError, ValueError):
    """A file name does not carry the expected ``[...]`` label vector."""


def parse_label_vector(name: str, n_classes: int) -> tuple[int, ...]:
    """The 0/1 vector in the last ``[...]`` of a file name.

    Example:
        >>> parse_label_vector("1031280-2300-27920-[1 0 0 1].png", 4)
        (1, 0, 0, 1)
        >>> parse_label_vector("TCGA-A1-A0SK-DX1_xmin45749_ymin25055_MPP-0.2500+0[1101].png", 4)
        (1, 1, 0, 1)
    """
    match = _BRACKET.search(Path(name).stem + ".")
    if match is None:
        raise LabelVectorError(f"{name!r} has no [0/1 ...] label vector in its name")
    body = match.group(1)
    digits = re.findall(r"[01]", body) if re.search(r"[\s,]", body.strip()) else list(body.strip())
    if len(digits) != n_classes:
        raise LabelVectorError(f"{name!r}: label vector has {len(digits)} entries, expected {n_classes}")
    return tuple(int(d) for d in digits)


def _patient_before_dash(stem: str) -> str:
    return stem.split("-", 1)[0]


def _tcga_patient(stem: str) -> str:
    parts = stem.split("-")
    return "-".join(parts[:3]) if stem.startswith("TCGA-") and len(parts) >= 3 else stem.split("_", 1)[0]


def read_label_vector_folder(
    folder: str | os.PathLike[str],
    class_names: Sequence[str],
    *,
    group_of: Callable[[str], str] | None = None,
    recursive: bool = True,
) -> ImageSet:
    """A multi-label `ImageSet` from a folder whose file names end in a label vector.

    Files are sorted by relative path; ``mask`` folders (pixel labels) are skipped.
    """
    root = Path(folder).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    files = sorted(
        p for p in (root.rglob("*") if recursive else root.glob("*"))
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and "mask" not in p.relative_to(root).parts[:-1]
    )
    if not files:
        raise ValueError(f"{folder} holds no images with suffixes {IMAGE_SUFFIXES}")
    records = []
    for path in files:
        vec = parse_label_vector(path.name, len(class_names))
        labels = tuple(c for c, v in zip(class_names, vec, strict=True) if v)
        group = group_of(path.stem) if group_of is not None else None
        records.append(ImageRecord(path=path, labels=labels, group=group))
    return ImageSet(records=tuple(records), root=root, source=root, multilabel=True, kind="folder")


def read_luad_histoseg(folder: str | os.PathLike[str]) -> ImageSet:
    """LUAD-HistoSeg images (e.g. its ``train/`` folder) as a multi-label set grouped by patient."""
    return read_label_vector_folder(folder, LUAD_HISTOSEG_CLASSES, group_of=_patient_before_dash)


def read_bcss_wsss(folder: str | os.PathLike[str]) -> ImageSet:
    """BCSS-WSSS images as a multi-label set grouped by TCGA patient."""
    return read_label_vector_folder(folder, BCSS_WSSS_CLASSES, group_of=_tcga_patient)


def pannuke_label_sets(masks: np.ndarray, *, min_pixels: int = 1) -> list[tuple[str, ...]]:
    """Nucleus types present in each PanNuke mask [N, H, W, 6] (channel 5, background, ignored)."""
    masks = np.asarray(masks)
    if masks.ndim != 4 or masks.shape[-1] < len(PANNUKE_CLASSES):
        raise ValueError(f"PanNuke masks must be [N, H, W, 6], got {masks.shape}")
    counts = (masks[..., : len(PANNUKE_CLASSES)] > 0).sum(axis=(1, 2))
    return [tuple(c for c, n in zip(PANNUKE_CLASSES, row, strict=True) if n >= min_pixels) for row in counts]


def export_pannuke(
    images_npy: str | os.PathLike[str],
    masks_npy: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    min_pixels: int = 1,
    prefix: str = "pannuke",
) -> Path:
    """Write a PanNuke fold as PNG tiles + ``manifest.csv`` (``path,labels``) under `out`.

    The arrays are memory-mapped, so a 2.6k-image fold does not need to fit in memory twice.
    Returns the manifest path, ready for ``--data``.
    """
    images = np.load(images_npy, mmap_mode="r")
    masks = np.load(masks_npy, mmap_mode="r")
    if len(images) != len(masks):
        raise ValueError(f"{images_npy} has {len(images)} images but {masks_npy} has {len(masks)} masks")
    out_dir = Path(out)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for start in range(0, len(images), 256):
        label_sets = pannuke_label_sets(np.asarray(masks[start : start + 256]), min_pixels=min_pixels)
        for offset, labels in enumerate(label_sets):
            i = start + offset
            rel = f"images/{prefix}_{i:05d}.png"
            tile = Image.fromarray(np.clip(np.asarray(images[i]), 0, 255).astype(np.uint8))
            _save_png(out_dir / rel, tile)
            rows.append({"path": rel, "labels": ";".join(labels)})
    manifest = out_dir / "manifest.csv"
    atomic_write_text(manifest, _csv_text(["path", "labels"], rows))
    return manifest


def write_multilabel_manifest(image_set: ImageSet, manifest: str | os.PathLike[str]) -> Path:
    """Write `image_set` as a ``path,labels[,group]`` manifest with paths relative to its folder.

    Put the manifest in (or above) the images' folder: paths outside it would need
    ``--allow-absolute-paths`` when loaded back.
    """
    target = Path(manifest).resolve()
    rows = []
    for r in image_set.records:
        rel = os.path.relpath(r.path, target.parent)
        row = {"path": Path(rel).as_posix(), "labels": ";".join(r.label_set)}
        if r.group is not None:
            row["group"] = r.group
        rows.append(row)
    fields = ["path", "labels"] + (["group"] if any("group" in r for r in rows) else [])
    atomic_write_text(target, _csv_text(fields, rows))
    return target


def _csv_text(fields: Sequence[str], rows: Sequence[dict[str, str]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _save_png(target: Path, image: Image.Image) -> None:
    def write(tmp: Path) -> None:
        image.save(tmp, format="PNG")

    atomic_write_with(target, write)
