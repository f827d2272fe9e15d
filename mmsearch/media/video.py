"""Videos: which files, their records, how frames are sampled for the model, and thumbnails.

A video is indexed as its sampled frames: one vector per kept frame, each a catalogue row whose
locator is its timestamp (``t=12.345``), all sharing the video's path and its facts (duration,
frame rate, upright size, codec). Reading a video for the plan only hashes its bytes (streamed,
never held whole); everything FFmpeg touches runs in the decode workers, which the executor
kills past a deadline that grows with the video's duration.

Sampling (``sample_frames``) decodes only what it needs:

* the container is demuxed once without decoding, which gives every keyframe's time;
* when keyframes are at most one interval apart (phone cameras write one or two a second),
  only keyframes are decoded, and of those only a sample's and a check's every 2 s, plus the
  ones between two checks that differ like a cut (``frames.select_keyframes``): each interval's
  sample is its first keyframe, and encoders put keyframes at scene cuts, so cuts are placed
  at their keyframe;
* otherwise (long GOPs) every reference frame is decoded (``NONREF`` skips B-frames nobody
  refers to) and a tiny signature of a frame every fraction of an interval finds scene cuts;
* a candidate whose tiny signature is nearly the previous kept frame's is dropped before
  encoding; after encoding, the runner drops consecutive frames above a cosine (``dedup``);
* at most ``max_frames`` frames per video: the interval widens for long videos so that samples
  spread over the whole length.

Frames are scaled by FFmpeg (area filter) to twice the model's input on the short side, turned
upright (display-matrix rotation of phone videos), then cropped by the model's pixel transform.
"""

from __future__ import annotations

import hashlib
import math
import os
import stat as stat_mod
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .capabilities import VIDEO
from .capabilities import capabilities as capabilities_of
from .extensions import VIDEO_EXTENSIONS

from .frames import Picker, decoded_frames, model_pixels, select_decoded, select_keyframes
from .records import BadInput, FileEntry, Record, Skip, is_placeholder, one_line  # noqa: F401 - is_placeholder: its old home

# Containers by extension; the content decides in the end (FFmpeg probes it), so a file named
# .mp4 that holds only audio, or garbage, is skipped with the reason.
EXTENSIONS = VIDEO_EXTENSIONS
MEDIA_TYPES = {".mp4": "video/mp4", ".m4v": "video/mp4", ".mov": "video/quicktime", ".qt": "video/quicktime",
               ".mkv": "video/x-matroska", ".webm": "video/webm", ".avi": "video/x-msvideo", ".mpg": "video/mpeg",
               ".mpeg": "video/mpeg", ".3gp": "video/3gpp", ".wmv": "video/x-ms-wmv", ".flv": "video/x-flv",
               ".ts": "video/mp2t", ".mts": "video/mp2t", ".m2ts": "video/mp2t", ".ogv": "video/ogg"}

