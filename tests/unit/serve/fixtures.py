"""A served tree built from scratch (no model, no torch): run folders in the formats of
docs/interfaces.md and docs/predict.md, a corrupt run, a slide with its tiling and tile scores, a
leaderboard, and traps for the security tests (a secret outside the root, symlinks out of it)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

CLASSES = ["aca", "norm", "scc"]
LABELS = ["aca"] * 4 + ["norm"] * 4 + ["scc"] * 4
PREDICTIONS = ["aca", "aca", "norm", "scc", "norm", "norm", "norm", "aca", "scc", "scc", "aca", "aca"]
SLIDE_CLASSES = ["tumor", "stroma"]
SLIDE_SIZE = (1024, 768)
EXTENT = 128
SECRET = "TOP-SECRET-histovl-serve-test-3f9a"


@dataclass(frozen=True)
class Tree:
    root: Path
    data: Path
    secret: Path
    zeroshot: Path
    broken: Path
    slide_run: Path
    board: Path


def _image(path: Path, colour: tuple[int, int, int], seed: int, size: tuple[int, int] = (48, 48)) -> None:
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(colour, dtype=np.int16) + rng.integers(-40, 40, size=(size[1], size[0], 3)), 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8)).save(path)


def _run_json(command: str, config: dict, input_root: Path | None = None) -> dict:
    return {"run_record_version": 1, "command": command, "argv": ["histovl"], "time_utc": "2026-01-02T03:04:05+00:00",
            "seed": 0, "config": config, "models": [{"name": "tiny-clip"}], "input_root": str(input_root) if input_root else None,
            "n_inputs": 12}


def _zeroshot_run(folder: Path, data: Path) -> None:
    rng = np.random.default_rng(0)
    rows = []
    for i, (label, pred) in enumerate(zip(LABELS, PREDICTIONS, strict=True)):
        scores = rng.dirichlet(np.ones(3))
        scores = np.sort(scores)[::-1]
        ordered = [pred] + [c for c in CLASSES if c != pred]
        by_class = dict(zip(ordered, scores, strict=True))
        rows.append({"path": f"{label}/img_{i}.png", "label": label, "prediction": pred,
                     **{f"score:{c}": by_class[c] for c in CLASSES}})
        _image(data / label / f"img_{i}.png", (60 + 60 * CLASSES.index(label), 90, 140), i)
    folder.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(folder / "predictions.csv", index=False)
    pd.DataFrame({"path": [r["path"] for r in rows], "label": LABELS}).to_csv(data / "manifest.csv", index=False)
    metrics = {"n": 12, "accuracy": 7 / 12, "f1_macro": 0.55, "ci95": {"accuracy": [0.3, 0.8], "f1_macro": [0.31, 0.77]},
               "class_names": CLASSES, "n_boot": 100}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "figures").mkdir()
    _image(folder / "figures" / "confusion_matrix.png", (200, 200, 200), 99, (64, 64))
    (folder / "report.html").write_text('<html><body><h1>report</h1><img src="figures/confusion_matrix.png"></body></html>')
    (folder / "run.json").write_text(json.dumps(_run_json("histovl zeroshot", {"data": str(data / "manifest.csv")}, data)))


def _slide_run(folder: Path, data: Path) -> None:
    """A `histovl predict` slide run on a plain-image slide (OpenSlide's ImageSlide reads it)."""
    w, h = SLIDE_SIZE
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([(xx * 255 // w), (yy * 255 // h), ((xx // 32 + yy // 32) % 2) * 200], axis=-1).astype(np.uint8)
    slide = data / "slide.png"
    Image.fromarray(arr).save(slide)
    tiling = folder / "tiling"
    tiling.mkdir(parents=True)
    coords = [(x, y) for y in range(0, h - EXTENT + 1, EXTENT) for x in range(0, w - EXTENT + 1, EXTENT) if (x // EXTENT + y // EXTENT) % 3]
    tiles = pd.DataFrame({"x": [c[0] for c in coords], "y": [c[1] for c in coords], "level": 0, "size": 64, "mpp": 1.0,
                          "tissue_fraction": 0.9})
    tiles.to_csv(tiling / "tiles.csv", index=False)
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(len(coords), 8)).astype(np.float32)
    np.save(tiling / "embeddings.npy", emb / np.linalg.norm(emb, axis=1, keepdims=True))
    Image.fromarray(arr[::8, ::8]).save(tiling / "thumbnail.png")
    meta = {"slide": {"path": str(slide), "level_dimensions": [[w, h]], "level_downsamples": [1.0]},
            "resolution": {"extent0": EXTENT}, "source": {"slide": {"path": str(slide)}}, "n_tiles": len(coords)}
    (tiling / "tiling.json").write_text(json.dumps(meta))
    tumor = np.where(tiles["x"] < w / 2, 0.9, 0.2)
    pred = pd.DataFrame({"path": [f"tiling/tiles/tile_x{x}_y{y}.png" for x, y in coords], "x": tiles["x"], "y": tiles["y"],
                         "width": EXTENT, "height": EXTENT, "tissue_fraction": 0.9,
                         "prediction": np.where(tumor > 0.5, "tumor", "stroma"), "margin": np.abs(2 * tumor - 1),
                         "score:tumor": tumor, "score:stroma": 1 - tumor})
    pred.to_csv(folder / "predictions.csv", index=False)
    (folder / "slide.json").write_text(json.dumps({"slide": str(slide), "level0_size": [w, h]}))
    (folder / "run.json").write_text(json.dumps(_run_json("histovl predict", {"data": str(slide), "kind": "slide"}, data)))


def build_tree(base: Path) -> Tree:
    """The tree under `base`: `root/` is served; `data/` (the data set) and the secret lie outside."""
    root, data = base / "root", base / "data"
    secret = base / "secret.txt"
    secret.write_text(SECRET)
    _zeroshot_run(root / "runs" / "zs", data)
    broken = root / "runs" / "broken"
    broken.mkdir(parents=True)
    (broken / "run.json").write_text('{"command": "histovl zeroshot", "config": ')  # cut off mid-write
    _slide_run(root / "runs" / "slide", data)
    board = root / "bench"
    board.mkdir()
    pd.DataFrame({"model": ["tiny-a", "tiny-b", "tiny-c"], "task": ["lung"] * 3, "f1_macro": [0.5, 0.9, 0.7]}).to_csv(
        board / "leaderboard.csv", index=False)
    # `histovl slides embed --prompts` output: a tiling folder with tile_predictions.csv
    embed = root / "embed"
    shutil.copytree(root / "runs" / "slide" / "tiling", embed)
    pred = pd.read_csv(root / "runs" / "slide" / "predictions.csv")
    pred[["x", "y", "prediction", "score:tumor", "score:stroma"]].to_csv(embed / "tile_predictions.csv", index=False)
    # a slide read from a folder of tiles (predict --as-slide): no slide file, tile PNGs kept
    folder = root / "runs" / "folder"
    shutil.copytree(root / "runs" / "slide", folder)
    (data / "tile-folder").mkdir()
    meta = json.loads((folder / "tiling" / "tiling.json").read_text())
    meta["slide"]["path"] = meta["source"]["slide"]["path"] = str(data / "tile-folder")
    (folder / "tiling" / "tiling.json").write_text(json.dumps(meta))
    tiles = pd.read_csv(folder / "tiling" / "tiles.csv")
    tiles["path"] = [f"tiles/tile_x{x}_y{y}.png" for x, y in zip(tiles["x"], tiles["y"], strict=True)]
    for i, rel in enumerate(tiles["path"]):
        _image(folder / "tiling" / rel, (200, 100, 150), 1000 + i, (64, 64))
    tiles.to_csv(folder / "tiling" / "tiles.csv", index=False)
    # a damaged slide file and a tiling whose tiling.json was cut off: error rows
    (root / "slides").mkdir()
    (root / "slides" / "damaged.svs").write_bytes(b"II*\x00" + b"\x00garbage" * 50)
    (root / "slides" / "cut").mkdir()
    (root / "slides" / "cut" / "tiling.json").write_text('{"slide": {"path": ')
    # traps: symlinks inside the root that lead out of it
    (root / "runs" / "zs" / "leak.txt").symlink_to(secret)
    (root / "runs" / "zs" / "leak.png").symlink_to(secret)
    (root / "outside").symlink_to(base, target_is_directory=True)
    return Tree(root, data, secret, root / "runs" / "zs", broken, root / "runs" / "slide", board)
