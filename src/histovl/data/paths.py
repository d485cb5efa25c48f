"""Path safety: keep every image a data set names inside its data root.

A manifest is often written by someone else (or generated from a spreadsheet); a row like
``../../home/user/.ssh/id_rsa`` or a symlink planted in a class folder must not make histovl read,
embed or copy files from elsewhere on the machine. Users who really keep images elsewhere opt in
with ``allow_absolute_paths=True`` (``--allow-absolute-paths``).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from histovl.errors import HistovlError


class UnsafePathError(HistovlError, ValueError):
    """An image path points outside the data root (``../``, an absolute path, or a symlink)."""


def is_inside(path: str, root: str) -> bool:
    """True when normalised absolute `path` equals `root` or lies below it (purely lexical)."""
    return path == root or path.startswith(root if root.endswith(os.sep) else root + os.sep)


@dataclass
class PathChecker:
    """Resolves image paths against a root and sorts them into ok, missing and unsafe.

    It stats each file once and resolves each parent folder once, so checking a million-row
    manifest costs about one ``lstat`` per row, not a full ``realpath`` walk per row.

    Attributes:
        root: Absolute, normalised data root (symlinks in it are kept).
        allow_outside: Accept paths outside the root (absolute paths, ``../``, symlinks out).
    """

    root: str
    allow_outside: bool = False
    missing: list[str] = field(default_factory=list)
    unsafe: list[tuple[str, str]] = field(default_factory=list)
    not_files: list[str] = field(default_factory=list)
    _real_root: str = ""
    _real_parents: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._real_root = os.path.realpath(self.root)

    def absolute(self, value: str) -> str:
        """The absolute, normalised form of a manifest `path` value (relative to the root)."""
        joined = value if os.path.isabs(value) else os.path.join(self.root, value)
        return os.path.normpath(joined)

    def check(self, value: str) -> str | None:
        """Check one path; return its absolute form, or `None` after recording why it failed."""
        path = self.absolute(value)
        if not self.allow_outside and not is_inside(path, self.root):
            why = "absolute path outside the data root" if os.path.isabs(value) else "leaves the data root via '..'"
            self.unsafe.append((value, why))
            return None
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            self.missing.append(value)
            return None
        except OSError as exc:  # e.g. permission denied, name too long
            self.missing.append(f"{value} ({exc.strerror})")
            return None
        if stat.S_ISLNK(st.st_mode):
            real = os.path.realpath(path)
            if not os.path.exists(real):
                self.missing.append(f"{value} (broken symlink)")
                return None
            is_file = os.path.isfile(real)
        else:
            real = os.path.join(self._real_parent(os.path.dirname(path)), os.path.basename(path))
            is_file = stat.S_ISREG(st.st_mode)
        if not self.allow_outside and not is_inside(real, self._real_root):
            self.unsafe.append((value, f"symlink resolving outside the data root, to {real}"))
            return None
        if not is_file:
            self.not_files.append(value)
            return None
        return path

    def _real_parent(self, parent: str) -> str:
        hit = self._real_parents.get(parent)
        if hit is None:
            hit = self._real_parents[parent] = os.path.realpath(parent)
        return hit

    def raise_if_failed(self, source: Path) -> None:
        """Raise one error that lists every problem found, unsafe paths first.

        Raises:
            UnsafePathError: Some paths leave the data root.
            FileNotFoundError: Some files do not exist (or are folders).
        """
        if self.unsafe:
            shown = "; ".join(f"{v!r}: {why}" for v, why in self.unsafe[:5])
            raise UnsafePathError(
                f"{len(self.unsafe)} image path(s) in {source} point outside the data root {self.root} "
                f"(first: {shown}). Keep images under the data root, or pass allow_absolute_paths=True "
                "(CLI: --allow-absolute-paths) if you trust this data."
            )
        if self.missing or self.not_files:
            parts = []
            if self.missing:
                parts.append(
                    f"{len(self.missing)} image file(s) listed in {source} do not exist "
                    f"(first: {', '.join(repr(m) for m in self.missing[:5])})"
                )
            if self.not_files:
                parts.append(
                    f"{len(self.not_files)} path(s) are not regular files "
                    f"(first: {', '.join(repr(m) for m in self.not_files[:5])})"
                )
            raise FileNotFoundError(
                "; ".join(parts) + f". Paths are relative to {self.root}; fix or remove these rows."
            )


def as_root(folder: str | os.PathLike[str]) -> str:
    """Absolute, normalised form of a folder, keeping symlinks (the name the user sees)."""
    return os.path.normpath(os.path.abspath(os.fspath(folder)))