# One sample every 2 s: a scene has to last about 2 s to be sure to be sampled even without a
# cut detected, and a 10-minute video costs 300 encodes (about 20 s of ViT-B-32 on 2 CPU
# cores). MMSEARCH_VIDEO_INTERVAL changes it.
DEFAULT_INTERVAL = 2.0
# At most 600 frames per video (1.2 MB of vectors at 512-d): past 20 minutes the interval
# widens so samples cover the whole length. MMSEARCH_VIDEO_MAX_FRAMES changes it.
DEFAULT_MAX_FRAMES = 600
# Mean absolute difference (0..1) of 32x18 RGB signatures: below SAME, a frame is the previous
# kept one again (a still scene); above CUT, a new scene began.
SAME_DIFFERENCE = 0.02
CUT_DIFFERENCE = 0.12
# The same, for a frame compared with the previous kept one once aligned by their global shift
# (``frames.moved_difference``): below MOVED, a frame is the kept one moved by a camera pan or
# tilt. Measured: the test photos panned by fractions of a thumbnail pixel at most 0.016, a
# generated texture finer than a thumbnail pixel 0.022; different photos 0.12 and more, and a
# still shot where only a bar moved 0.035-0.046 (kept, as it should be).
MOVED_DIFFERENCE = 0.025
# Consecutive kept frames whose vectors are closer than this cosine are one frame for search.
DEDUP_COSINE = 0.985
# FFmpeg decoding threads per video (frame and slice threads): more buys little on a few
# cores and costs a decoded frame of memory each (50 MB at 8K).
DECODE_THREADS = 4
# Deadline of one video's sampling: the executor's base timeout plus this many seconds per
# second of video at 1080p (scaled by the pixel count): about 4x the slowest decode seen here.
SECONDS_PER_SECOND_1080P = 0.5
_1080P = 1920 * 1080
# A long video is sampled by several workers at once, each over a time range of at least this
# many seconds of 1080p decoding (a range costs a seek and a demux of the file; shorter ones
# would not pay it back). A larger frame counts for more: a minute of 4K is four minutes here.
SPLIT_SECONDS = 60.0
HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class Sampling:
    """How frames are chosen (see the module's docstring)."""

    interval: float = DEFAULT_INTERVAL
    max_frames: int = DEFAULT_MAX_FRAMES
    same: float = SAME_DIFFERENCE
    cut: float = CUT_DIFFERENCE
    moved: float = MOVED_DIFFERENCE  # 0: no pan test (every moved frame is encoded, as before)
    dedup_cosine: float = DEDUP_COSINE

    def interval_for(self, duration: float) -> float:
        """The interval used for a video of ``duration`` seconds (widened to respect the cap)."""
        if duration > 0 and duration / self.interval > self.max_frames:
            return duration / self.max_frames
        return self.interval


@dataclass(frozen=True)
class VideoInfo:
    """What a video is, as stored with each of its frames."""

    duration: float
    fps: float | None
    width: int  # upright
    height: int
    codec: str
    rotation: int = 0  # degrees the frames are turned to be upright
    stream: int = 0  # index of the video stream in the container
    captured: Any = None  # when, where, with what (``exif.Captured``, from the container's tags)

    def meta(self, t: float) -> dict[str, Any]:
        return {"t": round(t, 3), "duration": round(self.duration, 3),
                "fps": round(self.fps, 3) if self.fps else None, "codec": self.codec}

    def deadline(self, base: float) -> float:
        """Seconds the sampling of this video may take before its worker is killed."""
        scale = max(1.0, self.width * self.height / _1080P)
        return base + SECONDS_PER_SECOND_1080P * scale * max(self.duration, 1.0)


@dataclass
class SampledFrames:
    """What a worker returns for one video: its facts and the kept frames (uint8, model-ready)."""

    info: VideoInfo
    times: list[float] = field(default_factory=list)
    arrays: list[Any] = field(default_factory=list)
    decoded: int = 0  # frames FFmpeg decoded (for benchmarks)
    mode: str = ""  # "keyframes" | "reference frames"
    vectors: Any = None  # one row per time, where the executor encoded the frames (Ray's actors)


def locator(t: float) -> str:
    return f"t={t:.3f}"


def frame_hash(video_hash: str, t: float) -> str:
    """A frame's content identity: the video's plus its timestamp (so a renamed or copied video
    reuses every frame vector)."""
    return f"{video_hash}:{int(round(t * 1000))}"


def hash_range(video_hash: str) -> tuple[str, str]:
    """Bounds of the frame hashes of a video (for a range query: ``low <= hash < high``)."""
    return f"{video_hash}:", f"{video_hash};"


