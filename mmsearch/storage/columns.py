"""Every item's filterable metadata as numpy columns, so a filter over a million items is
evaluated in a few milliseconds (listing the same ids through SQLite costs about 4 us a row, more
than the vector search itself; see BENCHMARKS.md).

The columns are read in one statement on a connection of their own and are used only while
that connection's ``PRAGMA data_version`` is unchanged, i.e. while no other connection has
committed anything since: any write (indexing, ``--refresh-metadata``, another process) makes
them stale. A stale or missing copy is reloaded in a background thread while queries use the
catalogue's SQL (``filtering.passing_ids``), so a query never waits for a reload.
"""

from __future__ import annotations

import calendar
import logging
import math
import sqlite3
import threading
from datetime import datetime
from pathlib import Path

import numpy as np

from ..filters import Filters, bounding_box, camera_matches, EARTH_RADIUS_KM

log = logging.getLogger(__name__)

NO_DATE = np.iinfo(np.int64).min
# Items' dates as wall-clock seconds written as if UTC (the capture date, else the file's time
# in this machine's zone, to the second: as ``filters.item_date``).
_LOAD = """
SELECT id,
       CASE WHEN taken_at IS NOT NULL THEN CAST(strftime('%s', taken_at) AS INTEGER)
            WHEN mtime_ns >= 0 THEN CAST(strftime('%s', mtime_ns / 1000000000, 'unixepoch', 'localtime') AS INTEGER)
       END,
       modality, camera_make, camera_model, lat, lon
FROM items ORDER BY id
"""


def wall_seconds(moment: datetime) -> int:
    """``moment`` (naive wall clock) as the columns' seconds (rounded up: dates are whole seconds)."""
    return calendar.timegm(moment.timetuple()) + (1 if moment.microsecond else 0)


class Columns:
    """One load of the columns (immutable), positions aligned with ``ids`` (ascending), with
    the positions sorted by date, camera and latitude so that a filter starts from the items in
    its range (O(passing items), not O(all items))."""

    def __init__(self, rows: list[tuple]):
        n = len(rows)
        self.ids = np.fromiter((r[0] for r in rows), np.int64, n)
        self.when = np.fromiter((NO_DATE if r[1] is None else r[1] for r in rows), np.int64, n)
        modalities: dict[str, int] = {}
        self.modality = np.fromiter((modalities.setdefault(r[2], len(modalities)) for r in rows), np.int16, n)
        self.modalities = modalities
        cameras: dict[tuple, int] = {}
        self.camera = np.fromiter((cameras.setdefault((r[3], r[4]), len(cameras)) for r in rows), np.int32, n)
        self.cameras = list(cameras)
        nan = float("nan")
        self.lat = np.fromiter((nan if r[5] is None else r[5] for r in rows), np.float64, n)
        self.lon = np.fromiter((nan if r[6] is None else r[6] for r in rows), np.float64, n)
        self.by_date = np.argsort(self.when, kind="stable")
        self.dates = self.when[self.by_date]
        self.by_camera = np.argsort(self.camera, kind="stable")
        self.camera_starts = np.searchsorted(self.camera[self.by_camera], np.arange(len(self.cameras) + 1))
        self.by_lat = np.argsort(self.lat, kind="stable")  # NaN last
        self.lats = self.lat[self.by_lat]

    def passing(self, filters: Filters, modality: str | None = None) -> np.ndarray:
        """Ids (ascending) of the items that pass."""
        dated = filters.after is not None or filters.before is not None
        low = wall_seconds(filters.after) if filters.after is not None else NO_DATE + 1
        high = wall_seconds(filters.before) if filters.before is not None else np.iinfo(np.int64).max
        good = None
        if filters.camera is not None:
            good = np.asarray([i for i, (make, model) in enumerate(self.cameras)
                               if camera_matches(make, model, filters.camera)], np.int32)
        box = bounding_box(filters.near) if filters.near is not None else None
        # Start from the smallest range an ordering gives, then check the other conditions there.
        starts = []
        if dated:
            starts.append(self.by_date[np.searchsorted(self.dates, low):np.searchsorted(self.dates, high)])
        if good is not None:
            starts.append(np.concatenate([self.by_camera[self.camera_starts[c]:self.camera_starts[c + 1]]
                                          for c in good]) if len(good) else np.empty(0, np.int64))
        if box is not None:
            starts.append(self.by_lat[np.searchsorted(self.lats, box[0]):np.searchsorted(self.lats, box[1], "right")])
        at = min(starts, key=len) if starts else np.arange(len(self.ids))
        if modality is not None:
            code = self.modalities.get(modality)
            at = at[self.modality[at] == code] if code is not None else at[:0]
        if dated:
            when = self.when[at]
            at = at[(when >= low) & (when < high)]
        if good is not None:
            at = at[np.isin(self.camera[at], good)]
        if box is not None:
            lat, lon = self.lat[at], self.lon[at]
            inside = (lat >= box[0]) & (lat <= box[1])
            inside &= np.logical_or.reduce([(lon >= w) & (lon <= e) for w, e in box[2]])
            at, lat, lon = at[inside], np.radians(lat[inside]), np.radians(lon[inside])
            p0, l0 = math.radians(filters.near.lat), math.radians(filters.near.lon)
            a = np.sin((lat - p0) / 2) ** 2 + math.cos(p0) * np.cos(lat) * np.sin((lon - l0) / 2) ** 2
            at = at[2 * EARTH_RADIUS_KM * np.arcsin(np.minimum(1.0, np.sqrt(a))) <= filters.near.km]
        return np.sort(self.ids[at])


