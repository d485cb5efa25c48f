"""The parity gate: how close an ONNX runtime's embeddings are to torch's, and the verdict.

On first use of a (model, runtime) pair the run's own first images (up to `CALIBRATION_N`) and
its prompts are encoded by both runtimes. Per tower: the cosine between the two embeddings of
each input (min and mean). Across towers: zero-shot argmax agreement, the share of calibration
images whose best-scoring prompt is the same under both runtimes (each prompt counts as a class).
A runtime whose cosine min falls below its threshold is refused unless ``allow_approximate``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from histovl.errors import HistovlError

#: Calibration images per (model, runtime) pair (the first images the run encodes).
CALIBRATION_N = 32
#: Calibration prompts (the first the run encodes).
CALIBRATION_TEXTS = 64
#: Lowest acceptable per-input cosine to torch fp32, by runtime (``torch-bf16`` / ``torch-fp16``:
#: torch under autocast, checked against fp32 on the same device; histovl.models.runtime.autocast).
THRESHOLDS = {"onnx": 0.999, "onnx-int8": 0.99, "torch-bf16": 0.99, "torch-fp16": 0.99}


class RuntimeParityError(HistovlError):
    """A runtime's embeddings are further from torch fp32's than its threshold allows."""


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def tower_parity(reference: np.ndarray, candidate: np.ndarray) -> dict[str, Any]:
    """Per-input cosine between torch (`reference`) and runtime (`candidate`) embeddings."""
    cos = np.sum(_unit(reference) * _unit(candidate), axis=1)
    return {"n": len(cos), "cosine_min": round(float(cos.min()), 6), "cosine_mean": round(float(cos.mean()), 6)}


def argmax_agreement(image_ref: np.ndarray, text_ref: np.ndarray, image_rt: np.ndarray, text_rt: np.ndarray) -> dict[str, Any]:
    """Share of images whose best prompt is the same under both runtimes."""
    ref = (_unit(image_ref) @ _unit(text_ref).T).argmax(axis=1)
    got = (_unit(image_rt) @ _unit(text_rt).T).argmax(axis=1)
    return {"n_images": len(ref), "n_prompts": len(text_ref), "agreement": round(float(np.mean(ref == got)), 6)}


def failed_towers(parity: dict[str, Any], runtime: str) -> list[str]:
    """The towers whose measured cosine min is under the runtime's threshold."""
    limit = THRESHOLDS[runtime]
    return [k for k in ("image", "text") if isinstance(parity.get(k), dict) and parity[k]["cosine_min"] < limit]


def check(
    record: dict[str, Any], *, model: str, runtime: str, allow_approximate: bool, where: str,
    option: str | None = None, instead: str = "use --runtime torch (or onnx)",
) -> None:
    """Refuse (`RuntimeParityError`) a runtime whose measured parity fails, unless allowed.

    `option` names what the user asked for (default ``--runtime <runtime>``); `instead` is the
    advice that comes before ``--allow-approximate``."""
    bad = failed_towers(record, runtime)
    if not bad or allow_approximate:
        return
    tower = bad[0]
    stats = record[tower]
    raise RuntimeParityError(
        f"{option or f'--runtime {runtime}'} is refused for {model}: its {tower} embeddings reach cosine "
        f"{stats['cosine_min']:.4f} to torch fp32 on {stats['n']} calibration input(s), under the gate's "
        f"{THRESHOLDS[runtime]} (recorded in {where}); {instead}, or pass "
        "--allow-approximate to accept approximate embeddings"
    )
