"""`make demo` (``python -m histovl.demo``): histovl's main jobs on the bundled model, offline.

The demo data ship inside the package (``histovl/assets/demo``, sources and licences in
``assets/README.md``): the 117 tiles of a 224-px grid over the CC0 slide CMU-1-Small-Region
(skin, H&E, 0.5 µm/px), 91 of them labelled ``tissue`` or ``background`` by histovl's tissue
detector (the rest are mixed and unlabelled). The steps, each printing one line of what it showed:

1. **Zero-shot** ``tissue`` vs ``background`` with histovl-lite and a prompt set written before the
   tiles were scored (``assets/demo/tissue-v1.yaml``), with 95% CIs. histovl-lite was trained on
   lung tiles only and is below chance at this (not a bug: the pipeline scores a right-by-
   construction encoder perfectly, tests/unit/zeroshot/test_known_answer.py; and the tiles'
   embeddings sit closer to every non-lung prompt when they are glass). The demo prints zero-shot
   figures only when their CI is above chance, says so in words otherwise, and shows:
2. **Few-shot adaptation** (`histovl fewshot eval`): a linear probe on histovl-lite's image
   embeddings from 1, 2, 4 and 8 labelled tiles per class, scored on held-out tiles, 5 draws each,
   CIs of the mean; the zero-shot row (in the report) is the same query set.
3. When ``../shared/data`` is present: zero-shot lung H&E classification on held-out LC25000 tiles
   (the task histovl-lite was trained for).
4. **The slide pipeline** (`histovl predict`) on the whole CC0 region read as a tile folder, scored by
   a few-shot head fitted on 8 labelled tiles per class: tissue map, heatmap, QuPath GeoJSON, and
   its agreement with the labels on the tiles the head did not see (balanced accuracy, CI).
5. **A robustness sweep** (blur, hue and pen markup, mildest and strongest): image→image retrieval
   HA@5 per condition with CIs and its chance level, zero-shot accuracy where zero-shot works,
   with the corruption gallery.

Every figure printed comes with its 95% CI and its chance level.
Then the path of every report, and the `histovl serve` command that browses them all.
Needs no network and nothing outside the installed package.

Example:
    >>> reports = run_demo("runs/demo")  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from histovl._io import atomic_write_text

DEMO_MODEL = "histovl-lite"
HELDOUT_LIST = "lc25000_heldout.txt"  # file names of LC25000 tiles held out from training
LC25000_PER_CLASS = 40
DEMO_CORRUPTIONS = {"blur": [1, 4], "hue": [-2, 2], "markup": [1, 4]}
SLIDE_MPP = 0.499  # CMU-1-Small-Region's level-0 microns per pixel (its SVS header)
FEWSHOT_SHOTS = (1, 2, 4, 8)
HEAD_SHOTS = 8  # labelled tiles per class behind the slide step's head
N_BOOT = 200


def shared_data_dir() -> Path | None:
    """``../shared/data`` next to the working directory or the source checkout, if present;
    ``$HISTOVL_SHARED_DATA``, when set, is the only place looked at (set it to an empty folder to
    run the demo as a fresh clone without the data would)."""
    env = os.environ.get("HISTOVL_SHARED_DATA")
    candidates = [Path(env)] if env else [Path.cwd().parent / "shared" / "data",
                                          Path(__file__).resolve().parents[3] / "shared" / "data"]
    return next((c for c in candidates if (c / "lc25000-lung").is_dir()), None)


def lc25000_heldout_manifest(shared: Path, out: Path, per_class: int = LC25000_PER_CLASS) -> Path | None:
    """A manifest (absolute paths) of held-out LC25000 tiles, `per_class` per class, every k-th."""
    listing = resources.files("histovl") / "assets" / "histovl_lite" / HELDOUT_LIST
    if not listing.is_file():
        return None
    names = [line.strip() for line in listing.read_text(encoding="utf-8").splitlines() if line.strip()]
    frame = pd.DataFrame({"rel": names})
    frame["label"] = frame["rel"].str.split("/").str[0]
    picked = []
    for _, part in frame.groupby("label", sort=True):
        step = max(1, len(part) // per_class)
        picked.append(part.iloc[::step].head(per_class))
    sample = pd.concat(picked)
    sample["path"] = [str(shared / "lc25000-lung" / r) for r in sample["rel"]]
    sample = sample[[Path(p).is_file() for p in sample["path"]]]
    if sample.empty:
        return None
    target = out / "lc25000-heldout-sample.csv"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, sample[["path", "label"]].to_csv(index=False))
    return target


def _ci(metrics: dict[str, Any], key: str) -> str:
    lo, hi = metrics["ci95"][key]
    return f"{metrics[key]:.3f} [95% CI {lo:.3f}-{hi:.3f}]"


def _above_chance(metrics: dict[str, Any], key: str, chance: float) -> bool:
    """Whether the lower end of `key`'s 95% CI is above `chance`."""
    lo = metrics["ci95"][key][0]
    return lo is not None and lo > chance