class ColumnCache:
    """The columns of one database, valid while nothing was committed since they were read."""

    def __init__(self, db_path: Path):
        self.db_path = Path(db_path)
        self._watch: sqlite3.Connection | None = None  # only asks PRAGMA data_version
        self._lock = threading.Lock()  # guards the watching connection and the fields below
        self._columns: Columns | None = None
        self._version: int | None = None
        self._loading: threading.Thread | None = None

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, check_same_thread=False, isolation_level=None)

    def _data_version(self) -> int:
        if self._watch is None:
            self._watch = self._connect()
        return int(self._watch.execute("PRAGMA data_version").fetchone()[0])

    def current(self) -> Columns | None:
        """The columns when they are up to date; else None, and a reload starts in the background."""
        try:
            with self._lock:
                version = self._data_version()
                if self._columns is not None and version == self._version:
                    return self._columns
                if self._loading is None or not self._loading.is_alive():
                    self._loading = threading.Thread(target=self._load, name="mmsearch-columns", daemon=True)
                    self._loading.start()
        except sqlite3.Error as exc:
            log.debug("filter columns unavailable: %s", exc)
        return None

    def load_now(self) -> Columns | None:
        """Load (or reuse) the columns in this thread's time: for benchmarks and tests."""
        for _ in range(3):
            columns = self.current()
            if columns is not None:
                return columns
            loading = self._loading
            if loading is not None:
                loading.join()
        return self.current()

    def _load(self) -> None:
        """Read the columns on a connection of their own (queries go on meanwhile); they count
        as current only if nothing was committed between the two version checks around it."""
        try:
            with self._lock:
                before = self._data_version()
            conn = self._connect()
            try:
                rows = conn.execute(_LOAD).fetchall()  # one statement: one snapshot
            finally:
                conn.close()
            columns = Columns(rows)
            with self._lock:
                if self._data_version() == before:
                    self._columns, self._version = columns, before
        except (sqlite3.Error, MemoryError) as exc:
            log.warning("cannot load the filter columns (%s); filters use the catalogue's SQL", exc)

    def close(self) -> None:
        with self._lock:
            if self._watch is not None:
                self._watch.close()
                self._watch = None
