"""Zero-shot classification: text classifiers, single-label prediction, multi-label, fusion."""

from histovl._command_module import make_callable
from histovl.zeroshot.ablation import AblationResult, FusionAblationConfig, ablate_fusion
from histovl.zeroshot.classifier import TextClassifier, build_text_classifier, encode_prompts
from histovl.zeroshot.multilabel.pipeline import MultilabelConfig, MultilabelResult
from histovl.zeroshot.single_label import ZeroshotConfig, ZeroShotResult, zeroshot

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

make_callable(__name__, zeroshot)  # histovl.zeroshot(...) runs the command
