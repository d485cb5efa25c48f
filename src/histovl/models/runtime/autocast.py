"""torch under autocast (bf16 or fp16), behind the same parity gate as the ONNX runtimes.

Under ``runtime="torch"`` with ``precision="auto"`` (the default), an encoder on a CUDA device
encodes under `torch.autocast`; ``precision="fp32"`` opts out, and ``bf16`` / ``fp16`` force a
dtype, on any device (the test suite runs the gate under bf16 autocast on the CPU).

``auto`` picks **bf16** on GPUs with native bf16 (compute capability 8.0 and up: A100, H100, L4,
RTX 30xx and later) and **fp16** on older ones (T4, V100), where bf16 is emulated and slow. bf16
keeps fp32's exponent range, so activations that fit in fp32 cannot overflow to inf/NaN (fp16
stops at 65504: large attention logits or MLP activations of some checkpoints do overflow); its
shorter mantissa (8 bits against fp16's 11) costs a little cosine, which the gate measures.

On first use of a (model, device, precision) the run's first images (up to `gate.CALIBRATION_N`)
and prompts (up to `gate.CALIBRATION_TEXTS`) are encoded both in fp32 and under autocast on the same
device: per-tower cosine (min, mean) and zero-shot argmax agreement, stored in
``<cache>/autocast/<key>/meta.json`` (the key hashes the weights id, the precision, the device's
name and the torch version) and in every run.json (``config.runtime_parity``). A tower under
cosine 0.99 is refused unless ``allow_approximate``. The encoder's ``weights_id`` gains
``|runtime=torch-bf16`` (or ``torch-fp16``), so the embedding cache never mixes autocast and fp32
embeddings. docs/runtime.md, "GPUs".
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import platform
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from histovl.models.runtime import export as ex
from histovl.models.runtime import gate
from histovl.models.runtime._wrapper import EncoderWrapper

#: What ``precision`` may be (RunOptions, ``--precision``).
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: The folder, under the run's cache folder, that keeps autocast gate verdicts.
GATE_DIR = "autocast"
GATE_FORMAT = 1


def autocast_dtype(precision: str, device: str) -> str | None:
    """The autocast dtype (``bf16`` / ``fp16``) `precision` means on `device`, or None for fp32.

    ``auto`` is fp32 off CUDA (no torch import then: a fully cached CPU run never loads torch),
    and on CUDA bf16 where the GPU has native bf16 (compute capability >= 8.0), else fp16.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision in ("bf16", "fp16"):
        return precision
    if precision == "fp32" or not str(device).startswith("cuda"):
        return None
    import torch

    major, _ = torch.cuda.get_device_capability(torch.device(device))
    return "bf16" if major >= 8 else "fp16"


def device_identity(device: str) -> str:
    """The device as the gate's key names it: the GPU's name and compute capability, or the CPU."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        major, minor = torch.cuda.get_device_capability(dev)
        return f"cuda {torch.cuda.get_device_name(dev)} (sm_{major}{minor})"
    return f"{dev.type} ({platform.machine()})"


def gate_dir(root: Path, weights_id: str, precision: str, device: str) -> Path:
    """The folder of one (weights id, precision, device, torch version)'s gate verdict."""
    import torch

    payload = json.dumps([GATE_FORMAT, weights_id, precision, device, str(torch.__version__)])
    return Path(root) / hashlib.sha256(payload.encode()).hexdigest()[:24]


