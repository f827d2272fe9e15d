"""``index --refresh-metadata``: read the capture metadata (``media.exif``) of items already
indexed, without encoding anything.

Items indexed before mmsearch read EXIF have none stored (their date is their file's time), and
an unchanged file is never read again by an indexing run. This reads only each file's header
(Pillow opens the image without decoding it; PyAV reads the container's tags), in threads, and
writes the columns in transactions that change no vector (no generation bump, nothing to mirror).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

from ..media import media_registry
from ..media.capabilities import captured as captured_modalities
from ..media.exif import NOTHING, Captured
from ..storage import IndexStore
from .report import IndexReport, Progress

WRITE_CHUNK = 2_000


def read_captured(path: str, modality: str) -> Captured | None:
    """The capture metadata in the file's header; None when the file cannot be read now."""
    reader = media_registry().capture_reader(modality)
    if reader is None:
        return None
    try:
        return reader(path)
    except Exception:  # noqa: BLE001 - unreadable or gone: left as it is (an indexing run deals with it)
        return None


def refresh(store: IndexStore, roots: Sequence[str], report: IndexReport, progress: Progress,
            workers: int = 2) -> int:
    """Read and store the capture metadata of every item under ``roots`` whose modality carries
    it (images, videos); returns how many items' metadata changed."""
    with store.read() as r:
        rows = r.capture_rows(captured_modalities(), list(roots))
    by_file: dict[tuple[str, str], list[int]] = {}
    for item_id, path, modality in rows:
        by_file.setdefault((path, modality), []).append(item_id)
    files = list(by_file)
    progress.start("metadata", len(files))
    changed = 0
    pending: list[tuple[int, dict[str, Any] | None]] = []
    with report.timing("read"), ThreadPoolExecutor(max(1, workers)) as pool:
        for (path, modality), captured in zip(files, pool.map(lambda f: read_captured(*f), files)):
            progress.advance()
            if captured is None:
                continue
            values = asdict(captured) if captured != NOTHING else None
            pending.extend((item_id, values) for item_id in by_file[(path, modality)])
            if len(pending) >= WRITE_CHUNK:
                changed += _write(store, report, pending)
                pending = []
    return changed + _write(store, report, pending)


def _write(store: IndexStore, report: IndexReport, values: list[tuple[int, dict[str, Any] | None]]) -> int:
    if not values:
        return 0
    with report.timing("write"), store.write() as w:
        return w.set_captured(values)
