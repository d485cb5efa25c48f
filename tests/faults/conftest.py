"""The fault-injection suite (docs/reliability.md, "Fault injection"): shared fixtures and the
count of faults injected and survived, printed at the end of the run.

Every test here is marked ``faults``. A test records each fault it injects with
``faults.inject("<class>")``; when the test passes, its faults count as survived. The summary
table at the end of the session gives the numbers docs/reliability.md reports.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from histovl.outputs_guard import MANIFEST_FILE, lock_path
from tests.helpers.synthetic import LUNG_CLASSES, lung_prompts_yaml, lung_tiles

REPO = Path(__file__).resolve().parents[2]
CLASSES = LUNG_CLASSES
PROMPTS_YAML = lung_prompts_yaml("faults")

_INJECTED: collections.Counter[str] = collections.Counter()
_SURVIVED: collections.Counter[str] = collections.Counter()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.faults)


class FaultLog:
    """What one test injected (counted as survived when the test passes)."""

    def __init__(self) -> None:
        self.injected: collections.Counter[str] = collections.Counter()

    def inject(self, kind: str, n: int = 1) -> None:
        self.injected[kind] += n
        _INJECTED[kind] += n


@pytest.fixture
def faults(request: pytest.FixtureRequest) -> Iterator[FaultLog]:
    log = FaultLog()
    yield log
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.passed:
        _SURVIVED.update(log.injected)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    rep = yield
    if rep.when == "call":
        item.rep_call = rep  # type: ignore[attr-defined]
    return rep


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    if not _INJECTED:
        return
    tr = terminalreporter
    tr.section("faults injected / survived (docs/reliability.md)")
    for kind in sorted(_INJECTED):
        tr.write_line(f"{kind:<44} {_INJECTED[kind]:>4} injected {_SURVIVED[kind]:>4} survived")
    tr.write_line(f"{'total':<44} {sum(_INJECTED.values()):>4} injected {sum(_SURVIVED.values()):>4} survived")
    out = os.environ.get("HISTOVL_FAULTS_SUMMARY")
    if out:
        Path(out).write_text(json.dumps({"injected": dict(_INJECTED), "survived": dict(_SURVIVED)}, indent=1))


# ---- the fixture data: a tiny model folder, tiles, a manifest, prompts, a slide ------------------


@pytest.fixture(scope="session")
def fx(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny model folder (a `load_model` spec a subprocess can read), tiles, manifest, prompts, slide."""
    from histovl.models import save_model_dir
    from tests.helpers.tiny import tiny_encoder
    from tests.unit.slides.conftest import synthetic_tissue

    root = tmp_path_factory.mktemp("faults-fixture")
    model = save_model_dir(tiny_encoder(7), root / "model")
    manifest = lung_tiles(root, per_class=8)
    (root / "prompts.yaml").write_text(PROMPTS_YAML)
    Image.fromarray(synthetic_tissue(768, 512)).save(root / "slide.png")
    return {"root": root, "model": model, "manifest": manifest, "prompts": root / "prompts.yaml",
            "tiles": root / "tiles", "slide": root / "slide.png"}


# ---- running the CLI ------------------------------------------------------------------------------


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str] | None = None) -> int:
    """`histovl.cli.app.main` in this process (the real error boundary); returns the exit status."""
    from histovl.cli.app import main

    old, handlers = sys.argv, {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    sys.argv = ["histovl", *argv]
    try:
        main()
    except SystemExit as done:
        return int(done.code or 0)
    finally:
        sys.argv = old
        for sig, handler in handlers.items():  # main() installs its own: give pytest its Ctrl-C back
            signal.signal(sig, handler)
    return 0


def spawn(argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """`histovl ARGV` in a subprocess (its own process group), stdout/stderr captured."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO / "src"), **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "histovl.cli.app", *argv], cwd=REPO, env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 240.0) -> bool:
    """Wait until `path` exists (True) or the process ends first (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    raise TimeoutError(f"{path} did not appear within {timeout} s")


def started(out: Path, proc: subprocess.Popen[str]) -> bool:
    """The command body is running: its output lock is held (taken after the signal handlers)."""
    return wait_for(lock_path(out), proc)


def digest(folder: Path, names: list[str] | None = None) -> dict[str, str]:
    """sha256 of every file under `folder` (or of `names` only), by relative path."""
    if names is not None:
        return {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in names}
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_whole(out: Path, *, in_place: tuple[str, ...] = (), last: str = "run.json") -> None:
    """`out` is absent or one complete run: its manifest lists exactly its entries, with `last`.

    `in_place` names folders a command resumes in place rather than stages (a slide tiling):
    they may be there without being listed, or be there alone (a first run stopped while tiling).
    """
    if not out.exists():
        return
    present = {p.name for p in out.iterdir()} - {MANIFEST_FILE} - set(in_place)
    if not (out / MANIFEST_FILE).exists() and not present:
        return  # only the tiling of a first run that did not finish
    listed = set((out / MANIFEST_FILE).read_text().split())
    assert listed == present, f"{out} mixes runs or is incomplete: {sorted(listed ^ present)}"
    assert (out / last).is_file()
