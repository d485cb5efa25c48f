"""Run records (``run.json``): exactly what produced a set of results.

A record holds the command and its configuration, package versions, platform, UTC time, the git
commit (and dirty flag) of the histovl source checkout and of the current directory's repository,
the seed, the model cards, the prompt set (in full up to 64 KiB of JSON, capped beyond, with the
full set's sha256), the prompts cut to a text tower's context (``prompts_cut``), a hash of the
input list, and the skipped inputs.
Two runs with equal records (minus time) on the same inputs must give the same numbers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import histovl
from histovl._compat import UTC
from histovl._prompt_cuts import cuts_record

#: run.json key -> distribution names to try (first installed wins).
PACKAGE_DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "torch": ("torch",),
    "torchvision": ("torchvision",),
    "open_clip": ("open_clip_torch", "open-clip-torch"),
    "transformers": ("transformers",),
    "numpy": ("numpy",),
    "scikit-learn": ("scikit-learn",),
    "pillow": ("pillow", "Pillow"),
    "faiss": ("faiss-cpu", "faiss-gpu", "faiss"),
}

RUN_RECORD_VERSION = 1
#: A prompt set larger than this (bytes of JSON) is recorded capped (`capped_prompt_set`).
PROMPT_SET_RECORD_BYTES = 64 * 1024
PROMPT_RECORD_CHARS = 300
PROMPT_RECORD_ITEMS = 50
#: Fields of ``extra`` holding prompt texts (capped like the prompt set when as large).
PROMPT_FIELDS_IN_EXTRA = ("prompts_used",)


def build_run_record(
    *,
    command: str,
    config: Mapping[str, Any],
    models: Sequence[Any],
    prompt_set: Any | None,
    seed: int,
    inputs: Sequence[str | os.PathLike[str]],
    skipped: Iterable[Mapping[str, Any]] = (),
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble the provenance record written to ``run.json``.

    Args:
        command: the command name (``"zeroshot"``).
        config: the command's resolved options (paths become strings).
        models: model cards (`ModelCard`, anything with ``to_dict()``, a dataclass or a dict).
        prompt_set: the prompt set (pydantic model or dict), recorded in full (capped past
            `PROMPT_SET_RECORD_BYTES`, with its sha256), or None.
        seed: the run's seed.
        inputs: every input file the run considered (before skips).
        skipped: ``{"path": ..., "reason": ...}`` per input that was skipped.
        extra: command-specific additions, stored under ``extra``.

    Example:
        >>> rec = build_run_record(command="zeroshot", config={"batch_size": 64}, models=[],
        ...                        prompt_set=None, seed=0, inputs=[])
        >>> rec["n_inputs"], rec["seed"]
        (0, 0)
    """
    skipped_list = [_jsonable(dict(s)) for s in skipped]
    digest, n_inputs, total_bytes, root = input_hash(inputs)
    return {
        "run_record_version": RUN_RECORD_VERSION,
        "command": command,
        "argv": list(sys.argv),
        "time_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "seed": int(seed),
        "config": _jsonable(dict(config)),
        "models": [_card_dict(m) for m in models],
        **_prompt_set_fields(prompt_set),
        "prompts_cut": cuts_record(),
        "versions": package_versions(),
        "platform": platform_info(),
        **_git_fields(),
        "input_hash": digest,
        "input_root": root,
        "n_inputs": n_inputs,
        "input_bytes": total_bytes,
        "n_skipped": len(skipped_list),
        "skipped": skipped_list,
        "extra": _capped_extra(_jsonable(dict(extra or {}))),
    }


