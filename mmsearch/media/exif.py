"""When, where and with what a photo or video was taken: its capture metadata.

Read while a file's records are made, from the image Pillow has already opened for its header
(or the video container PyAV has opened for its probe): the file is never read again for it.
Every field is optional and read on its own: EXIF that is missing, truncated or nonsensical
loses that field only, never the item.

Dates are wall-clock times as the camera wrote them (EXIF has no time zone; a video's UTC
``creation_time`` is shown in this machine's zone). Without one, an item is dated by its
file's modification time (``date_source`` "file"): that fallback is derived when queried, not
stored, so it follows the file and needs nothing written for items indexed before this existed.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

EXIF = "exif"  # date_source: EXIF DateTimeOriginal (or DateTimeDigitized, DateTime)
CONTAINER = "container"  # date_source: a video container's creation_time
FILE = "file"  # date_source: the file's modification time (the fallback)

# EXIF tags (Pillow's ExifTags.Base / GPS numbers): IFD0, the Exif IFD, the GPS IFD.
_MAKE, _MODEL, _DATETIME = 0x010F, 0x0110, 0x0132
_DATETIME_ORIGINAL, _DATETIME_DIGITIZED = 0x9003, 0x9004
_GPS_LAT_REF, _GPS_LAT, _GPS_LON_REF, _GPS_LON = 1, 2, 3, 4
# Dates outside this span are camera clocks never set (0000:00:00) or garbage.
_YEARS = (1826, 2200)
_MAX_TEXT = 64  # longest make or model kept
_DATE_RE = re.compile(r"^\s*(\d{4})[:\-](\d{2})[:\-](\d{2})[ T](\d{2}):(\d{2}):(\d{2})")


@dataclass(frozen=True)
class Captured:
    """Capture metadata of one file; every field may be None (not recorded, or unreadable)."""

    taken_at: datetime | None = None  # naive wall-clock time
    date_source: str | None = None  # EXIF or CONTAINER when taken_at is set
    camera_make: str | None = None
    camera_model: str | None = None
    lat: float | None = None  # decimal degrees, north positive
    lon: float | None = None  # decimal degrees, east positive

    @property
    def empty(self) -> bool:
        return self == NOTHING

    @property
    def camera(self) -> str | None:
        return camera_name(self.camera_make, self.camera_model)


NOTHING = Captured()


def captured_of(row: Any) -> Captured:
    """The capture metadata of a stored row (``storage.ItemRow``)."""
    return Captured(row.taken_at, row.date_source, row.camera_make, row.camera_model, row.lat, row.lon)


def camera_name(make: str | None, model: str | None) -> str | None:
    """"Make Model" as people say it: "Google Pixel 7", but "Canon EOS R5" (not "Canon Canon ...")."""
    if not model:
        return make or None
    if not make or model.lower().startswith(make.lower().split()[0]):
        return model
    return f"{make} {model}"


def from_image(img: Any) -> Captured:
    """The capture metadata of an opened Pillow image (EXIF in JPEG, TIFF, PNG, WebP, HEIC...)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns of each corrupt EXIF entry it skips
        return _from_image(img)


def _from_image(img: Any) -> Captured:
    try:
        exif = img.getexif()
    except Exception:  # noqa: BLE001 - a broken EXIF block: no metadata, never a failed item
        return NOTHING
    if not exif:
        return NOTHING
    from PIL import ExifTags

    taken = None
    try:
        sub = exif.get_ifd(ExifTags.IFD.Exif)
    except Exception:  # noqa: BLE001
        sub = {}
    for source in ((sub, _DATETIME_ORIGINAL), (sub, _DATETIME_DIGITIZED), (exif, _DATETIME)):
        taken = _field(lambda: parse_exif_date(source[0].get(source[1])))
        if taken is not None:
            break
    make = _field(lambda: _text(exif.get(_MAKE)))
    model = _field(lambda: _text(exif.get(_MODEL)))
    lat = lon = None
    try:
        gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    except Exception:  # noqa: BLE001
        gps = {}
    if gps:
        lat = _field(lambda: _coordinate(gps.get(_GPS_LAT), gps.get(_GPS_LAT_REF), "S", 90.0))
        lon = _field(lambda: _coordinate(gps.get(_GPS_LON), gps.get(_GPS_LON_REF), "W", 180.0))
        if lat is None or lon is None or (lat == 0.0 and lon == 0.0):  # no fix: receivers write 0, 0
            lat = lon = None
    return Captured(taken, EXIF if taken else None, make, model, lat, lon)


