"""An encoder that loads its model only when something has to be encoded.

`LazyEncoder` stands in for an `Encoder` whose identity (card, weights id, logit scale) is known
without loading it (`histovl.models.identity`). Everything a fully cached run reads is answered
from that identity; the first call that needs the model (`encode_image`, `encode_text`, or any
other attribute of the real encoder) loads it once, through `load_model`, and every later call
uses that one model. Loads are also shared per process: two runs in one process that name the
same spec, device and checkpoint policy load it once (`loaded_model`). Only the most recently
loaded model is kept for that, so a sweep over several models still frees each before the next.

Only this module and `load_model` know the proxy exists; the pipeline sees the `Encoder`
interface (``card``, ``weights_id``, ``logit_scale``, ``preprocess``, ``encode_image``,
``encode_text``). This module imports no torch until a model is loaded.

Example:
    >>> enc = LazyEncoder(identity, device="cpu")  # doctest: +SKIP
    >>> enc.weights_id  # no model loaded  # doctest: +SKIP
    >>> enc.encode_text(["a tile"])  # loads it now  # doctest: +SKIP
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from histovl._stopwatch import phase
from histovl.models.identity import ModelIdentity

if TYPE_CHECKING:
    import torch

    from histovl.models.card import ModelCard
    from histovl.models.encoder import Encoder
    from histovl.models.preprocess import Preprocess

_LOADED: dict[tuple[str, str, str, bool], Encoder] = {}
_LOCK = threading.Lock()
_LAZY: dict[tuple[str, str, str, bool], Any] = {}
#: Models kept for reuse by later runs in this process (the most recent ones).
KEEP_LOADED = 1


def loaded_model(spec: str, *, device: str, trust_checkpoint: bool, fingerprint: str | None = None) -> Encoder:
    """`load_model(spec)`, once per process for each (spec, weights fingerprint, device,
    checkpoint policy). Without a fingerprint (`histovl.models.identity.weights_fingerprint`)
    the files could have changed since, so the model is loaded again."""
    from histovl.models.loading import load_model
    from histovl.reproducibility import apply_pending_torch_seed

    if fingerprint is None:
        apply_pending_torch_seed()
        with phase("model_load"):
            return load_model(spec, device=device, trust_checkpoint=trust_checkpoint)
    key = (spec, fingerprint, device, trust_checkpoint)
    with _LOCK:
        model = _LOADED.get(key)
        if model is None:
            while _LOADED and len(_LOADED) >= KEEP_LOADED:  # drop the oldest before loading
                _LOADED.pop(next(iter(_LOADED)))
            apply_pending_torch_seed()
            with phase("model_load"):
                model = load_model(spec, device=device, trust_checkpoint=trust_checkpoint)
            _LOADED[key] = model
    return model


def lazy_for_process(spec: str, identity: Any, *, device: str, trust_checkpoint: bool, fingerprint: str) -> Any:
    """The model of `spec` for a run without an embedding cache that may never need it (an
    exported runtime): the model already loaded in this process if there is one, else one
    `LazyEncoder` per process (so later runs reuse what runs memoise per encoder, as they do
    with the loaded model)."""
    key = (spec, fingerprint, device, trust_checkpoint)
    with _LOCK:
        found = _LAZY.get(key) or _LOADED.get(key)
        if found is None:
            _LAZY.clear()  # one kept, as KEEP_LOADED keeps one model
            found = _LAZY[key] = LazyEncoder(identity, device=device, trust_checkpoint=trust_checkpoint,
                                             fingerprint=fingerprint)
    return found


def forget_loaded_models() -> None:
    """Drop the per-process models (tests; or to free memory in a long-lived process)."""
    with _LOCK:
        _LOADED.clear()
        _LAZY.clear()


_OWN = frozenset({"identity", "fingerprint", "_model", "device_name", "trust_checkpoint", "text_cache"})


class LazyEncoder:
    """The `Encoder` interface over a known identity; the model loads on first real use.

    Attributes:
        identity: card, weights id and logit scale, known without the model.
        text_cache: the embedding cache prompts are looked up in (set by
            `histovl.embed.open_encoder`; None: prompts are always encoded).
    """

    is_lazy_encoder = True

    def __init__(
        self,
        identity: ModelIdentity,
        *,
        device: str = "cpu",
        trust_checkpoint: bool = False,
        fingerprint: str | None = None,
        model: Encoder | None = None,
        text_cache: Any = None,
    ) -> None:
        self.identity = identity
        self.fingerprint = fingerprint
        self.device_name = device
        self.trust_checkpoint = trust_checkpoint
        self.text_cache = text_cache
        self._model = model

    # ---- answered from the identity: no model ------------------------------------------------
    @property
    def card(self) -> ModelCard:
        return self.identity.card

    @property
    def weights_id(self) -> str:
        return self.identity.weights_id

    @property
    def logit_scale(self) -> float:
        return self.identity.logit_scale

    @property
    def preprocess(self) -> Preprocess:
        """The card's preprocessing (imports torch, but loads no model: only decoding needs it)."""
        from histovl.models.preprocess import Preprocess

        return Preprocess.from_card(self.card)

    @property
    def is_loaded(self) -> bool:
        """Whether the model has been loaded (by this proxy or another run in this process)."""
        return self._model is not None

    # ---- the model, on first use ---------------------------------------------------------------
    def model(self) -> Encoder:
        """The real encoder, loaded now if needed (once per process)."""
        if self._model is None:
            model = loaded_model(
                self.identity.spec, device=self.device_name, trust_checkpoint=self.trust_checkpoint,
                fingerprint=self.fingerprint,
            )
            if model.weights_id != self.weights_id:
                from histovl.errors import HistovlError

                raise HistovlError(
                    f"{self.identity.spec} loaded with weights id {model.weights_id}, but its recorded identity says "
                    f"{self.weights_id}: delete the cache folder's model-identities/ and run again"
                )
            self._model = model
        return self._model

    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return self.model().encode_image(pixels, normalize)

    def encode_text(self, texts: Sequence[str], normalize: bool = True) -> torch.Tensor:
        return self.model().encode_text(texts, normalize)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model()(pixels)

    def __getattr__(self, name: str) -> Any:
        # Anything else (towers, tokenizer, .to(), .eval(), ...) is the real encoder's.
        if name.startswith("__") or name in _OWN:
            raise AttributeError(name)
        return getattr(self.model(), name)

    def __repr__(self) -> str:
        state = "loaded" if self.is_loaded else "not loaded"
        return f"LazyEncoder({self.identity.spec!r}, {self.weights_id}, {state})"
