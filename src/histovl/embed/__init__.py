"""The encoding engine and the content-keyed embedding cache."""

from histovl._command_module import make_callable
from histovl.embed.cache import EmbeddingCache, cache_for, default_cache_dir
from histovl.embed.engine import ImageTransform, encode_images, encode_with_options
from histovl.embed.fill import EmbeddingResult, Failure
from histovl.embed.run import EmbedConfig, EmbedSummary, embed, export_parquet

__all__ = [
    "EmbedConfig",
    "EmbedSummary",
    "EmbeddingCache",
    "EmbeddingResult",
    "Failure",
    "ImageTransform",
    "cache_for",
    "default_cache_dir",
    "embed",
    "encode_images",
    "encode_with_options",
    "export_parquet",
]

make_callable(__name__, embed)  # histovl.embed(...) runs the command
