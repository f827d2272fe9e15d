"""mmsearch: cross-modal image/text retrieval on open_clip, FAISS and SQLite.

    from mmsearch import Engine

    with Engine("indexes/photos") as engine:
        engine.add(["./photos"])
        hits = engine.search("red pasta dish", k=5)
"""

__version__ = "0.1.0"

from .engine import Engine  # noqa: E402
from .errors import (  # noqa: E402
    IndexingInterrupted,
    IndexLockedError,
    IndexNotFoundError,
    IndexVersionError,
    IndexWriteError,
    DecodeWorkersError,
    IndexTypeError,
    MMSearchError,
    ModelLoadError,
    ModelMismatchError,
    NotAnIndexError,
    QueryError,
)
from .indexer import IndexReport  # noqa: E402
from .model import ModelSpec  # noqa: E402
from .query import Hit, QueryTerm, parse_query  # noqa: E402

__all__ = [
    "Engine", "Hit", "QueryTerm", "IndexReport", "ModelSpec", "parse_query",
    "MMSearchError", "IndexNotFoundError", "NotAnIndexError", "IndexVersionError", "IndexLockedError", "IndexWriteError", "DecodeWorkersError", "IndexTypeError",
    "ModelLoadError", "ModelMismatchError", "QueryError", "IndexingInterrupted",
]
