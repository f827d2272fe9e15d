"""Search filters as SQL: the ids of the items that pass (``mmsearch.filters``), so a selective
filter is pushed into the search instead of over-fetching ranked hits and discarding most.

Each filter reads an index (``schema.Item``'s ``ix_items_*``): a date range reads
``taken_at``, and for items without a capture date the ``mtime_ns`` range, from one index; a
camera is a few equality lookups; a place is a latitude range (then the exact distance here).
Also the capture metadata written for items already indexed (``index --refresh-metadata``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from sqlalchemy import and_, func, or_, select, update

from ..filters import Filters, bounding_box, camera_splits, distance_km, local_ns
from .catalogue import CAPTURE_COLUMNS, Reader, Writer, _under
from .schema import Item


def _date_condition(filters: Filters):
    """Capture date in [after, before), or no capture date and the file's mtime in it."""
    taken, fallback = [Item.taken_at.is_not(None)], [Item.taken_at.is_(None), Item.mtime_ns >= 0]
    if filters.after is not None:
        taken.append(Item.taken_at >= filters.after)
        fallback.append(Item.mtime_ns >= local_ns(filters.after))
    if filters.before is not None:
        taken.append(Item.taken_at < filters.before)
        fallback.append(Item.mtime_ns < local_ns(filters.before))
    return or_(and_(*taken), and_(*fallback))


def _camera_condition(wanted: str):
    terms = [Item.camera_model == wanted, Item.camera_make == wanted]  # NOCASE columns
    terms += [and_(Item.camera_make == make, Item.camera_model == model) for make, model in camera_splits(wanted)]
    return or_(*terms)


def _place_condition(filters: Filters):
    low, high, ranges = bounding_box(filters.near)
    lons = [Item.lon.between(west, east) for west, east in ranges]
    return and_(Item.lat.between(low, high), or_(*lons) if len(lons) > 1 else lons[0])


def where(filters: Filters, modality: str | None = None, prefixes: Sequence[str] | None = None) -> list:
    """The SQL conditions of ``filters`` (and of a modality and folders, when given)."""
    conditions = []
    if filters.after is not None or filters.before is not None:
        conditions.append(_date_condition(filters))
    if filters.camera is not None:
        conditions.append(_camera_condition(filters.camera))
    if filters.near is not None:
        conditions.append(_place_condition(filters))
    if modality is not None:
        conditions.append(Item.modality == modality)
    if prefixes:
        conditions.append(_under(Item.path, prefixes))
    return conditions


def passing_ids(reader: Reader, filters: Filters, modality: str | None = None,
                prefixes: Sequence[str] | None = None, cap: int | None = None) -> np.ndarray | None:
    """Ids of the items that pass, ascending; None when more than ``cap`` might (a filter that
    selects too much to be worth listing: the caller over-fetches instead)."""
    conditions = where(filters, modality, prefixes)
    session = reader.session
    if cap is not None:
        # Counting through the index stops at cap + 1: cheap also when the filter selects a lot.
        limited = select(Item.id).where(*conditions).limit(cap + 1).subquery()
        if (session.scalar(select(func.count()).select_from(limited)) or 0) > cap:
            return None
    if filters.near is None:
        ids = np.fromiter(session.scalars(select(Item.id).where(*conditions)), np.int64)
    else:
        near = filters.near
        ids = np.fromiter((i for i, lat, lon in session.execute(select(Item.id, Item.lat, Item.lon).where(*conditions))
                           if distance_km(near.lat, near.lon, lat, lon) <= near.km), np.int64)
    ids.sort()
    return ids


def set_captured(writer: Writer, values: Iterable[tuple[int, dict[str, Any] | None]]) -> int:
    """Write the capture metadata of existing items (no vector changes: no generation bump);
    returns how many rows changed."""
    changed = 0
    for item_id, captured in values:
        fields = {name: (captured or {}).get(name) for name in CAPTURE_COLUMNS}
        changed += writer.session.execute(update(Item).where(Item.id == item_id).values(**fields)).rowcount or 0
    return changed


def capture_rows(reader: Reader, modalities: Sequence[str], prefixes: Sequence[str] | None = None) -> list[tuple[int, str, str]]:
    """(id, path, modality) of the items of ``modalities`` (under ``prefixes``), by path."""
    query = select(Item.id, Item.path, Item.modality).where(Item.modality.in_(list(modalities)))
    if prefixes:
        query = query.where(_under(Item.path, prefixes))
    return [tuple(row) for row in reader.session.execute(query.order_by(Item.path, Item.id))]
