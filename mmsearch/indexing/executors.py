"""Decode executors: where files are decoded for the model. The local one runs worker processes
on this machine; the Ray one (``ray_executor``) is a second implementation of the same ``decode``
that can also encode on the cluster (``decode_and_encode``)."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from ..errors import DecodeWorkersError
from ..media import Skip
from ..media.documents import record_source
from ..media.image import PixelTransform, decode_for_model, decode_worker_init
from ..media.video import (
    Sampling,
    SampledFrames,
    keyframes_worker,
    merge_samples,
    probe_worker,
    spans,
    video_worker,
)
from .plan import Job

# A file whose decoding takes longer than this (seconds) is abandoned and its worker process
# killed: a pathological or hostile file must never hang a run (MMSEARCH_DECODE_TIMEOUT).
DEFAULT_DECODE_TIMEOUT = 60.0


@dataclass
class Decoded:
    """One batch out of an executor: the jobs that decoded, their arrays, and the failures."""

    jobs: list[Job] = field(default_factory=list)
    arrays: list[Any] = field(default_factory=list)  # uint8 HxWx3 (already cropped with a PixelTransform)
    failed: list[tuple[Job, Skip]] = field(default_factory=list)
    # Set when the executor encoded the batch too (Ray's encode actors): one row per job.
    vectors: Any = None


class DecodeExecutor(Protocol):
    def __enter__(self) -> DecodeExecutor: ...
    def __exit__(self, *exc: object) -> None: ...

    def decode(self, jobs: Sequence[Job], target: int, pixels: PixelTransform | None,
               batch_size: int) -> Iterator[Decoded]:
        """Batches of decoded images, in the order of ``jobs``."""


def decode_outcome(path: str, future: Future, seconds: float, what: str) -> Any:
    """A worker's result, or the ``Skip`` that says why there is none: past its deadline, the
    worker process died, or an exception the decoder did not anticipate."""
    from pebble import ProcessExpired

    try:
        return future.result()
    except FutureTimeout:
        return Skip(path, f"decoding took longer than {seconds:g}s; abandoned", protects=False)
    except ProcessExpired as exc:
        return Skip(path, f"the decoder crashed on this file (exit code {exc.exitcode})", protects=False)
    except Exception as exc:  # noqa: BLE001 - an exception the decoder did not anticipate
        return Skip(path, f"cannot decode {what}: {exc}", protects=False)


class LocalExecutor:
    """Worker processes (pebble) decoding ahead of the encoder, in order; a hung or crashed
    decode costs one worker, not the run.

    Workers fork from a small clean server process with the decoding module preloaded, and never
    import the caller's main script (``mmsearch.procs``), so a script without a main guard works.
    """

    def __init__(self, workers: int | None = None, timeout: float = DEFAULT_DECODE_TIMEOUT,
                 max_pixels: int | None = None, lookahead: int = 2):
        self.workers = workers or min(8, (os.cpu_count() or 2))
        self.timeout = timeout
        self.max_pixels = max_pixels
        self.lookahead = lookahead  # batches decoded ahead of the encoder (bounds memory)
        self._pool = None
        self._ready = None  # the started pool's first task, until a decode has checked it

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.stop()  # kills workers still decoding (Ctrl-C, errors)
            self._pool.join()
            self._pool = None
            self._ready = None

    def prestart(self) -> None:
        """Start the worker processes without waiting for them, so they come up while the
        caller loads its encoder; the first ``decode`` checks that they did."""
        if self._pool is None:
            from pebble import ProcessPool

            from ..procs import DECODE_MODULES, worker_context

            self._pool = ProcessPool(max_workers=self.workers, initializer=decode_worker_init,
                                     context=worker_context(DECODE_MODULES))
            self._ready = self._pool.schedule(os.getpid)

    def _started(self):
        self.prestart()
        if self._ready is not None:
            ready, self._ready = self._ready, None
            check_pool(self._pool, ready)
        return self._pool

    def decode(self, jobs: Sequence[Job], target: int, pixels: PixelTransform | None,
               batch_size: int) -> Iterator[Decoded]:
        if not jobs:
            return
        pool = self._started()
        limit = self.max_pixels

        def result_of(job: Job, future: Future) -> Any:
            return decode_outcome(record_source(job.record), future, self.timeout, job.record.modality)

        pending: list[tuple[Job, Future]] = []
        cursor = 0
        ahead = batch_size * self.lookahead
        while cursor < len(jobs) or pending:
            while cursor < len(jobs) and len(pending) < ahead:
                future = pool.schedule(decode_for_model, args=(record_source(jobs[cursor].record), target, limit, pixels),
                                       timeout=self.timeout)
                pending.append((jobs[cursor], future))
                cursor += 1
            take, pending = pending[:batch_size], pending[batch_size:]
            batch = Decoded()
            for job, future in take:
                result = result_of(job, future)
                if isinstance(result, Skip):
                    batch.failed.append((job, result))
                else:
                    batch.jobs.append(job)
                    batch.arrays.append(result)
            yield batch


    def sample_videos(self, jobs: Sequence[Job], target: int, pixels: PixelTransform | None,
                      sampling: Sampling) -> Iterator[tuple[Job, SampledFrames | Skip]]:
        """Each video's sampled frames (or why not), in the order of ``jobs``; as many videos
        at once as there are workers (each holds at most ``sampling.max_frames`` small frames).

        A video is probed first (a short task under the base timeout), then sampled under a
        deadline that grows with its duration and pixel count (``VideoInfo.deadline``). A long
        video is split into time ranges sampled by several workers at once (``video.spans``):
        one video's decoding is otherwise one worker's, and the encoder waits for it.
        """
        from collections import deque

        if not jobs:
            return
        pool = self._started()
        limit = self.max_pixels

        def start(job: Job) -> Any:
            path = job.record.path

            def outcome(path: str, future: Future, seconds: float) -> Any:
                return decode_outcome(path, future, seconds, job.record.modality)

            info = outcome(path, pool.schedule(probe_worker, args=(path, limit), timeout=self.timeout), self.timeout)
            if isinstance(info, Skip):
                return info
            ranges, keys = spans(info.duration, self.workers, info.width * info.height), None
            if len(ranges) > 1:
                keys = outcome(path, pool.schedule(keyframes_worker, args=(path, info.stream), timeout=self.timeout),
                               self.timeout)
                if isinstance(keys, Skip):
                    ranges, keys = [(0.0, math.inf)], None
            if len(ranges) == 1:
                deadline = info.deadline(self.timeout)
                future = pool.schedule(video_worker, args=(path, target, pixels, sampling, limit, info), timeout=deadline)
                return lambda: outcome(path, future, deadline)
            # Each range's deadline as for a video of its length (the last one runs to the end).
            deadlines = [replace(info, duration=min(b, info.duration) - a).deadline(self.timeout) for a, b in ranges]
            futures = [pool.schedule(video_worker, args=(path, target, pixels, sampling, limit, info, span, keys),
                                     timeout=deadline) for span, deadline in zip(ranges, deadlines)]
            return lambda: joined_results([outcome(path, f, d) for f, d in zip(futures, deadlines)], sampling)

        pending: deque = deque()
        for job in jobs:
            pending.append((job, start(job)))
            if len(pending) >= max(1, self.workers):
                done, result = pending.popleft()
                yield done, result() if callable(result) else result
        while pending:
            done, result = pending.popleft()
            yield done, result() if callable(result) else result


def joined_results(parts: list[SampledFrames | Skip], sampling: Sampling) -> SampledFrames | Skip:
    """One video's samples from its ranges: what decoded, as a damaged stretch of a whole-video
    sampling keeps what decoded around it; the first range's reason when none did."""
    sampled = [part for part in parts if not isinstance(part, Skip)]
    return merge_samples(sampled, sampling) if sampled else parts[0]


def check_pool(pool, ready: Future | None = None) -> None:
    """Fail clearly, not by skipping every image, when worker processes cannot start
    (``ready``: the pool's first task, already scheduled; else one is scheduled now)."""
    from pebble import ProcessExpired

    try:
        (ready or pool.schedule(os.getpid)).result(timeout=120)
    except (ProcessExpired, FutureTimeout, OSError, RuntimeError) as exc:
        pool.stop()
        pool.join()
        raise DecodeWorkersError("image decoding worker processes failed to start") from exc
