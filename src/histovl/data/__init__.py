"""Data sets: class folders and CSV manifests, path safety, RGB decoding, label checks, splits.

Example:
    >>> from histovl.data import load_image_set, read_rgb, validate_labels
    >>> images = load_image_set("../shared/data/lc25000-lung")  # doctest: +SKIP
    >>> validate_labels(images, ["lung_aca", "lung_n", "lung_scc"])  # doctest: +SKIP
    >>> read_rgb(images.paths[0]).mode  # doctest: +SKIP
    'RGB'
"""

from histovl.data.decode import read_rgb
from histovl.data.loading import DEFAULT_IMAGE_EXTENSIONS, ManifestError, load_image_set
from histovl.data.paths import UnsafePathError
from histovl.data.records import ImageRecord, ImageSet
from histovl.data.validation import validate_labels

__all__ = [
    "DEFAULT_IMAGE_EXTENSIONS",
    "ImageRecord",
    "ImageSet",
    "ManifestError",
    "UnsafePathError",
    "load_image_set",
    "read_rgb",
    "validate_labels",
]
