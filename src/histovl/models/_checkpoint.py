"""Safe checkpoint reading and strict state-dict loading (docs/reliability.md, "untrusted checkpoint").

* ``.safetensors`` files are always accepted: they hold tensors only, so reading one cannot run code.
* Pickle-based files (``.pt``, ``.pth``, ``.bin``, ``.ckpt``) are read only when the caller passes
  ``trust_checkpoint=True``, and even then through ``torch.load(weights_only=True)``, which refuses
  anything but tensors and plain containers.
* Every load is strict: missing, unexpected and shape-mismatched keys are reported together in one
  readable diff instead of PyTorch's single-line message (or, worse, a silent ``strict=False``).
* The format is read from the file's first bytes, not trusted from its name: a safetensors file
  named ``.bin`` is read as the tensors it is (no trust flag needed), a pickle named
  ``.safetensors`` is refused, and a truncated or corrupt file is a `CheckpointReadError` naming
  the file (docs/reliability.md, "truncated or corrupt weights").
* A loader may start reading a safetensors file early (`prefetch_safetensors`): a background
  thread copies its tensors into fresh memory while the main thread imports open_clip and builds
  the architecture (the copy releases the GIL, so the second core does it). `read_checkpoint`
  then returns those tensors (`FreshTensors`), or reads the file itself if it changed since.
"""

from __future__ import annotations

import json
import pickle
import struct
import threading
import zipfile
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from histovl.errors import HistovlError, UntrustedCheckpointError

SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_MAX_LISTED = 12


class CheckpointMismatchError(HistovlError, ValueError):
    """A state dict does not fit the architecture it is loaded into (keys or shapes differ)."""


class CheckpointReadError(HistovlError):
    """A weights file is truncated, corrupt, or not the format its name says."""


def sniff_weights_format(path: str | Path) -> str:
    """``safetensors``, ``zip`` (torch.save), ``pickle`` (legacy torch.save) or ``unknown``, from
    the first bytes: a safetensors file starts with the little-endian length of a JSON header."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError:
        return "unknown"
    if len(head) == 9 and head[8:9] == b"{" and 2 <= struct.unpack("<Q", head[:8])[0] < 100 * 2**20:
        return "safetensors"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head[:1] == b"\x80":
        return "pickle"
    return "unknown"


class FreshTensors(dict[str, torch.Tensor]):
    """A state dict whose tensors own fresh, contiguous CPU memory that nothing else refers to
    (what `prefetch_safetensors` reads), so a loader may assign them without copying."""


_PREFETCH_LOCK = threading.Lock()
_PREFETCHED: tuple[tuple[str, int, int], Future[FreshTensors]] | None = None


def _file_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def _read_fresh(path: Path, done: Future[FreshTensors]) -> None:
    try:
        tensors = read_safetensors(path)
        done.set_result(FreshTensors({k: v.clone(memory_format=torch.contiguous_format) for k, v in tensors.items()}))
    except BaseException as err:  # noqa: BLE001 - handed to the reader, raised there
        done.set_exception(err)


def prefetch_safetensors(path: str | Path) -> None:
    """Start reading a safetensors file into fresh tensors in a background thread (one file at a
    time; anything else, or a file that cannot be stat'ed, is left to `read_checkpoint`)."""
    global _PREFETCHED
    path = Path(path)
    try:
        key = _file_key(path)
    except OSError:
        return
    if sniff_weights_format(path) != "safetensors":
        return
    discard_prefetch()  # one at a time, and never an orphaned thread
    done: Future[FreshTensors] = Future()
    with _PREFETCH_LOCK:
        _PREFETCHED = (key, done)
    threading.Thread(target=_read_fresh, args=(path, done), name="histovl-prefetch", daemon=True).start()


def discard_prefetch() -> None:
    """Drop a prefetch nobody claimed, once its thread has ended (no thread is left reading the
    file's memory map: were the file then truncated, that read would kill the process)."""
    global _PREFETCHED
    with _PREFETCH_LOCK:
        pending, _PREFETCHED = _PREFETCHED, None
    if pending is not None:
        pending[1].exception()  # waits for the thread; its result or error is dropped


def _take_prefetched(path: Path) -> FreshTensors | None:
    global _PREFETCHED
    with _PREFETCH_LOCK:
        pending, _PREFETCHED = _PREFETCHED, None
    if pending is None:
        return None
    try:
        same = pending[0] == _file_key(path)
    except OSError:
        same = False
    if not same:
        pending[1].exception()  # let the thread end before anything else reads (or changes) the file
        return None
    return pending[1].result()


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """`safetensors.torch.load_file` on the CPU, with a truncated or corrupt file named."""
    try:
        return dict(load_file(str(path), device="cpu"))
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as err:
        raise CheckpointReadError(_damaged(path, err)) from None


def _damaged(path: str | Path, err: BaseException) -> str:
    try:
        size = f"{Path(path).stat().st_size} bytes"
    except OSError:
        size = "size unknown"
    reason = (str(err).splitlines() or [type(err).__name__])[0]
    return (f"cannot read weights file {path} ({size}): it is truncated or corrupt ({reason}); "
            "download or copy it again")


def read_checkpoint(path: str | Path, *, trust_checkpoint: bool = False) -> dict[str, torch.Tensor]:
    """Read a weight file into a flat ``{name: tensor}`` dict on the CPU.

    Args:
        path: a ``.safetensors`` file, or a pickle-based ``.pt``/``.pth``/``.bin``/``.ckpt`` file.
        trust_checkpoint: allow pickle-based files (read with ``weights_only=True``).

    Raises:
        FileNotFoundError: the file does not exist.
        UntrustedCheckpointError: a pickle file without the trust flag, or a pickle that holds
            objects other than tensors (it could run code when unpickled).

    Example:
        >>> read_checkpoint("weights.safetensors")  # doctest: +SKIP
        {'logit_scale': tensor(4.6052), ...}
    """
    path = Path(path)
    check_checkpoint_allowed(path, trust_checkpoint=trust_checkpoint)
    if path.suffix.lower() in SAFE_SUFFIXES or sniff_weights_format(path) == "safetensors":
        prefetched = _take_prefetched(path)
        return prefetched if prefetched is not None else read_safetensors(path)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if sniff_weights_format(path) == "unknown":
            raise CheckpointReadError(_damaged(path, err)) from None
        raise UntrustedCheckpointError(
            f"{path} holds objects other than tensors, so weights_only loading refused it "
            f"(it may try to run code): {str(err).splitlines()[0]}. Ask for a .safetensors file."
        ) from err
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, struct.error) as err:
        raise CheckpointReadError(_damaged(path, err)) from None
    return _unwrap_state_dict(obj, path)


