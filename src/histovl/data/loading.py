"""Load a data set from a class-folder tree or a CSV manifest, validated before any work starts.

A run that fails after an hour because row 40,000 names a missing file wastes the hour, so every
check that can be done up front is done here: files exist, paths stay inside the data root, the
set is not empty, no class folder is empty, the manifest has the columns it needs.
"""

from __future__ import annotations

import csv
import io
import os
import warnings
from collections.abc import Iterable
from pathlib import Path

from histovl._inputs import read_text_file
from histovl.data.paths import PathChecker, as_root
from histovl.data.records import ImageRecord, ImageSet
from histovl.errors import HistovlError

DEFAULT_IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".png",
    ".jpg",
    ".jpeg",
    ".tif",
    ".tiff",
    ".bmp",
    ".webp",
    ".gif",
)
"""File endings (case-insensitive) treated as images when scanning class folders."""

MANIFEST_SUFFIXES = (".csv",)
RESERVED_COLUMNS = ("path", "label", "labels", "group")


class ManifestError(HistovlError, ValueError):
    """A CSV manifest is malformed (missing or conflicting columns, empty or ragged rows)."""


def load_image_set(
    spec: str | os.PathLike[str] | ImageSet,
    *,
    allow_absolute_paths: bool = False,
    extensions: Iterable[str] = DEFAULT_IMAGE_EXTENSIONS,
    require_labels: bool = False,
    folder_labels: bool = True,
) -> ImageSet:
    """Load and validate a data set.

    Args:
        spec: A folder with one sub-folder per class (folder name = label, images found
            recursively), or a CSV manifest with a `path` column (relative to the manifest's
            folder), `label` or `labels` (``;``-separated), optional `group`, and any further
            columns (kept in `ImageRecord.extra`). An `ImageSet` is returned unchanged.
        allow_absolute_paths: Accept images outside the data root (absolute paths, ``../``,
            symlinks out). Off by default so an untrusted manifest cannot read arbitrary files.
        extensions: File endings treated as images in class folders.
        require_labels: Fail when a manifest has neither `label` nor `labels` (unlabelled
            manifests are fine for embedding and retrieval, so this is off by default).
        folder_labels: False reads a folder as a plain, unlabelled set of images: every image
            below it, flat or nested, with no label (sub-folder names are not classes). Used by
            `histovl predict`; manifests are unaffected (their labels are optional anyway).

    Returns:
        The validated `ImageSet`; records of class folders are sorted by class, then path.

    Raises:
        FileNotFoundError: `spec` or listed images do not exist (the first few are named, with
            the count).
        UnsafePathError: Paths leave the data root and `allow_absolute_paths` is False.
        ManifestError: The manifest lacks `path`, has both `label` and `labels`, empty labels...
        ValueError: The data set or a class folder is empty.

    Example:
        >>> images = load_image_set("../shared/data/lc25000-lung")  # doctest: +SKIP
        >>> images.classes  # doctest: +SKIP
        ['lung_aca', 'lung_n', 'lung_scc']
    """
    if isinstance(spec, ImageSet):
        return spec
    source = Path(spec).expanduser()
    if not source.exists():
        raise FileNotFoundError(
            f"data {os.fspath(spec)!r} does not exist; give a folder with one sub-folder per class "
            "or a CSV manifest with a `path` column"
        )
    if source.is_dir():
        exts = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)
        if not folder_labels:
            return _load_image_folder(source, allow_absolute_paths=allow_absolute_paths, extensions=exts)
        return _load_class_folder(source, allow_absolute_paths=allow_absolute_paths, extensions=exts)
    if source.suffix.lower() not in MANIFEST_SUFFIXES:
        raise ValueError(
            f"data {source} is neither a folder nor a .csv manifest; give a class-folder tree or "
            "a CSV manifest (columns: path, label or labels, optional group)"
        )
    return _load_manifest(source, allow_absolute_paths=allow_absolute_paths, require_labels=require_labels)


