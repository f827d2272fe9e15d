"""The write sink: the one place a run writes, through the store (``store.write()``: one catalogue
transaction under the write rule, mirrored into the vector index once it commits)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict

import numpy as np

from ..library import LibraryRoot
from ..media import Record
from ..storage import IndexStore, NewRow
from ..storage.store import vectors_from_blobs
from .plan import Job
from .report import IndexReport, Progress

# Rows written per transaction when no encoding is needed (reuse, removal, touch).
WRITE_CHUNK = 2_000


def new_row(job: Job) -> NewRow:
    rec = job.record
    captured = asdict(rec.captured) if rec.captured is not None else None
    return NewRow(job.item_id, rec.path, rec.locator, rec.modality, rec.size, rec.mtime_ns, rec.content_hash,
                  rec.width, rec.height, rec.text, rec.meta, captured)


class WriteSink:
    """Writes a run's results, counts them in the report, saves the vector index now and then."""

    def __init__(self, store: IndexStore, report: IndexReport, progress: Progress,
                 check_stop: Callable[[], None], checkpoint_seconds: float = 120.0):
        self.store = store
        self.report = report
        self.progress = progress
        self.check_stop = check_stop  # raises KeyboardInterrupt between transactions on request
        self.checkpoint_seconds = checkpoint_seconds
        self._last_save = time.monotonic()

    def roots(self, roots: Iterable[LibraryRoot], done: bool = False) -> None:
        """Store each root with the options it is scanned with; ``done``: a run completed."""
        with self.report.timing("write"), self.store.write() as w:
            for root in roots:
                w.record_root(root.path, root.options(), done)

    def encoded(self, leaders: Sequence[Job], vectors: np.ndarray, groups: dict[tuple[str, str], list[Job]]) -> None:
        """Write each encoded job's vector to it and to every job of identical content."""
        jobs, rows = [], []
        for row, leader in enumerate(leaders):
            members = groups.get(leader.content, [leader])
            jobs.extend(members)
            rows.extend([row] * len(members))
            self.report.reused += len(members) - 1
        self._write(jobs, vectors[rows], encoded={id(job) for job in leaders})
        self.checkpoint()

    def frames(self, jobs: Sequence[Job], vectors: np.ndarray) -> None:
        """Write a video's frames (one row and vector each), in transactions of a batch or so."""
        for start in range(0, len(jobs), WRITE_CHUNK):
            self._write(jobs[start:start + WRITE_CHUNK], vectors[start:start + WRITE_CHUNK])
            self.report.frames += len(jobs[start:start + WRITE_CHUNK])
            self.check_stop()
        self.checkpoint()

    def copies(self, jobs: Sequence[Job]) -> None:
        """Write jobs whose vector is copied from an item that holds the same content."""
        for start in range(0, len(jobs), WRITE_CHUNK):
            chunk = jobs[start:start + WRITE_CHUNK]
            with self.store.read() as r:
                blobs = dict(r.embeddings(sorted({job.source for job in chunk})))
            self._write(chunk, vectors_from_blobs([blobs[job.source] for job in chunk], self.store.dim))
            self.report.reused += len(chunk)
            self.check_stop()

    def _write(self, jobs: Sequence[Job], vectors: np.ndarray, encoded: set[int] | None = None) -> None:
        with self.report.timing("write"), self.store.write() as w:
            w.write_items([new_row(job) for job in jobs], vectors)
        if encoded is not None:
            for job in jobs:
                if id(job) in encoded:
                    if job.item_id is None:
                        self.report.added += 1
                    elif job.reembed:
                        self.report.reembedded += 1
                    else:
                        self.report.updated += 1
                self.progress.advance()

    def touch(self, touched: Sequence[tuple[int, Record]]) -> None:
        """New size and mtime for items whose content did not change."""
        for start in range(0, len(touched), WRITE_CHUNK):
            with self.report.timing("write"), self.store.write() as w:
                w.touch((item_id, rec.size, rec.mtime_ns) for item_id, rec in touched[start:start + WRITE_CHUNK])
            self.check_stop()

    def seal(self, files: Sequence[tuple[str, int, int]]) -> None:
        """Give multi-record files' rows their real size and mtime: every record is now written."""
        for start in range(0, len(files), WRITE_CHUNK):
            with self.report.timing("write"), self.store.write() as w:
                w.seal(files[start:start + WRITE_CHUNK])
            self.check_stop()

    def remove(self, ids: Sequence[int]) -> None:
        ids = list(dict.fromkeys(ids))
        for start in range(0, len(ids), WRITE_CHUNK):
            chunk = ids[start:start + WRITE_CHUNK]
            with self.report.timing("write"), self.store.write() as w:
                w.remove(chunk)
            self.report.removed += len(chunk)
            self.check_stop()

    def checkpoint(self) -> None:
        """Stop here if asked; save the vector index when the last save is old enough, so
        readers in other processes replay fewer rows."""
        self.check_stop()
        if time.monotonic() - self._last_save > self.checkpoint_seconds:
            self.save()

    def save(self) -> None:
        with self.report.timing("save"):
            self.store.save_vectors()
        self._last_save = time.monotonic()
