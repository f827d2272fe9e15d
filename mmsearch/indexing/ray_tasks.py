"""What runs on the Ray workers of ``--runner ray``: the encoder recipe, the decode and video
sampling tasks, and the encode actor. The driver side is ``ray_executor``.

Every file is decoded in a *sandbox*: a one-worker process pool (pebble, the local executor's
kind) kept by each Ray worker process. The file's deadline (``MMSEARCH_DECODE_TIMEOUT``, and a
video's own, which grows with its length) is enforced there, and a decoder that crashes kills
only the sandbox's worker: both become the local run's one-line skips (``executors.decode_outcome``),
not a hung task or a Ray task that fails the whole job after its retries. A Ray worker process
that dies itself (a node lost) is still retried by Ray.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..media import Skip
from ..media.capabilities import IMAGE, VIDEO  # the nouns of the skips of these stages (a picture's, a video's)
from ..media.image import PixelTransform
from .executors import joined_results, decode_outcome

_sandboxes: dict[str, Any] = {}  # per Ray worker process: the pebble pool decoding its files


def _sandbox() -> Any:
    """This worker process's one-worker decode pool (started on first use, kept for its tasks)."""
    pool = _sandboxes.get("pool")
    if pool is None:
        from pebble import ProcessPool

        from ..media.image import decode_worker_init
        from ..procs import worker_context
        from .executors import check_pool

        pool = ProcessPool(max_workers=1, initializer=decode_worker_init,
                           context=worker_context(["mmsearch.media.image", "mmsearch.media.video"]))
        check_pool(pool)
        _sandboxes["pool"] = pool
    return pool


def _node() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


# -- the encoder ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class EncoderRecipe:
    """How a worker builds the encoder: small and picklable, the model is loaded there.

    ``kind`` "torch": ``TorchEncoder(spec, device, cpu_bf16)`` (images and texts); "onnx" /
    "onnx-int8": the index's ONNX image encoder from ``folder`` (the files must be at the same
    path on every node), with texts by the index's ONNX text encoder (``text_record``) or, where
    it has none, the torch model: the encoders a local run uses, so the vectors are the same.
    """

    kind: str
    spec: Any = None
    device: str | None = None
    cpu_bf16: str = "auto"
    folder: str | None = None
    record: dict | None = None
    text_record: dict | None = None

    def build(self) -> Any:
        from ..encoders import TorchEncoder

        if self.kind == "torch":
            return TorchEncoder(self.spec, self.device, self.cpu_bf16)
        from pathlib import Path

        from ..encoders.onnx_image import IndexingEncoder, OnnxImageEncoder, once_per_process

        folder = Path(self.folder)

        def texts() -> Any:
            if self.text_record is not None:
                from ..encoders import onnx_text

                try:
                    return onnx_text.OnnxTextEncoder(folder, self.text_record)
                except Exception:  # noqa: BLE001 - OnnxTextUnavailable: texts then use torch, as locally
                    pass
            return TorchEncoder(self.spec, "cpu", self.cpu_bf16)

        return IndexingEncoder(OnnxImageEncoder(folder, self.record, self.kind), once_per_process(texts))

    def describe(self) -> str:
        return f"torch on {self.device or 'the best device'}" if self.kind == "torch" else self.kind


