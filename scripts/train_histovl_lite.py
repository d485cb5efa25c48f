"""Regenerate the bundled histovl-lite weights from ../shared/data with one command.

    python scripts/train_histovl_lite.py                    # train, evaluate, write the asset
    python scripts/train_histovl_lite.py --ablation         # also clip vs his2lip at equal compute

Steps: (1) Ki67 IHC crops from the DeepLIIF strips, labelled from the nucleus masks; (2) a
group-aware split of LC25000 lung (near-duplicate groups); (3) `histovl.train.finetune` with the
his2lip loss, frozen backbones, cached features; (4) zero-shot evaluation with CIs on the held-out
LC25000 groups (prompt set lung-he-v1) and the DeepLIIF test crops (ki67-ihc-v1); (5) the
trained heads are written to src/histovl/assets/histovl_lite/histovl-lite.safetensors.
Nothing from ../shared/data is copied into the repository: crops and manifests go to --work.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from safetensors.torch import save_file

from histovl.data import ImageSet, load_image_set
from histovl.models._lite import LiteEncoder, build_histovl_lite, bundled_card, trained_state_dict
from histovl.train.features import extract_image_features
from histovl.train.finetune import FinetuneConfig, finetune

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
ASSET = REPO / "src" / "histovl" / "assets" / "histovl_lite" / "histovl-lite.safetensors"
KI67_POSITIVE_FRACTION = 0.10  # positive nucleus area / all nucleus area in a crop
KI67_MIN_NUCLEUS_PIXELS = 500  # crops with less nucleus area than this are skipped (no cells)
CROP = 128


def nucleus_masks(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Red (Ki67-positive) and blue (negative) nucleus pixels of a DeepLIIF mask panel."""
    red = (mask[..., 0] > 200) & (mask[..., 1] < 60) & (mask[..., 2] < 60)
    blue = (mask[..., 2] > 200) & (mask[..., 0] < 60) & (mask[..., 1] < 60)
    return red, blue


def ki67_crops(ihc: np.ndarray, mask: np.ndarray, stride: int) -> list[tuple[int, int, str, float]]:
    """(x, y, label, positive fraction) of every CROP-px crop with enough nuclei."""
    red, blue = nucleus_masks(mask)
    out = []
    for y in range(0, ihc.shape[0] - CROP + 1, stride):
        for x in range(0, ihc.shape[1] - CROP + 1, stride):
            r, b = int(red[y : y + CROP, x : x + CROP].sum()), int(blue[y : y + CROP, x : x + CROP].sum())
            if r + b < KI67_MIN_NUCLEUS_PIXELS:
                continue
            frac = r / (r + b)
            out.append((x, y, "positive" if frac >= KI67_POSITIVE_FRACTION else "negative", frac))
    return out


def prepare_ki67(work: Path) -> tuple[Path, Path]:
    """Train crops (train strips, stride 48) and test crops (test strips, no overlap) + manifests."""
    root = SHARED / "deepliif-ki67" / "Sample_Dataset"
    manifests = {}
    for split, stride, prefix in (("train", 48, "ki67_"), ("test", CROP, "")):
        folder = work / f"ki67-{split}"
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.png"):
            old.unlink()
        rows = []
        for strip_path in sorted((root / split).glob("*.png")):
            strip = np.asarray(Image.open(strip_path).convert("RGB"))
            ihc = strip[:, :512]
            if split == "train":
                mask = strip[:, 2560:3072]
            else:
                mask = np.asarray(Image.open(root / "test_groundtruth" / strip_path.name).convert("RGB"))
            for x, y, label, frac in ki67_crops(ihc, mask, stride):
                name = f"{strip_path.stem}_{x}_{y}.png"
                Image.fromarray(ihc[y : y + CROP, x : x + CROP]).save(folder / name)
                rows.append({"path": name, "label": prefix + label, "group": strip_path.stem, "positive_fraction": round(frac, 4)})
        manifests[split] = folder / "manifest.csv"
        pd.DataFrame(rows).to_csv(manifests[split], index=False)
    return manifests["train"], manifests["test"]


def lc25000_groups(lung: ImageSet, work: Path) -> list[str]:
    """Near-duplicate groups of every LC25000 tile (`histovl.data` grouping), cached in `work`."""
    from histovl.data.near_duplicates import near_duplicate_groups

    target = work / "lc25000" / "groups.csv"
    if target.is_file():
        frame = pd.read_csv(target)
        if frame["path"].tolist() == [str(p) for p in lung.paths]:
            return [str(g) for g in frame["group"]]
    groups = near_duplicate_groups(lung.paths, workers=2)
    target.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"path": [str(p) for p in lung.paths], "group": groups}).to_csv(target, index=False)
    return groups


def sample_lc25000(lung: ImageSet, per_class: int, seed: int) -> list[int]:
    """A uniform random sample of `per_class` tiles per class (CPU budget), classes interleaved.

    The order is a fixed per-class permutation, interleaved across classes, so a smaller
    `per_class` is a prefix of a larger one (features cached for one are reused by the other).
    """
    rng = np.random.default_rng(seed)
    labels = np.array(lung.labels)
    perms = [rng.permutation(np.flatnonzero(labels == cls))[:per_class] for cls in sorted(set(labels))]
    return [int(p[k]) for k in range(per_class) for p in perms if k < len(p)]


