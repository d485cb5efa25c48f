"""The shared-data bench suite (docs/bench.md, "On shared data") from one command.

    python scripts/bench_shared_data.py [--out runs/bench-shared] [--n-boot 1000]

Needs ../shared/data (it stops with a message otherwise). Everything it makes goes under
``.histovl-cache/bench-shared/`` (git-ignored; nothing from ../shared/data enters the
repository), then it runs ``histovl bench examples/bench_shared.yaml --out OUT``. Run it again
after a kill: every step skips what is already there, and the bench resumes its grid.

1. Data (deterministic subsamples, to keep the grid near 15 minutes on 2 shared CPU cores):
   * ``lc25000-heldout``: the LC25000 lung tiles held out from histovl-lite's training
     (src/histovl/assets/histovl_lite/lc25000_heldout.txt), grouped by near-duplicate original
     (`histovl.data.near_duplicate_groups`); per class, whole groups in the order of the sha256
     of their id until at least ``LC_PER_CLASS`` tiles: about 3 x 100 tiles.
   * ``deepliif-ki67``: the DeepLIIF Ki67 test crops of histovl-lite's model card (non-overlapping
     128-px crops of the four ``test/`` strips, labelled from ``test_groundtruth/``: positive when
     red nucleus area >= 10% of all nucleus area; all 57 crops, grouped by source image).
2. Models:
   * ``histovl-lite`` (bundled; his2lip loss);
   * its **clip-loss variant**: the model card's ablation (docs/model_card_histovl_lite.md,
     "Ablation"): the same frozen backbones, training tiles (`split_lc25000`, 500 per class,
     seed 0, the held-out groups excluded: checked against the shipped held-out list), Ki67
     training crops, captions, optimiser, schedule, batch and 30 epochs, with ``--loss clip``
     (no per-epoch validation: it is reported only, it selects nothing);
   * a **random ViT-B-32**: open_clip's ViT-B-32 architecture with its random initialisation
     (torch seed 0), saved as safetensors: no pretrained weights exist offline. A chance-level
     baseline that exercises the full-size open_clip path.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
WORK = REPO / ".histovl-cache" / "bench-shared"
SUITE = REPO / "examples" / "bench_shared.yaml"
HELDOUT = REPO / "src" / "histovl" / "assets" / "histovl_lite" / "lc25000_heldout.txt"
LC_PER_CLASS = 100


def _train_script() -> ModuleType:
    """scripts/train_histovl_lite.py as a module (its data preparation and training recipe)."""
    spec = importlib.util.spec_from_file_location("train_histovl_lite", REPO / "scripts" / "train_histovl_lite.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def lc25000_heldout(work: Path, per_class: int = LC_PER_CLASS) -> Path:
    """path,label,group of a deterministic subsample of whole held-out groups."""
    import pandas as pd

    from histovl.data import near_duplicate_groups

    target = work / "lc25000-heldout.csv"
    if target.is_file():
        return target
    names = HELDOUT.read_text().split()
    paths = [SHARED / "lc25000-lung" / n for n in names]
    frame = pd.DataFrame({"path": [str(p) for p in paths], "label": [Path(n).parent.name for n in names],
                          "group": near_duplicate_groups(paths, workers=2)})
    frame["group"] = frame["label"] + "-" + frame["group"].astype(str)  # one class per group id
    keep = []
    for _, block in frame.groupby("label", sort=True):
        taken = 0
        for group in sorted(set(block["group"]), key=_sha):
            if taken >= per_class:
                break
            members = block[block["group"] == group]
            keep.extend(members.index)
            taken += len(members)
    work.mkdir(parents=True, exist_ok=True)
    frame.loc[sorted(keep)].to_csv(target, index=False)
    return target


def ki67_test(work: Path) -> Path:
    """The DeepLIIF Ki67 test crops and their manifest (the model card's Ki67 test set)."""
    target = work / "ki67-test" / "manifest.csv"
    if target.is_file():
        return target
    _, test = _train_script().prepare_ki67(work)
    return test


def clip_variant(work: Path) -> Path:
    """histovl-lite's projections trained with the clip loss (the model card's ablation)."""
    out = work / "histovl-lite-clip"
    if (out / "card.json").is_file():
        return out
    train = _train_script()
    from histovl.data import load_image_set
    from histovl.models._lite import build_histovl_lite, bundled_card
    from histovl.train.finetune import FinetuneConfig, finetune

    recipe = work / "recipe"
    ki_train, _ = train.prepare_ki67(recipe)
    lc_train, _ = train.split_lc25000(recipe, 500, val_fraction=0.25, seed=0)
    if (recipe / "lc25000" / "heldout.txt").read_text() != HELDOUT.read_text():
        raise SystemExit("the recomputed LC25000 split differs from the shipped held-out list; not training")
    data = train.combined(load_image_set(lc_train, allow_absolute_paths=True), load_image_set(ki_train))
    cfg = FinetuneConfig(loss="clip", epochs=30, batch_size=256, lr=2e-3, train="projections", seed=0)
    finetune(build_histovl_lite(bundled_card(), None), data, out, config=cfg, feature_cache=recipe / "features")
    return out


def random_vit_b_32(work: Path) -> Path:
    """open_clip ViT-B-32 with its random initialisation (seed 0), as safetensors."""
    target = work / "vit-b-32-random.safetensors"
    if target.is_file():
        return target
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    work.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    tmp.replace(target)
    return target


def prepare(work: Path = WORK) -> None:
    """Everything the suite file names, made once (each step skips what exists)."""
    for step in (lc25000_heldout, ki67_test, random_vit_b_32, clip_variant):
        start = time.perf_counter()
        print(f"{step.__name__}: {step(work)} ({time.perf_counter() - start:.0f} s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench-shared")
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--prepare-only", action="store_true")
    args = parser.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"{SHARED} not found: this suite needs ../shared/data")
    prepare()
    if args.prepare_only:
        return
    from histovl.cli.app import main as histovl_main

    sys.argv = ["histovl", "bench", str(SUITE), "--out", str(args.out), "--n-boot", str(args.n_boot),
                "--allow-absolute-paths"]
    histovl_main()


if __name__ == "__main__":
    main()
