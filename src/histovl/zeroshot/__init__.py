"""Zero-shot classification: text classifiers, single-label prediction, multi-label, fusion.

The single-label command loads eagerly (the package is callable as that command); the other
names load on first use (PEP 562), so ``histovl zeroshot`` on cached embeddings imports no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from histovl._command_module import make_callable
from histovl._lazy import lazy_exports
from histovl.zeroshot.single_label import ZeroshotConfig, ZeroShotResult, zeroshot

if TYPE_CHECKING:  # the same names, eagerly, for type checkers
    from histovl.zeroshot.ablation import AblationResult, FusionAblationConfig, ablate_fusion
    from histovl.zeroshot.classifier import TextClassifier, build_text_classifier, encode_prompts
    from histovl.zeroshot.multilabel.pipeline import MultilabelConfig, MultilabelResult

#: public name -> module that defines it (loaded on first use).
_EXPORTS: dict[str, str] = {
    "AblationResult": "histovl.zeroshot.ablation",
    "FusionAblationConfig": "histovl.zeroshot.ablation",
    "ablate_fusion": "histovl.zeroshot.ablation",
    "TextClassifier": "histovl.zeroshot.classifier",
    "build_text_classifier": "histovl.zeroshot.classifier",
    "encode_prompts": "histovl.zeroshot.classifier",
    "MultilabelConfig": "histovl.zeroshot.multilabel.pipeline",
    "MultilabelResult": "histovl.zeroshot.multilabel.pipeline",
}

__all__ = [
    "AblationResult",
    "FusionAblationConfig",
    "MultilabelConfig",
    "MultilabelResult",
    "TextClassifier",
    "ZeroShotResult",
    "ZeroshotConfig",
    "ablate_fusion",
    "build_text_classifier",
    "encode_prompts",
    "zeroshot",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)


make_callable(__name__, zeroshot)  # histovl.zeroshot(...) runs the command