def video_hash(path: str) -> tuple[str, int]:
    """(content hash, size) of a regular file, read in chunks (a video is never held whole).

    Raises BadInput like ``records.read_regular_file``.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError as exc:
        raise BadInput("broken symlink" if os.path.islink(path) else "file disappeared after it was listed") from exc
    except PermissionError as exc:
        raise BadInput("permission denied", transient=True) from exc
    except OSError as exc:
        raise BadInput(exc.strerror or str(exc), transient=True) from exc
    try:
        st = os.fstat(fd)
        if not stat_mod.S_ISREG(st.st_mode):
            raise BadInput("not a regular file")
        if st.st_size == 0:
            raise BadInput("empty file")
        digest = hashlib.blake2b(digest_size=16)
        size = 0
        with os.fdopen(fd, "rb", closefd=True) as fh:
            fd = -1
            while chunk := fh.read(HASH_CHUNK):
                digest.update(chunk)
                size += len(chunk)
        return digest.hexdigest(), size
    except OSError as exc:
        raise BadInput(f"read error: {exc.strerror or exc}", transient=True) from exc
    finally:
        if fd >= 0:
            os.close(fd)


def container_of(head: bytes) -> str | None:
    """The video container the first bytes of a file announce (by content, not name), or None."""
    if len(head) >= 12 and head[4:8] == b"ftyp":
        return "MP4/QuickTime"
    if head[4:8] in (b"moov", b"mdat", b"wide", b"free", b"skip"):
        return "QuickTime"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "Matroska/WebM"
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "AVI"
    if head.startswith(b"OggS"):
        return "Ogg"
    if head.startswith(b"FLV"):
        return "FLV"
    if head.startswith(b"\x00\x00\x01\xba"):
        return "MPEG-PS"
    if head.startswith(b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"):
        return "ASF/WMV"
    if len(head) >= 189 and head[0] == 0x47 and head[188] == 0x47:
        return "MPEG-TS"
    return None


def _head(path: Any) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(256)
    except (OSError, TypeError):
        return b""


# -- FFmpeg, in the decode workers -----------------------------------------------------------------
def _open(source: Any):
    import av

    try:
        return av.open(source, metadata_errors="ignore")
    except av.error.InvalidDataError as exc:
        container = container_of(_head(source)) if isinstance(source, (str, os.PathLike)) else None
        if container:
            raise BadInput(f"damaged or truncated {container} file (FFmpeg cannot read its header)") from exc
        raise BadInput("not a video (FFmpeg does not recognise the data)") from exc
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise BadInput(f"cannot open video: {one_line(exc)}") from exc


def _video_stream(container):
    streams = container.streams.video
    if not streams:
        kinds = sorted({s.type for s in container.streams})
        raise BadInput(f"no video stream ({', '.join(kinds)} only)" if kinds else "no video stream")
    stream = streams[0]
    if stream.codec_context is None:
        raise BadInput("no decoder for the video stream")
    return stream


def _start(stream) -> float:
    return float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0


def _rotation(frame) -> int:
    """Degrees counter-clockwise to turn ``frame`` upright (a multiple of 90)."""
    try:
        value = frame.rotation
    except Exception:  # noqa: BLE001 - older PyAV or no display matrix
        return 0
    return int(round((value or 0) / 90.0)) % 4 * 90


def _duration(container, stream) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    return 0.0


def probe(path: str, max_pixels: int | None = None) -> VideoInfo:
    """The facts of the video at ``path``; its first frame is decoded (the rotation lives there,
    and a file none of whose frames decodes is not a video). BadInput says why not."""
    import av

    try:
        with _open(path) as container:
            stream = _video_stream(container)
            width, height = stream.codec_context.width, stream.codec_context.height
            if max_pixels is not None and width * height > max_pixels:
                raise _too_large(width, height, max_pixels)
            stream.thread_type = "AUTO"
            frame = next(iter(decoded_frames(container, stream)), None)
            if frame is None:
                raise BadInput("no decodable video frame")
            rotation = _rotation(frame)
            width, height = frame.width, frame.height
            if rotation in (90, 270):
                width, height = height, width
            rate = stream.average_rate or stream.guessed_rate
            return VideoInfo(duration=_duration(container, stream), fps=float(rate) if rate else None,
                             width=width, height=height, codec=stream.codec_context.name, rotation=rotation,
                             stream=stream.index, captured=_captured(container))
    except BadInput:
        raise
    except (av.error.FFmpegError, OSError, ValueError, StopIteration) as exc:
        raise BadInput(f"cannot decode video: {one_line(exc)}") from exc


def _captured(container) -> Any:
    from .exif import NOTHING, from_container

    try:
        return from_container(dict(container.metadata))
    except Exception:  # noqa: BLE001 - unreadable tags: no capture metadata, the video still indexes
        return NOTHING


def _keyframe_times(path: str, stream_index: int) -> tuple[list[float], float]:
    """(keyframe times, end time) from the packets alone: nothing is decoded."""
    with _open(path) as container:
        stream = container.streams[stream_index]
        start = _start(stream)
        keys: list[float] = []
        end = 0.0
        for packet in container.demux(stream):
            if packet.pts is None or packet.time_base is None:
                continue
            t = float(packet.pts * packet.time_base) - start
            end = max(end, t + float((packet.duration or 0) * packet.time_base))
            if packet.is_keyframe:
                keys.append(t)
    return sorted(keys), end


def spans(duration: float, workers: int, pixels: int = _1080P) -> list[tuple[float, float]]:
    """Time ranges that split a video of ``duration`` seconds of ``pixels``-pixel frames among up
    to ``workers`` workers, each worth at least ``SPLIT_SECONDS`` of 1080p decoding; one range
    (the whole video) when splitting cannot pay."""
    work = duration * max(1.0, pixels / _1080P)
    count = max(1, min(workers, int(work // SPLIT_SECONDS)))
    if count == 1:
        return [(0.0, math.inf)]
    edges = [duration * i / count for i in range(count)] + [math.inf]
    return list(zip(edges, edges[1:]))


def keyframes_worker(path: str, stream: int):
    """``(keyframe times, end time)`` for the workers that sample ranges of one video (the
    demux is made once, not once per range)."""
    try:
        return _keyframe_times(path, stream)
    except BadInput as exc:
        return exc.skip(path)
    except Exception as exc:  # noqa: BLE001 - FFmpeg's errors: the ranges demux for themselves
        return Skip(path, f"cannot demux video: {one_line(exc)}", protects=False)


def merge_samples(parts: list[SampledFrames], sampling: Sampling) -> SampledFrames:
    """One video's samples from its ranges, in time order, under the per-video cap."""
    merged = SampledFrames(parts[0].info, mode=parts[0].mode)
    for part in parts:
        merged.times.extend(part.times)
        merged.arrays.extend(part.arrays)
        merged.decoded += part.decoded
    _cap(merged, sampling.max_frames)
    return merged


