"""The built wheel and sdist carry every file of the package, and the wheel works installed.

`python -m build --no-isolation` builds the sdist, then the wheel from the sdist (so a file missing
from the sdist is missing from the wheel too). The wheel is installed NON-editable, with the
constraints file, into a fresh venv that reuses this environment's dependencies through a ``.pth``
file (torch is not downloaded or copied; ``--no-deps``). From a folder outside the repository, so
the source tree cannot be imported by accident, the installed `histovl` lists its models, runs a
zero-shot on two shipped demo tiles with the bundled histovl-lite, and passes `histovl doctor`.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml

import histovl

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "src" / "histovl"
CONSTRAINTS = REPO / "constraints" / "dev-machines.txt"
#: Python versions the wheel must accept besides this one (checked where the interpreter exists).
OTHER_PYTHONS = ("3.10", "3.12", "3.13")


def package_files() -> list[str]:
    """Every file of src/histovl as it must appear in the wheel (``histovl/...``)."""
    return sorted(
        str(p.relative_to(PACKAGE.parent)).replace(os.sep, "/")
        for p in PACKAGE.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in {".pyc", ".pyo"}
    )


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sdist and the wheel built from it."""
    out = tmp_path_factory.mktemp("dist")
    cmd = [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(REPO)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    wheels, sdists = sorted(out.glob("*.whl")), sorted(out.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in out.iterdir())
    return {"wheel": wheels[0], "sdist": sdists[0]}


@pytest.fixture(scope="module")
def venv(dists: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed non-editable; dependencies come from this
    environment's site-packages through a .pth file (whose own .pth files, among them the
    editable install's path to src/, are not processed there)."""
    root = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    py = root / "bin" / "python"
    site = Path(_run(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_histovl_test_deps.pth").write_text("".join(f"{p}\n" for p in sorted(ours)), encoding="utf-8")
    res = _run(py, "-m", "pip", "install", "--no-deps", "--no-index", "-c", str(CONSTRAINTS), str(dists["wheel"]))
    assert res.returncode == 0, res.stdout + res.stderr
    return root


def _run(exe: Path, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
         timeout: float = 300) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}}
    return subprocess.run([str(exe), *args], capture_output=True, text=True, cwd=cwd,
                          env={**base, "PYTHONNOUSERSITE": "1", **(env or {})}, timeout=timeout)


def test_wheel_and_sdist_carry_every_package_file(dists: dict[str, Path]) -> None:
    expected = package_files()
    assert any(f.endswith(".safetensors") for f in expected) and any("/demo/tiles/" in f for f in expected)
    with zipfile.ZipFile(dists["wheel"]) as whl:
        in_wheel = set(whl.namelist())
        meta = next(n for n in in_wheel if n.endswith(".dist-info/METADATA"))
        metadata = whl.read(meta).decode()
    missing = [f for f in expected if f not in in_wheel]
    assert not missing, f"not in the wheel (add them to [tool.setuptools.package-data]): {missing}"
    assert f"Version: {histovl.__version__}\n" in metadata
    assert "Requires-Python: >=3.10\n" in metadata
    assert "Requires-Dist: torch>=" in metadata and "torch==" not in metadata
    with tarfile.open(dists["sdist"]) as sdist:
        names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
    wanted = [f"src/{f}" for f in expected] + ["pyproject.toml", "README.md", "CHANGELOG.md", "constraints/dev-machines.txt"]
    assert not [f for f in wanted if f not in names], "missing from the sdist"


def test_installed_wheel_lists_models_and_runs_zeroshot(venv: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {"HISTOVL_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    where = _run(venv / "bin" / "python", "-c", "import histovl; print(histovl.__file__, histovl.__version__)", cwd=outside)
    path, version = where.stdout.split()
    assert Path(path).resolve().is_relative_to(venv.resolve()), f"histovl imported from {path}, not the venv"
    assert version == histovl.__version__

    models = _run(venv / "bin" / "histovl", "models", cwd=outside, env=env)
    assert models.returncode == 0, models.stderr
    assert "histovl-lite" in models.stdout and "conch" in models.stdout

    data, prompts = _two_demo_tiles(venv, outside)
    args = ["zeroshot", "--model", "histovl-lite", "--data", str(data), "--prompts", str(prompts),
            "--out", str(outside / "run"), "--n-boot", "0", "--quiet"]
    res = _run(venv / "bin" / "histovl", *args, cwd=outside, env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    metrics = json.loads((outside / "run" / "metrics.json").read_text(encoding="utf-8"))
    record = json.loads((outside / "run" / "run.json").read_text(encoding="utf-8"))
    assert metrics["n"] == 2
    assert record["versions"]["histovl"] == histovl.__version__


def test_installed_wheel_passes_doctor(venv: Path, tmp_path: Path) -> None:
    env = {"HISTOVL_CACHE": str(tmp_path / "cache")}
    res = _run(venv / "bin" / "histovl", "doctor", "--json", cwd=tmp_path, env=env)
    report = json.loads(res.stdout)
    rows = {r["name"]: r for r in report["rows"]}
    assert res.returncode == 0 and report["ok"], [r for r in report["rows"] if r["core"] and r["status"] != "ok"]
    assert "(installed)" in rows["histovl"]["detail"], rows["histovl"]
    assert rows["dependencies"]["status"] == "ok", rows["dependencies"]  # the wheel's requirements hold here
    assert rows["model histovl-lite"]["status"] == "ok"


@pytest.mark.parametrize("version", OTHER_PYTHONS)
def test_other_pythons_accept_the_wheel(dists: dict[str, Path], version: str) -> None:
    exe = _find_python(version)
    if exe is None:
        pytest.skip(f"no python{version} on this machine")
    res = _run(exe, "-m", "pip", "install", "--dry-run", "--no-deps", "--no-index", str(dists["wheel"]))
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"Would install histovl-{histovl.__version__}" in res.stdout


def _find_python(version: str) -> Path | None:
    """A working python<version>: on PATH, or one of pyenv's installed versions."""
    candidates = [Path(p) / f"python{version}" for p in os.environ.get("PATH", "").split(os.pathsep)]
    candidates += [Path(p) for p in sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python{version}")))]
    for exe in candidates:
        if exe.is_file() and _run(exe, "-c", "import pip", timeout=60).returncode == 0:
            return exe
    return None


def _installed_package(venv: Path) -> Path:
    out = _run(venv / "bin" / "python", "-c", "import histovl, os; print(os.path.dirname(histovl.__file__))", cwd=venv)
    return Path(out.stdout.strip())


def _two_demo_tiles(venv: Path, where: Path) -> tuple[Path, Path]:
    """A manifest of two shipped demo tiles of two different labels (copied from the installed
    package), and the shipped demo prompt set whose classes cover them."""
    demo = _installed_package(venv) / "assets" / "demo"
    tiles = demo / "tiles"
    with open(tiles / "manifest.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    labels = list(dict.fromkeys(r["label"] for r in rows))[:2]
    picked = [next(r for r in rows if r["label"] == label) for label in labels]
    prompts = next(p for p in sorted(demo.glob("*.yaml")) if set(labels) <= set(yaml.safe_load(p.read_text())["classes"]))
    folder = where / "two_tiles"
    folder.mkdir()
    for row in picked:
        shutil.copyfile(tiles / row["path"], folder / row["path"])
    with open(folder / "manifest.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label"])
        writer.writerows([row["path"], row["label"]] for row in picked)
    return folder / "manifest.csv", prompts
