"""Exported towers on disk: one folder per (weights id, runtime, opset, ONNX Runtime version).

Layout::

    <cache>/onnx/<key>/meta.json          what was exported, how, and the parity measured
    <cache>/onnx/<key>/image.onnx         the image tower (int8 under onnx-int8)
    <cache>/onnx/<key>/text.onnx          the text tower, where the family has one
    <cache>/onnx/<key>/calibration.npz    the gate's embeddings (torch and runtime)

Every file is written to a temporary name and renamed, and exports run under a file lock, so two
processes never see half a model; a later run reuses the files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from histovl._io import atomic_path, atomic_write_json
from histovl.models.runtime._ort import versions

EXPORT_FORMAT = 1
OPSET = 18
META_FILE = "meta.json"
#: Batch size used by the static-quantisation calibration reader.
_CALIBRATION_CHUNK = 8


#: Revisions of a runtime's export recipe after the first; a new revision is a new folder, so towers
#: made by an older recipe are never reused silently. onnx-int8 2: per-channel int8 weights, and
#: int8 text towers where they stay within `TEXT_INT8_MIN` of the fp32 tower (else fp32).
#: onnx 2, onnx-int8 3: image towers' self-attention as ONNX Runtime's fused node (`fusion`).
RECIPES = {"onnx": 2, "onnx-int8": 3}
#: Lowest cosine (min over the calibration prompts) of an int8 text tower to the fp32 one for the
#: int8 tower to be kept: a margin above the gate's 0.99, so the quantised text never fails the gate
#: on its own.
TEXT_INT8_MIN = 0.995


def export_dir(root: Path, weights_id: str, runtime: str) -> Path:
    """The folder of `weights_id`'s towers under `runtime` (the key includes the opset, the
    onnxruntime version and the runtime's recipe revision, so an upgrade exports afresh)."""
    v = versions()
    fields: list[Any] = [EXPORT_FORMAT, weights_id, runtime, OPSET, v["onnxruntime"]]
    if runtime in RECIPES:  # appended, so the keys of recipes never revised are unchanged
        fields.append(RECIPES[runtime])
    payload = json.dumps(fields)
    return Path(root) / hashlib.sha256(payload.encode()).hexdigest()[:24]


_LOCKS: dict[str, Any] = {}


@contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold the folder's lock (exports and meta.json updates); re-entrant within a process (one
    `FileLock` instance per folder), so an export can update meta.json while holding it."""
    from filelock import FileLock

    folder.mkdir(parents=True, exist_ok=True)
    key = str(folder / ".lock")
    with _LOCKS.setdefault(key, FileLock(key)):
        yield


def read_meta(folder: Path) -> dict[str, Any]:
    """The folder's meta.json ({} when absent or unreadable: the towers are then re-checked)."""
    try:
        data = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def update_meta(folder: Path, base: dict[str, Any], section: str, key: str, value: Any) -> dict[str, Any]:
    """Set ``meta[section][key] = value`` (re-reading the file under the lock) and return it."""
    with locked(folder):
        meta = {**base, **read_meta(folder)}
        meta.setdefault(section, {})[key] = value
        atomic_write_json(folder / META_FILE, meta)
    return meta


def export_module(
    module: Any, example: Sequence[Any], input_names: Sequence[str], target: Path, dynamic: dict[str, dict[int, str]],
    *, dynamo_only: bool = False, fuse_attention: bool = False,
) -> str:
    """Export `module` at `example` to `target` atomically; returns the exporter used.

    The TorchScript exporter is tried first (seconds): with `fuse_attention`, first with its
    self-attention as ONNX Runtime's fused node (`histovl.models.runtime.fusion`), then plain.
    The dynamo exporter is the fallback, and the only one for text towers (`dynamo_only`):
    TorchScript fixes their sequence length.
    """
    import torch

    from histovl.models.runtime import fusion  # imports torch: only where an export happens

    kwargs: dict[str, Any] = {"input_names": list(input_names), "output_names": ["features"], "opset_version": OPSET}
    fastpath = torch.backends.mha.get_fastpath_enabled()
    # the fused attention kernel eval mode picks has no ONNX form: trace the plain one
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with atomic_path(target, suffix=".onnx") as tmp, torch.inference_mode(False), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            args = tuple(x.clone() for x in example)
            attempts = () if dynamo_only else (True, False) if fuse_attention else (False,)
            for fuse in attempts:
                try:
                    with fusion.fused_attention(module) if fuse else nullcontext(0) as swapped:
                        if fuse and not swapped:
                            continue  # nothing to fuse: the plain export follows
                        torch.onnx.export(module.eval(), args, str(tmp), dynamic_axes={**dynamic, "features": {0: "n"}},
                                          dynamo=False, custom_opsets=fusion.CUSTOM_OPSETS if fuse else None, **kwargs)
                    return "torchscript"
                except Exception:  # noqa: BLE001 - any tracing failure: try the next way
                    pass
            shapes = tuple({axis: torch.export.Dim.AUTO for axis in dynamic[name]} for name in input_names)
            torch.onnx.export(module.eval(), args, str(tmp), dynamic_shapes=shapes, dynamo=True, verbose=False,
                              external_data=False, **kwargs)  # one file: renamed atomically, hashed whole
            return "dynamo"
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def conv_count(path: Path) -> int:
    """Conv nodes in an ONNX graph (a ViT has one, the patch embedding; a CNN has dozens)."""
    import onnx

    return sum(node.op_type == "Conv" for node in onnx.load(str(path), load_external_data=False).graph.node)


