"""The allow-list: every file the server may send, by id, fixed when the server starts.

A request never carries a path. Pages link to ``/files/<id>`` (and thumbnails, tiles) where the
id is a hash of the file's resolved path; a request for an id that is not in the registry is a
404 whatever it contains (``..``, an absolute path, encoded or double-encoded traversal). The
registry is filled only while the roots are scanned at start (`histovl.serve.catalog`), so
nothing a request says can add to it.

Two kinds of entry:
- a file **inside** a root (its resolved path, symlinks followed, lies under a resolved root):
  sent as it is, for the types in `RAW_TYPES`;
- an image **named** by a run or an index under a root but lying elsewhere (the data set the run
  read): only decoded and re-encoded (thumbnail, large view), never sent as bytes, and not at all
  with ``roots_only``. A symlink inside a root that points out of it is such a file at best.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

#: Files inside a root sent as they are, by suffix -> media type.
RAW_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".html": "text/html; charset=utf-8",
    ".csv": "text/csv; charset=utf-8",
    ".json": "application/json",
    ".geojson": "application/geo+json",
}

#: Images Pillow decodes for thumbnails and large views.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif"})


@dataclass(frozen=True)
class FileEntry:
    """One allowed file."""

    id: str
    path: Path
    inside: bool
    """Inside a root: may be sent as it is (see `RAW_TYPES`)."""
    kind: str = "file"
    """``file``, or ``slide`` (served only as DeepZoom tiles)."""

    @property
    def raw_type(self) -> str | None:
        """The media type to send the bytes with, or None when only re-encoding is allowed."""
        return RAW_TYPES.get(self.path.suffix.lower()) if self.inside and self.kind == "file" else None

    @property
    def is_image(self) -> bool:
        return self.kind == "file" and self.path.suffix.lower() in IMAGE_SUFFIXES


def path_id(path: Path, kind: str = "file") -> str:
    """A stable id for a resolved path (20 hex digits of sha256)."""
    return hashlib.sha256(f"{kind}:{path}".encode()).hexdigest()[:20]


class FileRegistry:
    """The allow-list (see the module docstring). Thread-safe; ids are only added at start."""

    def __init__(self, roots: Sequence[Path], *, roots_only: bool = False) -> None:
        self.roots = [Path(os.path.realpath(r)) for r in roots]
        self.roots_only = roots_only
        self._by_id: dict[str, FileEntry] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._by_id)

    def inside(self, resolved: Path) -> bool:
        """Whether a resolved path lies under one of the resolved roots."""
        return any(resolved == r or resolved.is_relative_to(r) for r in self.roots)

    def add(self, path: str | os.PathLike[str], kind: str = "file") -> str | None:
        """Allow one file; its id, or None when it is not allowed (missing, not a file, outside
        every root and not an image/slide, or outside with ``roots_only``)."""
        resolved = Path(os.path.realpath(path))
        if not resolved.is_file():
            return None
        inside = self.inside(resolved)
        if not inside and (self.roots_only or (kind == "file" and resolved.suffix.lower() not in IMAGE_SUFFIXES)):
            return None
        entry = FileEntry(path_id(resolved, kind), resolved, inside, kind)
        with self._lock:
            self._by_id.setdefault(entry.id, entry)
        return entry.id

    def get(self, file_id: str) -> FileEntry | None:
        """The entry of an id, or None (the caller answers 404)."""
        return self._by_id.get(file_id)


def walk_root(root: Path) -> Iterator[tuple[Path, list[str], list[str]]]:
    """``os.walk`` of a root that never follows a symlinked folder and skips hidden entries."""
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
        yield Path(folder), dirs, sorted(f for f in files if not f.startswith("."))


def files_under(folder: Path, registry: FileRegistry, limit: int = 5000) -> dict[str, str]:
    """Relative path (``figures/x.png``) -> id of the files inside `folder` that may be sent as
    they are (a run's report and its figures, looked up by that key, never by the file system)."""
    found: dict[str, str] = {}
    for sub, _dirs, files in walk_root(folder):
        for name in files:
            path = sub / name
            if path.suffix.lower() not in RAW_TYPES or len(found) >= limit:
                continue
            file_id = registry.add(path)
            entry = registry.get(file_id) if file_id else None
            if entry is not None and entry.inside:
                found[path.relative_to(folder).as_posix()] = file_id  # type: ignore[assignment]
    return found
