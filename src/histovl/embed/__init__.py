"""The encoding engine and the content-keyed embedding cache."""

from histovl.embed.cache import EmbeddingCache, cache_for, default_cache_dir
from histovl.embed.engine import EmbeddingResult, Failure, ImageTransform, encode_images
from histovl.embed.run import EmbedSummary, embed, export_parquet

__all__ = [
    "EmbedSummary",
    "EmbeddingCache",
    "EmbeddingResult",
    "Failure",
    "ImageTransform",
    "cache_for",
    "default_cache_dir",
    "embed",
    "encode_images",
    "export_parquet",
]
