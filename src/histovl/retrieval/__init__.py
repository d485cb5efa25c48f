"""Image retrieval: a persistent FAISS index, batched search with exclusions, HA@K and friends.

Example:
    >>> from histovl.retrieval import retrieve, build_index, query_index  # doctest: +SKIP
    >>> retrieve("histovl-lite", "tiles/", out="runs/retrieval").metrics["ha@5"]  # doctest: +SKIP

See docs/retrieval.md for the metric definitions, tie rules and storage options.
"""

from histovl.retrieval.evaluation import (
    FIXED_METRICS,
    LeaveOneOut,
    leave_one_out,
    relevant_counts,
    retrieval_metrics,
)
from histovl.retrieval.index import IndexFormatError, VectorIndex
from histovl.retrieval.metrics import ha_at_k, map_at_k, mmv_at_k, recall_at_k
from histovl.retrieval.query import IndexBuildConfig, ModelMismatchError, build_index, query_index
from histovl.retrieval.run import RetrievalResult, RetrieveConfig, retrieve
from histovl.retrieval.search import SearchResult, search_excluding
from histovl.retrieval.storage import IndexOptions, get_storage, list_storage, register_storage

__all__ = [
    "FIXED_METRICS",
    "IndexBuildConfig",
    "IndexFormatError",
    "IndexOptions",
    "LeaveOneOut",
    "ModelMismatchError",
    "RetrievalResult",
    "RetrieveConfig",
    "SearchResult",
    "VectorIndex",
    "build_index",
    "get_storage",
    "ha_at_k",
    "leave_one_out",
    "list_storage",
    "map_at_k",
    "mmv_at_k",
    "query_index",
    "recall_at_k",
    "register_storage",
    "relevant_counts",
    "retrieval_metrics",
    "retrieve",
    "search_excluding",
]