# -- decode tasks ------------------------------------------------------------------------------------
def decode_batch(batch: dict[str, np.ndarray], target: int, limit: int, pixels: PixelTransform | None,
                 timeout: float) -> dict[str, np.ndarray]:
    """A decode task: each image decoded in the sandbox as a local decode worker does
    (``decode_for_model``, under the deadline), or the reason it cannot be, with the local run's
    message. Text rows (``text`` set) pass through to the encode actors."""
    from ..media.image import decode_for_model

    pool = _sandbox() if not batch["is_text"].all() else None
    futures: list[Any] = []
    for raw, is_text in zip(batch["path"], batch["is_text"]):
        path = os.fsdecode(bytes(raw))
        futures.append(None if is_text else pool.schedule(decode_for_model, args=(path, target, limit, pixels),
                                                                   timeout=timeout))
    arrays: list[np.ndarray | None] = []
    reasons: list[bytes] = []
    protects: list[bool] = []
    for raw, future in zip(batch["path"], futures):
        result = None if future is None else decode_outcome(os.fsdecode(bytes(raw)), future, timeout, IMAGE)
        if isinstance(result, Skip):
            arrays.append(None)
            reasons.append(result.reason.encode("utf-8", "surrogateescape"))
            protects.append(result.protects)
        else:
            arrays.append(result)
            reasons.append(b"")
            protects.append(False)
    n = len(reasons)
    blank = (pixels.crop, pixels.crop, 3) if pixels is not None else None
    return {"i": batch["i"], "pixels": column(arrays, blank), "text": batch["text"], "is_text": batch["is_text"],
            "skip": np.array(reasons, dtype=object), "protects": np.array(protects, dtype=bool),
            "decode_node": np.array([_node()] * n, dtype=object)}


def column(arrays: list[np.ndarray | None], blank: tuple[int, ...] | None = None) -> np.ndarray:
    """One tensor column: stacked when every image has the model's crop (the pixel path), else
    an object column of whole images; rows without an image (failed, texts) hold a blank of the
    model's crop, so every batch of a pixel-path run has the same column type."""
    shapes = {a.shape for a in arrays if a is not None}
    blank_shape = blank or (next(iter(shapes)) if len(shapes) == 1 else (1, 1, 3))
    filled = [a if a is not None else np.zeros(blank_shape, np.uint8) for a in arrays]
    if {a.shape for a in filled} <= {blank_shape}:
        return np.stack(filled) if filled else np.zeros((0, *blank_shape), np.uint8)
    out = np.empty(len(filled), dtype=object)
    out[:] = filled
    return out


# -- videos --------------------------------------------------------------------------------------------
def probe_video(path: str, limit: int | None, timeout: float) -> Any:
    """A Ray task: the video's ``VideoInfo`` (probed in the sandbox under the base deadline), or
    the ``Skip`` saying why not."""
    from ..media.video import probe_worker

    return decode_outcome(path, _sandbox().schedule(probe_worker, args=(path, limit), timeout=timeout), timeout, VIDEO)


def video_keyframes(path: str, stream: int, timeout: float) -> Any:
    """A Ray task: ``(keyframe times, end)`` of a video sampled in ranges, or a ``Skip``."""
    from ..media.video import keyframes_worker

    return decode_outcome(path, _sandbox().schedule(keyframes_worker, args=(path, stream), timeout=timeout), timeout,
                    VIDEO)


@dataclass(frozen=True)
class SpanJob:
    """One time range of one video to sample (the whole video when it is not split)."""

    video: int  # the video's row in the run
    span: int  # which range
    path: str
    info: Any  # VideoInfo
    range: tuple[float, float] | None
    keys: Any  # (keyframe times, end) or None
    deadline: float


