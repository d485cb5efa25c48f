"""`histovl predict`: apply a model with a prompt set or a few-shot head to unlabelled (or
labelled) images and to whole slides (per-tile predictions, heatmap, slide result, QuPath GeoJSON).

It sits above `histovl.zeroshot`, `histovl.heads` and `histovl.slides` and is imported by nothing
but the CLI and `histovl/__init__`. See docs/predict.md.

Example:
    >>> from histovl.predict import PredictConfig, predict
    >>> r = predict("histovl-lite", "slide.svs", "runs/slide", PredictConfig(prompts="lung-he-v1", mpp=0.5))  # doctest: +SKIP
    >>> r.slide["prediction"]  # doctest: +SKIP
"""

from histovl._command_module import make_callable
from histovl.predict.geojson import tile_feature_collection
from histovl.predict.run import PredictConfig, PredictResult, predict
from histovl.predict.scoring import HeadLike

__all__ = ["HeadLike", "PredictConfig", "PredictResult", "predict", "tile_feature_collection"]

make_callable(__name__, predict)  # histovl.predict(...) runs the command
