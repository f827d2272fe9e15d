"""Finding every part of documents (``media.documents``): the catalogue rows that share a
document key. Reads only, in the caller's snapshot; SQL stays in the storage package."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import and_, or_, select, tuple_

from ..media.documents import doc_key, image_locator
from .catalogue import Reader, _row
from .schema import Item

# Keys per query (each stem is a range condition; SQLite caps an expression's depth at 1000).
STEMS_PER_QUERY = 200
LINES_PER_QUERY = 5_000


def parts_of(reader: Reader, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], list]:
    """Every item row of each document key, by key (keys without rows are absent)."""
    keys = list(dict.fromkeys(keys))
    found: dict[tuple[str, str], list] = {}

    def take(items) -> None:
        for item in items:
            row = _row(item)
            key = doc_key(row.path, row.locator, row.modality)
            if key in wanted:
                found.setdefault(key, []).append(row)

    wanted = set(keys)
    lines = [k for k in keys if k[1] and k[1] != "video"]
    stems = [k for k in keys if not k[1]]  # (a video's frames are never looked up: its hit is its best frame)
    for start in range(0, len(lines), LINES_PER_QUERY):
        pairs = [(path, loc) for path, line in lines[start:start + LINES_PER_QUERY]
                 for loc in (line, image_locator(line))]
        take(reader.session.scalars(select(Item).where(tuple_(Item.path, Item.locator).in_(pairs))))
    for start in range(0, len(stems), STEMS_PER_QUERY):
        # "stem." <= path < "stem/": every file named stem.<anything> in the stem's folder
        # (and a few deeper names, which doc_key leaves out).
        ranges = [and_(Item.path >= stem + ".", Item.path < stem + "/")
                  for stem, _ in stems[start:start + STEMS_PER_QUERY]]
        take(reader.session.scalars(select(Item).where(or_(*ranges), Item.modality != "video")))
    return found
