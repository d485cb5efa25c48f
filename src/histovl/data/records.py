"""The in-memory form of a data set: one `ImageRecord` per image, gathered in an `ImageSet`.

Everything downstream (embedding, zero-shot, metrics, splits) works on these two types, so a
class-folder tree and a CSV manifest look the same once loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

SourceKind = Literal["folder", "manifest"]


@dataclass(frozen=True)
class ImageRecord:
    """One image and what is known about it.

    Attributes:
        path: Absolute path of the image file (symlinks are kept, not resolved, so names stay
            the ones the user sees).
        label: The single label, for single-label data; `None` for multi-label or unlabelled.
        labels: The label set, for multi-label data (may be empty: an image with no positive
            label); `None` for single-label data.
        group: Patient, slide or near-duplicate group id; the bootstrap and the splits keep a
            group together.
        extra: Any further manifest columns (e.g. `caption`), as strings.
    """

    path: Path
    label: str | None = None
    labels: tuple[str, ...] | None = None
    group: str | None = None
    extra: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def label_set(self) -> tuple[str, ...]:
        """The labels of this image as a tuple, whichever form the data set uses."""
        if self.labels is not None:
            return self.labels
        return () if self.label is None else (self.label,)


@dataclass(frozen=True)
class ImageSet:
    """An ordered, validated collection of images.

    Attributes:
        records: The images, in a deterministic order (sorted for class folders, file order for
            manifests).
        root: The data root: the class-folder root or the manifest's folder. Paths must lie
            under it unless the set was loaded with ``allow_absolute_paths=True``.
        source: What the user passed: the folder or the manifest file.
        multilabel: True when labels came from a `labels` column (``;``-separated).
        kind: ``"folder"`` or ``"manifest"``: how the data was given. A folder read with
            ``load_image_set(folder, folder_labels=False)`` is a plain, unlabelled image set
            (`has_labels` is False), like a manifest with only a ``path`` column.

    Example:
        >>> s = load_image_set("tiles/")  # doctest: +SKIP
        >>> s.classes, len(s)  # doctest: +SKIP
        (['lung_aca', 'lung_n', 'lung_scc'], 4500)
    """

    records: tuple[ImageRecord, ...]
    root: Path
    source: Path
    multilabel: bool = False
    kind: SourceKind = "folder"

    def __len__(self) -> int:
        return len(self.records)

    @property
    def paths(self) -> list[Path]:
        """Absolute image paths, in record order."""
        return [r.path for r in self.records]

    @property
    def has_labels(self) -> bool:
        """True when every record carries a label (or a label set, for multi-label data)."""
        if self.multilabel:
            return all(r.labels is not None for r in self.records)
        return all(r.label is not None for r in self.records)

    @property
    def labels(self) -> list[str]:
        """The single label of each record.

        Raises:
            ValueError: For multi-label data (use `label_sets`) or when labels are missing.
        """
        if self.multilabel:
            raise ValueError(
                "this data set is multi-label (a `labels` column); use `.label_sets` instead of `.labels`"
            )
        out: list[str] = []
        for r in self.records:
            if r.label is None:
                raise ValueError(
                    f"{self.source} has no label for {r.path}; give a class-folder tree or a "
                    "manifest with a `label` column"
                )
            out.append(r.label)
        return out

    @property
    def label_sets(self) -> list[tuple[str, ...]]:
        """The labels of each record as tuples (works for single- and multi-label data)."""
        return [r.label_set for r in self.records]

    @property
    def groups(self) -> list[str | None]:
        """The group of each record (`None` where the data gives none)."""
        return [r.group for r in self.records]

    @property
    def classes(self) -> list[str]:
        """Sorted unique labels present in the data."""
        return sorted({lab for r in self.records for lab in r.label_set})

    def extra_column(self, name: str) -> list[str | None]:
        """Values of an additional manifest column (e.g. ``"caption"``), `None` where absent."""
        return [r.extra.get(name) for r in self.records]

    def subset(self, indices: Sequence[int] | Any) -> ImageSet:
        """A new set holding the records at `indices` (any integer sequence or array), in that order."""
        picked = tuple(self.records[int(i)] for i in indices)
        return ImageSet(
            records=picked, root=self.root, source=self.source, multilabel=self.multilabel, kind=self.kind
        )
