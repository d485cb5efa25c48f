"""A persistent, file-based vector index: FAISS vectors plus a Parquet table of what they are.

On disk an index is a folder holding

- ``vectors-<generation>.faiss``: the FAISS index (written with ``faiss.write_index``);
- ``metadata.parquet``: one row per vector (``path``, ``label``, ``group``) and, in the Parquet
  key-value metadata, the index settings (storage type, options, dimension, count), the model
  card, the model's weights id and spec, the embedding-cache key and the FAISS file's name.

Saving writes a *new* FAISS file first and then replaces ``metadata.parquet`` atomically (temp
file + rename, ``histovl._io``); only then is the previous FAISS file deleted. The metadata is the
commit point, so an interrupted save leaves the previous index intact and readable.

Nothing runs as a server: open the folder, add, search, save.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from histovl._io import atomic_path
from histovl.errors import HistovlError, NonFiniteError
from histovl.retrieval.search import DEFAULT_BATCH_SIZE, SearchResult, group_codes, search_excluding
from histovl.retrieval.storage import IndexOptions, apply_search_options, get_storage

FORMAT_VERSION = 1
METADATA_FILE = "metadata.parquet"
_META_KEY = b"histovl.index"
NORM_TOLERANCE = 1e-3
"""Largest allowed | ||v|| - 1 | for an added vector: cosine search needs unit vectors."""


class IndexFormatError(HistovlError):
    """An index folder is missing, incomplete or from an incompatible version."""


def check_vectors(vectors: np.ndarray, names: Sequence[str] | None = None, *, what: str = "embedding") -> np.ndarray:
    """Return `vectors` as contiguous float32 after checking they are finite and L2-normalised.

    Raises:
        NonFiniteError: naming the first item with NaN/Inf (never let NaN into an index).
        ValueError: naming the first item whose norm is not 1 (inner product would not be cosine).
    """
    v = np.ascontiguousarray(vectors, dtype=np.float32)
    if v.ndim != 2:
        raise ValueError(f"{what}s must be a 2-D array [n, D], got shape {v.shape}")
    bad = ~np.isfinite(v).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise NonFiniteError(
            f"{what} of {_name(names, i)} contains NaN or Inf "
            f"({int(bad.sum())} item(s) affected); re-encode it or drop it before indexing"
        )
    norms = np.sqrt(np.einsum("ij,ij->i", v, v, dtype=np.float64))  # no float64 copy of v
    off = np.abs(norms - 1.0) > NORM_TOLERANCE
    if off.any():
        i = int(np.flatnonzero(off)[0])
        raise ValueError(
            f"{what} of {_name(names, i)} has L2 norm {norms[i]:.4f}, "
            "not 1; normalise embeddings (x / ||x||) so inner product equals cosine similarity"
        )
    return v


def _name(names: Sequence[str] | None, i: int) -> str:
    return names[i] if names is not None and i < len(names) else f"item {i}"


class VectorIndex:
    """L2-normalised embeddings with their paths, labels and groups, searchable by cosine.

    Args:
        dim: embedding size.
        storage: a registered storage type (``flat``, ``flat-f16``, ``ivf``, ``hnsw``).
        options: knobs for the approximate types.
        model: provenance of the embeddings (``card``, ``weights_id``, ``spec``); queries must
            use the same model.
        cache_key: the embedding-cache namespace the vectors came from.

    Example:
        >>> import numpy as np
        >>> idx = VectorIndex(2)
        >>> idx.add(np.eye(2, dtype="float32"), ["a.png", "b.png"], labels=["x", "y"])
        >>> idx.search(np.eye(2, dtype="float32"), 1).ids.ravel().tolist()
        [0, 1]
    """

    def __init__(
        self,
        dim: int,
        *,
        storage: str = "flat",
        options: IndexOptions | None = None,
        model: dict[str, Any] | None = None,
        cache_key: str | None = None,
    ) -> None:
        self.dim = int(dim)
        self.storage = get_storage(storage).name
        self.options = options or IndexOptions()
        self.model = dict(model or {})
        self.cache_key = cache_key
        self.records = _records_frame([], None, None)
        self._faiss: faiss.Index | None = None
        self._faiss_file: str | None = None
        self._group_cache: tuple[np.ndarray, dict[object, int]] | None = None

    # ---- contents --------------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        """Number of vectors in the index."""
        return 0 if self._faiss is None else int(self._faiss.ntotal)

    def __len__(self) -> int:
        return self.ntotal

    @property
    def exact(self) -> bool:
        """True when searches return the true top-K (flat storage types)."""
        return get_storage(self.storage).exact

    @property
    def faiss_index(self) -> faiss.Index | None:
        """The underlying FAISS index (None until the first `add`)."""
        return self._faiss

    def group_codes(self) -> tuple[np.ndarray, dict[object, int]]:
        """Integer group code per item (-1: none) and the code of each group value."""
        if self._group_cache is None:
            self._group_cache = group_codes(self.records["group"].tolist())
        return self._group_cache

    def add(
        self,
        embeddings: np.ndarray,
        paths: Sequence[str | os.PathLike[str]],
        labels: Sequence[str | None] | None = None,
        groups: Sequence[str | None] | None = None,
    ) -> None:
        """Append vectors and their records (incremental: existing items keep their ids).

        Raises:
            NonFiniteError / ValueError: for NaN, non-unit or wrongly sized vectors (naming the
                path), or lists of a different length than `embeddings`.
        """
        names = [str(p) for p in paths]
        v = check_vectors(embeddings, names)
        n = v.shape[0]
        for what, seq in (("paths", names), ("labels", labels), ("groups", groups)):
            if seq is not None and len(seq) != n:
                raise ValueError(f"{what} has {len(seq)} entries but there are {n} embeddings")
        if n and v.shape[1] != self.dim:
            raise ValueError(f"embeddings have dimension {v.shape[1]}, the index holds {self.dim}-d vectors")
        if n == 0:
            return
        if self._faiss is None:
            self._faiss = get_storage(self.storage).build(self.dim, self.options, n)
        if not self._faiss.is_trained:
            self._faiss.train(v)
        self._faiss.add(v)
        new = _records_frame(names, labels, groups)
        self.records = new if self.records.empty else pd.concat([self.records, new], ignore_index=True)
        self._group_cache = None

    def reconstruct(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """The stored vectors for `ids` (fp16-rounded for ``flat-f16``); flat and HNSW only."""
        if self._faiss is None:
            raise ValueError("the index is empty")
        return np.stack([self._faiss.reconstruct(int(i)) for i in ids]) if len(ids) else np.zeros((0, self.dim), np.float32)

    # ---- search ------------------------------------------------------------------------------
    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        exclude_ids: np.ndarray | None = None,
        exclude_groups: Sequence[str | None] | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> SearchResult:
        """Top-k by cosine similarity, in batches, with optional per-query exclusions.

        Args:
            queries: [n, D] L2-normalised query embeddings.
            exclude_ids: int [n]; an index id each query must not return (-1 for none), e.g.
                the query's own id in a leave-one-out evaluation.
            exclude_groups: [n] group values; every index item of that group is skipped for the
                query (None: skip nothing). Used to keep near-duplicates (same patient, slide or
                source image) out of an evaluation.
        """
        q = check_vectors(queries, what="query embedding")
        if q.shape[0] and q.shape[1] != self.dim:
            raise ValueError(f"queries have dimension {q.shape[1]}, the index holds {self.dim}-d vectors")
        if self._faiss is None:
            return search_excluding(faiss.IndexFlatIP(self.dim), q, k)
        db_groups, vocab = self.group_codes()
        query_groups = None
        if exclude_groups is not None:
            if len(exclude_groups) != q.shape[0]:
                raise ValueError("exclude_groups needs one entry per query")
            query_groups = np.array([vocab.get(g, -1) if g is not None else -1 for g in exclude_groups], np.int64)
        return search_excluding(
            self._faiss, q, k, exclude_ids=exclude_ids, db_groups=db_groups,
            query_groups=query_groups, batch_size=batch_size,
        )

    # ---- persistence ---------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the index folder (crash-safe: see the module docstring). Returns the folder."""
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        if self._faiss is None:
            self._faiss = get_storage(self.storage).build(self.dim, self.options, 0)
        generation = 1 + max((_generation(p.name) for p in folder.glob("vectors-*.faiss")), default=0)
        faiss_file = f"vectors-{generation:06d}.faiss"
        with atomic_path(folder / faiss_file, suffix=".faiss") as tmp:
            faiss.write_index(self._faiss, str(tmp))
        settings = {
            "format_version": FORMAT_VERSION,
            "faiss_file": faiss_file,
            "storage": self.storage,
            "options": self.options.to_dict(),
            "dim": self.dim,
            "ntotal": self.ntotal,
            "model": self.model,
            "cache_key": self.cache_key,
        }
        table = pa.Table.from_pandas(self.records, preserve_index=False).replace_schema_metadata(
            {_META_KEY: json.dumps(settings, default=str).encode()}
        )
        with atomic_path(folder / METADATA_FILE, suffix=".parquet") as tmp:
            pq.write_table(table, tmp)
        for old in folder.glob("vectors-*.faiss"):
            if old.name != faiss_file:  # the committed metadata no longer names it
                old.unlink(missing_ok=True)
        self._faiss_file = faiss_file
        return folder

    @classmethod
    def open(cls, directory: str | os.PathLike[str]) -> VectorIndex:
        """Reopen a saved index without re-encoding anything.

        Raises:
            IndexFormatError: the folder is not an index, or its files disagree.
        """
        folder = Path(directory)
        if not (folder / METADATA_FILE).is_file():
            raise IndexFormatError(
                f"{folder} is not a histovl index (no {METADATA_FILE}); build one with `histovl index build`"
            )
        settings = _read_settings(folder)
        if settings.get("format_version") != FORMAT_VERSION:
            raise IndexFormatError(
                f"index {folder} has format version {settings.get('format_version')}, this histovl "
                f"reads version {FORMAT_VERSION}; rebuild it with `histovl index build`"
            )
        faiss_path = folder / str(settings["faiss_file"])
        if not faiss_path.is_file():
            raise IndexFormatError(f"index {folder} lists {faiss_path.name}, which is missing; rebuild the index")
        options = IndexOptions(**settings.get("options", {}))
        index = cls(
            int(settings["dim"]), storage=str(settings["storage"]), options=options,
            model=settings.get("model") or {}, cache_key=settings.get("cache_key"),
        )
        index._faiss = _read_faiss(faiss_path)
        apply_search_options(index._faiss, options)
        index._faiss_file = faiss_path.name
        table = _damaged_is_named(folder / METADATA_FILE, pq.read_table)
        index.records = _records_frame(
            table.column("path").to_pylist(), table.column("label").to_pylist(), table.column("group").to_pylist()
        )
        if index.ntotal != len(index.records) or index.ntotal != int(settings["ntotal"]):
            raise IndexFormatError(
                f"index {folder} is inconsistent: {index.ntotal} vectors but {len(index.records)} "
                "metadata rows; rebuild it with `histovl index build`"
            )
        return index


