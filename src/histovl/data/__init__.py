"""Data sets: class folders and CSV manifests, path safety, RGB decoding, label checks, splits.

Example:
    >>> from histovl.data import load_image_set, read_rgb, validate_labels
    >>> images = load_image_set("../shared/data/lc25000-lung")  # doctest: +SKIP
    >>> validate_labels(images, ["lung_aca", "lung_n", "lung_scc"])  # doctest: +SKIP
    >>> read_rgb(images.paths[0]).mode  # doctest: +SKIP
    'RGB'
"""

from typing import Any

from histovl.data.decode import read_rgb
from histovl.data.loading import (
    DEFAULT_IMAGE_EXTENSIONS,
    ManifestError,
    load_image_set,
    load_single_label_set,
)
from histovl.data.paths import UnsafePathError
from histovl.data.records import ImageRecord, ImageSet
from histovl.data.validation import validate_labels

# Splits pull in SciPy; load them only when asked for, so `import histovl.data` stays light.
_LAZY = {"group_split", "near_duplicate_groups", "write_group_manifest"}

__all__ = [
    "DEFAULT_IMAGE_EXTENSIONS",
    "group_split",
    "near_duplicate_groups",
    "write_group_manifest",
    "ImageRecord",
    "ImageSet",
    "ManifestError",
    "UnsafePathError",
    "load_image_set",
    "load_single_label_set",
    "read_rgb",
    "validate_labels",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from histovl.data import splits

        return getattr(splits, name)
    raise AttributeError(f"module 'histovl.data' has no attribute {name!r}")
