"""Model specs in a suite: checked without loading weights, and a folder-safe slug for each.

`check_model` accepts every form `histovl.models.load_model` does (docs/interfaces.md, "Naming a
model") and checks what can be checked without torch: a registry name is registered, a local
weights file or folder exists. Relative paths are resolved against the suite's folder.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from histovl.errors import HistovlError, did_you_mean


class UnknownModelError(HistovlError, ValueError):
    """A suite names a model that does not exist."""


def check_model(spec: str, base: Path) -> str:
    """The spec with local paths resolved against `base`; `UnknownModelError` if it names nothing."""
    if spec.startswith("open_clip:"):
        arch, sep, path_text = spec[len("open_clip:"):].partition(":")
        if not sep or not arch or not path_text:
            raise UnknownModelError(f"expected open_clip:<ARCH>:<PATH>, got {spec!r}")
        path = _local(path_text, base)
        if not path.is_file():
            raise UnknownModelError(f"model weights {path} not found (in {spec!r})")
        return f"open_clip:{arch}:{path}"
    if spec.startswith("hf-clip:"):
        path = _local(spec[len("hf-clip:"):], base)
        if not path.is_dir():
            raise UnknownModelError(f"hf-clip folder {path} not found (in {spec!r})")
        return f"hf-clip:{path}"
    if spec.startswith("hf-hub:"):
        return spec
    local = _local(spec, base)
    if local.is_dir() and (local / "card.json").is_file():
        return str(local)
    from histovl.models.registry import list_models

    names = list_models()
    if spec not in names:
        raise UnknownModelError(
            f"unknown model {spec!r}.{did_you_mean(spec, names)} (see `histovl models`; or use "
            "open_clip:<ARCH>:<PATH>, hf-clip:<DIR> or a model directory)"
        )
    return spec


def _local(text: str, base: Path) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else base / path


def model_slug(spec: str) -> str:
    """A short folder name for a model spec: readable part + 8 hex digits of the full spec."""
    tail = spec.rstrip("/").replace("\\", "/").split("/")[-1]
    if spec.startswith("open_clip:"):
        tail = f"{spec.split(':')[1]}-{Path(tail).stem}"
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", tail).strip("-.")[:40] or "model"
    return f"{readable}-{hashlib.sha256(spec.encode()).hexdigest()[:8]}"
