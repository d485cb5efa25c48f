"""Generators for unsafe data layouts: traversal paths in a manifest and a symlink out of the root."""

from __future__ import annotations

from pathlib import Path

from PIL import Image


def _tile(path: Path, colour: tuple[int, int, int] = (200, 100, 150)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)
    return path


def data_root_with_outside_file(tmp: Path) -> tuple[Path, Path]:
    """``tmp/root/a/ok.png`` inside the root and ``tmp/outside/secret.png`` outside it."""
    root = tmp / "root"
    _tile(root / "a" / "ok.png")
    outside = _tile(tmp / "outside" / "secret.png")
    return root, outside


def traversal_manifest(tmp: Path, *, kind: str) -> Path:
    """A manifest in ``tmp/root`` with one good row and one row escaping the root.

    `kind`: ``"dotdot"`` (``../outside/secret.png``), ``"absolute"`` (absolute path to the outside
    file) or ``"symlink"`` (``a/link.png``, a symlink to the outside file).
    """
    root, outside = data_root_with_outside_file(tmp)
    if kind == "dotdot":
        bad = "../outside/secret.png"
    elif kind == "absolute":
        bad = str(outside)
    elif kind == "symlink":
        (root / "a" / "link.png").symlink_to(outside)
        bad = "a/link.png"
    else:
        raise ValueError(kind)
    manifest = root / "manifest.csv"
    manifest.write_text(f"path,label\na/ok.png,a\n{bad},a\n")
    return manifest


def class_folder_with_symlink_out(tmp: Path) -> Path:
    """A class-folder tree whose class ``b`` holds a symlink to a file outside the root."""
    root, outside = data_root_with_outside_file(tmp)
    (root / "b").mkdir()
    (root / "b" / "link.png").symlink_to(outside)
    return root
