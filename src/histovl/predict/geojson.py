"""Tile predictions as a GeoJSON FeatureCollection that QuPath imports (docs/predict.md).

The shape follows QuPath's own GeoJSON reader and writer (`qupath.lib.io.PathObjectTypeAdapters`,
v0.4 and later): one ``Feature`` per tile with a ``Polygon`` geometry in level-0 pixel
coordinates (origin at the top-left of the full-resolution image), and ``properties`` holding
``objectType`` (``"tile"`` or ``"annotation"``), ``classification`` = ``{"name", "color": [r, g,
b]}`` and ``measurements`` as a name -> number object. Rings are closed and counter-clockwise in
(x, y) as RFC 7946 asks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

ObjectType = Literal["tile", "annotation"]
OBJECT_TYPES: tuple[ObjectType, ...] = ("tile", "annotation")


def tile_ring(x: int, y: int, extent: int) -> list[list[int]]:
    """The closed ring of the level-0 box [x, x + extent) x [y, y + extent)."""
    return [[x, y], [x + extent, y], [x + extent, y + extent], [x, y + extent], [x, y]]


def tile_feature_collection(
    xy: Sequence[tuple[int, int]] | np.ndarray,
    extent0: int,
    probs: np.ndarray,
    class_names: Sequence[str],
    colours: Sequence[tuple[int, int, int]],
    *,
    object_type: ObjectType = "tile",
) -> dict[str, Any]:
    """One Polygon feature per tile, classified by its top class, with every class score.

    Args:
        xy: top-left corner of each tile in level-0 pixels.
        extent0: tile side in level-0 pixels.
        probs: [n_tiles, C] class probabilities.
        class_names: the C classes; ``colours[k]`` is class k's colour.
        object_type: ``tile`` (a QuPath tile object, a light detection) or ``annotation``.
    """
    if object_type not in OBJECT_TYPES:
        raise ValueError(f"object_type must be one of {', '.join(OBJECT_TYPES)}, not {object_type!r}")
    names = [str(c) for c in class_names]
    features = []
    for (x, y), p in zip(np.asarray(xy, dtype=np.int64).tolist(), np.asarray(probs, dtype=np.float64), strict=True):
        k = int(np.argmax(p))
        features.append({
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [tile_ring(int(x), int(y), int(extent0))]},
            "properties": {
                "objectType": object_type,
                "classification": {"name": names[k], "color": [int(c) for c in colours[k]]},
                "measurements": {f"score:{c}": float(v) for c, v in zip(names, p, strict=True)},
            },
        })
    return {"type": "FeatureCollection", "features": features}
