"""Output folders replaced as a whole by the commands that used to write file by file
(docs/reliability.md, "run interrupted"): predict on a slide, fewshot eval and fit, stainalign
fit and eval, data mosaic.

For each command the output folder first holds another complete run (seed 5). Then:

* an exception at a random one of the run's output writes (seeded, ``HISTOVL_FAULT_SEED``),
  in this process: the folder is byte for byte the previous run, nothing is left beside it;
* kill -KILL of a subprocess run at a random point (0-0.3 s, seeded) after it starts staging its
  outputs, the phase where a mix could arise (a kill while it computes is `test_signals.py`'s
  case): the folder is the previous run or the new one, whole (its hidden manifest lists exactly
  its entries), never a mix.

After either fault a re-run gives outputs identical to an uninterrupted run. A slide tiling
(``predict``'s ``tiling/``, ``stainalign``'s ``tiles/``) is resumed in place by design and is
not part of the staged files; it is carried over into each new folder.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.faults.conftest import FaultLog, assert_whole, digest, run_main, spawn, started
from tests.helpers.synthetic import stainalign_pairs

SEED = int(os.environ.get("HISTOVL_FAULT_SEED", "19"))
NAMES = ("predict slide", "fewshot eval", "fewshot fit", "stainalign fit", "stainalign eval", "data mosaic")
#: Folders resumed in place (not staged) per command.
IN_PLACE = {"predict slide": ("tiling",), "stainalign fit": ("tiles",), "stainalign eval": ("tiles",)}
#: slide.json keys that say how this run got its tiles, not what it computed.
SLIDE_RUN_KEYS = ("tiling_reused", "n_tiles_encoded", "n_tiles_from_cache")


def _argv(name: str, fx: dict[str, Any], out: Path, seed: int) -> list[str]:
    model, cache = str(fx["model"]), ["--cache", str(fx["cache"])]
    common = [*cache, "--seed", str(seed)]
    boot = ["--n-boot", "20"]
    return {
        "predict slide": ["predict", "-m", model, "-d", str(fx["slide"]), "-p", str(fx["prompts"]), "-o", str(out),
                          "--size", "64", "--workers", "0", "--quiet", *boot, *common],
        "fewshot eval": ["fewshot", "eval", "-m", model, "-d", str(fx["manifest"]), "-p", str(fx["prompts"]),
                         "-o", str(out), "--shots", "1,2", "--seeds", "2", "--method", "linear", "--method", "knn",
                         "--workers", "0", "--quiet", *boot, *common],
        "fewshot fit": ["fewshot", "fit", "-m", model, "-d", str(fx["manifest"]), "-o", str(out), "--method", "knn",
                        "--workers", "0", "--quiet", *common],
        "stainalign fit": ["stainalign", "fit", "--pairs", str(fx["pairs"]), "-m", model, "-o", str(out),
                           "--epochs", "2", "--cv-folds", "2", "--batch-size", "4", *boot, *common],
        "stainalign eval": ["stainalign", "eval", "--pairs", str(fx["pairs"]), "--head", str(fx["head"]),
                            "-o", str(out), *boot, *common],
        "data mosaic": ["data", "mosaic", "-d", str(fx["manifest"]), "-o", str(out), "--n-train", "6", "--n-test", "4",
                        "--tile-size", "16", "--seed", str(seed)],
    }[name]


def _compared(name: str, out: Path) -> dict[str, str]:
    """What must equal an uninterrupted run (not run.json / report.html: they record times)."""
    if name == "predict slide":
        slide = json.loads((out / "slide.json").read_text())
        kept = json.dumps({k: v for k, v in slide.items() if k not in SLIDE_RUN_KEYS}, sort_keys=True)
        return {**digest(out, ["predictions.csv", "predictions.geojson", "heatmap.png"]), "slide.json": kept}
    if name == "fewshot eval":
        return digest(out, ["fewshot.csv", "metrics.json", "support_ids.csv", "split.csv"])
    if name == "fewshot fit":
        return digest(out, ["head.json", "head.safetensors"])
    if name == "stainalign fit":
        return {**digest(out, ["metrics.json", "predictions.csv"]),
                **_tensors(out, "stainalign.safetensors"), **_tensors(out, "baseline/stainalign.safetensors")}
    if name == "stainalign eval":
        return digest(out, ["metrics.json", "predictions.csv"])
    return digest(out)  # data mosaic: every image and manifest


def _tensors(out: Path, name: str) -> dict[str, str]:
    """sha256 per tensor (the file's header may order its metadata differently per process)."""
    import hashlib

    from safetensors.numpy import load_file

    return {f"{name}:{k}": hashlib.sha256(v.tobytes()).hexdigest() for k, v in sorted(load_file(out / name).items())}


def _staged_state(name: str, out: Path) -> dict[str, str]:
    """Every file of `out` outside its in-place folders."""
    skip = IN_PLACE.get(name, ())
    return {k: v for k, v in digest(out).items() if k.split("/")[0] not in skip}


def _last(name: str) -> str:
    return "mosaics.csv" if name == "data mosaic" else "run.json"


class _StagedWrites:
    """Counts the run's renames into a staging folder, and raises at the `fail_at`-th one."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.count, self.fail_at = 0, fail_at
        self._replace: Callable[..., Any] = os.replace

    def __call__(self, src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if ".staging-" in os.fspath(dst):
            self.count += 1
            if self.count == self.fail_at:
                raise RuntimeError(f"fault injected at staged write {self.count} ({os.fspath(dst)})")
        self._replace(src, dst, *args, **kwargs)


@pytest.fixture(scope="module")
def sfx(fx: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The fault fixture plus a stainalign pairs CSV, a fitted stainalign head and a shared cache."""
    root = tmp_path_factory.mktemp("staged")
    pairs = stainalign_pairs(root / "pairs")
    return {**fx, "pairs": pairs, "cache": root / "cache", "head": root / "reference" / "stainalign-fit"}


@pytest.fixture(scope="module")
def references(sfx: dict[str, Any]) -> dict[str, tuple[dict[str, str], int]]:
    """Each command once, uninterrupted, in this process: (compared files, staged writes)."""
    refs = {}
    mp = pytest.MonkeyPatch()
    try:
        for name in NAMES:  # stainalign fit first: its folder is stainalign eval's head
            out = Path(sfx["head"]).parent / name.replace(" ", "-")
            counter = _StagedWrites()
            mp.setattr(os, "replace", counter)
            assert run_main(_argv(name, sfx, out, 3)) == 0, name
            mp.undo()
            assert_whole(out, in_place=IN_PLACE.get(name, ()), last=_last(name))
            refs[name] = (_compared(name, out), counter.count)
    finally:
        mp.undo()
    return refs


def _previous_run(name: str, sfx: dict[str, Any], out: Path) -> dict[str, str]:
    """Another complete run (seed 5) in `out`; returns its staged files' digests."""
    assert run_main(_argv(name, sfx, out, 5)) == 0
    return _staged_state(name, out)


def _writing(out: Path, proc: Any, timeout: float = 240.0) -> bool:
    """Wait until the run stages its outputs (True), or ends first (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(out.parent.glob(f".{out.name}.staging-*")):
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    raise TimeoutError(f"{out} was not staged within {timeout} s")


def _no_leftovers(out: Path) -> None:
    assert not [p.name for p in out.parent.iterdir() if ".staging-" in p.name or ".old-" in p.name]


@pytest.mark.parametrize("name", NAMES)
def test_an_exception_while_writing_leaves_the_previous_run_and_a_rerun_equals_uninterrupted(
    name: str, sfx: dict[str, Any], references: dict[str, tuple[dict[str, str], int]], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, faults: FaultLog,
) -> None:
    reference, n_writes = references[name]
    out = tmp_path / "out"
    before = _previous_run(name, sfx, out)
    fail_at = random.Random(f"{SEED}-{name}-exception").randint(1, n_writes)
    with monkeypatch.context() as mp:
        mp.setattr(os, "replace", _StagedWrites(fail_at))
        faults.inject(f"exception while writing: {name}")
        assert run_main(_argv(name, sfx, out, 3)) == 1  # an unexpected error: traceback + one line
    assert _staged_state(name, out) == before, f"write {fail_at}/{n_writes} changed the previous run"
    _no_leftovers(out)
    assert run_main(_argv(name, sfx, out, 3)) == 0
    assert _compared(name, out) == reference
    assert_whole(out, in_place=IN_PLACE.get(name, ()), last=_last(name))
    _no_leftovers(out)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_kill_9_at_a_random_point_leaves_one_whole_run_and_a_rerun_equals_uninterrupted(
    name: str, sfx: dict[str, Any], references: dict[str, tuple[dict[str, str], int]], tmp_path: Path,
    faults: FaultLog,
) -> None:
    reference, _ = references[name]
    out = tmp_path / "out"
    before = _previous_run(name, sfx, out)
    proc = spawn(_argv(name, sfx, out, 3))
    if started(out, proc) and _writing(out, proc):
        time.sleep(random.Random(f"{SEED}-{name}-KILL").uniform(0.0, 0.3))
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
        faults.inject(f"kill -KILL {name}")
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode in (0, -signal.SIGKILL), stderr
    assert_whole(out, in_place=IN_PLACE.get(name, ()), last=_last(name))
    assert _staged_state(name, out) == before or _compared(name, out) == reference  # the old run or the new one
    assert run_main(_argv(name, sfx, out, 3)) == 0
    assert _compared(name, out) == reference
    assert_whole(out, in_place=IN_PLACE.get(name, ()), last=_last(name))
    _no_leftovers(out)
