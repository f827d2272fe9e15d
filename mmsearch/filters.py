"""Search filters on capture metadata: when (``after``/``before``), with what (``camera``) and
where (``near``), and the order of results (``sort``).

Pure Python: values are parsed and checked here (a bad one is a ``FilterError`` naming the
option), and ``Filters.matches`` decides for one stored row. The same decision as SQL, for
pushing a selective filter into the search, is ``storage.filtering``'s.

Dates compare as wall-clock times (see ``media.exif``): an item's date is its capture date, or
its file's modification time in this machine's zone. ``after`` is inclusive, ``before``
exclusive, so ``after=2024-01-01, before=2025-01-01`` is the year 2024.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from .errors import FilterError, TextInputError

RELEVANCE, DATE, DATE_ASC = "relevance", "date", "date-asc"
SORTS = (RELEVANCE, DATE, DATE_ASC)  # date: newest first
EARTH_RADIUS_KM = 6371.0088
KM_PER_DEGREE = math.pi * EARTH_RADIUS_KM / 180.0
MAX_CAMERA_CHARS = 200
_PARTIAL_DATE = re.compile(r"^\s*(\d{4})(?:-(\d{1,2}))?\s*$")


@dataclass(frozen=True)
class Near:
    """Within ``km`` kilometres (great-circle) of (``lat``, ``lon``)."""

    lat: float
    lon: float
    km: float

    def __str__(self) -> str:
        return f"{self.km:g} km of {self.lat:g},{self.lon:g}"


@dataclass(frozen=True)
class Filters:
    """What a hit must satisfy, beyond type and folder; all None: no filter."""

    after: datetime | None = None
    before: datetime | None = None
    camera: str | None = None  # normalised: single spaces
    near: Near | None = None

    @property
    def active(self) -> bool:
        return self != NO_FILTERS

    def matches(self, row: Any) -> bool:
        """Whether a stored row (``storage.ItemRow``) passes."""
        if self.after is not None or self.before is not None:
            when = item_date(row)[0]
            if when is None or (self.after is not None and when < self.after) or \
                    (self.before is not None and when >= self.before):
                return False
        if self.camera is not None and not camera_matches(row.camera_make, row.camera_model, self.camera):
            return False
        if self.near is not None:
            if row.lat is None or row.lon is None:
                return False
            if distance_km(self.near.lat, self.near.lon, row.lat, row.lon) > self.near.km:
                return False
        return True

    def describe(self) -> str:
        parts = []
        if self.after is not None:
            parts.append(f"after {self.after:%Y-%m-%d %H:%M:%S}")
        if self.before is not None:
            parts.append(f"before {self.before:%Y-%m-%d %H:%M:%S}")
        if self.camera is not None:
            parts.append(f"camera {self.camera!r}")
        if self.near is not None:
            parts.append(f"within {self.near}")
        return ", ".join(parts)


NO_FILTERS = Filters()


def parse(after: Any = None, before: Any = None, camera: Any = None, near: Any = None,
          prefix: str = "") -> Filters:
    """Checked filters from user values; ``prefix`` goes before option names in messages ("--"
    on the command line). Dates: ``date``/``datetime`` objects or ISO text (``2024``,
    ``2024-05``, ``2024-05-01``, ``2024-05-01T13:45``); near: "LAT,LON,KM" or a 3-sequence."""
    start = parse_date(after, f"{prefix}after")
    end = parse_date(before, f"{prefix}before")
    if start is not None and end is not None and start >= end:
        raise FilterError(f"{prefix}after ({start:%Y-%m-%d %H:%M:%S}) must be earlier than "
                          f"{prefix}before ({end:%Y-%m-%d %H:%M:%S})")
    return Filters(start, end, parse_camera(camera, f"{prefix}camera"), parse_near(near, f"{prefix}near"))


def parse_date(value: Any, name: str) -> datetime | None:
    """A naive wall-clock datetime (aware ones are turned into this machine's zone)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        text = value.strip()
        partial = _PARTIAL_DATE.match(text)
        try:
            if partial:  # 2024 or 2024-05: the start of that year or month
                moment = datetime(int(partial.group(1)), int(partial.group(2) or 1), 1)
            else:
                moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise FilterError(f"{name}: {value!r} is not a date; use YYYY-MM-DD (or YYYY, YYYY-MM, "
                              "YYYY-MM-DDTHH:MM)") from None
    else:
        raise FilterError(f"{name}: expected a date, got {type(value).__name__}")
    if moment.tzinfo is not None:
        moment = moment.astimezone().replace(tzinfo=None)
    return moment


def check_text(value: Any, name: str) -> Any:
    """``value`` as given, unless it is text holding a NUL character: SQLite's full-text syntax
    ends at one, PostgreSQL refuses it in text, and no file name holds one. Every text of a
    search request that reaches SQL or the file system passes here once, where it is parsed."""
    if isinstance(value, (str, os.PathLike)) and "\x00" in os.fspath(value):
        raise TextInputError(f"{name}: holds a NUL character (\\x00), which no search text, folder or "
                             "camera name may contain")
    return value


def parse_camera(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise FilterError(f"{name}: expected text, got {type(value).__name__}")
    check_text(value, name)
    text = " ".join(value.split())
    if not text:
        raise FilterError(f"{name}: empty camera name")
    if len(text) > MAX_CAMERA_CHARS:
        raise FilterError(f"{name}: camera name longer than {MAX_CAMERA_CHARS} characters")
    return text


def parse_near(value: Any, name: str) -> Near | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, Near):
        parts: Sequence[Any] = (value.lat, value.lon, value.km)
    elif isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
    elif isinstance(value, Sequence):
        parts = list(value)
    else:
        raise FilterError(f"{name}: expected LAT,LON,KM, got {type(value).__name__}")
    try:
        if len(parts) != 3 or any(isinstance(p, bool) for p in parts):
            raise ValueError
        lat, lon, km = (float(p) for p in parts)
    except (TypeError, ValueError):
        raise FilterError(f"{name}: expected LAT,LON,KM in decimal degrees and kilometres, "
                          f"e.g. 48.8584,2.2945,5; got {value!r}") from None
    if not all(math.isfinite(v) for v in (lat, lon, km)):
        raise FilterError(f"{name}: latitude, longitude and distance must be finite numbers")
    if not -90 <= lat <= 90:
        raise FilterError(f"{name}: latitude {lat:g} is outside -90..90")
    if not -180 <= lon <= 180:
        raise FilterError(f"{name}: longitude {lon:g} is outside -180..180")
    if km <= 0:
        raise FilterError(f"{name}: the distance must be more than 0 km, got {km:g}")
    return Near(lat, lon, km)


def check_sort(sort: Any, name: str = "sort") -> str:
    if sort not in SORTS:
        raise FilterError(f"{name}: unknown order {sort!r}: choose one of {', '.join(SORTS)}")
    return sort


# -- one row's values -----------------------------------------------------------------------------
def file_time(mtime_ns: int) -> datetime | None:
    """A file's modification time as a naive wall-clock time here (None for unsealed rows)."""
    if mtime_ns is None or mtime_ns < 0:
        return None
    return datetime.fromtimestamp(mtime_ns / 1e9).replace(microsecond=0)


# File times are int64 nanoseconds (1677 to 2262): a date beyond them compares as the bound.
NS_MIN, NS_MAX = -(2**63), 2**63 - 1


def local_ns(moment: datetime) -> int:
    """The mtime_ns that ``file_time`` shows as ``moment``; a date no file time can hold (year 1,
    year 9999) as the nearest bound, so that it compares as it should."""
    try:
        ns = int(moment.timestamp() * 1_000_000_000)
    except (OverflowError, ValueError, OSError):  # year 0 in this zone, or past the platform's range
        ns = NS_MIN if moment.year < 1970 else NS_MAX
    return max(NS_MIN, min(NS_MAX, ns))


def item_date(row: Any) -> tuple[datetime | None, str | None]:
    """(date, its source) of a stored row: the capture date, else the file's mtime ("file")."""
    if row.taken_at is not None:
        return row.taken_at, row.date_source
    when = file_time(row.mtime_ns)
    return (when, "file") if when is not None else (None, None)


def nocase(text: str) -> str:
    """ASCII-only lower case: what SQLite's NOCASE collation compares."""
    return text.translate(_ASCII_LOWER)


_ASCII_LOWER = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}