def check_checkpoint_allowed(path: str | Path, *, trust_checkpoint: bool = False) -> None:
    """Refuse a file before anything reads it: missing, unknown type, or an untrusted pickle."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    suffix = path.suffix.lower()
    found = sniff_weights_format(path)
    if suffix in SAFE_SUFFIXES:
        if found in ("zip", "pickle"):
            raise UntrustedCheckpointError(
                f"{path} is named .safetensors but holds a pickle-based torch checkpoint, which can run "
                "code when loaded; convert it to real safetensors, or, if you trust it, rename it .pt "
                "and pass --trust-checkpoint"
            )
        return
    if found == "safetensors":  # tensors only, whatever the name says: safe to read
        return
    if suffix not in PICKLE_SUFFIXES:
        raise UntrustedCheckpointError(
            f"unrecognised weights file type {path.name!r}: use .safetensors "
            f"(or, for a file you trust, {'/'.join(PICKLE_SUFFIXES)} with --trust-checkpoint)"
        )
    if not trust_checkpoint:
        raise UntrustedCheckpointError(
            f"{path} is a pickle-based checkpoint, which can run arbitrary code when loaded. "
            "Convert it to .safetensors, or, if you trust its origin, pass --trust-checkpoint "
            "(trust_checkpoint=True); it is then read with torch.load(weights_only=True)."
        )


def _unwrap_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """Accept the usual wrappers: ``{"state_dict": ...}``, ``{"model": ...}``, DDP ``module.``."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(k, str) for k in inner):
                obj = inner
                break
    if not isinstance(obj, Mapping):
        raise CheckpointMismatchError(f"{path} does not contain a state dict (got {type(obj).__name__})")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def load_state_dict_strict(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    source: str,
    ignore: Callable[[str], bool] | None = None,
    assign: bool = False,
    owned: bool = False,
) -> None:
    """Load `state_dict` into `module`, refusing any key or shape difference.

    Args:
        module: the freshly built architecture.
        state_dict: tensors from a checkpoint (already renamed to the module's layout).
        source: where the weights came from, for the error message.
        ignore: keys for which this returns True are dropped from the checkpoint before the
            comparison (known-unused parts such as a captioning decoder, or legacy buffers).
        assign: `module` was built with its parameters on ``meta``
            (`histovl.models._empty_init`): give it new tensors holding the checkpoint's values
            instead of copying into its own.
        owned: with `assign`, the checkpoint's tensors own their memory (`FreshTensors`): those
            of the module's dtype and shape are assigned as they are, without a copy.

    Raises:
        CheckpointMismatchError: with the list of missing, unexpected and mis-shaped keys.
    """
    if ignore is not None:
        state_dict = {k: v for k, v in state_dict.items() if not ignore(k)}
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        (k, tuple(state_dict[k].shape), tuple(expected[k].shape))
        for k in sorted(set(expected) & set(state_dict))
        if tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(describe_mismatch(source, missing, unexpected, mismatched))
    if assign:
        from histovl.models._empty_init import materialise

        materialise(module, state_dict, owned=owned)
        return
    module.load_state_dict(dict(state_dict), strict=True)


def describe_mismatch(
    source: str,
    missing: Iterable[str],
    unexpected: Iterable[str],
    mismatched: Iterable[tuple[str, tuple[int, ...], tuple[int, ...]]],
) -> str:
    """A readable multi-line diff between a checkpoint and an architecture."""
    missing, unexpected, mismatched = list(missing), list(unexpected), list(mismatched)
    lines = [
        f"the weights in {source} do not fit the architecture "
        f"({len(missing)} missing, {len(unexpected)} unexpected, {len(mismatched)} shape mismatches):"
    ]

    def block(title: str, items: list[str]) -> None:
        if not items:
            return
        lines.append(f"  {title}:")
        lines.extend(f"    {item}" for item in items[:_MAX_LISTED])
        if len(items) > _MAX_LISTED:
            lines.append(f"    ... and {len(items) - _MAX_LISTED} more")

    block("missing from the checkpoint", missing)
    block("unexpected in the checkpoint", unexpected)
    block("shape mismatches (checkpoint vs model)", [f"{k}: {a} vs {b}" for k, a, b in mismatched])
    lines.append("Check that the architecture (e.g. the ARCH in open_clip:ARCH:PATH) matches the weights.")
    return "\n".join(lines)
