"""What a model spec names, known without loading it: card, weights id and logit scale.

A warm run (every image and prompt embedding already cached) needs the model's *identity* (the
card for the preprocessing key, the weights id for the cache namespaces, the logit scale for the
probabilities) but not the model. Building the card of an ``open_clip:<ARCH>:<PATH>`` spec needs
open_clip, and the logit scale lives in the weights, so both are recorded once, when the model
is really loaded, in a small JSON file per (spec, weights fingerprint) under the run's cache
folder. The fingerprint is computed from the files alone, without torch:

* a local weights file (``open_clip:`` specs, registry cards with a local source, model
  directories, ``hf-clip:`` folders): the sha256 of its bytes, memoised by (path, size, mtime)
  (`histovl.models._weights_id`), plus the side file the card is read from;
* the bundled histovl-lite: its shipped heads file;
* a hub model: its cached commit, but only where that commit is certain without asking the hub
  (``HF_HUB_OFFLINE`` set, or the spec pinned to a 40-hex commit); otherwise None: the caller
  loads the model as before.

A changed file has another fingerprint, so it never finds the old identity. The memo is
keyed by histovl's version too, so a release that derives cards differently starts afresh.

Example:
    >>> fp = weights_fingerprint("histovl-lite")  # doctest: +SKIP
    >>> read_identity(Path("~/.cache/histovl/model-identities"), "histovl-lite", fp)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from histovl._io import atomic_write_json
from histovl.models._families import HF_CLIP_WEIGHT_FILES, LITE_NAME, lite_weights_path
from histovl.models._hub import HUB_PREFIX, cached_snapshot, hub_offline, parse_hub_source
from histovl.models._weights_id import files_weights_id
from histovl.models.card import ModelCard

IDENTITY_FORMAT = 1
#: The folder, under a run's cache folder, that holds the recorded identities.
IDENTITY_DIR = "model-identities"
_COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class ModelIdentity:
    """What the pipeline needs to know about a model that it does not need to run.

    Attributes:
        spec: the model spec as the user gave it.
        card: the model card the loader built (preprocessing, tokenizer, context length).
        weights_id: the loaded encoder's `weights_id` (part of every cache namespace).
        logit_scale: the loaded encoder's inverse temperature.
    """

    spec: str
    card: ModelCard
    weights_id: str
    logit_scale: float


def weights_fingerprint(spec: str) -> str | None:
    """A content fingerprint of the files behind `spec`, without loading anything; None where
    it cannot be had cheaply and for certain (a hub model that could move on)."""
    try:
        return _fingerprint(spec)
    except (OSError, ValueError, KeyError):
        return None


def _fingerprint(spec: str) -> str | None:
    if spec.startswith("open_clip:"):
        _, sep, path = spec[len("open_clip:") :].partition(":")
        return files_weights_id([path]) if sep and Path(path).is_file() else None
    if spec.startswith("hf-clip:"):
        folder = Path(spec[len("hf-clip:") :])
        weights = next((folder / n for n in HF_CLIP_WEIGHT_FILES if (folder / n).is_file()), None)
        return files_weights_id([weights, folder / "config.json"]) if weights is not None else None
    if spec.startswith(HUB_PREFIX):
        return _hub_fingerprint(spec)
    folder = Path(spec)
    if folder.is_dir():
        files = [folder / "model.safetensors", folder / "card.json"]
        return files_weights_id(files) if all(f.is_file() for f in files) else None
    return _registry_fingerprint(spec)


def _hub_fingerprint(source: str) -> str | None:
    repo_id, revision = parse_hub_source(source)
    if not (hub_offline() or (revision is not None and _COMMIT.fullmatch(revision))):
        return None
    snap = cached_snapshot(repo_id, revision, None)
    return f"hf-hub:{snap.repo_id}@{snap.commit}" if snap is not None else None


def _registry_fingerprint(name: str) -> str | None:
    from histovl.models.registry import get_card, list_models

    if name not in list_models():
        return None
    card = get_card(name)
    if card.source.startswith(HUB_PREFIX):
        return _hub_fingerprint(card.source)
    if Path(card.source).is_file():
        return files_weights_id([card.source])
    if card.name == LITE_NAME and lite_weights_path().is_file():
        return files_weights_id([lite_weights_path()])
    return None


def identity_key(spec: str, fingerprint: str) -> str:
    """The memo file name of (spec, fingerprint) under this histovl version."""
    version = getattr(sys.modules.get("histovl"), "__version__", "unknown")  # the package this module is in
    payload = json.dumps([IDENTITY_FORMAT, version, spec, fingerprint])
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def read_identity(folder: Path, spec: str, fingerprint: str) -> ModelIdentity | None:
    """The identity recorded for (spec, fingerprint) in `folder`, or None (never recorded, or
    unreadable: the caller then loads the model and records it again)."""
    path = folder / f"{identity_key(spec, fingerprint)}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("spec") != spec or data.get("fingerprint") != fingerprint:
            return None
        return ModelIdentity(spec, ModelCard.from_dict(data["card"]), str(data["weights_id"]), float(data["logit_scale"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_identity(folder: Path, spec: str, fingerprint: str, encoder: Any) -> ModelIdentity:
    """Record a loaded encoder's identity; a folder that cannot be written only costs a load
    next time."""
    identity = ModelIdentity(spec, encoder.card, str(encoder.weights_id), float(encoder.logit_scale))
    record = {
        "format": IDENTITY_FORMAT, "spec": spec, "fingerprint": fingerprint, "card": identity.card.to_dict(),
        "weights_id": identity.weights_id, "logit_scale": identity.logit_scale,
    }
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / f"{identity_key(spec, fingerprint)}.json", record)
    except OSError:
        pass
    return identity
