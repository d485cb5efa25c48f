"""Hugging Face hub access: resolve a repo to a local snapshot, online or from the cache.

Everything downstream works on a local directory (the snapshot), so hub models, `hf-clip:<DIR>`
directories and our own model directories share one loading path. The environment is read at call
time (not at import, as `huggingface_hub.constants` does), so `HF_HUB_OFFLINE`, `HF_HUB_CACHE` and
`HF_HOME` set by a test or a job script take effect.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from histovl.errors import HistovlError

HUB_PREFIX = "hf-hub:"


class WeightsNotAvailableError(HistovlError, FileNotFoundError):
    """The weights are neither on this machine nor downloadable (offline, no network)."""


@dataclass(frozen=True)
class HubSnapshot:
    """A resolved hub repo: its local folder and the commit it pins."""

    repo_id: str
    commit: str
    path: Path


def parse_hub_source(source: str) -> tuple[str, str | None]:
    """``hf-hub:org/name[@rev]`` -> (``org/name``, rev or None)."""
    ident = source[len(HUB_PREFIX) :] if source.startswith(HUB_PREFIX) else source
    ident = ident.strip("/")
    repo_id, _, rev = ident.partition("@")
    return repo_id, (rev or None)


def hub_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """The HF hub cache folder, honouring ``HF_HUB_CACHE`` and ``HF_HOME`` at call time."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    return Path(os.path.expanduser("~")) / ".cache" / "huggingface" / "hub"


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set to a true value."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def cached_snapshot(repo_id: str, revision: str | None, cache_dir: str | Path | None) -> HubSnapshot | None:
    """The cached snapshot for `repo_id` (via ``refs/<revision or main>``), without any network."""
    repo_dir = hub_cache_dir(cache_dir) / f"models--{repo_id.replace('/', '--')}"
    rev = revision or "main"
    ref_file = repo_dir / "refs" / rev
    commit = ref_file.read_text(encoding="utf-8").strip() if ref_file.is_file() else rev
    snap = repo_dir / "snapshots" / commit
    return HubSnapshot(repo_id, commit, snap) if snap.is_dir() else None


def resolve_snapshot(
    source: str,
    *,
    files: Sequence[str] | None = None,
    cache_dir: str | Path | None = None,
) -> HubSnapshot:
    """A local snapshot of the hub repo in `source`, downloading `files` when online.

    Args:
        source: ``hf-hub:org/name[@rev]``.
        files: glob patterns of the files needed (None: the whole repo).
        cache_dir: HF cache folder (default: the standard one).

    Raises:
        WeightsNotAvailableError: offline and not cached, or the download failed.
    """
    repo_id, revision = parse_hub_source(source)
    snap = cached_snapshot(repo_id, revision, cache_dir)
    if hub_offline():
        if snap is None:
            raise WeightsNotAvailableError(
                f"{repo_id} is not in the Hugging Face cache at {hub_cache_dir(cache_dir)} and "
                "HF_HUB_OFFLINE is set: download it on a machine with network access (or unset "
                "HF_HUB_OFFLINE), or point HF_HUB_CACHE at a cache that holds it"
            )
        return snap
    from huggingface_hub import snapshot_download

    try:
        downloaded = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=str(hub_cache_dir(cache_dir)),
            allow_patterns=list(files) if files else None,
        )
    except Exception as err:  # noqa: BLE001 - network/auth errors come in many types
        if snap is not None:
            return snap
        raise WeightsNotAvailableError(
            f"could not download {repo_id} from the Hugging Face hub ({type(err).__name__}: {err}); "
            "check the network, or copy a populated HF cache to this machine"
        ) from err
    folder = Path(str(downloaded))
    return HubSnapshot(repo_id, folder.name, folder)


def first_existing(folder: Path, names: Sequence[str]) -> Path | None:
    """The first of `names` present in `folder` (weights are listed safest first)."""
    for name in names:
        if (folder / name).is_file():
            return folder / name
    return None


def weights_in_cache(source: str, names: Sequence[str], cache_dir: str | Path | None = None) -> bool:
    """Whether one of the weight files `names` is in the local HF cache (no network)."""
    repo_id, revision = parse_hub_source(source)
    snap = cached_snapshot(repo_id, revision, cache_dir)
    return snap is not None and first_existing(snap.path, names) is not None
