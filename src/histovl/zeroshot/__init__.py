"""Zero-shot classification: text classifiers, single-label prediction, multi-label, fusion."""

from histovl.zeroshot.ablation import AblationResult, ablate_fusion
from histovl.zeroshot.classifier import TextClassifier, build_text_classifier, encode_prompts
from histovl.zeroshot.single_label import ZeroshotConfig, ZeroShotResult, zeroshot

__all__ = [
    "AblationResult",
    "TextClassifier",
    "ZeroShotResult",
    "ZeroshotConfig",
    "ablate_fusion",
    "build_text_classifier",
    "encode_prompts",
    "zeroshot",
]
