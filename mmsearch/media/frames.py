"""Choosing a video's frames for the model, in the decode workers (``media.video.sample_frames``
opens the file and decides the mode; this module walks its frames).

Two walks share one rule (``Picker``): a frame is kept when an interval sample is due or a
scene cut happened (its tiny signature is far from the last kept frame's), unless it repeats the
last kept frame: a still scene (the thumbnails alike), or the camera panned or tilted (alike once
aligned by the global shift that phase correlation finds, over at least 60 % of the frame). Without
the second test, a panning shot had every sample encoded, most only to be dropped afterwards as
near-duplicates by cosine.

* ``select_decoded`` (long GOPs): every reference frame is decoded, and a signature taken a few
  times per interval finds the cuts.
* ``select_keyframes`` (a keyframe at least every interval, as phone cameras write them): only
  keyframes are decoded, and not all of them. A keyframe is decoded when a sample is due or
  ``CHECK_SECONDS`` passed since the last decoded one (a *check*); the keyframes in between are
  decoded only when the two checks around them differ like a cut, to place the cut at its
  keyframe. A scene lasting at least ``CHECK_SECONDS`` plus one keyframe gap (3 s at a keyframe
  a second) always holds a check, so it is never lost; a shorter scene between two alike checks
  can be (before, every keyframe was decoded: at the default 2 s interval this halves the
  decoding of a phone video, which is most of what indexing it costs).

Each chosen keyframe is decoded on its own (sent, then the decoder drained and reset), so the
decoder's frame-threading delay cannot hand back a frame of another packet.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

# A frame's signature: its RGB thumbnail at twice this size (one FFmpeg area scaling); the raw
# difference is taken at this size (block means), the shift-aligned one at the full thumbnail.
SIG_SIZE = (32, 18)
# Keyframes are checked for a scene cut at least this often (seconds) however wide the interval.
CHECK_SECONDS = 2.0
# A frame that is the last kept one moved (a camera pan or tilt) is a repeat when, once the two
# are aligned by the shift that phase correlation finds, they differ by less than the sampling's
# ``moved`` threshold over an overlap of at least this share of the frame: at most 40 % of what
# it shows is new. Phase correlation (Hann-windowed) finds shifts past about 40 % of the frame
# only now and then (on the benchmark's pan: once at 44 % and not another time), so the rule
# stops where the estimate is still sure.
MIN_OVERLAP = 0.6


def signature(frame) -> np.ndarray:
    """The frame's 64x36 RGB thumbnail (0..1)."""
    small = frame.reformat(width=2 * SIG_SIZE[0], height=2 * SIG_SIZE[1], format="rgb24", interpolation="AREA")
    return small.to_ndarray().astype(np.float32) / 255.0


