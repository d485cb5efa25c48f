"""ONNX Runtime, imported only when a non-torch runtime is asked for, and its sessions.

A missing ``onnxruntime`` is one line naming the extra to install, never a traceback.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

from histovl.errors import HistovlError

INSTALL_HINT = "pip install 'histovl[onnx]'"


class OnnxRuntimeMissingError(HistovlError, ImportError):
    """``--runtime onnx``/``onnx-int8`` without ONNX Runtime (or onnx) installed."""


def import_ort(runtime: str = "onnx") -> Any:
    """The ``onnxruntime`` module, or `OnnxRuntimeMissingError` naming the extra to install."""
    try:
        import onnx  # noqa: F401  (the exporter writes onnx protobufs)
        import onnxruntime
    except ImportError as err:
        raise OnnxRuntimeMissingError(
            f"--runtime {runtime} needs ONNX Runtime, which is not installed ({err.name}): run `{INSTALL_HINT}`, "
            "or use --runtime torch"
        ) from None
    return onnxruntime


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


#: Sessions kept open per process (the torch path keeps its loaded models the same way), by file
#: identity: an exported tower replaced or edited on disk gets a new session.
_SESSIONS: OrderedDict[tuple[str, int, int, int], Any] = OrderedDict()
_MAX_SESSIONS = 4


def open_session(path: Path, *, cached: bool = True) -> Any:
    """A CPU `InferenceSession` over `path`: one intra-op thread per available core, all graph
    optimisations on, no spin-waiting between operators (on a machine shared with the decode
    workers, spinning threads take the cores the workers need; measured in docs/runtime.md).

    With `cached` the session is reused within the process while the file is unchanged (opening
    a ViT-B tower takes about a second)."""
    stat = Path(path).stat()
    key = (str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size, stat.st_ino)
    if cached and key in _SESSIONS:
        _SESSIONS.move_to_end(key)
        return _SESSIONS[key]
    ort = import_ort()
    options = ort.SessionOptions()
    options.intra_op_num_threads = available_cores()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    if cached:
        _SESSIONS[key] = session
        while len(_SESSIONS) > _MAX_SESSIONS:
            _SESSIONS.popitem(last=False)
    return session


def versions() -> dict[str, str]:
    """onnxruntime and onnx versions (part of the export key and of meta.json)."""
    import onnx

    ort = import_ort()
    return {"onnxruntime": str(ort.__version__), "onnx": str(onnx.__version__)}