def _cap(result: SampledFrames, max_frames: int) -> None:
    if len(result.times) > max_frames:  # scene cuts beyond the cap: thin evenly
        keep = np.linspace(0, len(result.times) - 1, max_frames).round().astype(int)
        result.times = [result.times[i] for i in keep]
        result.arrays = [result.arrays[i] for i in keep]


def sample_frames(path: str, target: int | None, pixels: Any, sampling: Sampling = Sampling(),
                  max_pixels: int | None = None, info: VideoInfo | None = None,
                  span: tuple[float, float] | None = None,
                  keyframes: tuple[list[float], float] | None = None) -> SampledFrames:
    """The frames of the video at ``path`` that represent it (see the module's docstring), as
    uint8 arrays ready for the model. ``info``: its ``probe`` when already made. ``span``:
    only the frames from ``start`` (inclusive) to ``end`` seconds, for a worker sampling one
    range of a long video (``spans``; the ranges' results joined by ``merge_samples`` are the
    whole video's, with at most one extra frame per boundary, which the cosine dedup drops);
    ``keyframes``: the file's ``(keyframe times, end)`` when already demuxed. BadInput when
    nothing can be decoded."""
    import av

    info = info or probe(path, max_pixels)
    index = info.stream
    result: SampledFrames | None = None
    try:
        keys, end = keyframes if keyframes is not None else _keyframe_times(path, index)
        duration = info.duration if info.duration > 0 else end
        interval = sampling.interval_for(duration)
        longest_gap = max((b - a for a, b in zip(keys, keys[1:] + [max(duration, keys[-1] if keys else 0)])),
                          default=math.inf)
        keyframes_only = bool(keys) and keys[0] <= interval and longest_gap <= interval * 1.01
        result = SampledFrames(replace(info, duration=duration))
        with _open(path) as container:
            stream = container.streams[index]
            # Keyframes are decoded one at a time (``frames.select_keyframes``): frame threads
            # would only delay each; a keyframe's slices can still be decoded in parallel.
            stream.thread_type = "SLICE" if keyframes_only else "AUTO"
            stream.codec_context.thread_count = DECODE_THREADS
            stream.codec_context.skip_frame = "NONKEY" if keyframes_only else "NONREF"
            if keyframes_only:
                # No frame refers to a decoded keyframe here (every other frame is skipped), so
                # its deblocking filter can be skipped without drift: 17 % less decoding time
                # at 1080p, and a mean difference of 0.24/255 at the model's 224 px.
                stream.codec_context.options = {**stream.codec_context.options, "skip_loop_filter": "all"}
            result.mode = "keyframes" if keyframes_only else "reference frames"
            first, last = span or (0.0, math.inf)
            if first > 0 and stream.time_base is not None:
                # to the keyframe at or before the range's start: frames before it are skipped
                container.seek(int((first + _start(stream)) / stream.time_base), stream=stream, backward=True,
                               any_frame=False)
            picker = Picker(result, interval, sampling, target, pixels, first)
            walk = select_keyframes if keyframes_only else select_decoded
            walk(container, stream, picker, _start(stream), (first, last))
    except BadInput:
        raise
    except MemoryError as exc:
        raise BadInput("out of memory decoding video") from exc
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        if result is None or not result.times:
            raise BadInput(f"cannot decode video: {one_line(exc)}") from exc
        # a damaged tail: keep what decoded before it
    if result is None or not result.times:
        raise BadInput("no decodable video frame")
    _cap(result, sampling.max_frames)
    return result


