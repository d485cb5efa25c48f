"""Opening a command's encoder: lazily when its identity is known, with its prompt cache.

`open_encoder` is how the evaluation commands (zeroshot, multilabel, ablate-fusion, retrieve,
robustness) turn a model spec into an encoder. With the embedding cache on, it looks up the
identity recorded the first time the spec was loaded (`histovl.models.identity`): when found, it
returns a `LazyEncoder` that loads nothing until an image or prompt misses the cache, so a fully
cached run neither loads the model nor imports torch. Otherwise it loads the model (once per
process), records its identity for next time, and wraps it the same way. Either way the encoder
carries the run's cache for its prompt embeddings (`histovl.embed.text`). Under
``options.runtime`` ``onnx`` / ``onnx-int8`` the encoder is then wrapped by
`histovl.models.runtime.apply_runtime` (ONNX Runtime behind a parity gate; docs/runtime.md).

Example:
    >>> enc = open_encoder("histovl-lite", RunOptions())  # doctest: +SKIP
    >>> enc.weights_id  # known without loading the model on a warm run  # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, cast

from histovl.embed.cache import cache_for
from histovl.models.identity import (
    IDENTITY_DIR,
    ModelIdentity,
    read_identity,
    weights_fingerprint,
    write_identity,
)
from histovl.models.lazy import LazyEncoder, lazy_for_process, loaded_model
from histovl.models.runtime import apply_runtime
from histovl.options import RunOptions, default_cache_dir

if TYPE_CHECKING:
    from histovl.models.encoder import Encoder


def open_encoder(model: str | os.PathLike[str] | Any, options: RunOptions) -> Encoder:
    """The encoder for `model` (a spec, or an already loaded encoder) as a command uses it, run
    by ``options.runtime``."""
    return cast("Encoder", apply_runtime(_open_torch(model, options), options))


def _open_torch(model: str | os.PathLike[str] | Any, options: RunOptions) -> Encoder:
    """The torch encoder for `model`: lazy where its identity is known, with its prompt cache."""
    cache = cache_for(options)
    if not isinstance(model, str | os.PathLike):  # an Encoder (or a LazyEncoder) already
        if getattr(model, "is_lazy_encoder", False) or cache is None:
            return cast("Encoder", model)
        identity = ModelIdentity(model.card.name, model.card, model.weights_id, float(model.logit_scale))
        return cast("Encoder", LazyEncoder(identity, model=model, text_cache=cache))
    spec = os.fspath(model)
    fingerprint = weights_fingerprint(spec)
    device, trust = options.device, options.trust_checkpoint
    if cache is None:
        return _uncached(spec, options, fingerprint)
    folder = cache.root / IDENTITY_DIR
    known = read_identity(folder, spec, fingerprint) if fingerprint is not None else None
    if known is not None:
        lazy = LazyEncoder(known, device=device, trust_checkpoint=trust, fingerprint=fingerprint, text_cache=cache)
        return cast("Encoder", lazy)
    loaded = loaded_model(spec, device=device, trust_checkpoint=trust, fingerprint=fingerprint)
    if fingerprint is not None:
        identity = write_identity(folder, spec, fingerprint, loaded)
    else:
        identity = ModelIdentity(spec, loaded.card, loaded.weights_id, float(loaded.logit_scale))
    wrapped = LazyEncoder(identity, device=device, trust_checkpoint=trust, fingerprint=fingerprint, model=loaded, text_cache=cache)
    return cast("Encoder", wrapped)


def _uncached(spec: str, options: RunOptions, fingerprint: str | None) -> Encoder:
    """Under ``--no-cache``: the loaded model, except for an exported runtime whose model identity
    the cache folder already records (``--no-cache`` concerns embeddings only; exports and model
    identities stay there): that run may never need the torch model, so it stays lazy."""
    device, trust = options.device, options.trust_checkpoint
    if options.runtime != "torch" and fingerprint is not None:
        root = options.cache if options.cache is not None else default_cache_dir()
        known = read_identity(root / IDENTITY_DIR, spec, fingerprint)
        if known is not None:
            return cast("Encoder", lazy_for_process(spec, known, device=device, trust_checkpoint=trust, fingerprint=fingerprint))
    return loaded_model(spec, device=device, trust_checkpoint=trust, fingerprint=fingerprint)
