"""The Ray executor: decoding and encoding on a Ray cluster (``mmsearch index --runner ray``).

The plan is made by the runner as for a local run; only where images are decoded and encoded
changes. The images to encode become a Ray Dataset of (row number, path) and go through two
``map_batches`` stages: decoding on CPU tasks (``_decode_batch``, the decode workers' own
function), then encoding on a fixed pool of actors that each hold the model
(``_EncodeActor``; one GPU per actor where the cluster has GPUs), both with explicit integer batch
sizes. The vectors stream back to this process, where the run's single writer (the runner's
sink) commits them through the catalogue's write rule, batch by batch, exactly as locally: a
killed driver leaves what was committed, and the next run finishes the rest.

Heavy objects are built inside the workers: the encoder from an ``EncoderRecipe`` (the same
encoder the local run would use, or the torch model on a GPU), never pickled. Ray is imported
only when a ``RayExecutor`` is made. Videos are sampled by local decode workers, as in a local
run (see ``sample_videos``).

Failures: a file that cannot be decoded is a skip with the local run's message. A decode task
or encode actor whose process dies is retried by Ray (``retries`` times: ``max_retries`` for
tasks, ``max_restarts``/``max_task_retries`` for actors); restarts are counted and reported. Past
the retries the run stops with ``RayRunError``, keeping what was committed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..encoders.onnx_export import first_line
from ..errors import MMSearchError, RayRunError, RayUnavailableError
from ..media import Skip
from ..media.image import PixelTransform
from .executors import DEFAULT_DECODE_TIMEOUT, Decoded, LocalExecutor
from .plan import Job

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


# -- what runs on the workers ----------------------------------------------------------------------
@dataclass(frozen=True)
class EncoderRecipe:
    """How a worker builds the encoder: small and picklable, the model is loaded there.

    ``kind`` "torch": ``TorchEncoder(spec, device, cpu_bf16)``; "onnx" / "onnx-int8": the index's
    ONNX image encoder from ``folder`` (the files must be at the same path on every node).
    """

    kind: str
    spec: Any = None
    device: str | None = None
    cpu_bf16: str = "auto"
    folder: str | None = None
    record: dict | None = None

    def build(self) -> Any:
        if self.kind == "torch":
            from ..encoders import TorchEncoder

            return TorchEncoder(self.spec, self.device, self.cpu_bf16)
        from pathlib import Path

        from ..encoders.onnx_image import OnnxImageEncoder

        return OnnxImageEncoder(Path(self.folder), self.record, self.kind)

    def describe(self) -> str:
        return f"torch on {self.device or 'the best device'}" if self.kind == "torch" else self.kind


def recipe_for(encoder: Any, spec: Any, gpus: bool, cpu_bf16: str = "auto") -> EncoderRecipe | None:
    """The recipe of the encoder a local run uses (so both give the same vectors); the torch
    model on CUDA when the actors have GPUs. None: an encoder with no recipe (then images are
    only decoded on the cluster and encoded here)."""
    if gpus and spec is not None:
        return EncoderRecipe("torch", spec, "cuda", cpu_bf16)
    image = getattr(encoder, "image", encoder)  # onnx_image.IndexingEncoder wraps the image encoder
    if getattr(image, "kind", None) in ("onnx", "onnx-int8") and getattr(image, "folder", None) is not None:
        return EncoderRecipe(image.kind, folder=str(image.folder), record=image.record)
    if getattr(encoder, "kind", None) == "torch":
        return EncoderRecipe("torch", encoder.spec, "cpu" if encoder.device == "cpu" else encoder.device, cpu_bf16)
    return None


def _decode_batch(batch: dict[str, np.ndarray], target: int, limit: int,
                  pixels: PixelTransform | None) -> dict[str, np.ndarray]:
    """A decode task: each path decoded as a local decode worker does (``decode_for_model``),
    or the reason it cannot be, with the local run's message."""
    import ray

    from ..media.image import decode_for_model

    arrays: list[np.ndarray | None] = []
    reasons: list[bytes] = []
    protects: list[bool] = []
    for raw in batch["path"]:
        path = os.fsdecode(bytes(raw))
        try:
            result = decode_for_model(path, target, limit, pixels)
        except Exception as exc:  # noqa: BLE001 - an exception the decoder did not anticipate
            result = Skip(path, f"cannot decode image: {exc}", protects=False)
        if isinstance(result, Skip):
            arrays.append(None)
            reasons.append(result.reason.encode("utf-8", "surrogateescape"))
            protects.append(result.protects)
        else:
            arrays.append(result)
            reasons.append(b"")
            protects.append(False)
    return {"i": batch["i"], "pixels": _column(arrays), "skip": np.array(reasons, dtype=object),
            "protects": np.array(protects, dtype=bool),
            "decode_node": np.array([ray.get_runtime_context().get_node_id()] * len(reasons), dtype=object)}


