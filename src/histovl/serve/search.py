"""Search pages over `histovl index` folders: text -> image and image -> image.

At start an index folder is recognised by its ``metadata.parquet`` (the commit point, with the
``histovl.index`` settings; docs/interfaces.md) and only that file is read: its settings and the
paths of the images, which enter the allow-list. The FAISS index and the model (the one the
index records: `histovl.retrieval.query_index` refuses any other) are loaded on the first query
and kept, so torch is imported only when someone searches.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from histovl.options import RunOptions
from histovl.serve.files import FileRegistry, path_id

INDEX_FILE = "metadata.parquet"
_META_KEY = b"histovl.index"


@dataclass
class IndexEntry:
    """One index folder; `index` and `encoder` load on first use."""

    id: str
    folder: Path
    name: str
    settings: dict[str, Any] = field(default_factory=dict)
    image_ids: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    _index: Any = None
    _encoder: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def row(self) -> dict[str, Any]:
        model = self.settings.get("model") or {}
        return {"id": self.id, "name": self.name, "n": self.settings.get("ntotal"),
                "storage": self.settings.get("storage"), "model": model.get("spec") or (model.get("card") or {}).get("name"),
                "error": self.error}

    def search(self, options: RunOptions, *, text: str | None = None, image: Path | None = None,
               k: int = 24) -> list[dict[str, Any]]:
        """The top-`k` hits of a text or an image (rank, path, label, group, score, image id)."""
        from histovl.retrieval import query_index

        index, encoder = self._open(options)
        with self._lock:  # one forward pass at a time through the shared model
            table = query_index(index, text=text, image=image, k=k, model=encoder, options=options)
        return [
            {"rank": int(r.rank), "path": str(r.path), "label": _text(r.label), "group": _text(r.group),
             "score": float(r.score), "image": self.image_ids.get(str(r.path))}
            for r in table.itertuples()
        ]

    def _open(self, options: RunOptions) -> tuple[Any, Any]:
        with self._lock:
            if self._index is None:
                from histovl.models import load_model
                from histovl.retrieval import VectorIndex

                index = VectorIndex.open(self.folder)
                spec = index.model.get("spec")
                if not spec:
                    raise ValueError(f"index {self.name} does not record its model; it cannot be searched here")
                self._encoder = load_model(spec, device=options.device, trust_checkpoint=options.trust_checkpoint)
                self._index = index
            return self._index, self._encoder


def load_index(folder: Path, name: str, registry: FileRegistry) -> IndexEntry | None:
    """An index entry, None when `metadata.parquet` is not a histovl index's (another Parquet
    file of that name), or an entry with its error when it is one that cannot be read."""
    entry = IndexEntry(id=path_id(folder, "index"), folder=folder, name=name)
    try:
        meta = pq.read_schema(folder / INDEX_FILE).metadata or {}
        if _META_KEY not in meta:
            return None
        entry.settings = json.loads(meta[_META_KEY])
        paths = pq.read_table(folder / INDEX_FILE, columns=["path"]).column("path").to_pylist()
        for value in dict.fromkeys(str(p) for p in paths):
            target = Path(value) if Path(value).is_absolute() else folder / value
            file_id = registry.add(target)
            if file_id is not None:
                entry.image_ids[value] = file_id
    except (OSError, ValueError, KeyError) as err:
        entry.error = f"{type(err).__name__}: {err}"
    return entry


def _text(value: Any) -> str | None:
    return None if value is None or value != value else str(value)
