"""Encoders run by ONNX Runtime (fp32 and int8) behind a parity gate against torch.

`apply_runtime(encoder, options)` is the one entry point: under ``options.runtime == "torch"`` it
returns the encoder unchanged; under ``onnx`` / ``onnx-int8`` it returns a `RuntimeEncoder` whose
towers are exported once into ``<cache>/onnx/`` and checked against torch on the run's first
images and prompts (docs/runtime.md). ONNX Runtime is an optional extra (``histovl[onnx]``).

Example:
    >>> enc = apply_runtime(load_model("histovl-lite"), RunOptions(runtime="onnx"))  # doctest: +SKIP
    >>> enc.weights_id  # doctest: +SKIP
    'histovl-lite:...|runtime=onnx'
"""

from __future__ import annotations

from typing import Any

from histovl.errors import HistovlError
from histovl.models.runtime._ort import INSTALL_HINT, OnnxRuntimeMissingError, import_ort
from histovl.models.runtime.gate import CALIBRATION_N, THRESHOLDS, RuntimeParityError
from histovl.options import RunOptions, default_cache_dir

#: The folder, under the run's cache folder, that holds exported towers.
EXPORT_DIR = "onnx"

__all__ = [
    "CALIBRATION_N",
    "EXPORT_DIR",
    "INSTALL_HINT",
    "THRESHOLDS",
    "OnnxRuntimeMissingError",
    "RuntimeParityError",
    "apply_runtime",
    "export_root",
]


def export_root(options: RunOptions) -> Any:
    """Where exported towers live: ``<cache>/onnx`` (the cache folder is used even under
    ``--no-cache``, which concerns embeddings only)."""
    return (options.cache if options.cache is not None else default_cache_dir()) / EXPORT_DIR


def apply_runtime(encoder: Any, options: RunOptions) -> Any:
    """`encoder` as ``options.runtime`` runs it (unchanged under torch).

    Raises:
        OnnxRuntimeMissingError: an ONNX runtime without ``onnxruntime`` installed.
        RuntimeParityError: the runtime's recorded parity fails its gate (without
            ``allow_approximate``); also raised on first use, when the gate is measured.
    """
    if options.runtime == "torch" or getattr(encoder, "runtime", None) == options.runtime:
        return encoder
    if options.device != "cpu":
        raise HistovlError(
            f"--runtime {options.runtime} runs on the CPU (ONNX Runtime); with --device {options.device} use --runtime torch"
        )
    import_ort(options.runtime)
    from histovl.models.runtime.encoder import RuntimeEncoder

    return RuntimeEncoder(
        encoder, options.runtime, export_root=export_root(options), allow_approximate=options.allow_approximate,
        sink=options.runtime_parity,
    )