def _records_frame(
    paths: Sequence[str], labels: Sequence[str | None] | None, groups: Sequence[str | None] | None
) -> pd.DataFrame:
    """One row per vector; object columns so None stays None (not NaN) and round-trips."""
    n = len(paths)
    return pd.DataFrame(
        {
            "path": pd.Series([str(p) for p in paths], dtype=object),
            "label": pd.Series(list(labels) if labels is not None else [None] * n, dtype=object),
            "group": pd.Series(list(groups) if groups is not None else [None] * n, dtype=object),
        }
    )


def _read_faiss(path: Path) -> faiss.Index:
    """`faiss.read_index`, with a truncated or corrupt file named (FAISS raises a bare RuntimeError)."""
    try:
        return faiss.read_index(str(path))
    except RuntimeError as err:
        raise IndexFormatError(
            f"cannot read {path} ({path.stat().st_size} bytes): truncated or corrupt "
            f"({(str(err).splitlines() or [''])[0][:200]}); rebuild the index with `histovl index build`"
        ) from None


def _damaged_is_named(path: Path, reader: Any) -> Any:
    """``reader(path)`` for a Parquet file, with an empty, truncated or corrupt file named."""
    try:
        return reader(path)
    except (pa.ArrowException, OSError, ValueError) as err:
        raise IndexFormatError(
            f"cannot read {path} ({path.stat().st_size} bytes): empty, truncated or corrupt ({err}); "
            "rebuild the index with `histovl index build`"
        ) from None


def _read_settings(folder: Path) -> dict[str, Any]:
    meta = _damaged_is_named(folder / METADATA_FILE, pq.read_schema).metadata or {}
    if _META_KEY not in meta:
        raise IndexFormatError(f"{folder / METADATA_FILE} has no histovl index settings; rebuild the index")
    settings: dict[str, Any] = json.loads(meta[_META_KEY])
    return settings


def _generation(name: str) -> int:
    try:
        return int(name.removeprefix("vectors-").removesuffix(".faiss"))
    except ValueError:
        return 0