def from_container(metadata: dict[str, str]) -> Captured:
    """The capture metadata in a video container's tags (PyAV's ``container.metadata``):
    ``creation_time`` (UTC), QuickTime/Android make, model and ISO 6709 location."""
    tags = {str(k).lower(): v for k, v in (metadata or {}).items()}
    taken = _field(lambda: _utc_to_local(tags.get("creation_time")))
    make = _field(lambda: _text(_first(tags, "com.apple.quicktime.make", "make", "com.android.manufacturer")))
    model = _field(lambda: _text(_first(tags, "com.apple.quicktime.model", "model", "com.android.model")))
    where = _field(lambda: parse_iso6709(_first(tags, "com.apple.quicktime.location.iso6709", "location")))
    lat, lon = where if where else (None, None)
    return Captured(taken, CONTAINER if taken else None, make, model, lat, lon)


# -- parsing ---------------------------------------------------------------------------------------
def _field(read) -> Any:
    try:
        return read()
    except Exception:  # noqa: BLE001 - one unreadable field is left out, nothing else
        return None


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    text = " ".join(value.replace("\x00", " ").split())
    text = "".join(ch for ch in text if ch.isprintable())
    return text[:_MAX_TEXT] or None


def _first(tags: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if tags.get(key):
            return tags[key]
    return None


def parse_exif_date(value: Any) -> datetime | None:
    """An EXIF date ("2024:05:01 13:45:10", NULs and blanks tolerated), or None."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str):
        return None
    match = _DATE_RE.match(value.replace("\x00", ""))
    if not match:
        return None
    parts = [int(p) for p in match.groups()]
    if not _YEARS[0] <= parts[0] <= _YEARS[1]:
        return None
    try:
        return datetime(*parts)
    except ValueError:  # month 13, 31 February...
        return None


def _utc_to_local(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value.strip():
        return None
    moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    local = moment.astimezone().replace(tzinfo=None, microsecond=0)
    return local if _YEARS[0] <= local.year <= _YEARS[1] and local.year > 1970 else None  # 1970/1904: unset


def _coordinate(value: Any, ref: Any, negative: str, limit: float) -> float | None:
    """Decimal degrees from EXIF (degrees, minutes, seconds) rationals and a hemisphere ref."""
    if value is None:
        return None
    parts = [float(v) for v in (value if isinstance(value, (tuple, list)) else (value,))]
    if not 1 <= len(parts) <= 3 or not all(math.isfinite(p) and p >= 0 for p in parts):
        return None
    degrees = sum(p / 60.0 ** n for n, p in enumerate(parts))
    if isinstance(ref, bytes):
        ref = ref.decode("ascii", "replace")
    if isinstance(ref, str) and ref.strip("\x00 ").upper() == negative:
        degrees = -degrees
    return round(degrees, 7) if abs(degrees) <= limit else None


_ISO6709_RE = re.compile(r"^([+-]\d+(?:\.\d+)?)([+-]\d+(?:\.\d+)?)")


def parse_iso6709(value: Any) -> tuple[float, float] | None:
    """(lat, lon) of an ISO 6709 decimal-degrees string such as "+37.3349-122.0090+010.000/"."""
    if not isinstance(value, str):
        return None
    match = _ISO6709_RE.match(value.strip())
    if not match:
        return None
    lat, lon = float(match.group(1)), float(match.group(2))
    if not (abs(lat) <= 90 and abs(lon) <= 180) or (lat == 0 and lon == 0):
        return None
    return lat, lon
