"""The golden cases: four commands run through the CLI on one fixed synthetic fixture.

`tests/golden/test_golden_outputs.py` re-runs them and compares metrics.json and predictions.csv
with the files recorded in `tests/golden/expected/` (written by `python -m tests.golden.cases
--record` at the commit before the command-shape refactor; the predictions.csv of zeroshot,
robustness and multilabel re-recorded when text classifiers moved to float64 NumPy so that cached
runs need no torch: probabilities moved by < 1e-6 relative, every label and metric unchanged;
multilabel's predictions.csv again when its strategies moved from torch to NumPy: scores moved by
<= 1.4e-7, labels and metrics.json unchanged, the port checked against the torch implementation in
tests/unit/zeroshot/test_multilabel_numpy_port.py). The fixture is generated, not stored:
seeded pixels, a tiny open_clip model with seeded weights, a prompt set written here.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
from pathlib import Path

import numpy as np
import torch

from tests.helpers.synthetic import LUNG_CLASSES, lung_prompts_yaml, lung_tiles
from tests.helpers.tiny import register_tiny_open_clip_arch, save_safetensors, tiny_open_clip_model

EXPECTED = Path(__file__).parent / "expected"
COMPARED = ("metrics.json", "predictions.csv")
CLASSES = LUNG_CLASSES
PROMPTS_YAML = lung_prompts_yaml("golden")
MULTILABEL_YAML = """\
name: golden-ml
version: 1
classes:
  tumor: [red tissue]
  stroma: [green tissue]
  necrosis: [blue tissue]
templates: ["an image of {}."]
negative: "an image with nothing in it."
"""


def build_fixture(root: Path) -> dict[str, str]:
    """Images, manifests, prompt sets and the tiny model's weights under `root`; returns paths."""
    lung_tiles(root, per_class=6)
    ml = ["path,labels"]
    names = ("tumor", "stroma", "necrosis")
    for ci, cls in enumerate(CLASSES):
        for i in range(6):
            labels = {names[ci]} | ({names[(ci + 1) % 3]} if i % 2 else set())
            ml.append(f"tiles/{cls}/{cls}_{i}.png,{';'.join(sorted(labels))}")
    (root / "multilabel.csv").write_text("\n".join(ml) + "\n")
    (root / "prompts.yaml").write_text(PROMPTS_YAML)
    (root / "ml_prompts.yaml").write_text(MULTILABEL_YAML)
    arch = register_tiny_open_clip_arch(root)
    weights = save_safetensors(tiny_open_clip_model(7), root / "tiny.safetensors")
    return {
        "model": f"open_clip:{arch}:{weights}",
        "manifest": str(root / "manifest.csv"),
        "multilabel": str(root / "multilabel.csv"),
        "prompts": str(root / "prompts.yaml"),
        "ml_prompts": str(root / "ml_prompts.yaml"),
    }


def command_lines(f: dict[str, str], out: Path, cache: Path) -> dict[str, list[str]]:
    """The CLI argument lists of the four golden runs (spellings valid before and after)."""
    common = ["--cache", str(cache), "--n-boot", "50", "--seed", "3", "--quiet", "--workers", "0"]
    return {
        "zeroshot": ["zeroshot", "--model", f["model"], "--data", f["manifest"], "--prompts", f["prompts"],
                     "--out", str(out / "zeroshot"), *common],
        "retrieve": ["retrieve", "--model", f["model"], "--data", f["manifest"], "--out", str(out / "retrieve"),
                     "--k", "3", *common],
        "robustness": ["robustness", "--model", f["model"], "--data", f["manifest"], "--prompts", f["prompts"],
                       "--out", str(out / "robustness"), "-c", "blur", "-c", "hue", "-l", "1", "-l", "3", "--k", "3",
                       *common],
        "multilabel": ["multilabel", "--model", f["model"], "--data", f["multilabel"], "--prompts", f["ml_prompts"],
                       "--out", str(out / "multilabel"), "--strategy", "ovr", *common],
    }


def run_all(work: Path) -> Path:
    """Run the four commands in-process; returns the output root."""
    from typer.testing import CliRunner

    from histovl.cli.app import app

    torch.manual_seed(0)
    files = build_fixture(work / "fixture")
    out = work / "out"
    runner = CliRunner()
    for name, args in command_lines(files, out, work / "cache").items():
        res = runner.invoke(app, args, catch_exceptions=False)
        if res.exit_code != 0:
            raise RuntimeError(f"golden case {name} failed ({res.exit_code}):\n{res.output}")
    return out


def machine_signature() -> dict[str, str]:
    """What decides whether float outputs can be byte-identical to the recorded ones: the same
    torch build and instruction set still take other BLAS kernels on another CPU vendor (MKL's
    float32 GEMMs gave scores 2e-8 apart on an AMD EPYC and on the machine that recorded them)."""
    return {"torch": torch.__version__, "machine": platform.machine(), "numpy": np.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_vendor": _cpu_vendor()}


def _cpu_vendor() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            return next((line.split(":", 1)[1].strip() for line in fh if line.startswith("vendor_id")), "unknown")
    except OSError:
        return platform.processor() or "unknown"


CASES = ("zeroshot", "retrieve", "robustness", "multilabel")


def output_bytes(work: Path, out: Path, case: str, name: str) -> bytes:
    """An output file's bytes with the run's temporary folder replaced by ``<work>`` (the model
    spec names the weights file, and the robustness table records the spec)."""
    return (out / case / name).read_bytes().replace(str(work).encode(), b"<work>")


def record(work: Path) -> None:
    out = run_all(work)
    if EXPECTED.exists():
        shutil.rmtree(EXPECTED)
    for case in CASES:
        for name in COMPARED:
            (EXPECTED / case).mkdir(parents=True, exist_ok=True)
            (EXPECTED / case / name).write_bytes(output_bytes(work, out, case, name))
    (EXPECTED / "machine.json").write_text(json.dumps(machine_signature(), indent=1) + "\n")


if __name__ == "__main__":
    import tempfile

    parser = argparse.ArgumentParser()
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        record(Path(tmp)) if args.record else print(run_all(Path(tmp)))
