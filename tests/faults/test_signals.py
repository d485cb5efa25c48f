"""kill -TERM and kill -KILL at random points of the long commands (docs/reliability.md, "run
interrupted", "SIGTERM"): zeroshot, robustness, finetune with checkpoints and slide tiling.

Each trial starts the command in a subprocess with the tiny model, waits until the command body
holds its output lock (its signal handlers are then installed), sleeps a random delay (seeded:
``HISTOVL_FAULT_SEED``) and sends the signal. Then:

* SIGTERM: the process exits within 5 s with status 143 and one line, no traceback;
* the output folder is absent or one whole run, never a mix (zeroshot and robustness start
  from a folder holding another complete run, so a mix would show);
* a re-run of the same command (``--resume`` for finetune) gives outputs identical to an
  uninterrupted run.

A process that finished before its signal arrived counts as a run, not as a fault.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import pytest

from tests.faults.conftest import FaultLog, assert_whole, digest, run_main, spawn, started

SEED = int(os.environ.get("HISTOVL_FAULT_SEED", "19"))
TERM_EXIT_S = 5.0


def _commands(fx: dict[str, Path], out: Path, cache: Path) -> dict[str, tuple[list[str], list[str], float]]:
    """command -> (argv, files compared with the uninterrupted run, max random delay in s)."""
    common = ["--cache", str(cache), "--n-boot", "100", "--seed", "3", "--quiet", "--workers", "0", "--batch-size", "2"]
    model, data, prompts = str(fx["model"]), str(fx["manifest"]), str(fx["prompts"])
    return {
        "zeroshot": (["zeroshot", "-m", model, "-d", data, "-p", prompts, "-o", str(out), *common],
                     ["metrics.json", "predictions.csv"], 4.0),
        "robustness": (["robustness", "-m", model, "-d", data, "-p", prompts, "-o", str(out), "-c", "blur", "-c", "hue",
                        "-l", "1", "-l", "3", "--k", "3", *common], ["robustness.csv", "predictions.csv"], 8.0),
        "finetune": (["finetune", "-m", model, "-d", str(fx["tiles"]), "-o", str(out), "--epochs", "6", "--batch-size", "6",
                      "--loss", "clip", "--train", "all", "--seed", "3", "--workers", "0", "--quiet"],
                     ["model.safetensors", "train_log.csv"], 6.0),
        "slides tile": (["slides", "tile", "--slide", str(fx["slide"]), "-o", str(out), "--size", "16", "--save-tiles",
                         "--workers", "2"], [], 3.0),
    }


def _compared(name: str, out: Path, files: list[str]) -> dict[str, str]:
    if name == "slides tile":  # every file but tiling.json (it records timings)
        got = digest(out)
        got.pop("tiling.json", None)
        return got
    if name == "finetune":  # the tensors: safetensors' header orders its metadata differently per process
        return _tensors(out / "model.safetensors") | _log_without_time(out)
    return digest(out, files)


def _tensors(path: Path) -> dict[str, str]:
    import hashlib

    from safetensors.torch import load_file

    return {f"model.safetensors:{k}": hashlib.sha256(v.numpy().tobytes()).hexdigest() for k, v in sorted(load_file(path).items())}


def _log_without_time(out: Path) -> dict[str, str]:
    import pandas as pd

    log = pd.read_csv(out / "train_log.csv")
    return {"train_log.csv": log.drop(columns=[c for c in log.columns if "second" in c or "time" in c]).to_csv(index=False)}


@pytest.fixture(scope="module")
def references(fx: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    """Each command run once, uninterrupted, in this process."""
    root = tmp_path_factory.mktemp("reference")
    refs = {}
    for name in ("zeroshot", "robustness", "finetune", "slides tile"):
        out = root / name.replace(" ", "-")
        argv, files, _ = _commands(fx, out, root / "cache")[name]
        assert run_main(argv) == 0, name
        refs[name] = _compared(name, out, [f for f in files if f != "train_log.csv"])
    return refs


@pytest.mark.slow
@pytest.mark.parametrize("name", ["zeroshot", "robustness", "finetune", "slides tile"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["TERM", "KILL"])
def test_kill_at_a_random_point_then_rerun_equals_uninterrupted(
    name: str, sig: signal.Signals, fx: dict[str, Path], references: dict[str, dict[str, str]], tmp_path: Path, faults: FaultLog
) -> None:
    rng = random.Random(f"{SEED}-{name}-{sig.name}")
    out, cache = tmp_path / "out", tmp_path / "cache"
    argv, files, max_delay = _commands(fx, out, cache)[name]
    previous = None
    if name in ("zeroshot", "robustness"):  # another complete run already there: a mix would show
        at = argv.index("--seed") + 1
        other = [*argv[:at], "5", *argv[at + 1 :]]
        assert run_main(other) == 0
        previous = json.loads((out / "run.json").read_text())["seed"]
    proc = spawn(argv)
    delay = rng.uniform(0.0, max_delay)
    if started(out, proc):
        time.sleep(delay)
    sent = time.monotonic()
    if proc.poll() is None:
        os.kill(proc.pid, sig)
        faults.inject(f"kill -{sig.name.removeprefix('SIG')} {name}")
    _, stderr = proc.communicate(timeout=120)
    took = time.monotonic() - sent
    if sig == signal.SIGTERM and proc.returncode == 128 + signal.SIGTERM:
        assert took < TERM_EXIT_S, f"SIGTERM took {took:.1f} s to stop {name}"
        lines = [ln for ln in stderr.splitlines() if ln.strip()]
        assert "Traceback" not in stderr and lines[-1].startswith("stopped by SIGTERM"), stderr
    else:
        assert proc.returncode in (0, -sig, 128 + sig), (proc.returncode, stderr)
    if name in ("zeroshot", "robustness"):
        assert_whole(out)  # the previous run or the new one, whole
        seed = json.loads((out / "run.json").read_text())["seed"]
        assert seed in (previous, 3)
    rerun = [*argv, "--resume"] if name == "finetune" else argv
    assert run_main(rerun) == 0
    assert _compared(name, out, [f for f in files if f != "train_log.csv"]) == references[name]
    if name in ("zeroshot", "robustness"):
        assert_whole(out)
        assert not [p for p in out.parent.iterdir() if ".staging-" in p.name or ".old-" in p.name]
