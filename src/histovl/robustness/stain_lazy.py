"""The Macenko mitigation as the sweep sees it: a cache identity without torch, a fit only on a miss.

A condition's embeddings are cached under its transform's key, and the Macenko key names the
reference tile by a hash of its preprocessed pixels (`histovl.robustness.stain`). Computing that
hash needs the reference decoded and resized by the model's preprocessing (torchvision); fitting
the normaliser needs torch and torchstain. So that a fully cached robustness run with
``--mitigation macenko`` imports neither (issue 14), `LazyMacenko`:

- takes the reference hash from a memo in the cache folder (``stain-references/``), keyed by the
  reference file's content digest and the preprocessing that produces the tile (image size,
  interpolation, resize mode); on the first run it computes the hash and records it;
- builds and fits the real `MacenkoTransform` only when an image must be encoded (a miss), once
  for all conditions (`with_inner` shares the fit, as `MacenkoTransform.with_inner` does).

The key is the same string `MacenkoTransform.key` gives, so runs before and after share entries.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from histovl._io import atomic_write_json
from histovl.embed.cache import file_content_key

MEMO_DIR = "stain-references"
MEMO_VERSION = 1


class LazyMacenko:
    """An `ImageTransform`: `inner` (a corruption, or None), then Macenko normalisation onto the
    reference tile at `reference_path`, with `content_key` its cache content key (`file_content_key`) when known.

    Args:
        reference_path: the reference tile's file.
        encoder: the model whose preprocessing produces the tile (its card names that preprocessing
            for the memo; its `preprocess` is used, on a miss, when the model is loaded anyway).
        memo_root: the cache folder holding the reference-hash memo (None: no memo).
        content_key: the reference file's sha256 when the caller has it (the sweep's image keys).
    """

    def __init__(self, reference_path: str, encoder: Any, memo_root: Path | None,
                 content_key: str | None = None, inner: Any = None) -> None:
        self.reference_path = reference_path
        self.encoder = encoder
        self.memo_root = memo_root
        self.content_key = content_key
        self.inner = inner
        self._shared: dict[str, Any] = {}  # "hash" and "fitted": shared by every with_inner clone

    @property
    def reference_hash(self) -> str:
        if "hash" not in self._shared:
            self._shared["hash"] = self._memoised_hash()
        return str(self._shared["hash"])

    @property
    def key(self) -> str:
        inner = self.inner.key if self.inner is not None else "none"
        return f"{inner}+macenko-{self.reference_hash}"

    @property
    def n_fallback(self) -> int:
        return int(getattr(self._own_real(), "n_fallback", 0)) if "fitted" in self._shared else 0

    def with_inner(self, inner: Any) -> LazyMacenko:
        clone = LazyMacenko(self.reference_path, self.encoder, self.memo_root, self.content_key, inner)
        clone._shared = self._shared
        return clone

    def __call__(self, image: Any, seed: int) -> Any:
        return self._own_real()(image, seed)

    def apply_batch(self, images: Any, seeds: Sequence[int]) -> Any:
        return self._own_real().apply_batch(images, seeds)

    # ---- the real transform, on a miss ----------------------------------------------------------
    def _fitted(self) -> Any:
        if "fitted" not in self._shared:
            from histovl.robustness.stain import MacenkoTransform

            fitted = MacenkoTransform(self._reference_tile())
            self._shared["fitted"] = fitted
            self._shared.setdefault("hash", fitted.reference_hash)
        return self._shared["fitted"]

    def _own_real(self) -> Any:
        """This clone's real transform (the shared fit with this clone's inner), made once."""
        real = self.__dict__.get("_real")
        if real is None:
            real = self._fitted().with_inner(self.inner)
            self.__dict__["_real"] = real
        return real

    def _reference_tile(self) -> Any:
        from histovl.data import read_rgb

        return self.encoder.preprocess.to_unnormalised(read_rgb(self.reference_path))

    def _memo_file(self) -> Path | None:
        if self.memo_root is None:
            return None
        card = self.encoder.card
        ident = json.dumps([MEMO_VERSION, self.content_key or file_content_key(self.reference_path), int(card.image_size),
                            str(card.interpolation), str(card.resize_mode)])
        return self.memo_root / MEMO_DIR / f"{hashlib.sha256(ident.encode()).hexdigest()[:32]}.json"

    def _memoised_hash(self) -> str:
        memo = self._memo_file()
        if memo is not None and memo.is_file():
            try:
                value = json.loads(memo.read_text(encoding="utf-8")).get("reference_hash")
                if isinstance(value, str) and value:
                    return value
            except (OSError, ValueError):
                pass  # a damaged memo: computed again and rewritten below
        value = str(self._fitted().reference_hash)
        if memo is not None:
            memo.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(memo, {"reference_hash": value, "reference": self.reference_path})
        return value


def lazy_macenko(reference: str | None, paths: Sequence[str], keys: Sequence[str | None], ok: Any,
                 encoder: Any, memo_root: Path | None) -> LazyMacenko:
    """The sweep's Macenko transform: fitted on `reference`, or on the first readable image of
    the data (the first `ok` one: what decoding the data would have found first)."""
    if reference is None:
        first = next(i for i, good in enumerate(ok) if good)
        return LazyMacenko(paths[first], encoder, memo_root, keys[first])
    return LazyMacenko(reference, encoder, memo_root)

