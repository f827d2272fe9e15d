"""The Ray executor: decoding and encoding on a Ray cluster (``mmsearch index --runner ray``).

The plan is made by the runner as for a local run; only where files are decoded and encoded
changes. Texts and images to encode become one Ray Dataset of rows (row number, path or text)
that goes through two ``map_batches`` stages: decoding on CPU tasks (``ray_tasks.decode_batch``:
the local decode workers' own function; texts pass through), then encoding on a fixed pool of
actors that each hold the model (``ray_tasks.EncodeActor``: the image tower for images, the text
tower for texts; one GPU per actor where the cluster has GPUs), both with explicit integer batch
sizes. Videos are probed by Ray tasks, split into time ranges as locally (``video.spans``), and
the ranges become a second Dataset: sampled by CPU tasks (``ray_tasks.sample_spans``), their frames
encoded by the same kind of actor pool; the driver joins each video's ranges as a local run does.
The vectors stream back to this process, where the run's single writer (the runner's sink)
commits them through the catalogue's write rule, batch by batch, exactly as locally: a killed
driver leaves what was committed, and the next run finishes the rest.

Heavy objects are built inside the workers: the encoder from an ``EncoderRecipe`` (the same
encoders a local run would use, or the torch model on a GPU), never pickled. When the index has
its ONNX export record, this process loads no model at all (``encoder_plan``): the dimension and
the decode geometry come from the record. Ray is imported only when a ``RayExecutor`` is made.

Failures: a file that cannot be decoded, that takes longer than its deadline
(``MMSEARCH_DECODE_TIMEOUT``; a video's grows with its length) or that crashes the decoder is a
skip with the local run's message: each Ray worker decodes in a sandbox process of its own (see
``ray_tasks``). A decode task or encode actor whose own process dies is retried by Ray
(``retries`` times: ``max_retries`` for tasks, ``max_restarts``/``max_task_retries`` for actors);
restarts are counted and reported. Past the retries the run stops with ``RayRunError``, keeping
what was committed.
"""

from __future__ import annotations

import logging
import os
import pickle
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import numpy as np

from ..encoders.onnx_export import first_line
from ..errors import MMSearchError, RayRunError, RayUnavailableError
from ..media import Skip
from ..media.image import PixelTransform
from ..media.video import spans
from .executors import DEFAULT_DECODE_TIMEOUT, Decoded, LocalExecutor
from .plan import Job
from .ray_tasks import (
    EncodeActor,
    EncoderRecipe,
    SpanJob,
    decode_batch,
    join_spans,
    probe_video,
    sample_spans,
    video_keyframes,
)

# Attempts Ray makes again after a decode task's or an encode actor's process died, before the
# run stops (Ray Data's default is to retry forever, which turns a deterministic crash into a hang).
RAY_RETRIES = 3
# Rows per input block: a block is what one decode task gets; a few decode batches each keeps
# task overhead small while leaving enough blocks to spread over the cluster's CPUs.
BLOCK_BATCHES = 4
# Seconds a stopped run waits for Ray Data's iteration threads before disconnecting from Ray.
STOP_SECONDS = 10.0

INSTALL_HINT = 'the Ray runner needs Ray: pip install "mmsearch[ray]"'


def import_ray() -> Any:
    """The ``ray`` module, or ``RayUnavailableError`` saying how to install it."""
    try:
        import ray
        import ray.data  # the Data library comes with the [data] extra only
    except ImportError as exc:
        raise RayUnavailableError(INSTALL_HINT) from exc
    return ray


class RemoteEncoder:
    """The encoder of a run whose actors do all the encoding, as this process sees it: the
    dimension, the decode geometry and the recipe the actors load, read from the index's ONNX
    export record; no model is loaded here unless something is encoded here after all (``load``)."""

    preprocess = None
    device = "cpu"

    def __init__(self, recipe: EncoderRecipe, record: dict[str, Any], load: Any):
        p = record["pixels"]
        self.recipe = recipe
        self.kind = recipe.kind
        self.dim = int(record["dim"])
        self.pixel_transform = PixelTransform(int(p["resize"]), int(p["crop"]), int(p["resample"]),
                                              tuple(p["mean"]), tuple(p["std"]))
        self.image_size = int(self.pixel_transform.crop)
        self._load = load
        self._loaded: Any = None

    def _encoder(self) -> Any:
        if self._loaded is None:
            self._loaded = self._load()
        return self._loaded

    def encode_pixels(self, batch: np.ndarray) -> np.ndarray:
        return self._encoder().encode_pixels(batch)

    def encode_images(self, images: list[Any]) -> np.ndarray:
        return self._encoder().encode_images(images)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return self._encoder().encode_texts(texts)