def input_hash(inputs: Sequence[str | os.PathLike[str]]) -> tuple[str, int, int, str | None]:
    """sha256 over the sorted input paths (relative to their common root) and their sizes.

    Relative paths make the hash independent of where the data set is mounted; sizes catch most
    replaced files without reading every byte (content identity is the embedding cache's job).
    A missing file contributes size ``-1``. Returns ``(hexdigest, count, total_bytes, root)``.
    """
    paths = [Path(p).resolve() for p in inputs]
    if not paths:
        return hashlib.sha256(b"").hexdigest(), 0, 0, None
    root = Path(os.path.commonpath([str(p) for p in paths]))
    if root in paths:  # a single file (or the same file listed every time): hash it by name
        root = root.parent
    entries = []
    total = 0
    for p in paths:
        size = p.stat().st_size if p.exists() else -1
        total += max(size, 0)
        entries.append((p.relative_to(root).as_posix(), size))
    h = hashlib.sha256()
    for rel, size in sorted(entries):
        h.update(f"{rel}\t{size}\n".encode())
    return h.hexdigest(), len(paths), total, str(root)


def _git_fields() -> dict[str, Any]:
    """``histovl_git`` and ``cwd_git``; git is asked once when both are the same work tree."""
    source = git_info(Path(histovl.__file__).resolve().parent)
    cwd = Path.cwd()
    same = source["path"] is not None and _git(cwd, "rev-parse", "--show-toplevel") == source["path"]
    return {"histovl_git": source, "cwd_git": dict(source) if same else git_info(cwd)}


def distribution_version(name: str) -> str:
    """`importlib.metadata.version`, reading only the metadata's header lines (``version`` runs
    the email parser over the whole file, long description included).

    Raises:
        importlib.metadata.PackageNotFoundError: `name` is not installed.
    """
    dist = metadata.distribution(name)
    text = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or ""
    for line in text.splitlines():
        if not line.strip():
            break
        if line.lower().startswith("version:"):
            return line.split(":", 1)[1].strip()
    return str(dist.version)


def package_versions() -> dict[str, str | None]:
    """Versions of Python, histovl and the libraries that change results (None if absent)."""
    versions: dict[str, str | None] = {
        "python": platform.python_version(),
        "histovl": histovl.__version__,
    }
    for key, dists in PACKAGE_DISTRIBUTIONS.items():
        versions[key] = None
        for dist in dists:
            try:
                versions[key] = distribution_version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return versions


