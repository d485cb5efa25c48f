"""Atomic file writes: every output goes to a temp file in the same folder, then `os.replace`.

A crash, Ctrl-C or power loss therefore leaves either the old file or the new one, never half of
one (docs/reliability.md, "run interrupted"). The file gets the permissions an ordinary ``open()``
would give it (0o666 minus the umask; `tempfile.mkstemp` alone makes it 0o600), so a run on a
shared server is readable by the group when the umask says so.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def current_umask() -> int:
    """The process umask, read without changing it where the OS tells it (Linux), else set and
    restored at once."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(target: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to `target`; on success rename it over `target`.

    Use it for writers that want a path (e.g. ``np.save``, ``fig.savefig``, ``save_file``).

    Example:
        >>> with atomic_path("out/model.safetensors") as tmp:  # doctest: +SKIP
        ...     save_file(tensors, str(tmp))
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix or ".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask())  # as open() would have made it, not mkstemp's 0o600
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def atomic_open(target: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temp file for writing; it replaces `target` only if the block finishes."""
    with atomic_path(target) as tmp:
        with open(tmp, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())


def atomic_write_text(target: str | os.PathLike[str], text: str) -> None:
    """Write `text` (UTF-8) to `target` atomically."""
    with atomic_open(target, "w", encoding="utf-8") as fh:
        fh.write(text)


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `target` atomically."""
    with atomic_open(target, "wb") as fh:
        fh.write(data)


def atomic_write_json(target: str | os.PathLike[str], obj: Any, *, indent: int = 2) -> None:
    """Write `obj` as JSON atomically; NaN/Inf are refused so no consumer reads invalid JSON."""
    atomic_write_text(target, json.dumps(obj, indent=indent, allow_nan=False, default=_json_default) + "\n")


def atomic_write_with(target: str | os.PathLike[str], writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` and move the result over `target` atomically."""
    with atomic_path(target, suffix=Path(target).suffix) as tmp:
        writer(tmp)


def _json_default(obj: Any) -> Any:
    # numpy scalars/arrays and paths show up in metrics and run records.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
