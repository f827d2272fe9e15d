"""The manifest: what makes a folder an index, and what it is an index *of*.

``manifest.json`` holds the schema version, the model identity and vector dimension (mirrored
in the catalogue, from which a damaged manifest is rebuilt), the vector index parameters, the
checksums of derived files, and the ONNX export record. It is written atomically; its presence
is what makes a folder an index.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import DamagedManifestError, IndexVersionError, NotAnIndexError
from ..fsutil import atomic_write_json

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1
# Manifest key of the checksums of the vectors files this index wrote, by generation.
VECTORS_FILES = "vectors_files"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def stamp(folder: Path) -> tuple[int, int, int] | None:
    """What changes whenever the manifest is rewritten (atomic writes replace the inode)."""
    try:
        st = os.stat(folder / MANIFEST)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def new_manifest(model: dict, dim: int, *, created_at: str | None = None, vectors: str | None = None) -> dict[str, Any]:
    """``created_at``: when the index was made (now by default); ``vectors``: ``pgvector`` when the
    vectors live in the PostgreSQL catalogue (keywords: both are strings)."""
    index = {"type": "pgvector", "requested": "pgvector"} if vectors == "pgvector" else \
        {"type": "flat", "requested": "auto"}
    return {
        "schema_version": SCHEMA_VERSION,
        "mmsearch_version": __version__,
        "created_at": created_at or now(),
        "updated_at": now(),
        "model": model,
        "dim": int(dim),
        "vector_index": index,
    }


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    atomic_write_json(folder / MANIFEST, manifest)


def read_raw(folder: Path) -> dict[str, Any]:
    """The manifest as JSON, unchecked (raises OSError or ValueError)."""
    return json.loads((folder / MANIFEST).read_text(encoding="utf-8"))


def check_manifest(folder: Path, manifest: Any) -> dict[str, Any]:
    """``manifest`` when every reader can rely on it; else NotAnIndexError (naming what is
    wrong and what to do) or IndexVersionError for one written by a newer mmsearch."""
    path = folder / MANIFEST
    if not isinstance(manifest, dict) or not isinstance(manifest.get("schema_version"), int):
        raise NotAnIndexError(f"{path} has no schema_version: not an mmsearch manifest")
    if manifest["schema_version"] > SCHEMA_VERSION:
        raise IndexVersionError(
            f"{folder} was written by a newer mmsearch (schema {manifest['schema_version']}, "
            f"this version reads up to {SCHEMA_VERSION}); upgrade mmsearch"
        )
    model, dim = manifest.get("model"), manifest.get("dim")
    if not isinstance(model, dict) or not isinstance(model.get("name"), str) or not model.get("fingerprint") \
            or not isinstance(dim, int) or isinstance(dim, bool) or dim <= 0:
        raise DamagedManifestError(
            f"{path} is damaged (the model or the vector dimension is missing or invalid); "
            f"`mmsearch check --repair` rebuilds it from the database"
        )
    return manifest


def rebuilt(folder: Path, recorded: dict[str, Any]) -> dict[str, Any]:
    """A new manifest from what the catalogue records, keeping the creation time if readable.
    Derived files it described (ONNX export, vector index parameters) are found again later."""
    created = None
    try:
        old = read_raw(folder)
        created = old.get("created_at") if isinstance(old, dict) and isinstance(old.get("created_at"), str) else None
    except (OSError, ValueError):
        pass
    return new_manifest(recorded["model"], recorded["dim"], created_at=created, vectors=recorded.get("vectors"))
