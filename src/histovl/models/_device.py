"""Refuse a device this machine does not have before any model loads (docs/reliability.md,
"device not available")."""

from __future__ import annotations

from histovl.errors import HistovlError


class DeviceUnavailableError(HistovlError, ValueError):
    """The requested torch device does not exist here."""


def check_device(device: str, *, option: str = "--device") -> None:
    """Raise `DeviceUnavailableError` naming `device` unless torch can use it.

    ``cpu`` is always accepted without importing torch; ``cuda``, ``cuda:N`` and ``mps`` are
    checked against what torch sees; anything else must parse as a torch device.
    """
    text = str(device).strip()
    if text == "cpu":
        return
    import torch

    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError) as err:
        raise DeviceUnavailableError(f"{option} {text!r} is not a torch device ({err}); use cpu, cuda, cuda:1 or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "torch was built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise DeviceUnavailableError(f"{option} {text}: this machine has no usable CUDA device ({why}); use --device cpu")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise DeviceUnavailableError(f"{option} {text}: only {count} CUDA device(s) here (cuda:0..cuda:{count - 1})")
    elif dev.type == "mps":
        backend = getattr(torch.backends, "mps", None)
        if backend is None or not backend.is_available():
            raise DeviceUnavailableError(f"{option} {text}: MPS (Apple GPU) is not available here; use --device cpu")
