"""`load_model` and `save_model_dir` (the weights-present check behind `histovl models` is in
`histovl.models.status`, which imports no torch).

A model spec is one of (docs/interfaces.md, "Naming a model"):

* a registry name (``plip``, ``conch``, ...; see `list_models`);
* ``open_clip:<ARCH>:<PATH>``: an open_clip architecture with a local weights file;
* ``hf-clip:<DIR>``: a local transformers `CLIPModel` directory;
* ``hf-hub:<org/name>``: an open_clip model published on the hub (``open_clip_config.json``);
* a directory written by `save_model_dir` (``card.json`` + ``model.safetensors``).

Every path ends in the same place: the family builder gets a card, a local weights file and a
folder of side files, builds the architecture without weights and loads the checkpoint strictly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

from safetensors.torch import save_file

from histovl._io import atomic_path, atomic_write_json
from histovl.errors import HistovlError, UnknownNameError, UntrustedCheckpointError, did_you_mean
from histovl.models._checkpoint import (
    PICKLE_SUFFIXES,
    check_checkpoint_allowed,
    discard_prefetch,
    prefetch_safetensors,
)
from histovl.models._device import check_device
from histovl.models._hub import (
    HUB_PREFIX,
    WeightsNotAvailableError,
    first_existing,
    parse_hub_source,
    resolve_snapshot,
)
from histovl.models._weights_id import files_weights_id, hub_weights_id
from histovl.models.card import ModelCard
from histovl.models.encoder import Encoder
from histovl.models.registry import (
    LIST_HINT,
    LoadRequest,
    get_card,
    get_family,
    list_models,
)

CARD_FILE = "card.json"


class ModelDirError(HistovlError, ValueError):
    """A model directory's ``card.json`` is damaged, incomplete or of another format."""


WEIGHTS_FILE = "model.safetensors"
MODEL_DIR_FORMAT = 1
# Side files worth fetching with hub weights: configs and tokenizers (never other weights).
_HUB_SIDE_FILES = ("*.json", "*.txt", "*.model", "*.yaml")

def load_model(
    spec: str | Path | Encoder,
    *,
    device: str = "cpu",
    trust_checkpoint: bool = False,
    cache_dir: str | Path | None = None,
) -> Encoder:
    """Load an encoder from a registry name, a local spec or a model directory.

    Args:
        spec: see the module docstring for the accepted forms, or a loaded `Encoder` (returned
            as it is, so every command accepts a spec or an encoder through this one call).
        device: torch device for the model.
        trust_checkpoint: allow pickle-based weight files (``.pt``/``.bin``), read with
            ``torch.load(weights_only=True)``; safetensors never need it.
        cache_dir: Hugging Face hub cache folder (default: ``HF_HUB_CACHE``/``HF_HOME``).

    Raises:
        UnknownNameError: unknown registry name or open_clip architecture (with suggestions).
        UntrustedCheckpointError: a pickle file without `trust_checkpoint`.
        CheckpointMismatchError: the weights do not fit the architecture (readable diff).
        WeightsNotAvailableError: hub weights not cached and no network.

    Example:
        >>> enc = load_model("open_clip:ViT-B-32:weights.safetensors")  # doctest: +SKIP
        >>> enc.encode_text(["an H&E image of lung adenocarcinoma"]).shape  # doctest: +SKIP
        torch.Size([1, 512])
    """
    if isinstance(spec, Encoder):  # already loaded: commands accept either, without a guard each
        return spec
    if getattr(spec, "is_lazy_encoder", False):  # a `histovl.models.lazy.LazyEncoder`: the same
        return cast(Encoder, spec)
    check_device(device, option="device")  # before any weights are read (docs/reliability.md)
    text = str(spec)
    if text.startswith("open_clip:"):
        return _load_open_clip_file(text, device, trust_checkpoint)
    if text.startswith("hf-clip:"):
        return _load_hf_clip_dir(text, device, trust_checkpoint)
    if text.startswith(HUB_PREFIX):
        return _load_open_clip_hub(text, device, trust_checkpoint, cache_dir)
    path = Path(text)
    if path.is_dir():
        if (path / CARD_FILE).is_file():
            return _load_model_dir(path, device, trust_checkpoint)
        raise FileNotFoundError(
            f"{path} is a folder without {CARD_FILE}: for a transformers CLIP folder use "
            f"hf-clip:{path}; for a weights file use open_clip:<ARCH>:<PATH>"
        )
    if text not in list_models():
        raise UnknownNameError(
            f"unknown model {text!r}.{did_you_mean(text, list_models())} ({LIST_HINT}; "
            "or use open_clip:<ARCH>:<PATH>, hf-clip:<DIR> or a model directory)"
        )
    return load_card(get_card(text), device=device, trust_checkpoint=trust_checkpoint, cache_dir=cache_dir)