def sample_spans(batch: dict[str, np.ndarray], target: int, pixels: PixelTransform | None, sampling: Any,
                 limit: int | None) -> dict[str, np.ndarray]:
    """A sampling task: each range's frames (sampled in the sandbox under the range's deadline,
    ``video_worker``), one row per frame, or one row with the range's skip. Every row says how
    many rows its range gave (``count``), so the driver knows when a video is complete."""
    from ..media.video import video_worker

    pool = _sandbox()
    jobs = [pickle.loads(bytes(raw)) for raw in batch["job"]]
    futures = [pool.schedule(video_worker, args=(job.path, target, pixels, sampling, limit, job.info, job.range, job.keys),
                             timeout=job.deadline) for job in jobs]
    rows: dict[str, list] = {k: [] for k in ("i", "span", "count", "t", "pixels", "skip", "protects", "info")}
    for job, future in zip(jobs, futures):
        result = decode_outcome(job.path, future, job.deadline, VIDEO)
        if isinstance(result, Skip):
            frames: list[tuple[float, Any]] = [(0.0, None)]
            reason, info = result.reason.encode("utf-8", "surrogateescape"), pickle.dumps(result)
        else:
            frames = list(zip(result.times, result.arrays))
            reason = b""
            result.arrays = []
            info = pickle.dumps(result)  # the range's facts (info, mode, frames decoded), without pixels
        for t, array in frames:
            rows["i"].append(job.video)
            rows["span"].append(job.span)
            rows["count"].append(len(frames))
            rows["t"].append(t)
            rows["pixels"].append(array)
            rows["skip"].append(reason)
            rows["protects"].append(False if not reason else result.protects)
            rows["info"].append(info)
    n = len(rows["i"])
    blank = (pixels.crop, pixels.crop, 3) if pixels is not None else None
    return {"i": np.array(rows["i"], np.int64), "span": np.array(rows["span"], np.int64),
            "count": np.array(rows["count"], np.int64), "t": np.array(rows["t"], np.float64),
            "pixels": column(rows["pixels"], blank), "text": np.array([b""] * n, dtype=object),
            "is_text": np.zeros(n, dtype=bool),
            "skip": np.array(rows["skip"], dtype=object), "protects": np.array(rows["protects"], dtype=bool),
            "info": np.array(rows["info"], dtype=object), "decode_node": np.array([_node()] * n, dtype=object)}


def join_spans(parts: list[tuple[Any, list[float], np.ndarray | None]], sampling: Any) -> Any:
    """One video's ``SampledFrames`` from its ranges' (facts or Skip, times, vectors), as a local
    run joins them (``executors.joined_results``: what decoded, the first range's reason when none did);
    its ``vectors`` row for row with its ``times``."""
    sampled = []
    for result, times, vectors in parts:
        if isinstance(result, Skip):
            sampled.append(result)
        else:
            result.times = list(times)
            result.arrays = list(vectors)  # merged and capped exactly as the frames would be
            sampled.append(result)
    joined = joined_results(sampled, sampling)
    if isinstance(joined, Skip):
        return joined
    dim = next((v.shape[1] for _, _, v in parts if v is not None and v.ndim == 2), 0)
    joined.vectors = np.stack(joined.arrays) if joined.arrays else np.zeros((0, dim), np.float32)
    joined.arrays = []
    return joined


# -- the encode actor ----------------------------------------------------------------------------------
def _claim_once(marker: str) -> bool:
    """True for the first process to create ``marker`` (the crash test hook fires once)."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


class EncodeActor:
    """An encode actor: builds the encoder once, then encodes each batch's rows: images (and
    video frames) that decoded through the image tower, texts through the text tower. The
    batch's other columns pass through; the pixels do not go back."""

    def __init__(self, recipe: EncoderRecipe, crash_once: str | None = None):
        import warnings

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
        texts = np.asarray(batch["is_text"], dtype=bool)
        images = np.array([not reason for reason in batch["skip"]], dtype=bool) & ~texts
        vectors = np.zeros((n, self.encoder.dim), np.float32)
        if images.any():
            vectors[images] = encode_arrays(self.encoder, [batch["pixels"][row] for row in np.flatnonzero(images)])
        if texts.any():
            vectors[texts] = self.encoder.encode_texts(
                [bytes(batch["text"][row]).decode("utf-8", "surrogateescape") for row in np.flatnonzero(texts)])
        out = {key: value for key, value in batch.items() if key not in ("pixels", "text", "is_text")}
        out.update(vector=vectors, actor=np.array([self.actor] * n, dtype=object), restarted=np.full(n, self.restarted),
                   gpu=np.full(n, self.gpu), node=np.array([self.node] * n, dtype=object))
        return out
