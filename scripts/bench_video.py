"""Video indexing speed: mmsearch against a naive baseline, as a multiple of real time.

Generated H.264 videos (a panning textured shot with a scene cut every 5 to 13 seconds, 30 fps,
keyframes every second as phones write them) are indexed with ViT-B-32 (random weights: speed
does not depend on them):

  mmsearch   Engine.add on a folder holding the video (model loaded beforehand, as in
             scripts/bench.py): sampling in the decode workers, encoding, writing.
  naive      one process: PyAV decodes every frame, keeps the first frame of each 2-second
             interval, open_clip's own preprocess on the full frame, batched float32 encode.

Each figure is the median of --repeats runs; videos are generated once into --workdir and reused.

    python scripts/bench_video.py --quick                 # 1-minute 1080p only
    python scripts/bench_video.py                         # 10-minute 1080p and 1-minute 4K
    python scripts/bench_video.py --seconds-4k 600        # the full 10-minute 4K (slow to generate)
    python scripts/bench_video.py --phone --seconds-4k 0  # 10-minute 1080p, plain and at a phone's bitrate
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchutil import machine, median  # noqa: E402

ARCH = "ViT-B-32"
INTERVAL = 2.0
SCENE_SECONDS = (5, 9, 13, 7, 11)
COLOURS = ((150, 40, 40), (40, 140, 60), (40, 60, 160), (170, 150, 40), (140, 50, 150), (40, 150, 160))


# -- generated videos ----------------------------------------------------------------------------
PHONE_BITRATE = 16_000_000  # what phones record 1080p30 H.264 at (about 16-17 Mbit/s)
NOISE_FRAMES = 48  # a bank of sensor-noise fields, cycled with offsets (drawing each frame's is slow)


def generate(path: Path, width: int, height: int, seconds: int, fps: int = 30, gop: int = 30,
             phone: bool = False) -> Path:
    """A textured shot panning sideways, a new colour and texture every 5-13 s (made once).

    ``phone``: with sensor noise on every frame and encoded at a phone's bitrate instead of CRF 23
    (the plain video is about 1.2 Mbit/s, a tenth of a phone's, which makes decoding every frame,
    what the naive baseline does, unusually cheap)."""
    import av

    done = path.with_name(path.name + ".complete")
    if done.exists():
        return path
    rng = np.random.default_rng(0)
    bases = []
    block = height // 9  # coarse shapes (visible at any scale) over fine 8-pixel detail
    for colour in COLOURS:
        coarse = rng.integers(0, 160, (-(-height // block), -(-width // block), 3)).repeat(block, 0).repeat(block, 1)
        fine = rng.integers(0, 48, (height // 8, width // 8, 3)).repeat(8, 0).repeat(8, 1)
        texture = coarse[:height, :width] // 2 + fine + np.array(colour) // 2
        bases.append(np.clip(texture, 0, 255).astype(np.uint8))
    cuts, t, k = [], 0, 0
    while t < seconds:
        cuts.append(t)
        t += SCENE_SECONDS[k % len(SCENE_SECONDS)]
        k += 1
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if phone:
            stream.bit_rate = PHONE_BITRATE
            stream.options = {"preset": "veryfast", "g": str(gop)}
            noise = [np.clip(rng.normal(0, 6, (height, width, 3)), -127, 127).astype(np.int16) for _ in range(NOISE_FRAMES)]
        else:
            stream.options = {"preset": "veryfast", "g": str(gop), "crf": "23"}
        for i in range(seconds * fps):
            scene = sum(1 for c in cuts if c <= i / fps) - 1
            shift = (i * max(2, width // 320)) % width
            pixels = np.roll(bases[scene % len(bases)], shift, axis=1)
            if phone:
                grain = np.roll(noise[i % NOISE_FRAMES], (i * 7) % height, axis=0)
                pixels = np.clip(pixels.astype(np.int16) + grain, 0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    done.write_text("ok")
    return path


# -- contenders ------------------------------------------------------------------------------------
def mmsearch_seconds(video: Path, workdir: Path, split: bool = True, pan: bool = True) -> tuple[float, dict]:
    """Seconds for Engine.add over a folder holding ``video`` (a fresh index; model warm).
    ``split=False``: one worker samples the whole video (as before time ranges were split
    among workers), the baseline of the split. ``pan=False``: without the pan test before
    encoding (``Sampling.moved`` 0: every panned frame is encoded, as before it), the
    baseline of the false-rejection count."""
    from functools import partial

    from PIL import Image

    from mmsearch import Engine
    from mmsearch.indexing import runner as runner_mod
    from mmsearch.media import video as video_mod

    video_mod.SPLIT_SECONDS = 60.0 if split else float("inf")  # the ranges are chosen in this process
    runner_mod.Sampling = video_mod.Sampling if pan else partial(video_mod.Sampling, moved=0.0)

    folder = workdir / "mm-lib"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    try:
        os.link(video, folder / video.name)
    except OSError:
        shutil.copy2(video, folder / video.name)
    warm = workdir / "mm-warm"
    shutil.rmtree(warm, ignore_errors=True)
    warm.mkdir()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(warm / "warm.jpg")
    index = workdir / "mm-index"
    shutil.rmtree(index, ignore_errors=True)
    with Engine(index, model=ARCH, pretrained="none") as engine:
        engine.add([warm])
        busy = cpu_busy()
        start = time.perf_counter()
        report = engine.add([folder])
        seconds = time.perf_counter() - start
        cores = busy()
    runner_mod.Sampling = video_mod.Sampling
    if report.videos != 1:
        raise RuntimeError(f"mmsearch did not index {video}: {report.summary()}")
    with sqlite3.connect(index / "mmsearch.db") as conn:
        kept = sorted(float(loc[2:]) for (loc,) in conn.execute("SELECT locator FROM items WHERE modality = 'video'"))
    return seconds, {"frames_encoded": report.sampled, "frames_kept": report.frames, "cores_busy": cores,
                     "stages": {k: round(v, 2) for k, v in report.stages.items()}, "kept_times": kept}


def encoded_times(video: Path, pan: bool) -> list[float]:
    """The times of the frames mmsearch encodes for ``video`` (sampled here as the decode
    workers sample it: the same time ranges), with or without the pan test."""
    from mmsearch.media import video as video_mod

    sampling = video_mod.Sampling() if pan else video_mod.Sampling(moved=0.0)
    info = video_mod.probe(str(video))
    workers = min(8, os.cpu_count() or 2)  # the decode workers' default number
    ranges = video_mod.spans(info.duration, workers, info.width * info.height)
    keys = video_mod._keyframe_times(str(video), info.stream) if len(ranges) > 1 else None
    parts = [video_mod.sample_frames(str(video), 224, None, sampling, info=info, span=span, keyframes=keys)
             for span in ranges]
    return sorted(t for part in parts for t in part.times)


def scene_starts(duration: float) -> list[float]:
    """Where the generated video's scenes start (``generate``)."""
    starts, t, k = [], 0, 0
    while t < duration - 1e-6:
        starts.append(float(t))
        t += SCENE_SECONDS[k % len(SCENE_SECONDS)]
        k += 1
    return starts


