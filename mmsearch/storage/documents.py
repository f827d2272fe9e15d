"""Finding every part of documents (``media.documents``): the catalogue rows that share a
document key. Reads only, in the caller's snapshot; SQL stays in the storage package.

Rows are read as plain columns (no ORM objects): a fused search reads a few hundred rows per
query, and building ORM objects for them would cost more than the vector search itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from sqlalchemy import and_, or_, select

from ..media.documents import doc_key, image_locator
from .catalogue import IN_CHUNK, ItemRow, Reader
from .schema import Item

# Keys per query (each stem is a range condition; SQLite caps an expression's depth at 1000).
STEMS_PER_QUERY = 200
LINES_PER_QUERY = 2_000

# What search filters read (``filters.Filters.matches``): the capture date, else the file's time;
# the camera; the place.
_CAPTURE = (Item.taken_at, Item.date_source, Item.camera_make, Item.camera_model, Item.lat, Item.lon)
_COLUMNS = (Item.id, Item.path, Item.locator, Item.modality, Item.size, Item.mtime_ns, Item.content_hash,
            Item.width, Item.height, Item.text, Item.meta, *_CAPTURE)


class Place(NamedTuple):
    """What ranking needs of an item: which document it belongs to and what passes filters
    (the capture columns of ``ItemRow``, so ``Filters.matches`` takes a place)."""

    id: int
    path: str
    locator: str
    modality: str
    mtime_ns: int
    taken_at: Any
    date_source: str | None
    camera_make: str | None
    camera_model: str | None
    lat: float | None
    lon: float | None


_PLACE = (Item.id, Item.path, Item.locator, Item.modality, Item.mtime_ns, *_CAPTURE)


def _rows(reader: Reader, *where) -> list[ItemRow]:
    return [ItemRow(*row) for row in reader.session.execute(select(*_COLUMNS).where(*where))]


def _places(reader: Reader, *where) -> list[Place]:
    return [Place(*row) for row in reader.session.execute(select(*_PLACE).where(*where))]


def _by_id(reader: Reader, ids: Sequence[int], fetch) -> dict:
    """``fetch``'s rows of those of ``ids`` that exist, by id, in chunks the database accepts."""
    ids = list(ids)
    return {row.id: row for start in range(0, len(ids), IN_CHUNK)
            for row in fetch(reader, Item.id.in_(ids[start:start + IN_CHUNK]))}


def places_by_id(reader: Reader, ids: Sequence[int]) -> dict[int, Place]:
    return _by_id(reader, ids, _places)


def rows_by_id(reader: Reader, ids: Sequence[int]) -> dict[int, ItemRow]:
    """The rows of those of ``ids`` that exist (``Reader.items`` without ORM objects)."""
    return _by_id(reader, ids, _rows)


def parts_of(reader: Reader, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], list[Place]]:
    """Every item row of each document key, by key (keys without rows are absent; a video's
    frames are never looked up: its hit is its best frame)."""
    keys = list(dict.fromkeys(keys))
    wanted = set(keys)
    found: dict[tuple[str, str], list[Place]] = {}

    def take(rows: list[Place]) -> None:
        for row in rows:
            key = doc_key(row.path, row.locator, row.modality)
            if key in wanted:
                found.setdefault(key, []).append(row)

    lines = [k for k in keys if k[1] and k[1] != "video"]
    stems = [k for k in keys if not k[1]]
    for start in range(0, len(lines), LINES_PER_QUERY):
        chunk = lines[start:start + LINES_PER_QUERY]
        # Both IN lists on the (path, locator) unique index; pairs of another key are dropped by take.
        paths = sorted({path for path, _ in chunk})
        locators = sorted({loc for _, line in chunk for loc in (line, image_locator(line))})
        take(_places(reader, Item.path.in_(paths), Item.locator.in_(locators)))
    for start in range(0, len(stems), STEMS_PER_QUERY):
        # "stem." <= path < "stem/": every file named stem.<anything> in the stem's folder
        # (and a few deeper names, which doc_key leaves out).
        ranges = [and_(Item.path >= stem + ".", Item.path < stem + "/")
                  for stem, _ in stems[start:start + STEMS_PER_QUERY]]
        take(_places(reader, or_(*ranges), Item.modality != "video"))
    return found
