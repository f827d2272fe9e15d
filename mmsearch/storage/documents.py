"""Finding every part of documents (``media.documents``): the catalogue rows that share a
document key. Reads only, in the caller's snapshot; SQL stays in the storage package: each
function takes the snapshot's session, and callers reach them as the catalogue ``Reader``'s
methods (``reader.parts_of(keys)``, ``reader.rows_by_id(ids)``, ...).

Rows are read as plain columns (no ORM objects): a fused search reads a few hundred rows per
query, and building ORM objects for them would cost more than the vector search itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from sqlalchemy import and_, bindparam, or_, select
from sqlalchemy.orm import Session

from ..media.capabilities import IMAGE_SIDE, in_documents, on_side
from ..media.documents import doc_key, image_locator, is_file_key
from .rows import IN_CHUNK, ItemRow
from .schema import Embedding, Item

# Keys per query (each stem is a range condition; SQLite caps an expression's depth at 1000).
STEMS_PER_QUERY = 200
LINES_PER_QUERY = 2_000
# Records of at most this many JSONL files are read one file at a time (exactly their lines); of
# more, by both IN lists at once, which also returns every other file's same line numbers (a
# query's candidates from ten 100k-line files read ten times the rows they need).
FILES_APART = 16

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
    vector: bytes | None = None  # its vector blob, when read with it (``vectors=True``)


_PLACE = (Item.id, Item.path, Item.locator, Item.modality, Item.mtime_ns, *_CAPTURE)


# Statements built once: the id lists are expanding parameters, so SQLAlchemy compiles each once
# (a fresh ``in_(list)`` coerces every id and compiles again: most of a fused query's time).
_ROWS_BY_ID = select(*_COLUMNS).where(Item.id.in_(bindparam("ids", expanding=True)))
_WITH_VECTOR = select(*_PLACE, Embedding.vector).select_from(Item).outerjoin(Embedding, Embedding.item_id == Item.id)
_PLACES_BY_ID = {False: select(*_PLACE), True: _WITH_VECTOR}
_PLACES_BY_ID = {v: q.where(Item.id.in_(bindparam("ids", expanding=True))) for v, q in _PLACES_BY_ID.items()}
_VECTORS_BY_ID = select(Embedding.item_id, Embedding.vector).where(
    Embedding.item_id.in_(bindparam("ids", expanding=True)))
_PLACES_OF_FILE = {v: q.where(Item.path == bindparam("path"), Item.locator.in_(bindparam("locators", expanding=True)))
                   for v, q in ((False, select(*_PLACE)), (True, _WITH_VECTOR))}
_PLACES_OF_LINES = {v: q.where(Item.path.in_(bindparam("paths", expanding=True)),
                               Item.locator.in_(bindparam("locators", expanding=True)))
                    for v, q in ((False, select(*_PLACE)), (True, _WITH_VECTOR))}


def _run(session: Session, statement, **params):
    """Rows of a Core statement in the session's snapshot (its transaction's connection, no ORM)."""
    return session.connection().execute(statement, params)


def _places(session: Session, *where, vectors: bool = False) -> list[Place]:
    return [Place(*row) for row in _run(session, (_WITH_VECTOR if vectors else select(*_PLACE)).where(*where))]


def _by_id(session: Session, ids: Sequence[int], statement, make) -> dict:
    """Rows of those of ``ids`` that exist, by id, in chunks the database accepts."""
    ids = list(ids)
    return {row[0]: make(*row) for start in range(0, len(ids), IN_CHUNK)
            for row in _run(session, statement, ids=ids[start:start + IN_CHUNK])}


def places_by_id(session: Session, ids: Sequence[int], vectors: bool = False) -> dict[int, Place]:
    """The places of those of ``ids`` that exist; ``vectors``: with their vector blobs (one
    read instead of two)."""
    return _by_id(session, ids, _PLACES_BY_ID[vectors], Place)


def rows_by_id(session: Session, ids: Sequence[int]) -> dict[int, ItemRow]:
    """The rows of those of ``ids`` that exist (``Reader.items`` without ORM objects)."""
    return _by_id(session, ids, _ROWS_BY_ID, ItemRow)


_IMAGES_BY_HASH = select(*_COLUMNS).where(Item.modality.in_(on_side(IMAGE_SIDE, in_documents=True)),
                                          Item.content_hash.in_(bindparam("hashes", expanding=True)))


def images_by_hash(session: Session, hashes: Iterable[str]) -> list[ItemRow]:
    """The image rows holding those bytes (``content_hash``): a picture's file and the JSONL
    records' image parts naming it, in id order."""
    hashes = sorted(set(hashes))
    rows = [ItemRow(*row) for start in range(0, len(hashes), IN_CHUNK)
            for row in _run(session, _IMAGES_BY_HASH, hashes=hashes[start:start + IN_CHUNK])]
    return sorted(rows, key=lambda r: r.id)


