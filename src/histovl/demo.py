"""`make demo` (``python -m histovl.demo``): the main job on the bundled model, offline.

1. Zero-shot stain classification (H&E vs DAB IHC) with ``histovl-lite`` on the real sample tiles
   shipped in ``histovl/assets/demo`` (cut from the CC0 CMU-1-Small-Region slide and from
   scikit-image's IHC image), writing metrics, predictions, run record and an HTML report.
2. A small robustness sweep (blur, hue and pen markup at their mildest and strongest levels):
   zero-shot accuracy per condition, the figures and the corruption gallery; on the LC25000
   sample below when ``../shared/data`` is present, else on the demo tiles.
3. When ``../shared/data`` is present: zero-shot lung H&E classification on a small sample of
   LC25000 tiles that histovl-lite never saw in training (its held-out near-duplicate groups).
4. An index of the evaluated tiles, and (with ``../shared/data`` and OpenSlide) a whole-slide
   prediction of the CMU slide with its heatmap: what ``histovl serve runs/demo`` shows
   (docs/serve.md).

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
from typing import TYPE_CHECKING

import pandas as pd

from histovl._io import atomic_write_text

if TYPE_CHECKING:
    from histovl.models import Encoder

DEMO_MODEL = "histovl-lite"
HELDOUT_LIST = "lc25000_heldout.txt"  # file names of LC25000 tiles held out from training
LC25000_PER_CLASS = 40
DEMO_SLIDE = "CMU-1-Small-Region.svs"  # in ../shared/data/slides (CC0, OpenSlide test data)
DEMO_CORRUPTIONS = {"blur": [1, 4], "hue": [-2, 2], "markup": [1, 4]}


def shared_data_dir() -> Path | None:
    """``../shared/data`` next to the working directory or the source checkout, if present."""
    env = os.environ.get("HISTOVL_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates += [Path.cwd().parent / "shared" / "data", Path(__file__).resolve().parents[3] / "shared" / "data"]
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


def run_demo(out: str | os.PathLike[str] = "runs/demo", *, progress: bool = True) -> list[Path]:
    """Run the demo jobs; returns the paths of the HTML reports written."""
    from histovl.models import load_model
    from histovl.robustness import robustness
    from histovl.zeroshot import zeroshot

    out_dir = Path(out)
    encoder = load_model(DEMO_MODEL)  # loaded once, shared by every job
    reports = []
    demo = resources.files("histovl") / "assets" / "demo"
    with resources.as_file(demo) as demo_dir:
        tiles, stain_prompts = demo_dir / "tiles" / "manifest.csv", demo_dir / "stain-v1.yaml"
        res = zeroshot(encoder, tiles, stain_prompts, out_dir / "stain", progress=progress, command="histovl demo")
        reports.append(out_dir / "stain" / "report.html")
        print(f"stain (H&E vs IHC) on {res.metrics['n']} demo tiles: accuracy {res.metrics['accuracy']:.3f} "
              "(histovl-lite saw IHC only as DeepLIIF Ki67 crops in training and does not recognise this DAB "
              "image: a known limit, see its model card)")
        # The robustness sweep runs on the LC25000 sample when ../shared/data is there (a task the
        # model does well, so degradation is visible), else on the demo tiles (gallery and report).
        shared = shared_data_dir()
        manifest = lc25000_heldout_manifest(shared, out_dir) if shared is not None else None
        if manifest is not None:
            lung = zeroshot(encoder, manifest, "lung-he-v1", out_dir / "lc25000", allow_absolute_paths=True,
                            progress=progress, command="histovl demo")
            lo, hi = lung.metrics["ci95"]["f1_macro"]
            print(f"LC25000 held-out sample (n={lung.metrics['n']}): macro F1 {lung.metrics['f1_macro']:.3f} [95% CI {lo:.3f}-{hi:.3f}]")
            reports.append(out_dir / "lc25000" / "report.html")
        else:
            print("../shared/data not found: skipping the LC25000 evaluation")
        rob_data, rob_prompts = (manifest, "lung-he-v1") if manifest is not None else (tiles, stain_prompts)
        rob = robustness([encoder], rob_data, rob_prompts, out_dir / "robustness", corruptions=list(DEMO_CORRUPTIONS),
                         levels=DEMO_CORRUPTIONS, n_boot=200, allow_absolute_paths=True, progress=progress,
                         command="histovl demo")
        reports.append(out_dir / "robustness" / "report.html")
        accs = ", ".join(f"{r.corruption} {r.severity}: {r.accuracy:.3f}" for r in rob.table.itertuples())
        print(f"robustness ({'LC25000 sample' if manifest is not None else 'demo tiles'}), accuracy per condition: {accs}")
        reports += _slide_and_index(encoder, out_dir, shared, manifest or tiles, progress)
    for report in reports:
        print(f"report: {report.resolve()}")
    print(f"look at every run, the slide and its heatmap, and search the tiles in a browser: histovl serve {out_dir}")
    return reports


def _slide_and_index(encoder: Encoder, out_dir: Path, shared: Path | None, tiles: Path, progress: bool) -> list[Path]:
    """An index of the evaluated tiles (for `histovl serve`'s search page) and, when
    ../shared/data has the CMU slide and OpenSlide is installed, a whole-slide prediction with its
    heatmap (docs/predict.md). Returns the reports written."""
    from histovl.retrieval import build_index

    build_index(encoder, tiles, out_dir / "index", allow_absolute_paths=True, progress=progress)
    slide = shared / "slides" / DEMO_SLIDE if shared is not None else None
    if slide is None or not slide.is_file() or importlib.util.find_spec("openslide") is None:
        print("../shared/data/slides or OpenSlide not found: skipping the whole-slide prediction")
        return []
    from histovl.predict import PredictConfig, predict

    res = predict(encoder, slide, out_dir / "slide", PredictConfig(prompts="bcss-wsss-v1", mpp=0.5), progress=progress,
                  command="histovl demo")
    summary = res.slide or {}
    print(f"slide {DEMO_SLIDE}: {summary.get('prediction')} over {summary.get('n_tiles')} tiles")
    return [out_dir / "slide" / "report.html"]


def main() -> None:
    parser = argparse.ArgumentParser(description="histovl demo: zero-shot with the bundled histovl-lite model")
    parser.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args()
    run_demo(args.out, progress=not args.quiet)


if __name__ == "__main__":
    main()
