"""The index path: scan -> plan -> read/decode -> encode -> write.

``Indexer.run`` compares what is on disk with what the store holds and does the least work that
brings the store up to date: unchanged files (same size and mtime) are not read; changed files
whose content hash is unchanged are only touched; new files whose content is already indexed
(renames, duplicates) copy the stored vector; only the rest is decoded and encoded. Every write
is a database transaction that bumps the generation; the in-memory FAISS index follows each
commit and is saved at the end (and periodically), so a kill at any moment loses at most the
batch in flight.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
from sqlalchemy import func, select, update
from sqlalchemy.exc import DatabaseError, OperationalError
from sqlalchemy.orm import Session

from .config import CHECKPOINT_SECONDS, WRITE_CHUNK
from .corpus import (
    IMAGE,
    FileEntry,
    Record,
    Skip,
    decode_for_model,
    decode_worker_init,
    max_pixels,
    read_records,
    scan,
)
from .db import Embedding, Item, Root, Tombstone, next_generation, utcnow
from .errors import DecodeWorkersError, IndexingInterrupted, IndexWriteError
from .fsutil import path_fields
from .library import LibraryRoot, under_any
from .model import Encoder
from .store import IndexStore, vectors_from_blobs
from .vectors import VectorIndex

log = logging.getLogger(__name__)

# A file whose decoding takes longer than this (seconds) is abandoned and its worker process
# killed: a pathological or hostile file must never hang a run. MMSEARCH_DECODE_TIMEOUT overrides.
DEFAULT_DECODE_TIMEOUT = 60.0
DECODE_TIMEOUT_ENV = "MMSEARCH_DECODE_TIMEOUT"
CHECKPOINT_ENV = "MMSEARCH_CHECKPOINT_SECONDS"


def _env_seconds(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, ""))
    except ValueError:
        return default
    return value if value > 0 else default


def _decode_pool(workers: int):
    """Processes that decode images; a hung or crashed decode costs one worker, not the run.

    Workers fork from a small clean server process with the decoding module preloaded, and
    never import the caller's main script (``mmsearch.procs``), so a script without a main
    guard works.
    """
    from pebble import ProcessPool

    from .procs import worker_context

    context = worker_context(["mmsearch.corpus"])
    pool = ProcessPool(max_workers=workers, initializer=decode_worker_init, context=context)
    _check_pool(pool)
    return pool


def _check_pool(pool) -> None:
    """Fail clearly, not by skipping every image, when worker processes cannot start.

    The usual cause: a script that calls mmsearch at module level. New worker processes import
    the main script again and must not run it, so it needs an ``if __name__ == "__main__":``.
    """
    from pebble import ProcessExpired

    try:
        pool.schedule(os.getpid).result(timeout=120)
    except (ProcessExpired, FutureTimeout, OSError, RuntimeError) as exc:
        pool.stop()
        pool.join()
        raise DecodeWorkersError(
            "image decoding worker processes failed to start; a Python script that calls mmsearch "
            'at module level must put that code under `if __name__ == "__main__":`'
        ) from exc


class Progress(Protocol):
    """Receives progress from long operations; the CLI draws it with rich."""

    def start(self, phase: str, total: int | None) -> None: ...
    def advance(self, n: int = 1) -> None: ...
    def skip(self, skip: Skip) -> None: ...
    def note(self, message: str) -> None: ...


class NullProgress:
    def start(self, phase: str, total: int | None) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass

    def skip(self, skip: Skip) -> None:
        log.warning("skipped %s: %s", skip.path, skip.reason)

    def note(self, message: str) -> None:
        log.warning("%s", message)


@dataclass
class IndexReport:
    """What an indexing run did."""

    added: int = 0  # new items, encoded
    updated: int = 0  # changed items, re-encoded
    reembedded: int = 0  # unchanged items encoded again (their vector was missing: a model switch)
    reused: int = 0  # new or changed items whose vector was copied (renamed or duplicate content)
    removed: int = 0  # items whose files are gone
    unchanged: int = 0
    skipped: list[Skip] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def changed(self) -> bool:
        """True when the run changed what the index holds."""
        return bool(self.added or self.updated or self.reembedded or self.reused or self.removed)

    def summary(self) -> str:
        text = (
            (f"{self.reembedded} re-embedded, " if self.reembedded else "")
            + f"{self.added} added, {self.updated} updated, {self.reused} reused, "
            f"{self.removed} removed, {len(self.skipped)} skipped, {self.unchanged} unchanged "
            f"in {self.seconds:.1f}s"
        )
        return text + (" (interrupted: work so far saved)" if self.interrupted else "")

    def as_dict(self) -> dict[str, Any]:
        return {
            "added": self.added, "updated": self.updated, "reembedded": self.reembedded, "reused": self.reused,
            "removed": self.removed, "unchanged": self.unchanged, "skipped": len(self.skipped),
            "skipped_files": [{**path_fields(s.path), "reason": s.reason} for s in self.skipped],
            "seconds": round(self.seconds, 3), "interrupted": self.interrupted,
        }


@dataclass
class _Existing:
    id: int
    locator: str
    size: int
    mtime_ns: int
    content_hash: str
    modality: str
    has_vector: bool


@dataclass
class _Job:
    """A record that needs a vector: encoded, or copied from ``source`` (an item id)."""

    record: Record
    item_id: int | None  # existing row to update, or None for a new row
    source: int | None = None
    reembed: bool = False  # the row's content is unchanged; only its vector is missing


@dataclass
class _Plan:
    jobs: list[_Job] = field(default_factory=list)
    touch: list[tuple[int, Record]] = field(default_factory=list)
    remove: list[int] = field(default_factory=list)
    # Multi-record files (JSONL) being (re)written: (path, size, mtime_ns), set by ``_seal``.
    seal: list[tuple[str, int, int]] = field(default_factory=list)


class Indexer:
    """Brings an ``IndexStore`` up to date with files on disk, using one ``Encoder``."""

    def __init__(
        self,
        store: IndexStore,
        encoder_factory: Callable[[], Encoder],
        vectors: VectorIndex,
        progress: Progress | None = None,
        batch_size: int = 32,
        workers: int | None = None,
        never: Sequence[str] = (),
    ):
        self.store = store
        self.never = tuple(never)  # paths never indexed (the index folder itself)
        self._encoder_factory = encoder_factory
        self.vectors = vectors
        self.progress = progress or NullProgress()
        self.batch_size = max(1, batch_size)
        self.workers = workers or min(8, (os.cpu_count() or 2))
        self.report = IndexReport()
        self._last_save = time.monotonic()
        self._stop_requested = False
        self._stale: list[int] = []  # existing items whose changed file can no longer be decoded

    # -- public ------------------------------------------------------------------------------
    def run(self, roots: Sequence[LibraryRoot]) -> IndexReport:
        """Bring the index up to date with ``roots`` (each scanned with its own options)."""
        started = time.monotonic()
        with _deferred_interrupt(self):
            return self._run(list(roots), started)

    def _run(self, roots: list[LibraryRoot], started: float) -> IndexReport:
        try:
            try:
                self.store.remove_stray_temps()  # we hold the writer lock: no other writer's files
                # Roots first, before any item: a run killed at any point leaves them known, so a
                # bare `mmsearch index` resumes it and later runs remove what is deleted there.
                self._record_roots(roots)
                self.progress.start("scanning", None)
                scanned = scan(roots, never=self.never)
                for skip in scanned.skipped:
                    self._skip(skip)
                roots = [replace(r, link_targets=tuple(scanned.link_targets.get(r.path, r.link_targets))) for r in roots]
                self._record_roots(roots)
                plan = self._plan([r.path for r in roots], scanned.files, scanned.skipped)
                self._copy_and_touch(plan)
                self._encode_all([job for job in plan.jobs if job.source is None])
                self._seal(plan.seal)
                self._remove(plan.remove + self._stale)
                self._record_roots(roots, done=True)
            except KeyboardInterrupt as exc:
                self.report.interrupted = True
                self._finish(started)
                raise IndexingInterrupted(f"interrupted: {self.report.summary()}") from exc
            self._finish(started)
        except (OperationalError, DatabaseError) as exc:
            # Disk full, read-only folder, I/O error: the failed transaction rolled back, so the
            # database holds every batch committed before it and nothing half-written.
            raise IndexWriteError(
                f"cannot write to the index in {self.store.folder}: {getattr(exc, 'orig', exc)} "
                f"(the index keeps what was saved before this error)"
            ) from exc
        return self.report

    def reembed(self, items: list[tuple[int, Record]]) -> IndexReport:
        """Embed the records of existing items again (``mmsearch check --repair``): each
        ``(item id, record read from its file now)`` gets a new vector; items whose file can no
        longer be decoded are removed, as an indexing run would. Vectors are saved at the end."""
        started = time.monotonic()
        with _deferred_interrupt(self):
            self._encode_all([_Job(record, item_id) for item_id, record in items])
            self._remove(self._stale)
            self._finish(started)
        return self.report

    # -- planning ----------------------------------------------------------------------------
    def _existing_under(self, session: Session, roots: Sequence[str]) -> dict[str, list[_Existing]]:
        by_path: dict[str, list[_Existing]] = defaultdict(list)
        for root in roots:
            root = os.path.abspath(os.path.expanduser(root))
            prefix = root.rstrip(os.sep) + os.sep
            rows = session.execute(
                select(Item.id, Item.path, Item.locator, Item.size, Item.mtime_ns, Item.content_hash, Item.modality,
                       Embedding.item_id.is_not(None))
                .outerjoin(Embedding, Embedding.item_id == Item.id)
                .where((Item.path == root) | Item.path.startswith(prefix, autoescape=True))
            )
            for row in rows:
                by_path[row[1]].append(_Existing(row[0], row[2], row[3], row[4], row[5], row[6], bool(row[7])))
        return by_path

    def _plan(self, roots: Sequence[str], files: list[FileEntry], scan_skips: list[Skip]) -> _Plan:
        plan = _Plan()
        with self.store.session() as session:
            existing = self._existing_under(session, roots)
            dirty: list[FileEntry] = []
            for entry in files:
                old = existing.get(entry.path)
                if old and all(o.size == entry.size and o.mtime_ns == entry.mtime_ns and o.has_vector for o in old):
                    self.report.unchanged += len(old)
                else:
                    dirty.append(entry)
            # Items of files that vanished are removed, except under folders or files the scan
            # could not read this time (unmounted disk, permissions): those are kept as they are.
            present = {entry.path for entry in files}
            protected = tuple(s.path for s in scan_skips if s.protects)
            for path, olds in existing.items():
                if path not in present and not under_any(path, protected):
                    plan.remove.extend(o.id for o in olds)

            records_by_path = self._read_all(dirty)
            new_hashes: dict[tuple[str, str], int | None] = {}
            for entry in dirty:
                records = records_by_path.get(entry.path)
                if records is None:
                    # Unreadable now (permissions, I/O): keep what was indexed before. Content that
                    # can no longer be decoded: the old items no longer describe the file; remove.
                    if entry.path in self._undecodable:
                        plan.remove.extend(o.id for o in existing.get(entry.path, []))
                    continue
                olds = {o.locator: o for o in existing.get(entry.path, [])}
                if entry.kind == "jsonl":
                    # A file's lines are written over several transactions. Until the last one
                    # is in, its rows carry an mtime no file has, so a run killed half-way
                    # leaves the file "changed" and the next run finishes it.
                    plan.seal.append((entry.path, entry.size, entry.mtime_ns))
                    for record in records:
                        record.mtime_ns = UNSEALED
                for record in records:
                    old = olds.pop(record.locator, None)
                    same = old is not None and old.content_hash == record.content_hash and old.modality == record.modality
                    if same and old.has_vector:
                        plan.touch.append((old.id, record))
                        self.report.unchanged += 1
                        continue
                    plan.jobs.append(_Job(record, old.id if old else None, reembed=same))
                    new_hashes[(record.modality, record.content_hash)] = None
                plan.remove.extend(o.id for o in olds.values())
            self._find_sources(session, plan.jobs, new_hashes)
        return plan

    def _read_all(self, dirty: list[FileEntry]) -> dict[str, list[Record]]:
        """Records of each readable dirty file (hashing and header checks run in threads)."""
        self.progress.start("reading", len(dirty))
        out: dict[str, list[Record]] = {}
        self._undecodable: set[str] = set()
        with ThreadPoolExecutor(self.workers) as pool:
            for entry, (records, skips) in zip(dirty, pool.map(read_records, dirty)):
                for skip in skips:
                    self._skip(skip)
                if records or not skips:
                    out[entry.path] = records
                elif not any(skip.protects for skip in skips):
                    self._undecodable.add(entry.path)
                self.progress.advance()
                self._check_stop()
        return out

    def _find_sources(self, session: Session, jobs: list[_Job], wanted: dict[tuple[str, str], int | None]) -> None:
        """Point each job whose content is already indexed at an item holding that vector."""
        hashes = sorted({h for _, h in wanted})
        for start in range(0, len(hashes), 500):
            chunk = hashes[start:start + 500]
            rows = session.execute(  # only items that hold a vector can lend it
                select(Item.modality, Item.content_hash, func.min(Item.id))
                .join(Embedding, Embedding.item_id == Item.id)
                .where(Item.content_hash.in_(chunk))
                .group_by(Item.modality, Item.content_hash)
            )
            for modality, content_hash, item_id in rows:
                if (modality, content_hash) in wanted:
                    wanted[(modality, content_hash)] = item_id
        for job in jobs:
            job.source = wanted.get((job.record.modality, job.record.content_hash))

    # -- writing -----------------------------------------------------------------------------
    def _copy_and_touch(self, plan: _Plan) -> None:
        """Copy stored vectors to renamed/duplicate items and refresh metadata of touched ones."""
        copies = [job for job in plan.jobs if job.source is not None]
        with self.store.session() as session:
            for start in range(0, len(plan.touch), WRITE_CHUNK):
                with session.begin():
                    for item_id, record in plan.touch[start:start + WRITE_CHUNK]:
                        item = session.get(Item, item_id)
                        item.size, item.mtime_ns = record.size, record.mtime_ns
            for start in range(0, len(copies), WRITE_CHUNK):
                chunk = copies[start:start + WRITE_CHUNK]
                sources = {job.source for job in chunk}
                blobs = dict(session.execute(
                    select(Embedding.item_id, Embedding.vector).where(Embedding.item_id.in_(sources))
                ).all())
                session.rollback()  # end the read; _write opens its own transaction (we hold the writer lock)
                vectors = vectors_from_blobs([blobs[job.source] for job in chunk], self.store.dim)
                self._write(session, chunk, vectors)
                self.report.reused += len(chunk)
                self._check_stop()

    def _encode_all(self, jobs: list[_Job]) -> None:
        # Identical content among the new files is encoded once and written to every copy.
        groups: dict[tuple[str, str], list[_Job]] = defaultdict(list)
        for job in jobs:
            groups[(job.record.modality, job.record.content_hash)].append(job)
        self._groups = groups
        if not groups:
            return
        encoder = self._encoder_factory()
        leaders = [members[0] for members in groups.values()]
        self.progress.start("encoding", len(jobs))
        with self.store.session() as session:
            texts = [j for j in leaders if j.record.modality != IMAGE]
            images = [j for j in leaders if j.record.modality == IMAGE]
            for start in range(0, len(texts), self.batch_size):
                batch = texts[start:start + self.batch_size]
                vectors = encoder.encode_texts([j.record.text or "" for j in batch])
                self._write_groups(session, batch, vectors, groups)
                self._maybe_checkpoint()
            if not images:
                return
            pool = _decode_pool(self.workers)
            try:
                for batch, decoded in self._decoded_batches(pool, images, encoder):
                    if batch:
                        vectors = self._encode_decoded(encoder, decoded)
                        self._write_groups(session, batch, vectors, groups)
                    self._maybe_checkpoint()
            finally:
                pool.stop()  # kills workers still decoding (Ctrl-C, errors)
                pool.join()

    @staticmethod
    def _encode_decoded(encoder: Encoder, decoded: list[Any]) -> np.ndarray:
        if encoder.pixel_transform is not None:
            return encoder.encode_pixels(np.stack(decoded))
        import torch

        return encoder.encode_image_tensors(torch.stack(decoded))

    def _decoded_batches(self, pool, jobs: list[_Job], encoder: Encoder) -> Iterator[tuple[list[_Job], list[Any]]]:
        """Batches of (jobs, decoded images), decoded ahead in worker processes, in order.

        With a pixel transform the workers also resize and crop, and a batch is uint8 arrays;
        otherwise the model's own transform runs here and a batch is float tensors.
        """
        from pebble import ProcessExpired
        from PIL import Image

        preprocess = encoder.preprocess
        pixels = encoder.pixel_transform
        target = getattr(encoder, "image_size", 224)
        limit = max_pixels()
        timeout = _env_seconds(DECODE_TIMEOUT_ENV, DEFAULT_DECODE_TIMEOUT)

        def result_of(job: _Job, future: Future) -> Any:
            path = job.record.path
            try:
                result = future.result()
            except FutureTimeout:
                return Skip(path, f"decoding took longer than {timeout:g}s; abandoned", protects=False)
            except ProcessExpired as exc:
                return Skip(path, f"the decoder crashed on this file (exit code {exc.exitcode})", protects=False)
            except Exception as exc:  # an exception the decoder did not anticipate
                return Skip(path, f"cannot decode image: {exc}", protects=False)
            if isinstance(result, Skip) or pixels is not None:
                return result
            return preprocess(Image.fromarray(result, "RGB"))

        pending: list[tuple[_Job, Future]] = []
        cursor = 0
        lookahead = self.batch_size * 2  # bounded: at most two batches decoded ahead of the encoder
        while cursor < len(jobs) or pending:
            while cursor < len(jobs) and len(pending) < lookahead:
                future = pool.schedule(decode_for_model, args=(jobs[cursor].record.path, target, limit, pixels), timeout=timeout)
                pending.append((jobs[cursor], future))
                cursor += 1
            take, pending = pending[:self.batch_size], pending[self.batch_size:]
            ok_jobs, tensors = [], []
            for job, future in take:
                result = result_of(job, future)
                if isinstance(result, Skip):
                    self._skip(result)
                    self.progress.advance()
                    if not result.protects:
                        stale = self._groups.get((job.record.modality, job.record.content_hash), [job])
                        self._stale.extend(member.item_id for member in stale if member.item_id is not None)
                else:
                    ok_jobs.append(job)
                    tensors.append(result)
            yield ok_jobs, tensors

    def _write_groups(self, session: Session, leaders: list[_Job], vectors: np.ndarray, groups) -> None:
        jobs, rows = [], []
        for row, leader in enumerate(leaders):
            members = groups[(leader.record.modality, leader.record.content_hash)]
            jobs.extend(members)
            rows.extend([row] * len(members))
            self.report.reused += len(members) - 1
        self._write(session, jobs, vectors[rows], encoded=set(map(id, leaders)))

    def _write(self, session: Session, jobs: list[_Job], vectors: np.ndarray, encoded: set[int] | None = None) -> None:
        """Insert or update ``jobs`` with ``vectors`` in one transaction, then mirror in FAISS."""
        replaced: list[int] = []
        items: list[Item] = []
        with session.begin():
            gen = next_generation(session)
            for job, vector in zip(jobs, vectors):
                rec = job.record
                fields = dict(
                    path=rec.path, locator=rec.locator, modality=rec.modality, size=rec.size,
                    mtime_ns=rec.mtime_ns, content_hash=rec.content_hash, width=rec.width,
                    height=rec.height, text=rec.text, meta=rec.meta, gen=gen,
                )
                blob = np.ascontiguousarray(vector, dtype=np.float32).tobytes()
                if job.item_id is None:
                    item = Item(**fields)
                    item.embedding = Embedding(vector=blob)
                    session.add(item)
                else:
                    item = session.get(Item, job.item_id)
                    for key, value in fields.items():
                        setattr(item, key, value)
                    if item.embedding is None:
                        item.embedding = Embedding(vector=blob)
                    else:
                        item.embedding.vector = blob
                    replaced.append(job.item_id)
                items.append(item)
            session.flush()
            ids = np.array([item.id for item in items], np.int64)
        self.vectors.remove(replaced)
        self.vectors.add(ids, vectors)
        self.vectors.gen = gen
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

    def _seal(self, files: list[tuple[str, int, int]]) -> None:
        """Give multi-record files' rows their real size and mtime: every line is now written."""
        if not files:
            return
        with self.store.session() as session:
            for start in range(0, len(files), WRITE_CHUNK):
                with session.begin():
                    for path, size, mtime_ns in files[start:start + WRITE_CHUNK]:
                        session.execute(
                            update(Item).where(Item.path == path).values(size=size, mtime_ns=mtime_ns)
                        )
                self._check_stop()

    def _remove(self, ids: list[int]) -> None:
        if not ids:
            return
        with self.store.session() as session:
            for start in range(0, len(ids), WRITE_CHUNK):
                chunk = ids[start:start + WRITE_CHUNK]
                with session.begin():
                    gen = next_generation(session)
                    session.query(Item).filter(Item.id.in_(chunk)).delete(synchronize_session=False)
                    session.add_all(Tombstone(item_id=i, gen=gen) for i in chunk)
                self.vectors.remove(chunk)
                self.vectors.gen = gen
                self.report.removed += len(chunk)
                self._check_stop()

    def _record_roots(self, roots: Iterable[LibraryRoot], done: bool = False) -> None:
        """Store each root with the options it is scanned with; ``done``: a run completed."""
        with self.store.session() as session, session.begin():
            for root in roots:
                row = session.get(Root, root.path)
                if row is None:
                    row = Root(path=root.path)
                    session.add(row)
                row.options = root.options()
                if done:
                    row.indexed_at = utcnow()

    # -- helpers -----------------------------------------------------------------------------
    def _skip(self, skip: Skip) -> None:
        self.report.skipped.append(skip)
        self.progress.skip(skip)

    def _check_stop(self) -> None:
        """Raise KeyboardInterrupt here, between transactions, if Ctrl-C was pressed."""
        if self._stop_requested:
            raise KeyboardInterrupt

    def _maybe_checkpoint(self) -> None:
        self._check_stop()
        if time.monotonic() - self._last_save > _env_seconds(CHECKPOINT_ENV, CHECKPOINT_SECONDS):
            self.store.save_vectors(self.vectors)
            self._last_save = time.monotonic()

    def _finish(self, started: float) -> None:
        self.store.save_vectors(self.vectors)
        self.report.seconds = time.monotonic() - started


UNSEALED = -1  # mtime_ns of rows whose file is not completely written yet


@contextmanager
def _deferred_interrupt(indexer: Indexer) -> Iterator[None]:
    """Turn the first Ctrl-C into a request that the indexer honours between transactions.

    A KeyboardInterrupt raised in the middle of an SQLite commit or a file write could leave a
    connection holding its lock; deferring it to the next safe point keeps every step whole.
    A second Ctrl-C interrupts at once. Only possible in the main thread (elsewhere: no-op).
    """
    def request_stop(signum, frame):
        if indexer._stop_requested:
            raise KeyboardInterrupt
        indexer._stop_requested = True
        indexer.progress.note("stopping after the current batch (Ctrl-C again to stop now)")

    try:
        previous = signal.signal(signal.SIGINT, request_stop)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)

