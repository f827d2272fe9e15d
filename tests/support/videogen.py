"""Generated videos of known content, for tests and benchmarks: coloured scenes of given
lengths, optionally with motion, a rotation matrix, or variable frame timing (PyAV encodes)."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np

# Distinct, saturated scene colours (RGB).
COLOURS = ((220, 30, 30), (30, 180, 40), (30, 60, 220), (230, 210, 30), (200, 40, 200), (30, 200, 210),
           (240, 140, 20), (120, 120, 120))


def scene_frame(colour: Sequence[int], width: int, height: int, i: int, motion: bool, pattern: int = 0) -> np.ndarray:
    """One frame of a scene: a solid colour with a pattern unique to the scene, and with
    ``motion`` a bar that moves and fine noise (so that encoders must work as on real footage)."""
    frame = np.empty((height, width, 3), np.uint8)
    frame[:] = colour
    # a scene-specific shape: a darker quadrant chosen by pattern
    qh, qw = height // 2, width // 2
    y, x = divmod(pattern % 4, 2)
    frame[y * qh:(y + 1) * qh, x * qw:(x + 1) * qw] //= 2
    if motion:
        bar = max(2, width // 24)
        left = (i * max(1, width // 120)) % max(1, width - bar)
        frame[:, left:left + bar] = 255
        rng = np.random.default_rng(i)
        noise = rng.integers(0, 24, size=(-(-height // 8), -(-width // 8), 1), dtype=np.uint8)
        frame = np.clip(frame.astype(np.int16) + np.kron(noise, np.ones((8, 8, 1), np.uint8))[:height, :width] - 12,
                        0, 255).astype(np.uint8)
    return frame


def pan_picture(colour: Sequence[int], width: int, height: int, pattern: int = 0) -> np.ndarray:
    """A textured picture of a scene (coarse shapes over fine detail, unique to ``pattern``),
    for a camera to pan over (``make_video(pan=...)``)."""
    rng = np.random.default_rng(1000 + pattern)
    block = max(4, height // 9)
    coarse = rng.integers(0, 160, (-(-height // block), -(-width // block), 3)).repeat(block, 0).repeat(block, 1)
    fine = rng.integers(0, 48, (-(-height // 4), -(-width // 4), 3)).repeat(4, 0).repeat(4, 1)
    picture = coarse[:height, :width] // 2 + fine[:height, :width] + np.array(colour) // 2
    return np.clip(picture, 0, 255).astype(np.uint8)


def make_video(path: str | Path, scenes: Sequence[float], *, width: int = 160, height: int = 96, fps: int = 10,
               codec: str = "libx264", motion: bool = False, gop: int | None = None, preset: str | None = None,
               vfr: bool = False, colours: Sequence[Sequence[int]] = COLOURS, tags: dict[str, str] | None = None,
               pan: int = 0) -> Path:
    """A video of consecutive solid-colour scenes lasting ``scenes`` seconds each.

    ``gop``: frames between keyframes (the encoder's default when None); ``vfr``: frame times
    vary (gaps of 1 to 3 frame periods), as phones write them; ``tags``: container metadata
    (``creation_time``, ``location``...); ``pan``: each scene is instead a textured picture the
    camera pans over sideways at this many pixels a frame (``pan_picture``).
    """
    import av

    path = Path(path)
    with av.open(str(path), "w") as container:
        container.metadata.update(tags or {})
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        options: dict[str, str] = {}
        if codec == "libx264":
            options["preset"] = preset or "veryfast"
            if gop:
                options["g"] = str(gop)
                options["keyint_min"] = str(min(gop, 25))
        elif codec.startswith("libvpx"):
            options.update({"deadline": "realtime", "cpu-used": "8", "b": "300k"})
            if gop:
                options["g"] = str(gop)
        stream.options = options
        tick = Fraction(1, fps * 4) if vfr else Fraction(1, fps)
        stream.codec_context.time_base = tick
        pts, n = 0, 0
        for index, seconds in enumerate(scenes):
            colour = colours[index % len(colours)]
            end = sum(scenes[:index + 1])
            first = n
            if pan:  # the camera's whole path over the scene
                picture = pan_picture(colour, width + pan * (int(seconds * fps) + 2), height, index)
            while float(pts * tick) < end - 1e-9:
                offset = (n - first) * pan
                pixels = (np.ascontiguousarray(picture[:, offset:offset + width]) if pan
                          else scene_frame(colour, width, height, n, motion, index))
                frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
                frame.pts = pts
                frame.time_base = tick
                for packet in stream.encode(frame):
                    container.mux(packet)
                pts += (1 + n % 3) * 4 // 2 if vfr else 1
                n += 1
        for packet in stream.encode():
            container.mux(packet)
    return path


def rotate_mp4(path: str | Path, degrees: int) -> None:
    """Write a display matrix turning the video by ``degrees`` clockwise into an MP4's first track
    header (what phones do instead of rotating pixels)."""
    path = Path(path)
    data = bytearray(path.read_bytes())
    at = data.find(b"tkhd")
    if at < 0:
        raise ValueError(f"{path} has no track header")
    version = data[at + 4]
    offset = at + 8 + (20 if version == 0 else 32) + 16
    one = 0x10000
    matrices = {90: (0, one, 0, -one, 0, 0), 180: (-one, 0, 0, 0, -one, 0), 270: (0, -one, 0, one, 0, 0)}
    a, b, u, c, d, v = matrices[degrees]
    struct.pack_into(">9i", data, offset, a, b, u, c, d, v, 0, 0, 0x40000000)
    path.write_bytes(bytes(data))


def make_audio_only(path: str | Path, seconds: float = 1.0) -> Path:
    """An MP4 holding only an AAC tone."""
    import av

    path = Path(path)
    rate = 16000
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=rate)
        samples = int(seconds * rate)
        tone = (np.sin(np.arange(samples) * 2 * np.pi * 440 / rate) * 0.3).astype(np.float32)[None, :]
        for start in range(0, samples, 1024):
            frame = av.AudioFrame.from_ndarray(tone[:, start:start + 1024], format="fltp", layout="mono")
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
