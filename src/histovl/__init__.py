"""histovl: a vision-language toolkit for histopathology.

The public Python API mirrors the CLI: every ``histovl <command>`` has a function here with the
same meaning (`histovl.cli.app.API_FUNCTIONS` pairs them; a test checks every command has one),
plus the core types a caller needs to drive them.

    >>> import histovl
    >>> opts = histovl.RunOptions(n_boot=200, seed=1)
    >>> res = histovl.zeroshot("histovl-lite", "tiles/", "lung-he-v1", "runs/lung",
    ...                        histovl.ZeroshotConfig(aggregate="max"), opts)  # doctest: +SKIP

Names load on first use (PEP 562), so ``import histovl`` stays cheap: torch, open_clip and
transformers are imported by the first command you call, not by the import.
"""

from __future__ import annotations

from histovl._lazy import lazy_exports

__version__ = "0.2.0.dev0"  # the one version: pyproject.toml reads it (dynamic)

#: public name -> module that defines it.
_EXPORTS: dict[str, str] = {
    # the shared run options
    "RunOptions": "histovl.options",
    "OnError": "histovl.options",
    # models, data, prompts
    "Encoder": "histovl.models",
    "ModelCard": "histovl.models",
    "load_model": "histovl.models",
    "model_statuses": "histovl.models",
    "ImageSet": "histovl.data",
    "load_image_set": "histovl.data",
    "mosaic": "histovl.data.mosaic",
    "MosaicConfig": "histovl.data.mosaic",
    "PromptSet": "histovl.prompts",
    "load_prompt_set": "histovl.prompts",
    "list_prompt_sets": "histovl.prompts",
    # commands and their configs
    "embed": "histovl.embed",
    "EmbedConfig": "histovl.embed",
    "EmbeddingCache": "histovl.embed",
    "cache_info": "histovl.embed.cache_admin",
    "cache_verify": "histovl.embed.cache_admin",
    "cache_prune": "histovl.embed.cache_admin",
    "cache_compact": "histovl.embed.cache_admin",
    "encode_images": "histovl.embed",
    "zeroshot": "histovl.zeroshot",
    "ZeroshotConfig": "histovl.zeroshot",
    "predict": "histovl.predict",
    "PredictConfig": "histovl.predict",
    "compare": "histovl.compare",
    "CompareConfig": "histovl.compare",
    "bench": "histovl.bench",
    "BenchConfig": "histovl.bench",
    "ablate_fusion": "histovl.zeroshot",
    "FusionAblationConfig": "histovl.zeroshot",
    "multilabel": "histovl.zeroshot.multilabel.pipeline",
    "MultilabelConfig": "histovl.zeroshot.multilabel",
    "retrieve": "histovl.retrieval",
    "build_index": "histovl.retrieval",
    "query_index": "histovl.retrieval",
    "RetrieveConfig": "histovl.retrieval",
    "IndexBuildConfig": "histovl.retrieval",
    "robustness": "histovl.robustness",
    "RobustnessConfig": "histovl.robustness",
    "cmm_fit": "histovl.heads.cmm_run",
    "cmm_eval": "histovl.heads.cmm_run",
    "CmmFitConfig": "histovl.heads.cmm_run",
    "CMMHead": "histovl.heads",
    "fewshot_eval": "histovl.heads",
    "fewshot_fit": "histovl.heads",
    "FewshotConfig": "histovl.heads",
    "FewshotFitConfig": "histovl.heads",
    "load_head": "histovl.heads",
    "finetune": "histovl.train",
    "FinetuneConfig": "histovl.train",
    "tile_slide": "histovl.slides",
    "embed_slide": "histovl.slides",
    "slides_embed": "histovl.slides",
    "SlideEmbedConfig": "histovl.slides",
    "TileSpec": "histovl.slides",
    "slide_zeroshot": "histovl.slides",
    "stainalign_fit": "histovl.stainalign",
    "stainalign_eval": "histovl.stainalign",
    "StainAlignParams": "histovl.stainalign",
    "StainAlignFitConfig": "histovl.stainalign",
    "build_deepliif_pairs": "histovl.stainalign",
    # the read-only web app
    "serve": "histovl.serve",
    "ServeConfig": "histovl.serve",
    # the installation check
    "doctor": "histovl.doctor",
    # errors
    "HistovlError": "histovl.errors",
}

__all__ = sorted([*_EXPORTS, "__version__"])


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)

