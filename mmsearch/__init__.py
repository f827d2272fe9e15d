"""mmsearch: cross-modal image/text retrieval on open_clip, FAISS and SQLite.

    from mmsearch import Engine

    with Engine("indexes/photos") as engine:
        engine.add(["./photos"])
        hits = engine.search("red pasta dish", k=5)
"""

__version__ = "0.1.0"

from .errors import (  # noqa: E402
    DamagedManifestError,
    DecodeWorkersError,
    EmptyIndexError,
    IndexingInterrupted,
    IndexLockedError,
    IndexNotFoundError,
    IndexTypeError,
    IndexVersionError,
    IndexWriteError,
    MMSearchError,
    ModelLoadError,
    ModelMismatchError,
    NotAnIndexError,
    PathNotFoundError,
    QueryError,
    SettingsError,
)

# The engine and its dependencies (SQLAlchemy, FAISS, NumPy) load on first use, so that the CLI
# can start work (e.g. loading the text encoder in a thread) while they import.
_LAZY = {
    "Engine": "engine", "IndexReport": "indexing", "ModelSpec": "encoders", "Settings": "settings",
    "Hit": "search.query", "Hits": "search.query", "Item": "search.query", "QueryTerm": "search.query",
    "parse_query": "search.query",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Engine", "Hit", "Hits", "Item", "QueryTerm", "IndexReport", "ModelSpec", "Settings", "parse_query",
    "MMSearchError", "IndexNotFoundError", "NotAnIndexError", "IndexVersionError", "IndexLockedError", "IndexWriteError", "DecodeWorkersError", "IndexTypeError",
    "ModelLoadError", "ModelMismatchError", "QueryError", "IndexingInterrupted", "PathNotFoundError", "EmptyIndexError",
    "DamagedManifestError", "SettingsError",
]