def recipe_for(encoder: Any, spec: Any, gpus: bool, cpu_bf16: str = "auto") -> EncoderRecipe | None:
    """The recipe of the encoder a local run uses (so both give the same vectors); the torch
    model on CUDA when the actors have GPUs. None: an encoder with no recipe (then files are
    only decoded on the cluster and encoded here)."""
    if gpus and spec is not None:
        return EncoderRecipe("torch", spec, "cuda", cpu_bf16)
    if isinstance(encoder, RemoteEncoder):
        return encoder.recipe
    image = getattr(encoder, "image", encoder)  # onnx_image.IndexingEncoder wraps the image encoder
    if getattr(image, "kind", None) in ("onnx", "onnx-int8") and getattr(image, "folder", None) is not None:
        return EncoderRecipe(image.kind, spec, folder=str(image.folder), record=image.record, cpu_bf16=cpu_bf16)
    if getattr(encoder, "kind", None) == "torch":
        return EncoderRecipe("torch", encoder.spec, "cpu" if encoder.device == "cpu" else encoder.device, cpu_bf16)
    return None


# -- the driver side -------------------------------------------------------------------------------
class RayExecutor:
    """Decodes and encodes texts, images and videos on a Ray cluster.

    ``address``: None starts a local Ray on this machine (all cores), ``auto`` joins the cluster
    started with ``ray start``, ``ray://host:10001`` one through Ray Client; a process already
    connected (``ray.init`` called) uses its connection. ``actors``: encode actors (default: one
    per GPU, else half the CPUs). ``decode_batch``: images per decode task batch (default: the
    encoder batch). ``workers``: local worker processes (reading files' headers).
    ``crash_once``: a TEST HOOK, the path of a marker file: the first encode actor to create it
    exits its process at its first batch, so tests see Ray restart an actor and retry its work.
    """

    def __init__(self, address: str | None = None, *, workers: int | None = None, spec: Any = None,
                 settings: Any = None, actors: int | None = None, decode_batch: int | None = None,
                 retries: int = RAY_RETRIES, crash_once: str | None = None):
        self._ray = import_ray()
        self.address = address
        self.spec = spec
        self.settings = settings
        self.cpu_bf16 = getattr(settings, "cpu_bf16", "auto")
        self.actors = actors
        self.decode_batch = decode_batch
        self.retries = retries
        self.crash_once = crash_once
        self.timeout = getattr(settings, "decode_timeout", DEFAULT_DECODE_TIMEOUT)
        self.max_pixels = getattr(settings, "max_pixels", None)
        self.local = LocalExecutor(workers, self.timeout, self.max_pixels)  # only if no recipe exists
        self.workers = self.local.workers
        self._depth = 0
        self._owns_ray = False
        self._data_log_level: int | None = None
        self._running: Iterator[Any] | None = None
        self._threads: set[threading.Thread] = set()
        self._text_record: dict | None = None
        self.summary: dict[str, Any] = {}

    def encoder_plan(self, store: Any, load: Any) -> Any:
        """The encoder an indexing run of ``store`` hands this executor: a ``RemoteEncoder``
        (nothing loaded here) when the index's ONNX export record gives the dimension and the
        decode geometry, else ``load()`` (the encoder a local run would use)."""
        from ..encoders import onnx_image, onnx_text

        settings = self.settings
        enabled = getattr(settings, "onnx", True)
        record = onnx_image.usable_record(store.manifest, enabled)
        self._text_record = onnx_text.usable_record(store.manifest, enabled)
        if record is None or not record.get("pixels"):
            return load()
        choice = onnx_image.indexing_choice(store.manifest, getattr(settings, "image_encoder", "auto"), enabled)
        if choice == "torch":
            recipe = EncoderRecipe("torch", self.spec, "cpu", self.cpu_bf16)
        else:
            recipe = EncoderRecipe(choice, self.spec, folder=str(store.folder), record=record,
                                   cpu_bf16=self.cpu_bf16, text_record=self._text_record)
        return RemoteEncoder(recipe, record, load)

    # -- connection ------------------------------------------------------------------------------
    def __enter__(self) -> RayExecutor:
        self._depth += 1
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop the job still running (Ctrl-C, an error); the outermost exit leaves a Ray this
        run started (a run's phases, images then videos, share one Ray)."""
        self._stop()
        self.local.__exit__(*exc)
        self._depth = max(0, self._depth - 1)
        if self._depth:
            return
        if self._data_log_level is not None:
            logging.getLogger("ray.data").setLevel(self._data_log_level)
            self._data_log_level = None
        if self._owns_ray:
            self._ray.shutdown()
            self._owns_ray = False

    def _stop(self) -> None:
        running, self._running = self._running, None
        if running is not None:
            close = getattr(running, "close", None)
            if close is not None:
                close()  # shuts the streaming execution down: its tasks and actors end
            # Ray Data's iteration threads may still be inside a Ray call; disconnecting under
            # them makes Ray end the process (exit 1, nothing said). Give them time to finish.
            deadline = time.monotonic() + STOP_SECONDS
            for thread in set(threading.enumerate()) - self._threads:
                if thread is not threading.current_thread():
                    thread.join(max(0.0, deadline - time.monotonic()))

    def _connect(self) -> None:
        ray = self._ray
        if self._data_log_level is None:
            # Ray Data's notes (execution plans, "progress bars disabled"), logged from its
            # executor's thread at any time, kept off the run's output until the run ends.
            data_log = logging.getLogger("ray.data")
            self._data_log_level = data_log.level
            data_log.setLevel(logging.ERROR)
        if ray.is_initialized():
            return
        # Ray's own start-up chatter (the token notice) would break the one-line-per-event output
        # of a run; failures still raise and are reported.
        options: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False}
        # No address: a new local Ray, never a cluster that merely happens to run on this
        # machine or that $RAY_ADDRESS names (what Ray's own default would join).
        address = self.address or "local"
        if address == "local":
            options["include_dashboard"] = False
        try:
            with _quiet_ray():
                ray.init(address=address, **options)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            hint = ("; a cluster with token authentication (Ray's default) needs RAY_AUTH_MODE=token here, with "
                    "its token in ~/.ray/auth_token or RAY_AUTH_TOKEN" if self.address else "")
            raise RayRunError(f"cannot start or reach Ray at {self.address or 'a new local instance'}: "
                              f"{first_line(exc)}{hint}") from exc
        self._owns_ray = True

    def cluster(self) -> dict[str, Any]:
        """Where the work can run: alive nodes, CPUs and GPUs of the cluster."""
        self._connect()
        ray = self._ray
        resources = ray.cluster_resources()
        return {"nodes": sum(1 for n in ray.nodes() if n.get("Alive")), "cpus": int(resources.get("CPU", 0)),
                "gpus": int(resources.get("GPU", 0))}

    # -- the stages ------------------------------------------------------------------------------
    def _table_blocks(self, columns: dict[str, Any], rows: int) -> list[Any]:
        import pyarrow as pa

        n = len(next(iter(columns.values()))[0])
        return [pa.table({name: pa.array(values[start:start + rows], type=kind) for name, (values, kind) in columns.items()})
                for start in range(0, n, rows)]

    def _dataset(self, jobs: Sequence[Job], texts: int, target: int, pixels: PixelTransform | None,
                 batch_size: int) -> Any:
        """The decode stage over ``jobs``, whose first ``texts`` are texts (passed through)."""
        import pyarrow as pa

        ray = self._ray
        decode_batch_size = self.decode_batch or batch_size
        # bytes: any file name survives Arrow; a text's own characters likewise
        paths = [b"" if row < texts else os.fsencode(job.record.path) for row, job in enumerate(jobs)]
        words = [(job.record.text or "").encode("utf-8", "surrogateescape") if row < texts else b""
                 for row, job in enumerate(jobs)]
        cpus = max(1, self.summary.get("cpus", 1))
        rows = max(1, min(decode_batch_size * BLOCK_BATCHES, -(-len(paths) // (2 * cpus))))
        tables = self._table_blocks({"i": (list(range(len(jobs))), pa.int64()), "path": (paths, pa.binary()),
                                     "text": (words, pa.binary()),
                                     "is_text": ([row < texts for row in range(len(jobs))], pa.bool_())}, rows)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the run draws its own progress
        with _quiet_ray():
            return ray.data.from_arrow(tables).map_batches(
                decode_batch, batch_size=decode_batch_size, batch_format="numpy", num_cpus=1,
                fn_kwargs={"target": target, "limit": self.max_pixels, "pixels": pixels, "timeout": self.timeout},
                max_retries=self.retries,
            )

    def _encoded(self, dataset: Any, recipe: EncoderRecipe, actors: int, gpus: bool, batch_size: int) -> Any:
        """``dataset`` followed by the encode stage on the actor pool."""
        with _quiet_ray():
            return dataset.map_batches(
                EncodeActor, batch_size=batch_size, batch_format="numpy",
                compute=self._ray.data.ActorPoolStrategy(size=actors),
                num_cpus=0 if gpus else 1, num_gpus=1 if gpus else None,
                fn_constructor_kwargs={"recipe": recipe, "crash_once": self.crash_once},
                max_restarts=self.retries, max_task_retries=self.retries,
            )

    def _iterate(self, dataset: Any, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """The dataset's batches as they come; a job that fails past its retries -> RayRunError."""
        self._threads = set(threading.enumerate())
        batches = iter(dataset.iter_batches(batch_size=batch_size, batch_format="numpy", prefetch_batches=1))
        self._running = batches
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                self._running = None
                return
            except (MMSearchError, KeyboardInterrupt):
                raise
            except Exception as exc:  # Ray's errors: workers that kept dying, a lost cluster
                self._stop()
                raise self._failed(exc) from exc
            yield batch

    def _failed(self, exc: Exception) -> RayRunError:
        return RayRunError(f"the Ray job failed after {self.retries} retries: {type(exc).__name__}: {first_line(exc)} "
                           "(what was written is kept; run again to finish)")

    def _get(self, refs: list[Any]) -> list[Any]:
        """``ray.get`` of task results; a task that failed past its retries -> RayRunError."""
        try:
            return self._ray.get(refs)
        except (MMSearchError, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - Ray's errors: workers that kept dying, a lost cluster
            raise self._failed(exc) from exc

    @staticmethod
    def _split(jobs: Sequence[Job], batch: dict[str, np.ndarray]) -> tuple[Decoded, np.ndarray]:
        """A batch's jobs and skips, and the mask of its rows that decoded."""
        out = Decoded()
        ok = np.zeros(len(batch["i"]), dtype=bool)
        for row, (i, reason, protects) in enumerate(zip(batch["i"], batch["skip"], batch["protects"])):
            job = jobs[int(i)]
            if reason:
                out.failed.append((job, Skip(job.record.path, bytes(reason).decode("utf-8", "surrogateescape"),
                                             protects=bool(protects))))
            else:
                out.jobs.append(job)
                ok[row] = True
        return out, ok

    def decode(self, jobs: Sequence[Job], target: int, pixels: PixelTransform | None,
               batch_size: int) -> Iterator[Decoded]:
        """Batches of images decoded by Ray tasks (the ``DecodeExecutor`` protocol), in the
        order they finish; the caller encodes them."""
        if not jobs:
            return
        self._start_summary(None)
        for batch in self._iterate(self._dataset(jobs, 0, target, pixels, batch_size), batch_size):
            out, ok = self._split(jobs, batch)
            column = batch["pixels"]
            out.arrays = [column[row] for row in np.flatnonzero(ok)]
            self._count(batch)
            yield out

    def _pool(self, encoder: Any) -> tuple[EncoderRecipe | None, int, bool]:
        """(the recipe the actors load, how many actors, whether they have GPUs)."""
        cluster = self.cluster()
        gpus = cluster["gpus"] > 0
        recipe = recipe_for(encoder, self.spec, gpus, self.cpu_bf16)
        if recipe is not None and recipe.kind != "torch" and recipe.text_record is None and self._text_record:
            recipe = EncoderRecipe(recipe.kind, recipe.spec, recipe.device, recipe.cpu_bf16, recipe.folder,
                                   recipe.record, self._text_record)
        actors = self.actors or (cluster["gpus"] if gpus else max(1, cluster["cpus"] // 2))
        return recipe, actors, gpus

    def decode_and_encode(self, jobs: Sequence[Job], encoder: Any, batch_size: int, progress: Any = None,
                          texts: Sequence[Job] = ()) -> Iterator[Decoded]:
        """Batches of ``texts`` and images (``jobs``) encoded by the actor pool, images decoded
        by Ray tasks first, with their vectors (``Decoded.vectors``), in the order they finish.
        ``encoder``: the encoder a local run would use, or a ``RemoteEncoder`` (its recipe is
        what the actors load; its geometry what the decode tasks produce)."""
        if not jobs and not texts:
            return
        recipe, actors, gpus = self._pool(encoder)
        if recipe is None:  # an encoder we cannot rebuild elsewhere: decode there, encode here
            for start in range(0, len(texts), batch_size):
                chunk = list(texts[start:start + batch_size])
                yield Decoded(jobs=chunk, vectors=encoder.encode_texts([job.record.text or "" for job in chunk]))
            yield from self.decode(jobs, encoder.image_size, encoder.pixel_transform, batch_size)
            return
        self._start_summary(recipe, actors)
        if progress is not None:
            progress.note(self.where())
        rows = [*texts, *jobs]
        dataset = self._dataset(rows, len(texts), encoder.image_size, encoder.pixel_transform, batch_size)
        for batch in self._iterate(self._encoded(dataset, recipe, actors, gpus, batch_size), batch_size):
            out, ok = self._split(rows, batch)
            out.vectors = batch["vector"][ok]
            self._count(batch)
            yield out
        self._note_restarts(progress)

    def _note_restarts(self, progress: Any) -> None:
        if progress is not None and self.summary.get("actor_restarts"):
            progress.note(f"ray: {self.summary['actor_restarts']} encode actor(s) died and were restarted by Ray; "
                          "their batches were retried")

    # -- videos ------------------------------------------------------------------------------------
    def sample_and_encode(self, jobs: Sequence[Job], encoder: Any, sampling: Any, batch_size: int,
                          progress: Any = None) -> Iterator[tuple[Job, Any]]:
        """Each video's sampled frames with their vectors (``SampledFrames.vectors``), or the
        ``Skip`` saying why not, in the order they complete. A video is probed by a Ray task,
        split into time ranges as locally (``video.spans``, over the cluster's CPUs; the
        keyframe demux made once by another task), each range sampled by a Ray task under its
        own deadline, its frames encoded by the actor pool, and the ranges joined here."""
        if not jobs:
            return
        recipe, actors, gpus = self._pool(encoder)
        if recipe is None:  # an encoder we cannot rebuild elsewhere: sampled by local workers
            with self.local:
                yield from self.local.sample_videos(jobs, encoder.image_size, encoder.pixel_transform, sampling)
            return
        self._start_summary(recipe, actors)
        if progress is not None:
            progress.note(self.where())
        ray = self._ray
        remote = {"num_cpus": 1, "max_retries": self.retries}
        probe, keyframes = ray.remote(**remote)(probe_video), ray.remote(**remote)(video_keyframes)
        infos = self._get([probe.remote(job.record.path, self.max_pixels, self.timeout) for job in jobs])
        work: list[SpanJob] = []
        ranges_of: dict[int, list] = {}
        for v, (job, info) in enumerate(zip(jobs, infos)):
            if isinstance(info, Skip):
                yield job, info
                continue
            ranges_of[v] = spans(info.duration, max(1, self.summary["cpus"]), info.width * info.height)
        keys_refs = {v: keyframes.remote(jobs[v].record.path, infos[v].stream, self.timeout)
                     for v, ranges in ranges_of.items() if len(ranges) > 1}
        keys = dict(zip(keys_refs, self._get(list(keys_refs.values()))))
        for v, ranges in ranges_of.items():
            info, found = infos[v], keys.get(v)
            if isinstance(found, Skip):  # no shared demux: sampled whole, as locally
                ranges, found = [(0.0, float("inf"))], None
            if len(ranges) == 1:
                work.append(SpanJob(v, 0, jobs[v].record.path, info, None, None, info.deadline(self.timeout)))
                ranges_of[v] = ranges
                continue
            for s, (a, b) in enumerate(ranges):
                deadline = replace(info, duration=min(b, info.duration) - a).deadline(self.timeout)
                work.append(SpanJob(v, s, jobs[v].record.path, info, (a, b), found, deadline))
        if not work:
            return
        yield from self._sampled(jobs, work, ranges_of, encoder, sampling, recipe, actors, gpus, batch_size)
        self._note_restarts(progress)

    def _sampled(self, jobs: Sequence[Job], work: list[SpanJob], ranges_of: dict[int, list], encoder: Any,
                 sampling: Any, recipe: EncoderRecipe, actors: int, gpus: bool,
                 batch_size: int) -> Iterator[tuple[Job, Any]]:
        import pyarrow as pa

        ray = self._ray
        tables = self._table_blocks({"job": ([pickle.dumps(job) for job in work], pa.binary())}, 1)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        with _quiet_ray():
            dataset = ray.data.from_arrow(tables).map_batches(
                sample_spans, batch_size=1, batch_format="numpy", num_cpus=1, max_retries=self.retries,
                fn_kwargs={"target": encoder.image_size, "pixels": encoder.pixel_transform, "sampling": sampling,
                           "limit": self.max_pixels})
        # per video: per range, (facts or Skip, times, vectors, rows expected)
        parts: dict[int, dict[int, list]] = {}
        for batch in self._iterate(self._encoded(dataset, recipe, actors, gpus, batch_size), batch_size):
            self._count(batch)
            for row in range(len(batch["i"])):
                v, s = int(batch["i"][row]), int(batch["span"][row])
                part = parts.setdefault(v, {}).setdefault(s, [None, [], [], int(batch["count"][row])])
                if part[0] is None:
                    part[0] = pickle.loads(bytes(batch["info"][row]))
                if not batch["skip"][row]:
                    part[1].append(float(batch["t"][row]))
                    part[2].append(batch["vector"][row])
                part[3] -= 1
            for v in [v for v, got in parts.items()
                      if len(got) == len(ranges_of[v]) and all(p[3] == 0 for p in got.values())]:
                got = parts.pop(v)
                pieces = []
                for s in sorted(got):
                    result, times, vectors, _ = got[s]
                    order = np.argsort(times, kind="stable")  # rows of a range may arrive in any order
                    pieces.append((result, [times[k] for k in order],
                                   np.stack([vectors[k] for k in order]) if vectors else None))
                yield jobs[v], join_spans(pieces, sampling)

    # -- what ran where ----------------------------------------------------------------------------
    def _start_summary(self, recipe: EncoderRecipe | None, actors: int = 0) -> None:
        """What runs where; the counts go on across a run's phases (images, then videos)."""
        cluster = self.cluster()
        if self.summary:
            self.summary.update(cluster, encode_actors=actors, encoder=recipe.describe() if recipe else "local",
                                actor_gpus=1 if actors and cluster["gpus"] else 0)
            return
        self.summary = {"runner": "ray", **cluster, "encode_actors": actors,
                        "encoder": recipe.describe() if recipe else "local", "actor_gpus": 1 if actors and cluster["gpus"] else 0,
                        "decode_nodes_used": 0, "actors_used": 0, "actor_restarts": 0, "retries": self.retries}
        self._seen: dict[str, set] = {"decode_node": set(), "actor": set(), "restarted": set()}

    def _count(self, batch: dict[str, np.ndarray]) -> None:
        seen = self._seen
        seen["decode_node"].update(batch["decode_node"])
        if "actor" in batch:
            seen["actor"].update(batch["actor"])
            seen["restarted"].update(a for a, r in zip(batch["actor"], batch["restarted"]) if r)
        self.summary.update(decode_nodes_used=len(seen["decode_node"]), actors_used=len(seen["actor"]),
                            actor_restarts=len(seen["restarted"]))

    def where(self) -> str:
        """One line: where the work runs."""
        s = self.summary
        place = f"{s['encode_actors']} encode actor(s) ({s['encoder']}" + (", 1 GPU each)" if s["actor_gpus"] else ", CPU)")
        return (f"ray: {s['nodes']} node(s), {s['cpus']} CPU(s), {s['gpus']} GPU(s); decoding on CPU tasks, "
                f"{place}")



@contextmanager
def _quiet_ray() -> Iterator[None]:
    """The deprecation of the keyword retry options (``max_retries``, ``max_restarts``: no named
    replacement exists in Ray 2.60) kept off the run's output."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        yield