def load_single_label_set(data: str | os.PathLike[str] | ImageSet, *, task: str, allow_absolute_paths: bool = False) -> ImageSet:
    """`load_image_set`, then checked to hold exactly one label per image, before any model work.

    `task` names the command in the error (``"retrieval evaluation"``, ``"few-shot evaluation"``).
    """
    image_set = load_image_set(data, allow_absolute_paths=allow_absolute_paths)
    if image_set.multilabel:
        raise ValueError(f"{image_set.source} holds multi-label data (a `labels` column); {task} needs one `label` per image")
    if not image_set.has_labels:
        raise ValueError(
            f"{image_set.source} has no labels (or images without one); {task} needs a class-folder tree "
            "or a manifest with a `label` column"
        )
    return image_set


def _load_class_folder(folder: Path, *, allow_absolute_paths: bool, extensions: tuple[str, ...]) -> ImageSet:
    root = as_root(folder)
    checker = PathChecker(root, allow_outside=allow_absolute_paths)
    class_dirs = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not class_dirs:
        loose = _image_files(root, "", extensions, recursive=False)
        hint = f" It holds {len(loose)} image file(s) directly;" if loose else ""
        raise ValueError(
            f"data folder {root} has no class sub-folders.{hint} put each class's images in a "
            "sub-folder named after the class, or give a CSV manifest (path,label)"
        )
    loose = _image_files(root, "", extensions, recursive=False)
    if loose:
        warnings.warn(
            f"ignoring {len(loose)} image file(s) directly in {root} (not inside a class folder)",
            stacklevel=3,
        )
    records: list[ImageRecord] = []
    empty: list[str] = []
    for cls in class_dirs:
        rel_paths = _image_files(root, cls, extensions, recursive=True)
        if not rel_paths:
            empty.append(cls)
        for rel in rel_paths:
            checked = checker.check(rel)
            if checked is not None:
                records.append(ImageRecord(path=Path(checked), label=cls))
    checker.raise_if_failed(folder)
    if empty:
        counts = {cls: sum(1 for r in records if r.label == cls) for cls in class_dirs}
        raise ValueError(
            f"class folder(s) {', '.join(repr(c) for c in empty)} in {root} contain no images "
            f"(looked for {', '.join(extensions)}); images per class: {counts}. Add images or "
            "remove the empty folders."
        )
    return ImageSet(records=tuple(records), root=Path(root), source=Path(root), multilabel=False, kind="folder")


def _load_image_folder(folder: Path, *, allow_absolute_paths: bool, extensions: tuple[str, ...]) -> ImageSet:
    """Every image below `folder` (recursively, sorted), unlabelled."""
    root = as_root(folder)
    checker = PathChecker(root, allow_outside=allow_absolute_paths)
    rel_paths = _image_files(root, "", extensions, recursive=True)
    if not rel_paths:
        raise ValueError(f"data folder {root} holds no images (looked for {', '.join(extensions)}, recursively)")
    records = [ImageRecord(path=Path(checked)) for rel in rel_paths if (checked := checker.check(rel)) is not None]
    checker.raise_if_failed(folder)
    return ImageSet(records=tuple(records), root=Path(root), source=Path(root), multilabel=False, kind="folder")


def _image_files(root: str, sub: str, extensions: tuple[str, ...], *, recursive: bool) -> list[str]:
    """Relative paths (``sub/...``) of image files below ``root/sub``, sorted, hidden ones skipped."""
    found: list[str] = []
    seen_dirs: set[str] = set()
    stack = [sub]
    while stack:
        rel_dir = stack.pop()
        abs_dir = os.path.join(root, rel_dir) if rel_dir else root
        real = os.path.realpath(abs_dir)
        if real in seen_dirs:  # a symlink loop
            continue
        seen_dirs.add(real)
        with os.scandir(abs_dir) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                rel = os.path.join(rel_dir, entry.name) if rel_dir else entry.name
                if entry.is_dir():
                    if recursive:
                        stack.append(rel)
                elif os.path.splitext(entry.name)[1].lower() in extensions:
                    found.append(rel)
    return sorted(found, key=lambda p: p.split(os.sep))