def platform_info() -> dict[str, Any]:
    """OS, machine and CPU count (numbers can differ across BLAS builds and CPUs)."""
    return {
        "system": platform.system(),
        "release": platform.release(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "python_implementation": platform.python_implementation(),
        "cpu_count": os.cpu_count(),
    }


def git_info(directory: Path) -> dict[str, Any]:
    """Commit and dirty flag of the git work tree containing ``directory`` (read-only git).

    ``--no-optional-locks`` keeps ``git status`` from rewriting the index, so recording provenance
    never touches the repository. Without git or outside a work tree the commit is None.
    """
    info: dict[str, Any] = {"path": None, "commit": None, "dirty": None}
    top = _git(directory, "rev-parse", "--show-toplevel")
    if top is None:
        return info
    info["path"] = top
    info["commit"] = _git(directory, "rev-parse", "HEAD")
    status = _git(directory, "--no-optional-locks", "status", "--porcelain", "--untracked-files=no")
    info["dirty"] = None if status is None else bool(status)
    return info


def _git(directory: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=directory, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _card_dict(model: Any) -> dict[str, Any]:
    if isinstance(model, Mapping):
        return _jsonable(dict(model))
    if hasattr(model, "to_dict"):
        return _jsonable(dict(model.to_dict()))
    if dataclasses.is_dataclass(model) and not isinstance(model, type):
        return _jsonable(dataclasses.asdict(model))
    raise TypeError(
        f"cannot record model card of type {type(model).__name__}; pass a ModelCard or a dict"
    )


def _prompt_set_fields(prompt_set: Any) -> dict[str, Any]:
    """``prompt_set`` (in full up to `PROMPT_SET_RECORD_BYTES` of JSON, else capped: see
    `capped_prompt_set`) and ``prompt_set_sha256``, the hash of the full set's canonical JSON."""
    if prompt_set is None:
        return {"prompt_set": None, "prompt_set_sha256": None}
    full = _prompt_set_dict(prompt_set)
    text = json.dumps(full, sort_keys=True, ensure_ascii=False, default=str)
    size = len(text.encode("utf-8"))
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    recorded = full if size <= PROMPT_SET_RECORD_BYTES else capped_prompt_set(full, size)
    return {"prompt_set": recorded, "prompt_set_sha256": digest}


def _capped_extra(extra: dict[str, Any]) -> dict[str, Any]:
    """`extra` with its prompt lists (`PROMPT_FIELDS_IN_EXTRA`) capped like a large prompt set
    (``<field>_sha256`` then holds the full list's hash)."""
    for key in PROMPT_FIELDS_IN_EXTRA:
        if key not in extra:
            continue
        text = json.dumps(extra[key], sort_keys=True, ensure_ascii=False, default=str)
        size = len(text.encode("utf-8"))
        if size > PROMPT_SET_RECORD_BYTES:
            extra[key] = _cap_json(extra[key])[0]
            extra[f"{key}_sha256"] = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return extra


def _cap_json(obj: Any) -> tuple[Any, int, int]:
    """`obj` with strings cut to `PROMPT_RECORD_CHARS` characters and lists to `PROMPT_RECORD_ITEMS`
    items, or tighter (40, 3) when that is still over `PROMPT_SET_RECORD_BYTES`; mapping keys are
    kept whole. Returns (capped, characters, items)."""

    def cap(o: Any, chars: int, items: int) -> Any:
        if isinstance(o, str):
            return o if len(o) <= chars else f"{o[:chars]}… [{len(o)} characters]"
        if isinstance(o, list):
            return [cap(v, chars, items) for v in o[:items]] + ([f"… [{len(o)} items]"] if len(o) > items else [])
        if isinstance(o, dict):
            return {k: cap(v, chars, items) for k, v in o.items()}
        return o

    capped = cap(obj, PROMPT_RECORD_CHARS, PROMPT_RECORD_ITEMS)
    if len(json.dumps(capped, ensure_ascii=False, default=str)) <= PROMPT_SET_RECORD_BYTES:
        return capped, PROMPT_RECORD_CHARS, PROMPT_RECORD_ITEMS
    return cap(obj, 40, 3), 40, 3


def capped_prompt_set(full: dict[str, Any], size: int) -> dict[str, Any]:
    """A prompt set too large to copy into run.json: every string cut to `PROMPT_RECORD_CHARS`
    characters and every list to `PROMPT_RECORD_ITEMS` items (class names are kept whole), with
    ``_capped`` saying so; its sha256 is recorded beside it (``prompt_set_sha256``)."""
    capped, chars, items = _cap_json(full)
    note = (f"the full prompt set ({size} bytes of JSON) is larger than the {PROMPT_SET_RECORD_BYTES} bytes "
            f"copied into run.json: strings cut to {chars} characters, lists to {items} items; "
            "prompt_set_sha256 identifies the full set")
    return {"_capped": note, **capped}  # first: the report shows this dict as the prompt set's text


def _prompt_set_dict(prompt_set: Any) -> dict[str, Any]:
    if isinstance(prompt_set, Mapping):
        return _jsonable(dict(prompt_set))
    if hasattr(prompt_set, "model_dump"):
        return _jsonable(prompt_set.model_dump(mode="json"))
    if dataclasses.is_dataclass(prompt_set) and not isinstance(prompt_set, type):
        return _jsonable(dataclasses.asdict(prompt_set))
    raise TypeError(
        f"cannot record prompt set of type {type(prompt_set).__name__}; pass a PromptSet or a dict"
    )


def _jsonable(obj: Any) -> Any:
    """Paths -> str, tuples/sets -> lists, numpy scalars -> Python, recursively."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, set | frozenset):
        return sorted(_jsonable(v) for v in obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", None) == 0:
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return obj