def load_card(
    card: ModelCard,
    *,
    device: str = "cpu",
    trust_checkpoint: bool = False,
    cache_dir: str | Path | None = None,
) -> Encoder:
    """Build the encoder a card describes, fetching hub weights into the cache when online."""
    family = get_family(card.family)
    if card.source.startswith(HUB_PREFIX):
        names = tuple(card.extra.get("weights_files", ())) or family.hub_files
        if not trust_checkpoint and all(Path(n).suffix in PICKLE_SUFFIXES for n in names):
            raise UntrustedCheckpointError(
                f"{card.name} is published only as a pickle-based checkpoint ({', '.join(names)}), "
                "which can run code when loaded; pass --trust-checkpoint (trust_checkpoint=True) if "
                "you trust its publisher; it is then read with torch.load(weights_only=True)"
            )
        snap = resolve_snapshot(card.source, files=(*names, *_HUB_SIDE_FILES), cache_dir=cache_dir)
        weights = first_existing(snap.path, names)
        if weights is None:
            raise WeightsNotAvailableError(
                f"none of {list(names)} is in the cached snapshot {snap.path} of {snap.repo_id}; "
                "download the weights on a machine with network access"
            )
        check_checkpoint_allowed(weights, trust_checkpoint=trust_checkpoint)
        weights_id = hub_weights_id(snap.repo_id, snap.commit)
        request = LoadRequest(card, weights, snap.path, weights_id, device, trust_checkpoint)
        return family.builder(request)
    source = Path(card.source)
    if source.is_file():
        check_checkpoint_allowed(source, trust_checkpoint=trust_checkpoint)
        request = LoadRequest(card, source, source.parent, files_weights_id([source]), device, trust_checkpoint)
    else:  # weights the family locates itself (e.g. bundled in a package); it may refine the id
        asset_dir = source if source.is_dir() else None
        request = LoadRequest(card, None, asset_dir, f"{card.family}:{card.source}", device, trust_checkpoint)
    return family.builder(request)


def _load_open_clip_file(spec: str, device: str, trust: bool) -> Encoder:
    arch, sep, path_text = spec[len("open_clip:") :].partition(":")
    if not sep or not arch or not path_text:
        raise ValueError(f"expected open_clip:<ARCH>:<PATH>, got {spec!r} (e.g. open_clip:ViT-B-32:/w.safetensors)")
    path = Path(path_text)
    prefetch_safetensors(path)  # read the weights on the other core while open_clip is imported
    try:
        from histovl.models import _open_clip

        cfg = _open_clip.builtin_model_cfg(arch)
        check_checkpoint_allowed(path, trust_checkpoint=trust)
        card = _open_clip.card_from_cfg(spec, arch, str(path), cfg, {})
        request = LoadRequest(card, path, None, files_weights_id([path]), device, trust)
        return _open_clip.build_open_clip(request)
    finally:
        discard_prefetch()


