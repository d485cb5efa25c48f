"""Write the support / query manifests of docs/fewshot.md's tables from ../shared/data.

    python scripts/fewshot_shared_data.py [--work .histovl-cache/fewshot-shared] [--per-class 100]

LC25000 lung (the model histovl-lite was trained on part of it, so the query must be unseen):
  query.csv    every tile listed in src/histovl/assets/histovl_lite/lc25000_heldout.txt (the
               near-duplicate groups held out from histovl-lite's training: 969 tiles)
  support.csv  `--per-class` tiles per class drawn (seed 0) from the other tiles, i.e. from
               the training groups; `histovl fewshot eval` additionally drops any support tile
               that is a near-duplicate of a query tile.
DeepLIIF Ki67 (crops and labels exactly as scripts/train_histovl_lite.py makes them: positive when
red nucleus area >= 10% of all nucleus area in a 128-px crop of the IHC panel):
  ki67/support.csv  crops of the two training strips (stride 48), group = strip
  ki67/query.csv    non-overlapping crops of the four test images, group = image

Nothing is written into the repository: manifests hold absolute paths (use
--allow-absolute-paths) and the Ki67 crops are written under --work.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
HELDOUT = REPO / "src" / "histovl" / "assets" / "histovl_lite" / "lc25000_heldout.txt"


def lc25000(work: Path, per_class: int, seed: int) -> None:
    lung = SHARED / "lc25000-lung"
    heldout = set(HELDOUT.read_text().split())
    rows = [{"path": str(p), "label": p.parent.name} for p in sorted(lung.glob("*/*.jpeg"))]
    frame = pd.DataFrame(rows)
    names = [str(Path(p).relative_to(lung)) for p in frame["path"]]
    is_query = np.array([n in heldout for n in names])
    out = work / "lc25000"
    out.mkdir(parents=True, exist_ok=True)
    frame[is_query].to_csv(out / "query.csv", index=False)
    rng = np.random.default_rng(seed)
    train = frame[~is_query]
    picked = [rng.choice(np.flatnonzero(train["label"] == c), size=per_class, replace=False) for c in sorted(set(train["label"]))]
    train.iloc[np.sort(np.concatenate(picked))].to_csv(out / "support.csv", index=False)
    print(f"LC25000: query {int(is_query.sum())} tiles, support {per_class} per class -> {out}")


def ki67(work: Path) -> None:
    spec = importlib.util.spec_from_file_location("train_histovl_lite", REPO / "scripts" / "train_histovl_lite.py")
    assert spec is not None and spec.loader is not None
    train_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_script)
    train_manifest, test_manifest = train_script.prepare_ki67(work / "ki67-crops")
    out = work / "ki67"
    out.mkdir(parents=True, exist_ok=True)
    for manifest, name in ((train_manifest, "support.csv"), (test_manifest, "query.csv")):
        frame = pd.read_csv(manifest)
        frame["path"] = [str(Path(manifest).parent / p) for p in frame["path"]]
        frame["label"] = frame["label"].str.replace("ki67_", "", regex=False)  # training captions' prefix
        frame[["path", "label", "group"]].to_csv(out / name, index=False)
        print(f"Ki67 {name}: {len(frame)} crops, {frame['label'].value_counts().to_dict()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=REPO / ".histovl-cache" / "fewshot-shared")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"{SHARED} not found: this script needs ../shared/data")
    lc25000(args.work, args.per_class, args.seed)
    ki67(args.work)


if __name__ == "__main__":
    main()
