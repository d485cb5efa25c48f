"""The registry of index storage types: how vectors are kept and searched inside FAISS.

| name | FAISS index | bytes per 512-d vector | exact |
|---|---|---|---|
| ``flat`` | ``IndexFlatIP`` | 2,048 | yes |
| ``flat-f16`` | ``IndexScalarQuantizer(QT_fp16)`` | 1,024 | exact search over fp16-rounded vectors |
| ``ivf`` | ``IndexIVFFlat`` (inner product) | 2,048 + 8 | no: probes ``nprobe`` of ``nlist`` lists |
| ``hnsw`` | ``IndexHNSWFlat`` (inner product) | 2,048 + graph | no: graph walk with ``ef_search`` |

Exact search is the default: retrieval scores must not depend on an approximation unless the
user asks for one (millions of vectors, where a flat scan gets slow).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import faiss

from histovl.errors import UnknownNameError, did_you_mean


@dataclass(frozen=True)
class IndexOptions:
    """Tuning knobs of the approximate storage types (ignored by the flat ones).

    Attributes:
        nlist: IVF lists; None picks ``4 * sqrt(n)`` from the first batch added (capped so that
            each list gets at least 39 training vectors, FAISS's minimum for stable k-means).
        nprobe: IVF lists visited per query (more: slower, closer to exact).
        hnsw_m: HNSW neighbours per node.
        ef_construction / ef_search: HNSW candidate-list sizes when building / searching.
    """

    nlist: int | None = None
    nprobe: int = 16
    hnsw_m: int = 32
    ef_construction: int = 200
    ef_search: int = 128

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (stored with the index)."""
        return asdict(self)


@dataclass(frozen=True)
class StorageType:
    """One registered way to store vectors.

    Attributes:
        name: registry key (``flat``, ``flat-f16``, ``ivf``, ``hnsw``).
        build: ``(dim, options, n_first_batch) -> faiss.Index``.
        exact: True when search returns the true top-K of the stored vectors.
        description: one line for help texts.
    """

    name: str
    build: Callable[[int, IndexOptions, int], faiss.Index]
    exact: bool
    description: str


_STORAGE: dict[str, StorageType] = {}


def register_storage(storage: StorageType) -> StorageType:
    """Add a storage type; a duplicate name is an error (no silent override)."""
    if storage.name in _STORAGE:
        raise ValueError(f"storage type {storage.name!r} is already registered")
    _STORAGE[storage.name] = storage
    return storage


def get_storage(name: str) -> StorageType:
    """Look up a storage type, with close-match suggestions for typos."""
    try:
        return _STORAGE[name]
    except KeyError:
        raise UnknownNameError(
            f"unknown index storage {name!r}.{did_you_mean(name, _STORAGE)} "
            f"Known: {', '.join(sorted(_STORAGE))}."
        ) from None


def list_storage() -> list[str]:
    """Names of the registered storage types."""
    return sorted(_STORAGE)


def apply_search_options(index: faiss.Index, options: IndexOptions) -> None:
    """Set the search-time knobs (they are not all kept by ``faiss.write_index``)."""
    if isinstance(index, faiss.IndexIVF):
        index.nprobe = options.nprobe
    if isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = options.ef_search


def _flat(dim: int, options: IndexOptions, n: int) -> faiss.Index:
    return faiss.IndexFlatIP(dim)


def _flat_f16(dim: int, options: IndexOptions, n: int) -> faiss.Index:
    return faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)


def _ivf(dim: int, options: IndexOptions, n: int) -> faiss.Index:
    nlist = options.nlist or max(1, min(int(4 * math.sqrt(max(n, 1))), n // 39))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.nprobe = options.nprobe
    return index


def _hnsw(dim: int, options: IndexOptions, n: int) -> faiss.Index:
    index = faiss.IndexHNSWFlat(dim, options.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = options.ef_construction
    index.hnsw.efSearch = options.ef_search
    return index


register_storage(StorageType("flat", _flat, True, "exact inner product, float32 (default)"))
register_storage(
    StorageType("flat-f16", _flat_f16, True, "exact inner product over float16-rounded vectors; half the memory")
)
register_storage(
    StorageType("ivf", _ivf, False, "inverted lists (approximate); trained on the first batch added")
)
register_storage(StorageType("hnsw", _hnsw, False, "HNSW graph (approximate); no training"))
