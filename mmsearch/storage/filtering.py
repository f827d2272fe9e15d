"""Search filters as SQL: the ids of the items that pass (``mmsearch.filters``), so a selective
filter is pushed into the search instead of over-fetching ranked hits and discarding most.

Each filter reads an index (``schema.Item``'s ``ix_items_*``): a date range reads
``taken_at``, and for items without a capture date the ``mtime_ns`` range, from one index; a
camera is a few equality lookups; a place is a latitude range (then the exact distance here).
Also the capture metadata written for items already indexed (``index --refresh-metadata``).
Each function takes the catalogue transaction's session; callers reach them as the catalogue's
``Reader`` and ``Writer`` methods (``passing_ids``, ``sql_conditions``, ``capture_rows``,
``set_captured``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from sqlalchemy import and_, func, or_, select, union_all, update

from ..filters import EARTH_RADIUS_KM, Filters, bounding_box, camera_splits, distance_km, local_ns, nocase
from sqlalchemy.orm import Session

from .rows import CAPTURE_COLUMNS, under
from .schema import Item


def _date_branches(filters: Filters) -> list:
    """Capture date in [after, before), or no capture date and the file's mtime in it: two
    disjoint conditions, each a range of the one index ``ix_items_taken`` (read as a UNION ALL,
    which SQLite runs as two covering index scans, 2-3x faster than their OR)."""
    taken, fallback = [Item.taken_at.is_not(None)], [Item.taken_at.is_(None), Item.mtime_ns >= 0]
    if filters.after is not None:
        taken.append(Item.taken_at >= filters.after)
        fallback.append(Item.mtime_ns >= local_ns(filters.after))
    if filters.before is not None:
        taken.append(Item.taken_at < filters.before)
        fallback.append(Item.mtime_ns < local_ns(filters.before))
    return [and_(*taken), and_(*fallback)]


def _camera_condition(wanted: str, nocase_columns: bool = True):
    """``wanted`` as the camera's model, make, or make and model, without ASCII case: SQLite's
    columns compare so themselves (NOCASE, and their indexes serve it); elsewhere both sides are
    lowered (PostgreSQL's lower() also folds non-ASCII letters, a superset)."""
    if nocase_columns:
        make_col, model_col, fold = Item.camera_make, Item.camera_model, (lambda text: text)
    else:
        make_col, model_col, fold = func.lower(Item.camera_make), func.lower(Item.camera_model), nocase
    terms = [model_col == fold(wanted), make_col == fold(wanted)]
    terms += [and_(make_col == fold(make), model_col == fold(model)) for make, model in camera_splits(wanted)]
    return or_(*terms)


def _place_condition(filters: Filters):
    low, high, ranges = bounding_box(filters.near)
    lons = [Item.lon.between(west, east) for west, east in ranges]
    return and_(Item.lat.between(low, high), or_(*lons) if len(lons) > 1 else lons[0])


def where(filters: Filters, modality: str | None = None, prefixes: Sequence[str] | None = None,
          nocase_columns: bool = True) -> list:
    """The SQL conditions of ``filters`` other than dates (and of a modality and folders, when
    given); ``nocase_columns``: the database is SQLite (its camera columns ignore ASCII case)."""
    conditions = []
    if filters.camera is not None:
        conditions.append(_camera_condition(filters.camera, nocase_columns))
    if filters.near is not None:
        conditions.append(_place_condition(filters))
    if modality is not None:
        conditions.append(Item.modality == modality)
    if prefixes:
        conditions.append(_path_ranges(prefixes) if nocase_columns else under(Item.path, prefixes))
    return conditions


def _path_ranges(prefixes: Sequence[str]):
    """SQLite: the items at or below ``prefixes``, as ranges of the path index (``path >=
    'dir/' AND path < 'dir0'``: '0' follows the separator). Exact under SQLite's byte-order
    (BINARY) collation, where the ``LIKE`` of ``rows.under`` reads every row; not used on
    PostgreSQL, whose text order follows the database's collation."""
    following = chr(ord(os.sep) + 1)
    terms = []
    for prefix in prefixes:
        base = prefix.rstrip(os.sep)
        terms.append((Item.path == prefix) | and_(Item.path >= base + os.sep, Item.path < base + following))
    return or_(*terms)


def sql_conditions(filters: Filters, modality: str | None = None, prefixes: Sequence[str] | None = None) -> list:
    """Every condition of ``filters`` (dates too, as one OR of their two branches), a modality
    and folders, for a PostgreSQL statement that filters inside its vector search."""
    conditions = where(filters, modality, prefixes, nocase_columns=False)
    if filters.after is not None or filters.before is not None:
        conditions.append(or_(*_date_branches(filters)))
    if filters.near is not None:  # the box's corners are farther than the radius: haversine decides
        near = filters.near
        p1, p2 = func.radians(near.lat), func.radians(Item.lat)
        a = func.power(func.sin((p2 - p1) / 2), 2) + \
            func.cos(p1) * func.cos(p2) * func.power(func.sin(func.radians(Item.lon - near.lon) / 2), 2)
        conditions.append(2 * EARTH_RADIUS_KM * func.asin(func.least(1.0, func.sqrt(a))) <= near.km)
    return conditions


def passing_ids(session: Session, filters: Filters, modality: str | None = None,
                prefixes: Sequence[str] | None = None, cap: int | None = None) -> np.ndarray | None:
    """Ids of the items that pass, ascending; None when more than ``cap`` do (a filter that
    selects too much to be worth listing: the caller over-fetches instead)."""
    conditions = where(filters, modality, prefixes, session.get_bind().dialect.name == "sqlite")
    dated = filters.after is not None or filters.before is not None
    columns = (Item.id, Item.lat, Item.lon) if filters.near is not None else (Item.id,)
    branches = [select(*columns).where(branch, *conditions) for branch in _date_branches(filters)] if dated \
        else [select(*columns).where(*conditions)]
    query = union_all(*branches) if len(branches) > 1 else branches[0]
    if cap is not None:
        query = query.limit(cap + 1)
    rows = session.execute(query).all()
    if cap is not None and len(rows) > cap:
        return None
    if filters.near is None:
        ids = np.fromiter((row[0] for row in rows), np.int64, len(rows))
    else:  # the box's corners are farther than the radius: the exact distance decides
        near = filters.near
        ids = np.fromiter((i for i, lat, lon in rows if distance_km(near.lat, near.lon, lat, lon) <= near.km), np.int64)
    ids.sort()
    return ids


def set_captured(session: Session, values: Iterable[tuple[int, dict[str, Any] | None]]) -> int:
    """Write the capture metadata of existing items (no vector changes: no generation bump);
    returns how many rows changed."""
    changed = 0
    for item_id, captured in values:
        fields = {name: (captured or {}).get(name) for name in CAPTURE_COLUMNS}
        changed += session.execute(update(Item).where(Item.id == item_id).values(**fields)).rowcount or 0
    return changed


def capture_rows(session: Session, modalities: Sequence[str], prefixes: Sequence[str] | None = None) -> list[tuple[int, str, str]]:
    """(id, path, modality) of the items of ``modalities`` (under ``prefixes``), by path."""
    query = select(Item.id, Item.path, Item.modality).where(Item.modality.in_(list(modalities)))
    if prefixes:
        query = query.where(under(Item.path, prefixes))
    return [tuple(row) for row in session.execute(query.order_by(Item.path, Item.id))]