def camera_matches(make: str | None, model: str | None, wanted: str) -> bool:
    """``wanted`` names the model ("Pixel 7"), the make ("Canon") or both ("Google Pixel 7"),
    compared without ASCII case."""
    wanted = nocase(wanted)
    make, model = nocase(make or ""), nocase(model or "")
    return bool(wanted) and wanted in {model, make, f"{make} {model}"} - {""}


def camera_splits(wanted: str) -> list[tuple[str, str]]:
    """Every (make, model) that together read as ``wanted`` (split at each space)."""
    words = wanted.split(" ")
    return [(" ".join(words[:i]), " ".join(words[i:])) for i in range(1, len(words))]


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine, mean Earth radius)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def bounding_box(near: Near) -> tuple[float, float, list[tuple[float, float]]]:
    """(lat min, lat max, lon ranges) holding every point within ``near`` (one lon range, two
    across the antimeridian, the whole circle near a pole)."""
    dlat = near.km / KM_PER_DEGREE
    low, high = max(-90.0, near.lat - dlat), min(90.0, near.lat + dlat)
    widest = max(abs(low), abs(high))
    if widest >= 89.999:
        return low, high, [(-180.0, 180.0)]
    dlon = dlat / math.cos(math.radians(widest))
    if dlon >= 180:
        return low, high, [(-180.0, 180.0)]
    west, east = near.lon - dlon, near.lon + dlon
    if west < -180:
        return low, high, [(west + 360, 180.0), (-180.0, east)]
    if east > 180:
        return low, high, [(west, 180.0), (-180.0, east - 360)]
    return low, high, [(west, east)]


def sort_by_date(hits: list, sort: str) -> None:
    """Order ``hits`` (already cut by relevance) by date in place: newest first for DATE, oldest
    first for DATE_ASC; hits without a date last. Ranks follow the new order."""
    if sort == RELEVANCE:
        return
    newest = sort == DATE
    dated = [h for h in hits if h.taken_at is not None]
    undated = [h for h in hits if h.taken_at is None]
    dated.sort(key=lambda h: h.taken_at, reverse=newest)  # ISO text sorts as time
    hits[:] = dated + undated
    for rank, hit in enumerate(hits, 1):
        hit.rank = rank


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="seconds") if moment is not None else None


__all__ = ["DATE", "DATE_ASC", "FilterError", "Filters", "NO_FILTERS", "Near", "RELEVANCE", "SORTS", "parse"]