def _zeroshot_step(encoder: Any, tiles: Path, prompts: Path, out: Path, progress: bool) -> tuple[Path, bool]:
    """Zero-shot on the demo tiles; prints its figures only when they are above chance, and
    otherwise says so in words (histovl-lite was never trained for tissue vs glass, and the
    prompts are not tuned on these tiles to change that; the figures are in the report)."""
    from histovl.zeroshot import zeroshot

    res = zeroshot(encoder, tiles, prompts, out, n_boot=N_BOOT, progress=progress, command="histovl demo")
    m = res.metrics
    above = _above_chance(m, "balanced_accuracy", 0.5) and _above_chance(m, "auroc_macro", 0.5)
    if above:
        print(f"1. zero-shot tissue vs background, {m['n']} CMU-1 tiles: balanced accuracy "
              f"{_ci(m, 'balanced_accuracy')}, AUROC {_ci(m, 'auroc_macro')} (chance 0.5 for both)")
    else:
        print(f"1. zero-shot tissue vs background on {m['n']} CMU-1 tiles does NOT work with histovl-lite: it was "
              "trained on lung H&E tiles only and is below chance here (figures in the zero-shot report; the "
              "prompts were written before scoring and not tuned). So the demo adapts it with a few labelled tiles:")
    return out / "report.html", above


def _fewshot_step(encoder: Any, tiles: Path, prompts: Path, out: Path, zeroshot_works: bool, progress: bool) -> Path:
    from histovl.heads.fewshot_run import fewshot_eval

    res = fewshot_eval(encoder, tiles, None, prompts, out, methods=("linear",), shots=FEWSHOT_SHOTS, seeds=5,
                       query_fraction=0.5, near_duplicates=False, n_boot=N_BOOT, progress=progress,
                       command="histovl demo")
    results = res.metrics["results"]["linear"]
    curve = ", ".join(
        f"{k}-shot {results[str(k)]['mean']['balanced_accuracy']:.3f} "
        f"[{results[str(k)]['ci95']['balanced_accuracy'][0]:.3f}-{results[str(k)]['ci95']['balanced_accuracy'][1]:.3f}]"
        for k in FEWSHOT_SHOTS
    )
    zs = res.metrics["zero_shot"]
    baseline = (f"zero-shot on the same tiles {zs['balanced_accuracy']:.3f}" if zeroshot_works
                else "zero-shot on the same tiles: below chance, its row in the report")
    print(f"2. few-shot linear probe on histovl-lite features, {res.metrics['n_query']} held-out tiles, balanced "
          f"accuracy (chance 0.5; mean of 5 draws, 95% CI): {curve}; {baseline}")
    return out / "report.html"


