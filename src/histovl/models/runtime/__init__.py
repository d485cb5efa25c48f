"""Encoders run by ONNX Runtime (fp32 and int8) behind a parity gate against torch.

`apply_runtime(encoder, options)` is the one entry point: under ``options.runtime == "torch"`` it
returns the encoder unchanged (on a CUDA device, or with ``precision`` ``bf16`` / ``fp16``: an
`AutocastEncoder`, torch under autocast checked against fp32, `histovl.models.runtime.autocast`);
under ``onnx`` / ``onnx-int8`` it returns a `RuntimeEncoder` whose towers are exported once into
``<cache>/onnx/`` and checked against torch on the run's first images and prompts
(docs/runtime.md). ONNX Runtime is an optional extra (``histovl[onnx]``).

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
    """`encoder` as ``options.runtime`` and ``options.precision`` run it.

    Under torch it is unchanged, except where ``precision`` asks for autocast (``auto`` on a
    CUDA device, or ``bf16`` / ``fp16`` anywhere): an `AutocastEncoder` behind the same gate.

    Raises:
        OnnxRuntimeMissingError: an ONNX runtime without ``onnxruntime`` installed.
        RuntimeParityError: the runtime's recorded parity fails its gate (without
            ``allow_approximate``); also raised on first use, when the gate is measured.
    """
    precision = str(getattr(options, "precision", "auto"))
    if options.runtime == "torch":
        return _with_precision(encoder, options, precision)
    from histovl.models.runtime._wrapper import EncoderWrapper

    # isinstance, not getattr: a LazyEncoder answers an unknown attribute by loading its model
    if isinstance(encoder, EncoderWrapper) and getattr(encoder, "runtime", None) == options.runtime:
        return encoder
    if options.device != "cpu":
        raise HistovlError(
            f"--runtime {options.runtime} runs on the CPU (ONNX Runtime); with --device {options.device} use --runtime torch"
        )
    if precision in ("bf16", "fp16"):
        raise HistovlError(
            f"--precision {precision} is torch autocast, but --runtime {options.runtime} runs ONNX Runtime "
            "(fp32 or int8): use --runtime torch, or --precision auto"
        )
    import_ort(options.runtime)
    from histovl.models.runtime.encoder import runtime_encoder

    return runtime_encoder(
        encoder, options.runtime, export_root=export_root(options), allow_approximate=options.allow_approximate,
        sink=options.runtime_parity,
    )


def _with_precision(encoder: Any, options: RunOptions, precision: str) -> Any:
    """The torch encoder, under autocast where `precision` on ``options.device`` asks for it."""
    from histovl.models.runtime.autocast import GATE_DIR, AutocastEncoder, autocast_dtype

    dtype = autocast_dtype(precision, options.device)
    if dtype is None or getattr(encoder, "precision", None) == dtype:
        return encoder
    root = (options.cache if options.cache is not None else default_cache_dir()) / GATE_DIR
    return AutocastEncoder(encoder, dtype, device=options.device, gate_root=root, requested=precision,
                           allow_approximate=options.allow_approximate, sink=options.runtime_parity)