def _blocks(sig: np.ndarray) -> np.ndarray:
    """The signature at ``SIG_SIZE`` (2x2 block means: the same as an area scaling to it)."""
    h, w = sig.shape[0] // 2 * 2, sig.shape[1] // 2 * 2
    return sig[:h, :w].reshape(h // 2, 2, w // 2, 2, -1).mean(axis=(1, 3))


def difference(a: np.ndarray | None, b: np.ndarray) -> float:
    """Mean absolute difference (0..1) of two signatures at ``SIG_SIZE`` (1 when there is no first)."""
    return 1.0 if a is None else float(np.abs(_blocks(a) - _blocks(b)).mean())


def _peak_offset(left: float, peak: float, right: float) -> float:
    """Where between its neighbours a correlation peak really lies (-0.5..0.5 of a pixel): the
    share of the peak's energy in the larger neighbour (Foroosh et al.'s estimate for phase
    correlation)."""
    if right >= left:
        return right / (right + peak) if right > 0 else 0.0
    return -left / (left + peak) if left > 0 else 0.0


def shift(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """The global shift ``(dy, dx)`` in thumbnail pixels (to a fraction of one) that moves
    ``a``'s content onto ``b``'s, by phase correlation of their grey levels (a Hann window
    tapers the edges, which a pan does not wrap around)."""
    height, width = a.shape[:2]
    window = np.outer(np.hanning(height), np.hanning(width))
    fa = np.fft.rfft2((a.mean(axis=2) - a.mean()) * window)
    fb = np.fft.rfft2((b.mean(axis=2) - b.mean()) * window)
    cross = fb * np.conj(fa)
    cross /= np.maximum(np.abs(cross), 1e-9)
    surface = np.fft.irfft2(cross, s=(height, width))
    y, x = (int(v) for v in np.unravel_index(int(np.argmax(surface)), surface.shape))
    peak = surface[y, x]
    dy = y + _peak_offset(surface[y - 1, x], peak, surface[(y + 1) % height, x])
    dx = x + _peak_offset(surface[y, x - 1], peak, surface[y, (x + 1) % width])
    return float(dy - height if dy > height / 2 else dy), float(dx - width if dx > width / 2 else dx)


def moved_difference(a: np.ndarray | None, b: np.ndarray) -> float:
    """Mean absolute difference at ``SIG_SIZE`` of two signatures where they overlap once
    aligned by their global shift (``shift``; ``b`` interpolated bilinearly between its pixels);
    1 when there is no first, no shift (the plain ``difference`` decides then) or an overlap
    under ``MIN_OVERLAP``."""
    if a is None:
        return 1.0
    dy, dx = shift(a, b)
    height, width = a.shape[:2]
    if (abs(dy) < 0.5 and abs(dx) < 0.5) or (1 - abs(dy) / height) * (1 - abs(dx) / width) < MIN_OVERLAP:
        return 1.0
    iy, ix = math.floor(dy), math.floor(dx)
    fy, fx = dy - iy, dx - ix
    y0, y1 = max(0, -iy), min(height, height - 1 - iy)  # rows of a whose b rows (and the next) exist
    x0, x1 = max(0, -ix), min(width, width - 1 - ix)

    def part(oy: int, ox: int) -> np.ndarray:
        return b[y0 + iy + oy:y1 + iy + oy, x0 + ix + ox:x1 + ix + ox]

    moved = ((1 - fy) * ((1 - fx) * part(0, 0) + fx * part(0, 1))
             + fy * ((1 - fx) * part(1, 0) + fx * part(1, 1)))
    # compared as block means, as the plain difference
    return float(np.abs(_blocks(a[y0:y1, x0:x1]) - _blocks(moved)).mean())


def judge(a: np.ndarray | None, b: np.ndarray, sampling: Any) -> tuple[bool, bool]:
    """``(repeat, cut)`` for the frame of signature ``b`` after the frame of signature ``a``:
    a repeat when it is ``a`` again (still: the plain difference under ``sampling.same``) or
    ``a`` moved (a pan or tilt: the shift-aligned difference under ``sampling.moved``); a cut
    when both differences reach ``sampling.cut``."""
    diff = difference(a, b)
    if diff < sampling.same:
        return True, False
    if sampling.moved <= 0:  # no pan test
        return False, diff >= sampling.cut
    moved = moved_difference(a, b)
    return moved < sampling.moved, min(diff, moved) >= sampling.cut


def model_pixels(frame, rotation: int, target: int | None, pixels: Any) -> np.ndarray:
    """The frame upright, as the model's uint8 input (or whole, as RGB, without a transform):
    scaled by FFmpeg (area filter) to twice the model's input on the short side."""
    from PIL import Image

    width, height = frame.width, frame.height
    if target:
        scale = min(1.0, 2 * target / max(1, min(width, height)))
        width, height = max(1, round(width * scale)), max(1, round(height * scale))
    rgb = frame.reformat(width=width, height=height, format="rgb24", interpolation="AREA").to_ndarray()
    if rotation:
        rgb = np.ascontiguousarray(np.rot90(rgb, k=rotation // 90))
    if pixels is None:
        return rgb
    return pixels.apply(Image.fromarray(rgb, "RGB"))


def _damaged(exc: Exception) -> bool:
    """True for FFmpeg's complaint about one packet's data (the packet is skipped, not the video)."""
    import av

    return isinstance(exc, av.error.InvalidDataError) or (
        isinstance(exc, av.error.FFmpegError) and "Invalid data" in str(exc))


def decoded_frames(container, stream) -> Iterator[Any]:
    """Decoded frames of ``stream``; packets FFmpeg cannot decode are skipped (a damaged stretch
    costs its frames, not the video)."""
    import av

    for packet in container.demux(stream):
        try:
            yield from packet.decode()
        except av.error.FFmpegError as exc:
            if not _damaged(exc):
                raise


def decode_alone(decoder, packet) -> Any | None:
    """The frame of one keyframe ``packet``, decoded on its own (None when it cannot be)."""
    import av

    try:
        frames = list(decoder.decode(packet)) + list(decoder.decode(None))
    except av.error.FFmpegError as exc:
        if not _damaged(exc):
            raise
        frames = []
    finally:
        decoder.flush_buffers()
    return frames[-1] if frames else None


class Picker:
    """The rule both walks apply to the frames they look at, in time order."""

    def __init__(self, result: Any, interval: float, sampling: Any, target: int | None, pixels: Any,
                 first: float):
        self.result = result  # media.video.SampledFrames
        self.interval = interval
        self.sampling = sampling
        self.target = target
        self.pixels = pixels
        self.next_sample = first  # time of the next interval sample
        self.last_sig: np.ndarray | None = None
        self.last_t = -math.inf

    def due(self, t: float) -> bool:
        return t >= self.next_sample - 1e-6

    def offer(self, frame, t: float, sig: np.ndarray) -> None:
        """Keep ``frame`` (at ``t`` s, signature ``sig``) if a sample is due or a cut happened."""
        result, sampling = self.result, self.sampling
        repeat, cut = judge(self.last_sig, sig, sampling)
        due = self.due(t)
        if due and repeat:
            # a still scene, or the kept frame panned over: the kept frame stands for this one too
            self.next_sample = t + self.interval
            return
        if not (due or cut) or t - self.last_t < 1e-3:
            return
        result.times.append(round(t, 3))
        result.arrays.append(model_pixels(frame, result.info.rotation, self.target, self.pixels))
        self.last_sig, self.last_t = sig, t
        if len(result.times) >= 2 * sampling.max_frames:
            # Cut after cut (a flickering or hostile video): memory stays bounded by halving
            # what is kept so far and the cadence from here on.
            result.times, result.arrays = result.times[::2], result.arrays[::2]
            self.interval *= 2
        self.next_sample = t + self.interval


def select_decoded(container, stream, picker: Picker, start: float, span: tuple[float, float]) -> None:
    """Walk every decoded frame of ``span`` once (long GOPs), looking at a few per interval."""
    first, last = span
    result = picker.result
    next_look = first  # time of the next scene-cut check
    look_every = min(0.5, picker.interval / 4)
    for frame in decoded_frames(container, stream):
        result.decoded += 1
        if frame.pts is None:
            continue
        t = max(0.0, float(frame.time) - start)
        if t >= last:
            break  # the next range's worker takes it from here
        if t < first - 1e-6:
            continue  # decoded from the keyframe before the range: the previous range's
        look = t >= next_look - 1e-6
        if look:
            next_look = t + look_every
        elif not picker.due(t):
            continue
        picker.offer(frame, t, signature(frame))


def select_keyframes(container, stream, picker: Picker, start: float, span: tuple[float, float],
                     check_every: float = CHECK_SECONDS) -> None:
    """Walk the keyframes of ``span``, decoding the checks and samples, and the keyframes
    between two checks only where those differ like a cut (see the module's docstring)."""
    first, last = span
    result = picker.result
    decoder = stream.codec_context
    check_every = min(check_every, picker.interval)
    pending: list[tuple[float, Any]] = []  # keyframes passed over since the last decoded one
    last_check: list[np.ndarray | None] = [None]

    def decode(packet) -> Any | None:
        result.decoded += 1
        return decode_alone(decoder, packet)

    def check(t: float, packet) -> bool:
        """Decode the keyframe at ``t`` and offer it, after the passed-over keyframes before it
        where they hold a cut. False when it cannot be decoded."""
        frame = decode(packet)
        if frame is None:
            return False  # a damaged keyframe: the next one is checked instead
        sig = signature(frame)
        if pending and judge(last_check[0], sig, picker.sampling)[1]:
            for between_t, between in pending:  # a cut since the last check: find its keyframe
                between_frame = decode(between)
                if between_frame is not None:
                    picker.offer(between_frame, between_t, signature(between_frame))
        pending.clear()
        picker.offer(frame, t, sig)
        last_check[0] = sig
        return True

    next_check = first
    for packet in container.demux(stream):
        if not packet.is_keyframe or packet.pts is None or packet.time_base is None:
            continue
        t = max(0.0, float(packet.pts * packet.time_base) - start)
        if t >= last:
            break
        if t < first - 1e-6:
            continue
        if picker.due(t) or t >= next_check - 1e-6:
            if check(t, packet):
                next_check = t + check_every
        else:
            pending.append((t, packet))
    while pending:  # the span's last keyframe is checked too: a cut before the end is not lost
        t, packet = pending.pop()
        if check(t, packet):
            break