def _lc25000_step(encoder: Any, out: Path, progress: bool) -> tuple[Path | None, Path | None]:
    from histovl.zeroshot import zeroshot

    shared = shared_data_dir()
    manifest = lc25000_heldout_manifest(shared, out) if shared is not None else None
    if manifest is None:
        print("3. ../shared/data not found: the LC25000 lung evaluation is skipped (it needs that data)")
        return None, None
    lung = zeroshot(encoder, manifest, "lung-he-v1", out / "lc25000", allow_absolute_paths=True, n_boot=N_BOOT,
                    progress=progress, command="histovl demo")
    print(f"3. zero-shot lung H&E (3 classes, chance 0.333) on {lung.metrics['n']} held-out LC25000 tiles: "
          f"macro F1 {_ci(lung.metrics, 'f1_macro')}")
    return out / "lc25000" / "report.html", manifest


def _support_manifest(tiles: Path, out: Path, shots: int) -> Path:
    """The first `shots` tiles per class, by a seeded shuffle: the labelled tiles a user would give."""
    frame = pd.read_csv(tiles)
    picked = pd.concat([g.sample(n=min(shots, len(g)), random_state=0) for _, g in frame.groupby("label", sort=True)])
    picked = picked.assign(path=[str((tiles.parent / p).resolve()) for p in picked["path"]])
    target = out / "support.csv"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, picked[["path", "label"]].to_csv(index=False))
    return target


def _slide_agreement(predictions: pd.DataFrame, tiles: Path, support: Path) -> dict[str, Any] | None:
    """The slide step's calls against the demo labels (the tissue detector's) on the labelled
    tiles the head was not fitted on: balanced accuracy with a 95% CI, None without such tiles."""
    from histovl.metrics import classification_metrics

    labels = pd.read_csv(tiles)
    used = {Path(p).name for p in pd.read_csv(support)["path"]}
    labels = labels[~labels["path"].isin(used)]
    xy = labels["path"].str.extract(r"_x(\d+)_y(\d+)").astype(int)
    labels = labels.assign(x=xy[0].to_numpy(), y=xy[1].to_numpy())
    scored = labels.merge(predictions, on=["x", "y"], how="inner", suffixes=("", "_pred"))
    if scored.empty or scored["label"].nunique() < 2:
        return None
    names = sorted(scored["label"].unique())
    scores = scored[[f"score:{c}" for c in names]].to_numpy()
    return classification_metrics(scored["label"].to_numpy(), scores, names, n_boot=N_BOOT, seed=0)


def _slide_step(encoder: Any, tiles: Path, out: Path, progress: bool) -> Path:
    from histovl.heads.fewshot_run import fewshot_fit
    from histovl.predict import PredictConfig, predict

    support = _support_manifest(tiles, out / "head-support", HEAD_SHOTS)
    fewshot_fit(encoder, support, out / "head", method="linear", allow_absolute_paths=True, progress=progress,
                command="histovl demo")
    config = PredictConfig(head=out / "head", as_slide=True, slide_mpp=SLIDE_MPP, tissue_threshold=0.0)
    res = predict(encoder, tiles.parent, out / "slide", config, n_boot=N_BOOT, progress=progress, command="histovl demo")
    counts = res.predictions["prediction"].value_counts().to_dict()
    agreement = _slide_agreement(res.predictions, tiles, support)
    agrees = ("" if agreement is None else
              f"; on the {agreement['n']} labelled tiles the head did not see, balanced accuracy against the "
              f"tissue detector's labels {_ci(agreement, 'balanced_accuracy')} (chance 0.5)")
    print(f"4. slide pipeline on the whole CC0 region ({len(res.predictions)} tiles, head fitted on {HEAD_SHOTS} labelled "
          f"tiles per class): {counts.get('tissue', 0)} tiles called tissue, {counts.get('background', 0)} background"
          f"{agrees}; tissue map, heatmap and QuPath GeoJSON in {out / 'slide'}")
    return out / "slide" / "report.html"