def split_lc25000(work: Path, per_class: int, val_fraction: float, seed: int) -> tuple[Path, Path]:
    """Group-aware split of a per-class sample of LC25000; writes train/val manifests."""
    from histovl.data.splits import group_split

    lung = load_image_set(SHARED / "lc25000-lung")
    groups = lc25000_groups(lung, work)
    picked = sample_lc25000(lung, per_class, seed)
    sample = lung.subset(picked)
    train, val = group_split(sample, test_fraction=val_fraction, seed=seed, groups=[groups[i] for i in picked])
    out = work / "lc25000"
    for name, part in (("train", train), ("val", val)):
        frame = pd.DataFrame({"path": [str(p) for p in part.paths], "label": part.labels, "group": part.groups})
        frame.to_csv(out / f"{name}.csv", index=False)
    heldout = {g for g in val.groups}
    # names of every LC25000 tile in held-out groups (shipped so the demo and tests use unseen tiles)
    names = [str(Path(p).relative_to(SHARED / "lc25000-lung")) for p, g in zip(lung.paths, groups, strict=True) if g in heldout]
    (out / "heldout.txt").write_text("\n".join(sorted(names)) + "\n")
    return out / "train.csv", out / "val.csv"


def combined(*sets: ImageSet) -> ImageSet:
    records = tuple(r for s in sets for r in s.records)
    return ImageSet(records=records, root=Path("/"), source=sets[0].source, kind="manifest")


def evaluate(encoder: LiteEncoder, data: Path, prompts: str, cache: Path, seed: int) -> dict[str, object]:
    """Zero-shot metrics with grouped-bootstrap 95% CIs, from cached backbone features.

    Same classifier (`build_text_classifier`) and metrics (`classification_metrics`) as
    `histovl zeroshot`; only the frozen backbone's features come from the cache.
    """
    import torch

    from histovl.metrics import classification_metrics
    from histovl.prompts import load_prompt_set
    from histovl.zeroshot import build_text_classifier

    data_set = load_image_set(data, allow_absolute_paths=True)
    feats = extract_image_features(encoder, data_set.paths, cache_dir=cache).features
    with torch.inference_mode():
        emb = torch.nn.functional.normalize(encoder.project_image(feats), dim=-1).numpy()
    clf = build_text_classifier(encoder, load_prompt_set(prompts), memoise=False)
    m = classification_metrics(data_set.labels, clf.probabilities(emb), list(clf.class_names),
                               groups=[str(g) for g in data_set.groups], n_boot=1000, seed=seed)
    return {k: m[k] for k in ("n", "n_groups", "accuracy", "balanced_accuracy", "f1_macro", "auroc_macro", "ci95")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=REPO / ".histovl-cache" / "train-lite")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-class", type=int, default=400, help="LC25000 tiles sampled per class (CPU budget)")
    parser.add_argument("--ablation", action="store_true", help="also train clip vs his2lip at equal compute")
    parser.add_argument("--no-asset", action="store_true", help="do not overwrite the shipped weights")
    args = parser.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"{SHARED} not found: this script needs ../shared/data")
    work: Path = args.work
    cache = work / "features"
    t0 = time.perf_counter()
    ki_train, ki_test = prepare_ki67(work)
    lc_train, lc_val = split_lc25000(work, args.per_class, val_fraction=0.25, seed=args.seed)
    train_set = combined(
        load_image_set(lc_train, allow_absolute_paths=True), load_image_set(ki_train)
    )
    val_set = load_image_set(lc_val, allow_absolute_paths=True)
    summary: dict[str, object] = {"n_train": len(train_set), "n_lc25000_val": len(val_set)}
    print(f"data ready: {len(train_set)} training items, {len(val_set)} LC25000 validation ({time.perf_counter() - t0:.0f} s)")
    losses = ("his2lip", "clip") if args.ablation else ("his2lip",)
    for loss in losses:
        cfg = FinetuneConfig(loss=loss, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, train="projections", seed=args.seed)
        start = time.perf_counter()
        encoder = build_histovl_lite(bundled_card(), None)
        finetune(encoder, train_set, work / f"model-{loss}", config=cfg, val_data=val_set,
                       val_prompts="lung-he-v1", feature_cache=cache)
        seconds = time.perf_counter() - start
        summary[loss] = {
            "train_seconds": round(seconds, 1),
            "lc25000_val": evaluate(encoder, lc_val, "lung-he-v1", cache, args.seed),
            "ki67_test": evaluate(encoder, ki_test, "ki67-ihc-v1", cache, args.seed),
        }
        if loss == "his2lip" and not args.no_asset:
            ASSET.parent.mkdir(parents=True, exist_ok=True)
            save_file(trained_state_dict(encoder), str(ASSET), metadata={"loss": loss, "epochs": str(args.epochs)})
    (work / "summary.json").write_text(json.dumps(summary, indent=2))
    if not args.no_asset:
        heldout = ASSET.parent / "lc25000_heldout.txt"
        heldout.write_text((work / "lc25000" / "heldout.txt").read_text())
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