def video_worker(path: str, target: int | None, pixels: Any, sampling: Sampling, max_pixels: int | None,
                 info: VideoInfo | None = None, span: tuple[float, float] | None = None,
                 keyframes: tuple[list[float], float] | None = None):
    """``sample_frames`` for a worker: BadInput becomes a Skip."""
    try:
        return sample_frames(path, target, pixels, sampling, max_pixels, info, span, keyframes)
    except BadInput as exc:
        return exc.skip(path)


def probe_worker(path: str, max_pixels: int | None):
    try:
        return probe(path, max_pixels)
    except BadInput as exc:
        return exc.skip(path)


def drop_repeats(vectors: np.ndarray, threshold: float) -> list[int]:
    """Indices of the frames to keep: each frame whose cosine with the previous kept one is
    below ``threshold`` (vectors are L2-normalised)."""
    keep: list[int] = []
    for i in range(len(vectors)):
        if not keep or float(vectors[i] @ vectors[keep[-1]]) < threshold:
            keep.append(i)
    return keep


# -- thumbnails ------------------------------------------------------------------------------------
def _too_large(width: int, height: int, max_pixels: int) -> BadInput:
    return BadInput(f"video too large: {width}x{height} pixels, over the {max_pixels}-pixel decode cap "
                    f"(set MMSEARCH_MAX_PIXELS to raise it)")