def scenes_found(kept: list[float], duration: float) -> int:
    """How many of the generated video's scenes hold a kept frame."""
    starts = scene_starts(duration)
    ends = starts[1:] + [duration + 1]
    return sum(1 for a, b in zip(starts, ends) if any(a - 1e-3 <= t < b - 1e-3 for t in kept))


def pan_test(video: Path, length: float, with_pan: dict, without: dict) -> dict:
    """The pan test against the cosine decision: the frames the cosine rule keeps without the
    pan test (``without``: every panned frame encoded, then repeats dropped by cosine) that the
    pan test rejects before encoding (false rejections), and the scenes found either way."""
    encoded = encoded_times(video, pan=True)
    false = [t for t in without["kept_times"] if not any(abs(t - e) < 1e-3 for e in encoded)]
    return {"frames_encoded_without": without["frames_encoded"], "frames_kept_without": without["frames_kept"],
            "frames_encoded_with": len(encoded), "frames_kept_with": with_pan["frames_kept"],
            "false_rejections": len(false), "false_rejection_times": false,
            "scenes": len(scene_starts(length)), "scenes_found_without": scenes_found(without["kept_times"], length),
            "scenes_found_with": scenes_found(with_pan["kept_times"], length)}


def cpu_busy():
    """Start counting the machine's CPU time (``/proc/stat``); the returned function gives how
    many cores were busy on average since (None where there is no /proc): whether a run is
    bound by the CPU or waits."""
    def sample():
        try:
            values = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        return sum(values), values[3] + values[4]  # all, idle + iowait

    first = sample()

    def busy():
        last = sample()
        if first is None or last is None or last[0] == first[0]:
            return None
        total, idle = last[0] - first[0], last[1] - first[1]
        return round((total - idle) / total * (os.cpu_count() or 1), 2)
    return busy


class Naive:
    """Decode every frame with PyAV, keep one per interval, open_clip preprocess + encode."""

    def __init__(self, batch: int = 32):
        import open_clip
        import torch

        torch.manual_seed(0)
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(ARCH, pretrained=None)
        self.model.eval()
        self.batch = batch

    def seconds(self, video: Path) -> tuple[float, dict]:
        import av
        import torch

        start = time.perf_counter()
        tensors, vectors, decoded, next_t = [], [], 0, 0.0
        with av.open(str(video)) as container:
            for frame in container.decode(video=0):
                decoded += 1
                if frame.time is None or frame.time < next_t:
                    continue
                next_t = frame.time + INTERVAL
                tensors.append(self.preprocess(frame.to_image()))
                if len(tensors) == self.batch:
                    vectors.append(self._encode(tensors, torch))
                    tensors = []
        if tensors:
            vectors.append(self._encode(tensors, torch))
        seconds = time.perf_counter() - start
        return seconds, {"frames_decoded": decoded, "frames_encoded": int(sum(len(v) for v in vectors))}

    def _encode(self, tensors, torch) -> np.ndarray:
        with torch.no_grad():
            features = self.model.encode_image(torch.stack(tensors))
        return torch.nn.functional.normalize(features, dim=-1).numpy()