def _load_manifest(manifest: Path, *, allow_absolute_paths: bool, require_labels: bool) -> ImageSet:
    root = as_root(manifest.parent)
    checker = PathChecker(root, allow_outside=allow_absolute_paths)
    # Read whole and decoded here, so a file in another encoding is named with its line (not a bare
    # UnicodeDecodeError from the csv module halfway through).
    with io.StringIO(read_text_file(manifest, what="manifest"), newline="") as fh:
        reader = csv.reader(fh)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise ManifestError(f"manifest {manifest} is empty; it needs a header row with a `path` column") from None
        _check_header(manifest, header, require_labels)
        col = {name: i for i, name in enumerate(header)}
        rows = []
        for values in reader:
            if not values or all(not v.strip() for v in values):
                continue  # blank line
            if len(values) != len(header):
                raise ManifestError(
                    f"manifest {manifest} line {reader.line_num} has {len(values)} field(s) but the "
                    f"header has {len(header)}; quote values that contain commas"
                )
            rows.append((reader.line_num, values))
    if not rows:
        raise ValueError(f"manifest {manifest} has a header but no rows: the data set is empty")
    multilabel = "labels" in col
    label_col = col.get("labels", col.get("label"))
    extra_cols = [(name, i) for name, i in col.items() if name not in RESERVED_COLUMNS]
    records: list[ImageRecord] = []
    empty_path_lines: list[int] = []
    empty_label_lines: list[int] = []
    seen: dict[str, int] = {}
    duplicates: list[str] = []
    for line, values in rows:
        value = values[col["path"]].strip()
        if not value:
            empty_path_lines.append(line)
            continue
        path = checker.check(value)
        if path is None:
            continue
        if path in seen:
            duplicates.append(value)
        seen[path] = line
        label: str | None = None
        labels: tuple[str, ...] | None = None
        if label_col is not None:
            raw = values[label_col].strip()
            if multilabel:
                labels = tuple(dict.fromkeys(p.strip() for p in raw.split(";") if p.strip()))
            elif raw:
                label = raw
            else:
                empty_label_lines.append(line)
        group = (values[col["group"]].strip() or None) if "group" in col else None
        extra = {name: values[i] for name, i in extra_cols}
        records.append(ImageRecord(path=Path(path), label=label, labels=labels, group=group, extra=extra))
    if empty_path_lines:
        raise ManifestError(
            f"manifest {manifest} has {len(empty_path_lines)} row(s) with an empty `path` "
            f"(lines {_first(empty_path_lines)}); fill them or remove the rows"
        )
    checker.raise_if_failed(manifest)
    if empty_label_lines:
        raise ManifestError(
            f"manifest {manifest} has {len(empty_label_lines)} row(s) with an empty `label` "
            f"(lines {_first(empty_label_lines)}); fill them or remove the rows"
        )
    if duplicates:
        raise ManifestError(
            f"manifest {manifest} lists {len(duplicates)} image(s) more than once "
            f"(first: {_first(duplicates)}); duplicates would be counted twice in every metric, "
            "so remove them"
        )
    return ImageSet(
        records=tuple(records), root=Path(root), source=manifest.absolute(), multilabel=multilabel, kind="manifest"
    )


def _check_header(manifest: Path, header: list[str], require_labels: bool) -> None:
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise ManifestError(f"manifest {manifest} repeats column(s) {dupes}; column names must be unique")
    if "path" not in header:
        sep_hint = ""
        if len(header) == 1 and any(s in header[0] for s in ("\t", ";")):
            sep_hint = " The header looks tab- or semicolon-separated; histovl reads comma-separated CSV."
        raise ManifestError(
            f"manifest {manifest} has no `path` column (columns: {header}).{sep_hint} Required: "
            "`path` (relative to the manifest's folder) and `label` or `labels`; optional `group`."
        )
    if "label" in header and "labels" in header:
        raise ManifestError(
            f"manifest {manifest} has both `label` and `labels`; keep `label` for single-label data "
            "or `labels` (';'-separated) for multi-label data"
        )
    if require_labels and "label" not in header and "labels" not in header:
        raise ManifestError(
            f"manifest {manifest} has no `label` or `labels` column (columns: {header}); add "
            "`label` (one class per image) or `labels` (';'-separated)"
        )


def _first(items: list[int] | list[str], n: int = 5) -> str:
    shown = ", ".join(str(i) for i in items[:n])
    return shown + (", ..." if len(items) > n else "")