def frame_at(source: Any, t: float, size: int, max_pixels: int | None = None, deadline: float | None = None) -> bytes:
    """JPEG bytes of the frame at ``t`` seconds (upright), fitting ``size``x``size``. The caps of
    indexing: no frame over ``max_pixels`` is decoded (the stream's header is checked first, each
    frame again), and decoding stops with BadInput after ``deadline`` seconds."""
    import io
    import time

    import av
    from PIL import Image

    from .image import THUMB_QUALITY

    stop = time.monotonic() + deadline if deadline is not None else None
    try:
        with _open(source) as container:
            stream = _video_stream(container)
            width, height = stream.codec_context.width, stream.codec_context.height
            if max_pixels is not None and width * height > max_pixels:
                raise _too_large(width, height, max_pixels)
            stream.thread_type = "AUTO"
            start = _start(stream)
            if t > 0 and stream.time_base is not None:
                container.seek(int((t + start) / stream.time_base), stream=stream, backward=True, any_frame=False)
            chosen = None
            for frame in decoded_frames(container, stream):
                if max_pixels is not None and frame.width * frame.height > max_pixels:
                    raise _too_large(frame.width, frame.height, max_pixels)  # a header that lied
                if stop is not None and time.monotonic() > stop:
                    raise BadInput(f"decoding the frame took longer than {deadline:g} s "
                                   "(set MMSEARCH_DECODE_TIMEOUT to raise it)")
                if frame.pts is None:
                    continue
                chosen = frame
                if float(frame.time) - start >= t - 1e-3:
                    break
            if chosen is None:
                raise BadInput("no decodable video frame")
            img = Image.fromarray(model_pixels(chosen, _rotation(chosen), size, None), "RGB")
    except BadInput:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise BadInput(f"cannot decode video: {one_line(exc)}") from exc
    img.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=THUMB_QUALITY, optimize=True)
    return out.getvalue()


# -- the handler -----------------------------------------------------------------------------------
class VideoHandler:
    """Video files: read as one placeholder record (the file's hash); the runner samples frames
    in the decode workers and writes one row per kept frame."""

    kind = VIDEO
    modality = VIDEO
    capabilities = capabilities_of(VIDEO)  # reads_path: the registry must not read the file whole
    decoded_in_workers = True
    multi_record = True  # several rows per file, sealed once all are written
    reads_other_files = False

    @property
    def extensions(self) -> frozenset[str]:
        return EXTENSIONS

    @staticmethod
    def media_type(path: str) -> str:
        return MEDIA_TYPES.get(os.path.splitext(path)[1].lower(), "application/octet-stream")

    @staticmethod
    def thumbnail_at(fd: int, size: int, t: float, max_pixels: int | None = None, deadline: float | None = None) -> bytes:
        """JPEG bytes of the frame at ``t`` of the video open as ``fd`` (read through a duplicate
        descriptor, so the caller's stays as it is), within indexing's caps (see ``frame_at``)."""
        with os.fdopen(os.dup(fd), "rb") as fh:
            fh.seek(0)
            return frame_at(fh, t, size, max_pixels, deadline)

    @staticmethod
    def recognises(head: bytes) -> bool:
        """Whether a file starting with ``head`` is a video by its content, whatever its name."""
        return container_of(head) is not None

    @staticmethod
    def read_captured(path: str) -> Any:
        """The capture metadata in the container's tags (``exif.Captured``); raises when the
        file cannot be opened."""
        with _open(path) as container:
            return _captured(container)

    def records(self, entry: FileEntry, data: bytes | None = None, max_pixels: int | None = None) -> tuple[list[Record], list[Skip]]:
        digest, _ = video_hash(entry.path)
        return [Record(entry.path, "", VIDEO, entry.size, entry.mtime_ns, digest)], []


def frame_record(video: Record, t: float, info: VideoInfo) -> Record:
    return Record(video.path, locator(t), VIDEO, video.size, video.mtime_ns, frame_hash(video.content_hash, t),
                  width=info.width, height=info.height, meta=info.meta(t), captured=info.captured)
