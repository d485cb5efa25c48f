"""Synthetic inputs shared by several test modules (deterministic for a given seed/name)."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

CMM_DIM, CMM_N_CLASSES, CMM_N_TOKENS = 16, 3, 4


def cmm_tokens(n: int, seed: int) -> tuple[torch.Tensor, np.ndarray, torch.Tensor]:
    """Tokens hold a noisy copy of class c's direction exactly when class c is present."""
    gen = torch.Generator().manual_seed(seed)
    classes = torch.eye(CMM_DIM)[:CMM_N_CLASSES]
    y = (torch.rand(n, CMM_N_CLASSES, generator=gen) < 0.5).numpy()
    tokens = 0.3 * torch.randn(n, CMM_N_TOKENS, CMM_DIM, generator=gen)
    tokens[:, :, CMM_N_CLASSES:] += 0.5  # a shared background direction
    for i in range(n):
        for slot, c in enumerate(np.flatnonzero(y[i])):
            tokens[i, slot] += 2.0 * classes[c]
    return torch.nn.functional.normalize(tokens, dim=-1), y, classes


def toy_pairs(n: int = 24, dim: int = 16, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray], list[str], list[str]]:
    """Bags where the status shows in a few 'positive' tiles of the H&E and IHC bags."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=dim)
    he, ihc, y, groups = [], [], [], []
    for i in range(n):
        label = "pos" if i % 2 else "neg"
        k = int(rng.integers(6, 14))
        h = rng.normal(size=(k, dim))
        c = rng.normal(size=(k, dim))
        if label == "pos":
            h[:3] += 2.0 * direction
            c[:3] += 3.0 * direction
        he.append(h.astype(np.float32))
        ihc.append(c.astype(np.float32))
        y.append(label)
        groups.append(f"patient{i // 2}")
    return he, ihc, y, groups


def tile_folder(path: Path, colour: tuple[int, int, int], n: int = 4) -> None:
    path.mkdir(parents=True)
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))  # not hash(): it changes per process
    for i in range(n):
        arr = np.clip(np.array(colour) + rng.integers(-30, 30, size=(32, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(path / f"tile_x{32 * (i % 2)}_y{32 * (i // 2)}.png")


def stainalign_pairs(root: Path, n: int = 8) -> Path:
    """A stainalign pairs CSV under `root`: `n` H&E/IHC pairs of 4-tile folders, labels
    alternating neg/pos (colours differ by label), marker Ki67, two pairs per group."""
    import pandas as pd

    rows = []
    for i in range(n):
        label = "pos" if i % 2 else "neg"
        tile_folder(root / "he" / f"s{i}", (200, 90, 160) if label == "pos" else (230, 170, 210))
        tile_folder(root / "ihc" / f"s{i}", (120, 70, 30) if label == "pos" else (140, 150, 200))
        rows.append({"he_slide": f"he/s{i}", "ihc_slide": f"ihc/s{i}", "label": label, "marker": "Ki67", "group": f"p{i // 2}"})
    pd.DataFrame(rows).to_csv(root / "pairs.csv", index=False)
    return root / "pairs.csv"


#: The three-class lung set of the golden and fault-injection fixtures (one colour channel each).
LUNG_CLASSES = ("lung_aca", "lung_n", "lung_scc")


def lung_prompts_yaml(name: str) -> str:
    """The prompt set of `lung_tiles` (colour words), named `name`."""
    return f"""\
name: {name}
version: 1
classes:
  lung_aca: [red tissue, reddish glands]
  lung_n: [green tissue]
  lung_scc: [blue tissue, bluish sheets]
templates: ["an image of {{}}.", "a tile showing {{}}."]
"""


def lung_tiles(root: Path, per_class: int, seed: int = 1234) -> Path:
    """`per_class` seeded 48x40 PNG tiles per `LUNG_CLASSES` class under ``root/tiles/<class>``
    and ``root/manifest.csv`` (path, label, group: five groups ``p0``..``p4``); returns the manifest."""
    rng = np.random.default_rng(seed)
    lines = ["path,label,group"]
    for ci, cls in enumerate(LUNG_CLASSES):
        (root / "tiles" / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = np.zeros((40, 48, 3), dtype=np.int16)
            base[..., ci] = 150 + 10 * (i % 3)
            arr = np.clip(base + rng.integers(0, 90, size=base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / "tiles" / cls / f"{cls}_{i}.png")
            lines.append(f"tiles/{cls}/{cls}_{i}.png,{cls},p{(ci * per_class + i) % 5}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root / "manifest.csv"


def multilabel_set(root: Path, n: int = 11) -> tuple[Path, Path]:
    """A multi-label manifest of `n` 32x32 tiles (classes aca/normal/scc as colour channels) and
    its prompt-set YAML; returns (manifest, prompts)."""
    import pandas as pd

    rng = np.random.default_rng(0)
    classes = ["aca", "normal", "scc"]
    rows = []
    (root / "img").mkdir(parents=True)
    for i in range(n):
        present = [c for c in classes if rng.random() < 0.5] or [classes[i % 3]]
        arr = np.zeros((32, 32, 3), np.int16)
        for c in present:
            arr[..., classes.index(c)] += 150
        arr = np.clip(arr + rng.integers(0, 60, size=arr.shape), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(root / "img" / f"m{i}.png")
        rows.append({"path": f"img/m{i}.png", "labels": ";".join(present)})
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    prompts = root / "prompts.yaml"
    prompts.write_text(
        "name: cmm-test\nclasses:\n  aca: [adenocarcinoma]\n  normal: [benign tissue]\n  scc: [squamous carcinoma]\n"
        "templates: ['an H&E image of {}.']\n"
    )
    return root / "train.csv", prompts