def vectors_by_id(session: Session, ids: Sequence[int]) -> list[tuple[int, bytes]]:
    """(item id, vector blob) of those of ``ids`` that have one (``Reader.embeddings``, with
    its statement compiled once)."""
    ids = list(ids)
    return [(int(i), bytes(blob)) for start in range(0, len(ids), IN_CHUNK)
            for i, blob in _run(session, _VECTORS_BY_ID, ids=ids[start:start + IN_CHUNK])]


def parts_of(session: Session, keys: Iterable[tuple[str, str]], vectors: bool = False) -> dict[tuple[str, str], list[Place]]:
    """Every item row of each document key, by key (keys without rows are absent; a video's
    frames are never looked up: its hit is its best frame); ``vectors``: with their vectors."""
    keys = list(dict.fromkeys(keys))
    wanted = set(keys)
    found: dict[tuple[str, str], list[Place]] = {}

    def take(rows: list[Place]) -> None:
        for row in rows:
            key = doc_key(row.path, row.locator, row.modality)
            if key in wanted:
                found.setdefault(key, []).append(row)

    lines = [k for k in keys if k[1] and not is_file_key(k)]
    stems = [k for k in keys if not k[1]]
    by_file: dict[str, list[str]] = {}
    for path, line in lines:
        by_file.setdefault(path, []).extend((line, image_locator(line)))
    if len(by_file) <= FILES_APART:
        # One file's lines at a time, on the (path, locator) unique index: exactly the rows asked for.
        for path, locators in by_file.items():
            for start in range(0, len(locators), LINES_PER_QUERY):
                take([Place(*row) for row in _run(session, _PLACES_OF_FILE[vectors], path=path,
                                                  locators=locators[start:start + LINES_PER_QUERY])])
    for start in range(0, len(lines), LINES_PER_QUERY) if len(by_file) > FILES_APART else ():
        chunk = lines[start:start + LINES_PER_QUERY]
        # Both IN lists on the (path, locator) unique index; pairs of another key are dropped by take.
        paths = sorted({path for path, _ in chunk})
        locators = sorted({loc for _, line in chunk for loc in (line, image_locator(line))})
        take([Place(*row) for row in _run(session, _PLACES_OF_LINES[vectors], paths=paths, locators=locators)])
    for start in range(0, len(stems), STEMS_PER_QUERY):
        # "stem." <= path < "stem/": every file named stem.<anything> in the stem's folder
        # (and a few deeper names, which doc_key leaves out).
        ranges = [and_(Item.path >= stem + ".", Item.path < stem + "/")
                  for stem, _ in stems[start:start + STEMS_PER_QUERY]]
        take(_places(session, or_(*ranges), Item.modality.in_(in_documents()), vectors=vectors))
    return found


_EMBEDDED_PLACES = (select(Item.id, Item.path, Item.locator, Item.modality)
                    .join(Embedding, Embedding.item_id == Item.id)
                    .where(Item.id > bindparam("last")).order_by(Item.id).limit(bindparam("size")))


_HAS_MODALITY = select(Item.id).where(Item.modality == bindparam("modality")).limit(1)


def has_modality(session: Session, modality: str) -> bool:
    """Whether any item of ``modality`` exists (one probe of the modality index)."""
    return _run(session, _HAS_MODALITY, modality=modality).first() is not None


def embedded_places(session: Session, size: int = 50_000):
    """Every (id, path, locator, modality) of an item that has a vector, in id order, ``size``
    rows at a time (what the document index groups into documents)."""
    last = 0
    while True:
        rows = [tuple(row) for row in _run(session, _EMBEDDED_PLACES, last=last, size=size)]
        if not rows:
            return
        yield rows
        last = rows[-1][0]
