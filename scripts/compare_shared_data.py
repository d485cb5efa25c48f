"""The example of docs/compare.md on ../shared/data: two prompt sets, one model, compared.

    python scripts/compare_shared_data.py [--work .histovl-cache/compare-shared] [--n-boot 1000]

Images: the LC25000 lung tiles held out from histovl-lite's training
(src/histovl/assets/histovl_lite/lc25000_heldout.txt, 969 tiles), grouped by near-duplicate
original (`histovl.data.near_duplicate_groups`), written as a manifest under --work (absolute
paths; nothing is written into the repository). Then:

    histovl zeroshot -m histovl-lite -d MANIFEST -p lung-he-v1 --per-template -o WORK/lite-v1
    histovl zeroshot -m histovl-lite -d MANIFEST -p examples/compare/lung-he-minimal.yaml -o WORK/lite-minimal
    histovl compare WORK/lite-v1 WORK/lite-minimal --calibrate 0.3 -o WORK/compare

The groups reach compare through the manifest each run recorded in run.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
LUNG = REPO.parent / "shared" / "data" / "lc25000-lung"
HELDOUT = REPO / "src" / "histovl" / "assets" / "histovl_lite" / "lc25000_heldout.txt"
MINIMAL = REPO / "examples" / "compare" / "lung-he-minimal.yaml"


def heldout_manifest(work: Path) -> Path:
    """path,label,group of the held-out tiles (groups: near-duplicate originals)."""
    from histovl.data import near_duplicate_groups

    target = work / "heldout-groups.csv"
    if target.is_file():
        return target
    names = HELDOUT.read_text().split()
    paths = [LUNG / n for n in names]
    groups = near_duplicate_groups(paths)
    frame = pd.DataFrame({"path": [str(p) for p in paths], "label": [Path(n).parent.name for n in names],
                          "group": groups})
    work.mkdir(parents=True, exist_ok=True)
    frame.to_csv(target, index=False)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=REPO / ".histovl-cache" / "compare-shared")
    parser.add_argument("--n-boot", type=int, default=1000)
    args = parser.parse_args()
    import histovl

    manifest = heldout_manifest(args.work)
    opts = histovl.RunOptions(n_boot=args.n_boot, allow_absolute_paths=True, progress=False)
    histovl.zeroshot("histovl-lite", manifest, "lung-he-v1", args.work / "lite-v1",
                     histovl.ZeroshotConfig(per_template=True), opts)
    histovl.zeroshot("histovl-lite", manifest, MINIMAL, args.work / "lite-minimal", None, opts)
    res = histovl.compare([args.work / "lite-v1", args.work / "lite-minimal"], args.work / "compare",
                          histovl.CompareConfig(calibrate=0.3), opts)
    from histovl.compare.pairwise import summary_lines

    print("\n".join(summary_lines(res.table, ("accuracy", "f1_macro", "auroc_macro", "ece", "brier", "nll"))))
    print(f"report: {args.work / 'compare' / 'report.html'}")


if __name__ == "__main__":
    main()