def _load_hf_clip_dir(spec: str, device: str, trust: bool) -> Encoder:
    from histovl.models import _hf_clip  # transformers' CLIPModel: ~1 s of imports only this needs

    folder = Path(spec[len("hf-clip:") :])
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a transformers CLIPModel folder (no config.json)")
    weights = _hf_clip.find_weights(folder)
    if weights is None:
        raise FileNotFoundError(f"{folder} has no {' or '.join(_hf_clip.WEIGHT_FILES)}")
    check_checkpoint_allowed(weights, trust_checkpoint=trust)
    card = _hf_clip.card_from_dir(spec, folder)
    request = LoadRequest(card, weights, folder, files_weights_id([weights]), device, trust)
    return _hf_clip.build_hf_clip(request)


def _load_open_clip_hub(spec: str, device: str, trust: bool, cache_dir: str | Path | None) -> Encoder:
    from histovl.models import _open_clip

    snap = resolve_snapshot(
        spec, files=(*_open_clip.HUB_WEIGHT_FILES, *_HUB_SIDE_FILES), cache_dir=cache_dir
    )
    if not (snap.path / _open_clip.CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{snap.repo_id} has no {_open_clip.CONFIG_FILE}: is it an open_clip model?")
    cfg, pre = _open_clip.read_hub_config(snap.path)
    card = _open_clip.card_from_cfg(spec, spec, spec, cfg, pre)
    return load_card(card, device=device, trust_checkpoint=trust, cache_dir=cache_dir)


def _load_model_dir(folder: Path, device: str, trust: bool) -> Encoder:
    stored = read_card_file(folder / CARD_FILE)
    extra = {**stored.extra, "base_model": stored.extra.get("base_model", stored.name)}
    card = stored.replace(name=str(folder), source=str(folder), extra=extra)
    weights = folder / WEIGHTS_FILE
    check_checkpoint_allowed(weights, trust_checkpoint=trust)
    if card.family == "open_clip":  # its builder assigns the tensors read ahead, without a copy
        prefetch_safetensors(weights)  # read on the other core while open_clip is imported
    try:
        request = LoadRequest(card, weights, folder, files_weights_id([weights]), device, trust)
        return get_family(card.family).builder(request)
    finally:
        discard_prefetch()


def read_card_file(path: Path) -> ModelCard:
    """The card of a model directory; a damaged ``card.json`` is a `ModelDirError` naming it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ModelDirError(f"{path} is not valid JSON ({err}); the model folder is damaged: save it again") from None
    if not isinstance(data, dict) or "card" not in data:
        raise ModelDirError(f"{path} has no `card` entry; it was not written by histovl.save_model_dir")
    if data.get("format_version") != MODEL_DIR_FORMAT:
        raise ModelDirError(f"{path} has format {data.get('format_version')!r}; expected {MODEL_DIR_FORMAT}")
    try:
        return ModelCard.from_dict(data["card"])
    except (KeyError, TypeError, ValueError) as err:
        raise ModelDirError(f"{path}: the model card is incomplete or invalid ({type(err).__name__}: {err})") from None


def save_model_dir(encoder: Encoder, out_dir: str | Path) -> Path:
    """Write `encoder` as a directory `load_model(out_dir)` reads back (card + safetensors).

    Every file is written atomically; ``card.json`` is written last, so a directory without it
    is an interrupted save and is never mistaken for a model.

    Example:
        >>> save_model_dir(encoder, "runs/finetuned")  # doctest: +SKIP
        >>> load_model("runs/finetuned")  # doctest: +SKIP
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in encoder.native_state_dict().items()}
    with atomic_path(out / WEIGHTS_FILE, suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", "family": encoder.card.family})
    extra: dict[str, Any] = {**encoder.card.extra, **encoder.save_assets(out)}
    card = encoder.card.replace(extra=extra)
    atomic_write_json(out / CARD_FILE, {"format_version": MODEL_DIR_FORMAT, "card": card.to_dict()})
    return out


def hub_repo(card: ModelCard) -> str | None:
    """The hub repo id of a card (None for local sources)."""
    return parse_hub_source(card.source)[0] if card.source.startswith(HUB_PREFIX) else None