def duration_of(video: Path) -> float:
    import av

    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        return float(stream.duration * stream.time_base)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mmsearch-bench-video"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds-1080p", type=int, default=600)
    parser.add_argument("--seconds-4k", type=int, default=60)
    parser.add_argument("--quick", action="store_true", help="a 1-minute 1080p video only, one repeat")
    parser.add_argument("--phone", action="store_true",
                        help="also a 1080p video with sensor noise at a phone's bitrate (16 Mbit/s), same length")
    parser.add_argument("--generate-only", action="store_true")
    parser.add_argument("--skip-plain", action="store_true", help="with --phone: the phone video only")
    parser.add_argument("--skip-unsplit", action="store_true", help="do not time one worker per video")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.seconds_1080p, args.seconds_4k, args.repeats = 60, 0, 1
    videos = []
    if args.seconds_1080p and not (args.phone and args.skip_plain):
        videos.append(("1080p", generate(args.workdir / f"pan-1080p-{args.seconds_1080p}s.mp4", 1920, 1080,
                                         args.seconds_1080p)))
    if args.seconds_1080p and args.phone:
        videos.append(("1080p phone", generate(args.workdir / f"pan-1080p-{args.seconds_1080p}s-phone.mp4", 1920, 1080,
                                               args.seconds_1080p, phone=True)))
    if args.seconds_4k:
        videos.append(("4K", generate(args.workdir / f"pan-4k-{args.seconds_4k}s.mp4", 3840, 2160, args.seconds_4k)))
    if args.generate_only:
        return
    naive = Naive()
    results = {"machine": machine(), "model": f"{ARCH} (random weights)", "interval_s": INTERVAL,
               "repeats": args.repeats, "videos": []}
    for label, video in videos:
        length = duration_of(video)
        ours, unpanned, whole, theirs, our_info, their_info = [], [], [], [], {}, {}
        for _ in range(args.repeats):  # alternate, so load from other work hits every contender alike
            seconds, our_info = mmsearch_seconds(video, args.workdir)
            ours.append(seconds)
            seconds, without = mmsearch_seconds(video, args.workdir, pan=False)
            unpanned.append(seconds)
            if not args.skip_unsplit:
                whole.append(mmsearch_seconds(video, args.workdir, split=False)[0])
            seconds, their_info = naive.seconds(video)
            theirs.append(seconds)
        pans = pan_test(video, length, our_info, without)
        our_info = {k: v for k, v in our_info.items() if k != "kept_times"}
        whole = whole or [float("nan")]
        row = {"video": label, "file": video.name, "duration_s": round(length, 1),
               "mmsearch_s": round(median(ours), 2), "naive_s": round(median(theirs), 2),
               "mmsearch_x_realtime": round(length / median(ours), 1),
               "naive_x_realtime": round(length / median(theirs), 1),
               "speedup": round(median(theirs) / median(ours), 2),
               "without_pan_test_s": round(median(unpanned), 2),
               "pan_test_speedup": round(median(unpanned) / median(ours), 2),
               "without_pan_test_runs_s": [round(s, 2) for s in unpanned],
               "one_worker_per_video_s": round(median(whole), 2),
               "split_speedup": round(median(whole) / median(ours), 2),
               "mmsearch_runs_s": [round(s, 2) for s in ours], "naive_runs_s": [round(s, 2) for s in theirs],
               "mmsearch": our_info, "naive": their_info, "pan_test": pans}
        results["videos"].append(row)
        print(f"{label:6} {length:6.0f}s video  mmsearch {row['mmsearch_s']:7.1f}s ({row['mmsearch_x_realtime']:5.1f}x "
              f"real time, {our_info['frames_encoded']} frames encoded, {our_info['cores_busy']} cores busy)  "
              f"naive {row['naive_s']:7.1f}s "
              f"({row['naive_x_realtime']:5.1f}x, {their_info['frames_encoded']} encoded)  speed-up {row['speedup']:.2f}x  "
              f"unsplit {row['one_worker_per_video_s']:.1f}s (split {row['split_speedup']:.2f}x)\n"
              f"       pan test: without it {row['without_pan_test_s']:.1f}s (the test {row['pan_test_speedup']:.2f}x), "
              f"{pans['frames_encoded_without']} -> {pans['frames_encoded_with']} frames encoded, "
              f"{pans['frames_kept_without']} -> {pans['frames_kept_with']} kept after the cosine dedup, "
              f"{pans['false_rejections']} false rejections (kept by cosine without the test, not encoded with it), "
              f"scenes found {pans['scenes_found_without']} -> {pans['scenes_found_with']} of {pans['scenes']}",
              flush=True)
    print(json.dumps(results))
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