class _NoPreprocessAdvice(logging.Filter):
    """Drops ONNX Runtime's quantiser advice to run its pre-processing first (logged on the root
    logger at every call): that step is its shape inference plus its graph optimiser, which these
    towers do not gain from (see `quantize_dynamic_int8`), and users cannot act on the line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Please consider to run pre-processing before quantization")


@contextmanager
def _quiet_quantizer() -> Iterator[None]:
    root, advice = logging.getLogger(), _NoPreprocessAdvice()
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)


def quantize_dynamic_int8(source: Path, target: Path) -> str:
    """Dynamic int8 quantisation of the MatMul/Gemm weights and of fused attention's QKV weights
    (``QAttention``), per output channel (activations quantised on the fly; products of two
    activations, as in attention, stay fp32).

    Per-channel weights cost no speed here and bring ViT-B-32's int8 image tower closer to fp32
    (cosine min 0.99986 vs 0.99981 per tensor). ONNX Runtime's transformer optimiser (fused
    LayerNorm/GELU) was measured too and left out: it does not fuse these exports' attention, and
    the int8 tower spent 40 % more CPU time with it (docs/runtime.md)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with atomic_path(target, suffix=".onnx") as tmp, _quiet_quantizer():
        quantize_dynamic(
            str(source), str(tmp), weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul", "Gemm", "Attention"],
            # dynamo exports carry functions whose outputs shape inference cannot type: they are fp32
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    return "dynamic int8 (MatMul, Gemm, Attention weights, per channel)"


def quantize_static_int8(source: Path, target: Path, input_name: str, calibration: np.ndarray) -> str:
    """Static int8 quantisation (QDQ, per-channel weights) with activation ranges calibrated on
    `calibration` (the run's own first images)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.chunks = iter(range(0, len(calibration), _CALIBRATION_CHUNK))

        def get_next(self) -> dict[str, np.ndarray] | None:
            start = next(self.chunks, None)
            return None if start is None else {input_name: calibration[start : start + _CALIBRATION_CHUNK]}

    with atomic_path(target, suffix=".onnx") as tmp, _quiet_quantizer():
        quantize_static(
            str(source), str(tmp), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
        )
    return f"static int8 (QDQ, per-channel; activations calibrated on {len(calibration)} images of the run)"


def tower_entry(file: str, exporter: str, quantisation: str, started: float) -> dict[str, Any]:
    """The meta.json entry of one exported tower."""
    return {
        "file": file, "exporter": exporter, "quantisation": quantisation,
        "exported_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "export_seconds": round(time.perf_counter() - started, 2),
    }


def save_calibration(folder: Path, kind: str, reference: np.ndarray, candidate: np.ndarray) -> dict[str, np.ndarray]:
    """Keep the gate's embeddings, so the argmax agreement can be computed once both towers are."""
    path = folder / "calibration.npz"
    with locked(folder):
        arrays: dict[str, np.ndarray] = {}
        if path.is_file():
            with np.load(path) as old:
                arrays = {k: old[k] for k in old.files}
        arrays[f"{kind}_torch"], arrays[f"{kind}_runtime"] = reference, candidate
        with atomic_path(path, suffix=".npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)  # type: ignore[arg-type]
    return arrays

