"""Zero-shot classification: text classifiers, single-label prediction, multi-label, fusion."""

from histovl.zeroshot.classifier import TextClassifier, build_text_classifier, encode_prompts
from histovl.zeroshot.single_label import ZeroShotResult, predictions_frame, zeroshot

__all__ = ["TextClassifier", "ZeroShotResult", "build_text_classifier", "encode_prompts", "predictions_frame", "zeroshot"]
