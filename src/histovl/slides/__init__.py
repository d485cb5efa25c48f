"""Whole-slide images: reading, tissue detection, tiling, tile embeddings, slide zero-shot, maps.

Example:
    >>> from histovl.slides import TileSpec, slides_embed, tile_slide
    >>> result = tile_slide("slide.svs", "out/slide", TileSpec(size=224, mpp=0.5))  # doctest: +SKIP
    >>> se = slides_embed("histovl-lite", "slide.svs", "out/slide", prompts="lung-he-v1")  # doctest: +SKIP

`histovl slides tile` is `tile_slide`; `histovl slides embed` is `slides_embed`.
"""

from histovl.slides.embedding import (
    SlideEmbedding,
    SlideZeroShot,
    embed_slide,
    slide_zeroshot,
    top_j_pool,
    write_slide_zeroshot,
)
from histovl.slides.figures import class_map_image, heatmap_image, tissue_map_image
from histovl.slides.pipeline import (
    TilingResult,
    load_recorded_tiling,
    load_tiling,
    plan_slide,
    tile_slide,
)
from histovl.slides.reader import (
    OpenSlideReader,
    PlainImageReader,
    SlideOpenError,
    SlideReader,
    SlideReadError,
    TileFolderReader,
    TileReadError,
    allow_large_images,
    open_slide,
)
from histovl.slides.resume import TILING_FORMAT_VERSION, slide_identity, tiling_source
from histovl.slides.run import SlideEmbedConfig, slides_embed
from histovl.slides.tiling import (
    TILE_COLUMNS,
    Resolution,
    TileSpec,
    iter_tiles,
    plan_tiles,
    resolve_resolution,
)
from histovl.slides.tissue import TissueParams, detect_tissue, otsu_threshold, region_fractions

__all__ = [
    "TILE_COLUMNS",
    "TILING_FORMAT_VERSION",
    "OpenSlideReader",
    "PlainImageReader",
    "Resolution",
    "SlideEmbedConfig",
    "SlideEmbedding",
    "SlideOpenError",
    "SlideReadError",
    "SlideReader",
    "SlideZeroShot",
    "TileFolderReader",
    "TileReadError",
    "TileSpec",
    "TilingResult",
    "TissueParams",
    "allow_large_images",
    "class_map_image",
    "detect_tissue",
    "embed_slide",
    "heatmap_image",
    "iter_tiles",
    "load_recorded_tiling",
    "load_tiling",
    "open_slide",
    "otsu_threshold",
    "plan_slide",
    "plan_tiles",
    "region_fractions",
    "resolve_resolution",
    "slide_identity",
    "slide_zeroshot",
    "slides_embed",
    "tile_slide",
    "tiling_source",
    "tissue_map_image",
    "top_j_pool",
    "write_slide_zeroshot",
]