def _column(arrays: list[np.ndarray | None]) -> np.ndarray:
    """One tensor column: stacked when every image has the model's crop (the pixel path), else
    an object column of whole images; failed rows hold a blank of the right shape."""
    shapes = {a.shape for a in arrays if a is not None}
    blank_shape = next(iter(shapes)) if len(shapes) == 1 else (1, 1, 3)
    filled = [a if a is not None else np.zeros(blank_shape, np.uint8) for a in arrays]
    if len(shapes) <= 1:
        return np.stack(filled) if filled else np.zeros((0, *blank_shape), np.uint8)
    column = np.empty(len(filled), dtype=object)
    column[:] = filled
    return column


def _claim_once(marker: str) -> bool:
    """True for the first process to create ``marker`` (the crash test hook fires once)."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


class _EncodeActor:
    """An encode actor: builds the encoder once, then encodes the decoded rows of each batch."""

    def __init__(self, recipe: EncoderRecipe, crash_once: str | None = None):
        import ray

        self.encoder = recipe.build()
        context = ray.get_runtime_context()
        self.actor = context.get_actor_id()
        with warnings.catch_warnings():  # Ray's property reads its own deprecated actor_id
            warnings.simplefilter("ignore")
            self.restarted = bool(context.was_current_actor_reconstructed)
        self.gpu = bool(context.get_accelerator_ids().get("GPU"))
        self.node = context.get_node_id()
        self.crash_once = crash_once

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from .runner import encode_arrays

        if self.crash_once and _claim_once(self.crash_once):
            os._exit(70)  # test hook (RayExecutor(crash_once=...)): this actor's process dies once
        n = len(batch["i"])
        ok = np.array([not reason for reason in batch["skip"]], dtype=bool)
        vectors = None
        if ok.any():
            good = encode_arrays(self.encoder, [batch["pixels"][row] for row in np.flatnonzero(ok)])
            vectors = np.zeros((n, good.shape[1]), np.float32)
            vectors[ok] = good
        if vectors is None:
            vectors = np.zeros((n, self.encoder.dim), np.float32)
        return {"i": batch["i"], "vector": vectors, "skip": batch["skip"], "protects": batch["protects"],
                "decode_node": batch["decode_node"], "actor": np.array([self.actor] * n, dtype=object),
                "restarted": np.full(n, self.restarted), "gpu": np.full(n, self.gpu),
                "node": np.array([self.node] * n, dtype=object)}


# -- the driver side -------------------------------------------------------------------------------
class RayExecutor:
    """Decodes (and, through ``decode_and_encode``, encodes) images on a Ray cluster.

    ``address``: None starts a local Ray on this machine (all cores), ``auto`` joins the cluster
    started with ``ray start``, ``ray://host:10001`` one through Ray Client; a process already
    connected (``ray.init`` called) uses its connection. ``actors``: encode actors (default: one
    per GPU, else half the CPUs). ``decode_batch``: images per decode task batch (default: the
    encoder batch). ``workers``: local worker processes (reading files' headers, videos).
    ``crash_once``: a TEST HOOK, the path of a marker file: the first encode actor to create it
    exits its process at its first batch, so tests see Ray restart an actor and retry its work.
    """

    def __init__(self, address: str | None = None, *, workers: int | None = None, spec: Any = None,
                 settings: Any = None, actors: int | None = None, decode_batch: int | None = None,
                 retries: int = RAY_RETRIES, crash_once: str | None = None):
        self._ray = import_ray()
        self.address = address
        self.spec = spec
        self.cpu_bf16 = getattr(settings, "cpu_bf16", "auto")
        self.actors = actors
        self.decode_batch = decode_batch
        self.retries = retries
        self.crash_once = crash_once
        timeout = getattr(settings, "decode_timeout", DEFAULT_DECODE_TIMEOUT)
        self.max_pixels = getattr(settings, "max_pixels", None)
        self.local = LocalExecutor(workers, timeout, self.max_pixels)  # videos (see sample_videos)
        self.workers = self.local.workers
        self._owns_ray = False
        self._data_log_level: int | None = None
        self._running: Iterator[Any] | None = None
        self._threads: set[threading.Thread] = set()
        self.summary: dict[str, Any] = {}

    # -- connection ------------------------------------------------------------------------------
    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop the job still running (Ctrl-C, an error) and leave a Ray this run started."""
        self._stop()
        self.local.__exit__(*exc)
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
    def _dataset(self, jobs: Sequence[Job], target: int, pixels: PixelTransform | None, batch_size: int) -> Any:
        import pyarrow as pa

        ray = self._ray
        decode_batch = self.decode_batch or batch_size
        paths = [os.fsencode(job.record.path) for job in jobs]  # bytes: any file name survives Arrow
        cpus = max(1, self.summary.get("cpus", 1))
        rows = max(1, min(decode_batch * BLOCK_BATCHES, -(-len(paths) // (2 * cpus))))
        tables = [pa.table({"i": pa.array(range(start, min(start + rows, len(paths))), pa.int64()),
                            "path": pa.array(paths[start:start + rows], pa.binary())})
                  for start in range(0, len(paths), rows)]
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the run draws its own progress
        with _quiet_ray():
            return ray.data.from_arrow(tables).map_batches(
                _decode_batch, batch_size=decode_batch, batch_format="numpy", num_cpus=1,
                fn_kwargs={"target": target, "limit": self.max_pixels, "pixels": pixels},
                max_retries=self.retries,
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
                raise RayRunError(f"the Ray job failed after {self.retries} retries: {type(exc).__name__}: {first_line(exc)} "
                                  "(what was written is kept; run again to finish)") from exc
            yield batch

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
        for batch in self._iterate(self._dataset(jobs, target, pixels, batch_size), batch_size):
            out, ok = self._split(jobs, batch)
            column = batch["pixels"]
            out.arrays = [column[row] for row in np.flatnonzero(ok)]
            self._count(batch)
            yield out

    def decode_and_encode(self, jobs: Sequence[Job], encoder: Any, batch_size: int,
                          progress: Any = None) -> Iterator[Decoded]:
        """Batches of images decoded by Ray tasks and encoded by the actor pool, with their
        vectors (``Decoded.vectors``), in the order they finish. ``encoder``: the encoder a
        local run would use (its recipe is what the actors load; its geometry what the decode
        tasks produce)."""
        if not jobs:
            return
        cluster = self.cluster()
        gpus = cluster["gpus"] > 0
        recipe = recipe_for(encoder, self.spec, gpus, self.cpu_bf16)
        if recipe is None:  # an encoder we cannot rebuild elsewhere: decode there, encode here
            yield from self.decode(jobs, encoder.image_size, encoder.pixel_transform, batch_size)
            return
        actors = self.actors or (cluster["gpus"] if gpus else max(1, cluster["cpus"] // 2))
        self._start_summary(recipe, actors)
        if progress is not None:
            progress.note(self.where())
        with _quiet_ray():
            dataset = self._dataset(jobs, encoder.image_size, encoder.pixel_transform, batch_size).map_batches(
                _EncodeActor, batch_size=batch_size, batch_format="numpy",
                compute=self._ray.data.ActorPoolStrategy(size=actors),
                num_cpus=0 if gpus else 1, num_gpus=1 if gpus else None,
                fn_constructor_kwargs={"recipe": recipe, "crash_once": self.crash_once},
                max_restarts=self.retries, max_task_retries=self.retries,
            )
        for batch in self._iterate(dataset, batch_size):
            out, ok = self._split(jobs, batch)
            out.vectors = batch["vector"][ok]
            self._count(batch)
            yield out
        if progress is not None and self.summary.get("actor_restarts"):
            progress.note(f"ray: {self.summary['actor_restarts']} encode actor(s) died and were restarted by Ray; "
                          "their batches were retried")

    def sample_videos(self, jobs: Sequence[Job], target: int, pixels: PixelTransform | None,
                      sampling: Any) -> Iterator[tuple[Job, Any]]:
        """Videos are sampled by local decode workers (a video is one long task with its own
        deadline; the frames are few): as in a local run."""
        with self.local:
            yield from self.local.sample_videos(jobs, target, pixels, sampling)

    # -- what ran where ----------------------------------------------------------------------------
    def _start_summary(self, recipe: EncoderRecipe | None, actors: int = 0) -> None:
        cluster = self.cluster()
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
