"""Trained heads on frozen features: HistoCLIP's Cross-Modal Matching (CMM) head and the
few-shot heads (linear probe, kNN, SimpleShot, Tip-Adapter, text-initialised linear)."""

from histovl.heads.cmm import CrossModalMatching, KVMode
from histovl.heads.cmm_head import CMMHead
from histovl.heads.fewshot import (
    METHODS,
    EncoderInfo,
    FewshotHead,
    KNNHead,
    LinearHead,
    SimpleShotHead,
    TextLinearHead,
    TipAdapterHead,
    load_head,
    make_head,
)
from histovl.heads.fewshot_run import (
    FewshotConfig,
    FewshotFitConfig,
    FewshotFitResult,
    FewshotResult,
    fewshot_eval,
    fewshot_fit,
)

__all__ = [
    "METHODS",
    "CMMHead",
    "CrossModalMatching",
    "EncoderInfo",
    "FewshotConfig",
    "FewshotFitConfig",
    "FewshotFitResult",
    "FewshotHead",
    "FewshotResult",
    "KNNHead",
    "KVMode",
    "LinearHead",
    "SimpleShotHead",
    "TextLinearHead",
    "TipAdapterHead",
    "fewshot_eval",
    "fewshot_fit",
    "load_head",
    "make_head",
]
