"""What catalogue rows look like outside the database, and the small SQL helpers every query
module of the catalogue shares (the bottom of the catalogue's layers: it imports only the tables).

Rows leave the storage package as these plain dataclasses (``ItemRow``, ``ExistingItem``,
``RootRow``), never as ORM objects; ``NewRow`` is what a writer is given. Vectors are stored as
float32 blobs (``Writer.write_items``); ``vectors_from_blobs`` reads them back.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from ..errors import DamagedIndexError
from .schema import Item, Meta

# Ids per IN (...) query (SQLite allows 32766 bound parameters).
IN_CHUNK = 30_000
# Rows fetched per query when walking every embedding.
EMBEDDING_CHUNK = 50_000


@dataclass(frozen=True)
class ItemRow:
    """One stored item (its metadata, not its vector)."""

    id: int
    path: str
    locator: str
    modality: str
    size: int
    mtime_ns: int
    content_hash: str
    width: int | None = None
    height: int | None = None
    text: str | None = None
    meta: dict[str, Any] | None = None
    # Capture metadata (``media.exif``); taken_at None: dated by the file's mtime.
    taken_at: datetime | None = None
    date_source: str | None = None
    camera_make: str | None = None
    camera_model: str | None = None
    lat: float | None = None
    lon: float | None = None


@dataclass(frozen=True)
class ExistingItem:
    """What the planner needs of an indexed item to decide whether its file changed."""

    id: int
    locator: str
    size: int
    mtime_ns: int
    content_hash: str
    modality: str
    has_vector: bool


@dataclass(frozen=True)
class RootRow:
    path: str
    options: dict[str, Any] | None
    indexed_at: datetime | None


@dataclass
class NewRow:
    """An item to write: ``item_id`` None inserts it, an id updates that row."""

    item_id: int | None
    path: str
    locator: str
    modality: str
    size: int
    mtime_ns: int
    content_hash: str
    width: int | None = None
    height: int | None = None
    text: str | None = None
    meta: dict[str, Any] | None = None
    captured: dict[str, Any] | None = None  # CAPTURE_COLUMNS' values (None: none known)


# The capture metadata columns (``media.exif.Captured``'s fields).
CAPTURE_COLUMNS = ("taken_at", "date_source", "camera_make", "camera_model", "lat", "lon")


def row_of(item: Item) -> ItemRow:
    return ItemRow(item.id, item.path, item.locator, item.modality, item.size, item.mtime_ns, item.content_hash,
                   item.width, item.height, item.text, item.meta,
                   *(getattr(item, name) for name in CAPTURE_COLUMNS))


def under(column, prefixes: Iterable[str]):
    """SQL: ``column`` is one of ``prefixes`` or lies below one."""
    return or_(*[(column == p) | column.startswith(p.rstrip(os.sep) + os.sep, autoescape=True) for p in prefixes])


def get_text(session: Session, key: str) -> str | None:
    """The ``meta`` row ``key``'s value (None: no such row)."""
    return session.scalar(select(Meta.value).where(Meta.key == key))


def set_text(session: Session, key: str, value: str) -> None:
    row = session.get(Meta, key)
    if row is None:
        session.add(Meta(key=key, value=value))
    else:
        row.value = value


def get_int(session: Session, key: str) -> int:
    value = get_text(session, key)
    return int(value) if value is not None else 0


def vectors_from_blobs(blobs: list[bytes], dim: int) -> np.ndarray:
    """The vectors stored as ``blobs`` (each ``dim`` float32s), as one matrix; callers pass
    blobs of the right size (``usable_rows``), so a wrong one is damage ``check`` reports."""
    if not blobs:
        return np.empty((0, dim), np.float32)
    if any(len(b) != dim * 4 for b in blobs):
        raise DamagedIndexError(
            f"{sum(len(b) != dim * 4 for b in blobs)} stored vector(s) have the wrong size for this index "
            f"({dim} dimensions); run `mmsearch check --repair`"
        )
    return np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), dim)


def usable_rows(rows: list[tuple[int, bytes]], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of the (item id, blob) ``rows`` whose blob has the index's size: a damaged
    blob (``check`` names it, ``check --repair`` re-embeds it) is left out of every vector index,
    so searches answer from the good rows meanwhile."""
    rows = [r for r in rows if len(r[1]) == dim * 4]
    return np.array([r[0] for r in rows], np.int64), vectors_from_blobs([r[1] for r in rows], dim)