def retrieval_chance(labels: pd.Series, k: int = 5) -> float:
    """HA@k of a random ranking: the chance that k other images drawn at random from the
    gallery (the query left out) all share the query's class."""
    n = len(labels)
    total = 0.0
    for n_c in labels.value_counts():
        p = 1.0
        for i in range(k):
            p *= max(n_c - 1 - i, 0) / (n - 1 - i)
        total += n_c / n * p
    return total


def _robustness_step(encoder: Any, data: Path, prompts: Any, out: Path, on: str, zeroshot_works: bool,
                     progress: bool) -> Path:
    from histovl.robustness import robustness

    rob = robustness([encoder], data, prompts, out, corruptions=list(DEMO_CORRUPTIONS), levels=DEMO_CORRUPTIONS,
                     n_boot=N_BOOT, allow_absolute_paths=True, progress=progress, command="histovl demo")
    table = rob.table
    clean = table[table["corruption"] == "none"].iloc[0]
    worst = table.loc[table["ha@5"].idxmin()]
    labels = pd.read_csv(data)["label"]
    chance = retrieval_chance(labels)

    def ha(row: Any) -> str:
        return f"{row['ha@5']:.3f} [95% CI {row['ha@5_lo']:.3f}-{row['ha@5_hi']:.3f}]"

    zs = (f"; zero-shot accuracy {clean['accuracy']:.3f} [95% CI {clean['accuracy_lo']:.3f}-{clean['accuracy_hi']:.3f}] "
          f"clean (chance {1 / labels.nunique():.3f})" if zeroshot_works
          else "; its zero-shot curves are below chance, as in step 1")
    print(f"5. robustness on {on}: image->image retrieval HA@5 {ha(clean)} clean, down to {ha(worst)} under "
          f"{worst['corruption']} {int(worst['severity'])} (chance {chance:.3f}){zs} (curves and gallery in the report)")
    return out / "report.html"


def run_demo(out: str | os.PathLike[str] = "runs/demo", *, progress: bool = True) -> list[Path]:
    """Run the demo steps (module docstring); returns the paths of the HTML reports written."""
    from histovl.embed.encoders import open_encoder
    from histovl.options import RunOptions

    out_dir = Path(out)
    encoder = open_encoder(DEMO_MODEL, RunOptions())  # loaded at most once, shared by every step
    demo = resources.files("histovl") / "assets" / "demo"
    with resources.as_file(demo) as demo_dir:
        tiles, prompts = demo_dir / "tiles" / "manifest.csv", demo_dir / "tissue-v1.yaml"
        zs_report, zs_works = _zeroshot_step(encoder, tiles, prompts, out_dir / "zeroshot", progress)
        reports = [zs_report, _fewshot_step(encoder, tiles, prompts, out_dir / "fewshot", zs_works, progress)]
        lung_report, lung_manifest = _lc25000_step(encoder, out_dir, progress)
        reports += [lung_report] if lung_report is not None else []
        reports.append(_slide_step(encoder, tiles, out_dir, progress))
        rob_data, rob_prompts, on, works = ((lung_manifest, "lung-he-v1", "the LC25000 sample", True)
                                            if lung_manifest is not None
                                            else (tiles, prompts, "the CMU-1 demo tiles", zs_works))
        reports.append(_robustness_step(encoder, rob_data, rob_prompts, out_dir / "robustness", on, works, progress))
    for report in reports:
        print(f"report: {report.resolve()}")
    if importlib.util.find_spec("histovl.serve") is not None:
        print(f"browse every run: histovl serve {out_dir}")
    return reports


def main() -> None:
    parser = argparse.ArgumentParser(description="histovl demo: the bundled histovl-lite model on shipped CC0 tiles")
    parser.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args()
    run_demo(args.out, progress=not args.quiet)


if __name__ == "__main__":
    main()
