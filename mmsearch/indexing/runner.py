"""The index path, stage by stage: scan -> read -> plan -> decode -> encode -> write.

``Indexer.run`` compares what is on disk with what the catalogue holds and does the least work
that brings the index up to date (see ``plan``). Images are decoded by a decode executor
(``executors``: worker processes here, another executor for a cluster), encoded in batches, and
written by the sink through the store's write rule; every write is one transaction, mirrored
into the vector index, which is saved at the end (and periodically), so a kill at any moment
loses at most the batch in flight. The seconds spent in each stage go into the report.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from typing import Any

import numpy as np

from ..encoders import ImageEncoder
from ..errors import IndexingInterrupted, IndexWriteError
from ..fsutil import display_path
from ..library import LibraryRoot
from ..media import FileEntry, Record, Registry, Skip, media_registry, scan
from ..media.scan import HEIF_HINT, HEIF_MISSING
from ..media.capabilities import has_moments
from ..media.records import is_placeholder
from ..media.video import Sampling, SampledFrames, drop_repeats, frame_record, hash_range
from ..settings import Settings
from ..storage import DATABASE_ERRORS, IndexStore
from .executors import DecodeExecutor, LocalExecutor
from .plan import UNSEALED, Job, assign_sources, find_changes, group_by_content, known_video_frames, plan_records
from .report import IndexReport, NullProgress, Progress
from .sink import WriteSink
from .skipped import SeenSkips

DEFAULT_BATCH = 32


class Indexer:
    """Brings an ``IndexStore`` up to date with files on disk, using one encoder (made on first
    need by ``encoder_factory``: a run with nothing to encode never loads a model)."""

    def __init__(
        self,
        store: IndexStore,
        encoder_factory: Callable[[], Any],
        *,
        progress: Progress | None = None,
        batch_size: int = DEFAULT_BATCH,
        workers: int | None = None,
        never: Sequence[str] = (),
        settings: Settings | None = None,
        kinds: Registry | None = None,
        executor: DecodeExecutor | None = None,
    ):
        self.store = store
        self._encoder_factory = encoder_factory
        self.progress = progress or NullProgress()
        self.batch_size = max(1, batch_size)
        self.settings = settings or Settings()
        self.never = tuple(never)  # paths never indexed (the index folder itself)
        self.kinds = kinds or media_registry()
        self.executor = executor or LocalExecutor(workers, self.settings.decode_timeout, self.settings.max_pixels)
        self.workers = getattr(self.executor, "workers", workers or 2)
        self.report = IndexReport()
        self._stop_requested = False
        self._stale: list[int] = []  # existing items whose changed file can no longer be decoded
        self.sampling = Sampling(self.settings.video_interval, self.settings.video_max_frames)
        self.sink = WriteSink(store, self.report, self.progress, self._check_stop, self.settings.checkpoint_seconds)
        self.seen_skips = SeenSkips(store.folder)

    # -- public ------------------------------------------------------------------------------
    def run(self, roots: Sequence[LibraryRoot]) -> IndexReport:
        """Bring the index up to date with ``roots`` (each scanned with its own options)."""
        return self._guarded(lambda: self._run(list(roots)))

    def reembed(self, items: list[tuple[int, Record]],
                videos: Sequence[tuple[Record, dict[str, int]]] = ()) -> IndexReport:
        """Embed the records of existing items again (``mmsearch check --repair``): each
        ``(item id, record read from its file now)`` gets a new vector; items whose file can no
        longer be decoded are removed, as an indexing run would. ``videos``: (the video read
        now, its rows by locator): sampled again, its frames written over those rows."""
        def work() -> None:
            self.store.vectors()
            self._encode_all([Job(record, item_id) for item_id, record in items])
            self._index_videos([Job(record, None, replaces=dict(rows)) for record, rows in videos])
            self.sink.remove(self._stale)
        return self._guarded(work)

    def _guarded(self, work: Callable[[], None]) -> IndexReport:
        started = time.monotonic()
        try:
            with _deferred_interrupt(self), self.executor:  # one executor (a Ray) for all phases
                try:
                    work()
                except KeyboardInterrupt as exc:
                    self.report.interrupted = True
                    self._finish(started)
                    raise IndexingInterrupted(f"interrupted: {self.report.summary()}") from exc
                self._finish(started)
        except DATABASE_ERRORS as exc:
            # Disk full, read-only folder, I/O error: the failed transaction rolled back, so the
            # database holds every batch committed before it and nothing half-written.
            raise IndexWriteError(
                f"cannot write to the index in {self.store.folder}: {getattr(exc, 'orig', exc)} "
                f"(the index keeps what was saved before this error)"
            ) from exc
        return self.report

    def _run(self, roots: list[LibraryRoot]) -> None:
        report, sink = self.report, self.sink
        self.store.remove_stray_temps()  # we hold the writer lock: no other writer's files
        # Roots first, before any item: a run killed at any point leaves them known, so a bare
        # `mmsearch index` resumes it and later runs remove what is deleted there.
        sink.roots(roots)
        self.progress.start("scanning", None)
        with report.timing("scan"):
            scanned = scan(roots, never=self.never, kinds=self.kinds)
        heif = [skip for skip in scanned.skipped if skip.reason == HEIF_MISSING]
        for skip in scanned.skipped:
            self._skip(skip, named_apart=skip in heif)
        if heif:  # once per run, with the way forward
            more = f" and {len(heif) - 1} more" if len(heif) > 1 else ""
            self.progress.note(f"not indexed: {display_path(heif[0].path)}{more} (HEIC/HEIF photos; {HEIF_HINT})")
        roots = [replace(r, link_targets=tuple(scanned.link_targets.get(r.path, r.link_targets))) for r in roots]
        sink.roots(roots)
        with report.timing("plan"), self.store.read() as r:
            existing = r.existing_under([root.path for root in roots])
        dirty, unchanged, vanished = find_changes(scanned.files, existing, scanned.skipped)
        report.unchanged += unchanged
        records, undecodable = self._read_all(dirty, roots)
        with report.timing("plan"):
            self._known_videos(records)
            multi = self.kinds.multi_record_kinds()
            plan = plan_records(dirty, records, undecodable, existing, multi)
            with self.store.read() as r:
                assign_sources(plan.jobs, r.vector_sources({job.content for job in plan.jobs}, self.store.dim * 4))
        report.unchanged += plan.unchanged
        if plan.to_copy or plan.to_encode or plan.videos or plan.remove or vanished:
            self.store.vectors()  # loaded and brought up to date: every write mirrors into it
        sink.touch(plan.touch)
        sink.copies(plan.to_copy)
        self._encode_all(plan.to_encode)
        self._index_videos(plan.videos)
        sink.seal(plan.seal)
        sink.remove(vanished + plan.remove + self._stale)
        sink.roots(roots, done=True)
        self.seen_skips.save()

    # -- reading -----------------------------------------------------------------------------
    def _read_all(self, dirty: list[FileEntry], roots: Sequence[LibraryRoot]) -> tuple[dict[str, list[Record]], set[str]]:
        """Records of each readable dirty file (header checks and hashing run in threads), and
        the paths whose content can no longer be decoded; files a record names are read only
        inside the library of ``roots``."""
        self.progress.start("reading", len(dirty))
        records: dict[str, list[Record]] = {}
        undecodable: set[str] = set()
        max_pixels = self.settings.max_pixels
        with self.report.timing("read"), ThreadPoolExecutor(self.workers) as pool:
            for entry, (found, skips) in zip(dirty, pool.map(lambda e: self.kinds.read_records(e, max_pixels, roots), dirty)):
                for skip in skips:
                    self._skip(skip)
                if found or not skips:
                    records[entry.path] = found
                elif not any(skip.protects for skip in skips):
                    undecodable.add(entry.path)
                self.progress.advance()
                self._check_stop()
        return records, undecodable

    # -- decoding and encoding -----------------------------------------------------------------
    def _encode_all(self, jobs: list[Job]) -> None:
        # Identical content among the new files is encoded once and written to every copy.
        groups = group_by_content(jobs)
        if not groups:
            return
        leaders = [members[0] for members in groups.values()]
        workers = self.kinds.decoded_in_workers()
        texts = [job for job in leaders if job.record.modality not in workers]
        # (moments are never decoded one by one: a video's frames are sampled together)
        images = [job for job in leaders if job.record.modality in workers and not has_moments(job.record.modality)]
        remote = getattr(self.executor, "decode_and_encode", None)
        # An executor that encodes (Ray's actors) takes the texts too; else they are encoded here.
        remote_texts = texts if remote is not None else []
        with self.executor if images or remote_texts else nullcontext():
            if images and hasattr(self.executor, "prestart"):
                self.executor.prestart()  # the workers start while the encoder loads
            encoder = self._encoder_factory()
            self.progress.start("encoding", len(jobs))
            if remote is None:
                for start in range(0, len(texts), self.batch_size):
                    batch = texts[start:start + self.batch_size]
                    with self.report.timing("encode"):
                        vectors = encoder.encode_texts([job.record.text or "" for job in batch])
                    self.sink.encoded(batch, vectors, groups)
            if images or remote_texts:
                self._encode_decoded(images, remote_texts, encoder, groups)

    def _encode_decoded(self, images: list[Job], texts: list[Job], encoder: Any, groups: dict[str, list[Job]]) -> None:
        for decoded in self._decoded(images, encoder, texts):
            for job, skip in decoded.failed:
                self._skip(skip)
                self.progress.advance()
                if not skip.protects:
                    self._stale.extend(m.item_id for m in groups.get(job.content, [job]) if m.item_id is not None)
            if decoded.jobs:
                vectors = decoded.vectors
                if vectors is None:
                    with self.report.timing("encode"):
                        vectors = encode_arrays(encoder, decoded.arrays)
                self.sink.encoded(decoded.jobs, vectors, groups)
            else:
                self.sink.checkpoint()
        self._runner_summary()

    def _runner_summary(self) -> None:
        summary = getattr(self.executor, "summary", None)
        if summary:
            self.report.runner = dict(summary)

    def _decoded(self, images: list[Job], encoder: Any, texts: list[Job]) -> Iterator[Any]:
        """Decoded batches of ``images``: encoded by the executor where it can (Ray's actors,
        which take the ``texts`` too: the time waiting for them counts as encode), else decoded
        for the encoder here."""
        remote = getattr(self.executor, "decode_and_encode", None)
        if remote is not None:
            return self._timed(remote(images, encoder, self.batch_size, self.progress, texts=texts), "encode")
        return self._timed(self.executor.decode(images, encoder.image_size, encoder.pixel_transform, self.batch_size),
                           "decode")

    # -- videos --------------------------------------------------------------------------------
    def _known_videos(self, records: dict[str, list[Record]]) -> None:
        """Videos read now whose content the index already holds become their stored frames."""
        placeholders = [found[0] for found in records.values() if len(found) == 1 and is_placeholder(found[0])]
        if not placeholders:
            return
        by_modality: dict[str, set[str]] = {}
        for record in placeholders:
            by_modality.setdefault(record.modality, set()).add(record.content_hash)
        known = {}
        with self.store.read() as r:
            for modality, hashes in by_modality.items():
                rows = r.rows_in_hash_ranges(modality, [hash_range(h) for h in hashes], skip_mtime=UNSEALED)
                known.update({low[:-1]: frames for (low, _), frames in rows.items()})
        known_video_frames(records, known)

    def _index_videos(self, jobs: list[Job]) -> None:
        """Sample each video in the decode workers, encode its frames, drop consecutive repeats
        by cosine, and write its rows (over its old ones), then seal the file: a run killed
        half-way leaves the file unsealed, so the next run samples it again."""
        if not jobs:
            return
        groups: dict[str, list[Job]] = {}
        for job in jobs:
            groups.setdefault(job.record.content_hash, []).append(job)
        leaders = [members[0] for members in groups.values()]
        encoder = self._encoder_factory()
        self.progress.start("videos", len(leaders))
        with self.executor:
            remote = getattr(self.executor, "sample_and_encode", None)
            if remote is not None:  # sampled and encoded on the cluster (Ray): waiting counts as encode
                sampled = self._timed(remote(leaders, encoder, self.sampling, self.batch_size, self.progress), "encode")
            else:
                sampled = self._timed(self.executor.sample_videos(leaders, encoder.image_size, encoder.pixel_transform,
                                                                  self.sampling), "decode")
            for leader, result in sampled:
                members = groups[leader.record.content_hash]
                if isinstance(result, Skip):
                    self._skip(result)
                    if not result.protects:
                        self._stale.extend(i for m in members for i in (m.replaces or {}).values())
                    self.progress.advance()
                    self.sink.checkpoint()
                    continue
                self.report.sampled += len(result.times)
                vectors = result.vectors if result.vectors is not None else self._encode_frames(encoder, result)
                keep = drop_repeats(vectors, self.sampling.dedup_cosine)
                for member in members:
                    self._write_video(member, result, [result.times[i] for i in keep], vectors[keep])
                self.report.videos += len(members)
                self.progress.advance()
            self._runner_summary()

    def _encode_frames(self, encoder: Any, sampled: SampledFrames) -> np.ndarray:
        parts = []
        for start in range(0, len(sampled.arrays), self.batch_size):
            with self.report.timing("encode"):
                parts.append(encode_arrays(encoder, sampled.arrays[start:start + self.batch_size]))
        sampled.arrays = []  # the pixels are no longer needed
        return np.concatenate(parts)

    def _write_video(self, job: Job, sampled: SampledFrames, times: list[float], vectors: np.ndarray) -> None:
        video = job.record
        replaces = dict(job.replaces or {})
        sealed = (video.path, video.size, video.mtime_ns)
        unsealed = Record(video.path, "", video.modality, video.size, UNSEALED, video.content_hash)
        jobs = []
        for t in times:
            record = frame_record(unsealed, t, sampled.info)
            jobs.append(Job(record, replaces.pop(record.locator, None)))
        self.sink.frames(jobs, vectors)
        self.sink.seal([sealed])
        self.sink.remove(list(replaces.values()))

    def _timed(self, batches: Iterator[Any], stage: str) -> Iterator[Any]:
        """``batches``, with the time spent waiting for each counted in ``stage``."""
        while True:
            with self.report.timing(stage):
                batch = next(batches, None)
            if batch is None:
                return
            yield batch

    # -- helpers -----------------------------------------------------------------------------
    def _skip(self, skip: Skip, named_apart: bool = False) -> None:
        """Count ``skip``; name it unless the last run skipped the same unchanged file for the same
        reason (``SeenSkips``): those are counted in ``report.skipped_before`` and given to a
        progress that asks for them (``skip_again``: the CLI's ``--verbose``). ``named_apart``:
        said in one line for all its kind (HEIC without pillow-heif)."""
        self.report.skipped.append(skip)
        if not self.seen_skips.first_seen(skip):
            self.report.skipped_before += 1
            again = getattr(self.progress, "skip_again", None)
            if again is not None:
                again(skip)
        elif not named_apart:
            self.progress.skip(skip)

    def _check_stop(self) -> None:
        """Raise KeyboardInterrupt here, between transactions, if Ctrl-C was pressed."""
        if self._stop_requested:
            raise KeyboardInterrupt

    def _finish(self, started: float) -> None:
        self.sink.save()
        self.report.seconds = time.monotonic() - started


def encode_arrays(encoder: ImageEncoder, arrays: list[Any]) -> np.ndarray:
    """Vectors for decoded arrays: cropped uint8 batches through the pixel path, whole images
    through the model's own transform."""
    if encoder.pixel_transform is not None:
        return encoder.encode_pixels(np.stack(arrays))
    from PIL import Image

    return encoder.encode_images([Image.fromarray(a, "RGB") for a in arrays])


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