class AutocastEncoder(EncoderWrapper):
    """A torch encoder whose forward passes run under `torch.autocast` (bf16 or fp16).

    Attributes:
        base: the torch encoder (an `Encoder` or a `LazyEncoder`): the fp32 reference.
        precision: ``bf16`` or ``fp16``; `label` is ``torch-<precision>``.
        folder: where the gate's verdict and calibration embeddings are kept.
    """

    runtime = "torch"

    def __init__(self, base: Any, precision: str, *, device: str, gate_root: Path, requested: str = "auto",
                 allow_approximate: bool = False, sink: dict[str, Any] | None = None) -> None:
        self.base = base
        self.precision = precision
        self.requested = requested
        self.device_name = str(device)
        self.label = f"torch-{precision}"
        self.allow_approximate = allow_approximate
        self.sink = sink if sink is not None else {}
        self.identity = device_identity(self.device_name)
        self.folder = gate_dir(gate_root, base.weights_id, precision, self.identity)
        self._meta_base = {"format": GATE_FORMAT, "model": base.card.name, "weights_id": base.weights_id,
                           "runtime": self.label, "device": self.identity, "torch": _torch_version()}
        self._meta = ex.read_meta(self.folder)
        self.publish()  # a verdict measured by an earlier run is checked (and recorded) now

    # ---- the Encoder interface (card, weights_id, ... : EncoderWrapper) ----------------------------
    def encode_image(self, pixels: Any, normalize: bool = True) -> Any:
        if not self._measured("image"):
            self._measure("image", pixels[: gate.CALIBRATION_N])
        return self._encode("image", pixels, normalize, autocast=True)

    def encode_text(self, texts: Sequence[str], normalize: bool = True) -> Any:
        texts = list(texts)
        if not self._measured("text"):
            self._measure("text", texts[: gate.CALIBRATION_TEXTS])
        return self._encode("text", texts, normalize, autocast=True)

    def model(self) -> Any:
        """The torch encoder (loaded now if the base is lazy)."""
        return self.base.model() if getattr(self.base, "is_lazy_encoder", False) else self.base

    def __repr__(self) -> str:
        return f"AutocastEncoder({self.card.name!r}, {self.precision} on {self.device_name}, {self.folder})"

    # ---- encoding ------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _autocast(self, enabled: bool) -> Iterator[None]:
        import torch

        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        with torch.autocast(device_type=self.device.type, dtype=dtype, enabled=enabled):
            yield

    def _encode(self, kind: str, inputs: Any, normalize: bool, *, autocast: bool) -> Any:
        import torch

        with self._autocast(autocast):
            feats = self.base.encode_image(inputs, False) if kind == "image" else self.base.encode_text(inputs, False)
        feats = feats.float()
        return torch.nn.functional.normalize(feats, dim=-1) if normalize else feats

    # ---- the parity gate ------------------------------------------------------------------------------
    def _measured(self, kind: str) -> bool:
        return isinstance(self._meta.get("parity", {}).get(kind), dict)

    def _measure(self, kind: str, inputs: Any) -> None:
        """Encode `inputs` in fp32 and under autocast on the same device; record and apply the gate."""
        import torch

        with torch.inference_mode():
            reference = self._encode(kind, inputs, False, autocast=False).cpu().numpy()
            candidate = self._encode(kind, inputs, False, autocast=True).cpu().numpy()
        stats = {**gate.tower_parity(reference, candidate), "measured_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        arrays = ex.save_calibration(self.folder, kind, reference, candidate)
        self._meta = ex.update_meta(self.folder, self._meta_base, "parity", kind, stats)
        if {"image_torch", "text_torch"} <= set(arrays):
            agreement = gate.argmax_agreement(arrays["image_torch"], arrays["text_torch"], arrays["image_runtime"], arrays["text_runtime"])
            self._meta = ex.update_meta(self.folder, self._meta_base, "parity", "argmax_agreement", agreement)
        self.publish(measured=True)

    def publish(self, measured: bool = False) -> dict[str, Any]:
        """The gate's record as run.json shows it (into the run's options), after the gate."""
        parity = dict(self._meta.get("parity", {}))
        bad = gate.failed_towers(parity, self.label)
        record = {
            "runtime": self.label, "precision": self.precision, "requested_precision": self.requested,
            "device": self.identity, "reference": "torch fp32 on the same device", "gate": str(self.folder),
            "threshold": gate.THRESHOLDS[self.label], "image": parity.get("image"), "text": parity.get("text"),
            "argmax_agreement": parity.get("argmax_agreement"),
            "passed": None if not any(isinstance(parity.get(k), dict) for k in ("image", "text")) else not bad,
            "accepted_approximate": bool(bad) and self.allow_approximate, "measured_in_this_run": measured or None,
        }
        self.sink[self.card.name] = record
        gate.check(parity, model=self.card.name, runtime=self.label, allow_approximate=self.allow_approximate,
                   where=str(self.folder / ex.META_FILE), option=f"--precision {self.requested} ({self.label} autocast on {self.device_name})",
                   instead="use --precision fp32")
        return record


def _torch_version() -> str:
    import torch

    return str(torch.__version__)
