"""Videos: sampling (scenes, keyframes, rotation, variable frame rate, the cap), one hit per video
with its moment and segment, incremental add/rename/delete, check --repair, bad files, the
server's range requests and thumbnails. Videos are generated with PyAV (coloured scenes of known
lengths), so every expected time is known."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmsearch import Engine
from mmsearch.media import video as video_mod
from mmsearch.media.video import Sampling, merge_samples, sample_frames, spans
from support.videogen import COLOURS, make_audio_only, make_video, rotate_mp4, scene_frame

SCENES = [3.0, 5.0, 2.5, 6.0]  # seconds: starts at 0, 3, 8, 10.5; ends at 16.5
STARTS = [0.0, 3.0, 8.0, 10.5]


def starts_found(times: list[float], tolerance: float) -> list[float]:
    return [min(times, key=lambda t: abs(t - s)) for s in STARTS if min(abs(t - s) for t in times) <= tolerance]


# -- sampling -------------------------------------------------------------------------------------
def test_keyframe_sampling_finds_every_scene_and_drops_still_repeats(tmp_path):
    # Keyframes every half second (phones write one or two a second): only keyframes are decoded; each scene is found where it starts,
    # and the still seconds inside a scene are dropped before encoding.
    video = make_video(tmp_path / "a.mp4", SCENES, gop=5)
    sampled = sample_frames(str(video), 32, None, Sampling(interval=2.0))
    assert sampled.mode == "keyframes"
    # 33 keyframes, not 165 frames; and of those the samples, a check every 2 s, the keyframes
    # between the checks around each cut, the last one
    assert sampled.decoded <= 22
    assert sampled.times == pytest.approx(STARTS, abs=0.05)
    assert sampled.info.duration == pytest.approx(16.5, abs=0.2)
    assert (sampled.info.width, sampled.info.height, sampled.info.codec) == (160, 96, "h264")


def test_keyframes_between_alike_checks_are_passed_over_and_a_short_scene_is_still_found(tmp_path):
    # A wide interval (6 s) and a 3 s scene between two of another colour: keyframes are checked
    # every 2 s, and only where two checks differ are the keyframes between them decoded, which
    # places each cut at its keyframe.
    video = make_video(tmp_path / "aba.mp4", [6.7, 3.0, 6.3], gop=5, colours=[COLOURS[0], COLOURS[1], COLOURS[0]])
    keys, _ = video_mod._keyframe_times(str(video), 0)
    sampled = sample_frames(str(video), 32, None, Sampling(interval=6.0))
    assert sampled.mode == "keyframes"
    # the start, then both cuts at the first keyframe of their scene (a keyframe every 0.5 s);
    # the 6 s sample repeats the first frame (a still scene) and is dropped
    assert sampled.times[0] == 0.0 and sampled.times[1:] == pytest.approx([6.7, 9.7], abs=0.35)
    assert len(keys) >= 32 and sampled.decoded <= len(keys) // 2


def test_long_gop_sampling_finds_scene_cuts_between_keyframes(tmp_path):
    # One keyframe at the start (GOP longer than the video) and a 2.5 s scene: the scene-cut
    # check between interval samples finds every scene within half a second.
    video = make_video(tmp_path / "a.mp4", SCENES, gop=300)
    sampled = sample_frames(str(video), 32, None, Sampling(interval=4.0))
    assert sampled.mode == "reference frames"
    assert len(sampled.times) == 4
    assert all(0 <= t - s <= 0.6 for t, s in zip(sampled.times, STARTS))


def test_moving_scenes_are_sampled_every_interval(tmp_path):
    video = make_video(tmp_path / "m.mp4", [6.0, 6.0], motion=True, gop=5)
    sampled = sample_frames(str(video), 32, None, Sampling(interval=2.0))
    # each interval's sample is its first keyframe (x264 places them at most half a second apart)
    assert len(sampled.times) == 6
    assert all(2 * k <= t <= 2 * k + 0.55 for k, t in enumerate(sampled.times))


@pytest.mark.parametrize("gop", [5, 300])
def test_a_panning_shot_is_sampled_once_before_encoding_and_a_cut_is_still_kept(tmp_path, gop):
    # Two 6 s scenes, each a camera panning over a textured picture at 3 px a frame (60 px, a
    # fifth of the frame, per 2 s sample): every sample of a scene is its first frame moved,
    # which the still-scene thumbnail test does not see (the pixels all change). The shifted
    # repeats are rejected before encoding; the cut to the second scene is kept where it is.
    video = make_video(tmp_path / "pan.mp4", [6.0, 6.0], width=320, height=180, gop=gop, pan=3)
    sampled = sample_frames(str(video), 32, None, Sampling(interval=2.0))
    before = sample_frames(str(video), 32, None, Sampling(interval=2.0, moved=0.0))  # without the pan test
    assert len(before.times) == 6  # every sample encoded
    assert sampled.times[0] == 0.0 and len(sampled.times) == 2
    assert 6.0 <= sampled.times[1] <= 6.5 and sampled.times[1] in before.times
    assert len(sampled.arrays) == len(sampled.times)


def test_a_fast_pan_keeps_a_sample_once_two_fifths_of_the_frame_are_new(tmp_path):
    # 6 px a frame: the 2 s sample shows 38 % new picture (a repeat), the 4 s one 75 % (kept).
    video = make_video(tmp_path / "fast.mp4", [6.0, 6.0], width=320, height=180, gop=5, pan=6)
    assert sample_frames(str(video), 32, None, Sampling(interval=2.0)).times == [0.0, 4.0, 6.0, 10.0]


def test_a_panned_repeat_is_never_encoded_by_the_indexer(tmp_path, tiny_model):
    lib = tmp_path / "lib"
    lib.mkdir()
    make_video(lib / "pan.mp4", [6.0, 6.0], width=320, height=180, gop=5, pan=3)
    with Engine(tmp_path / "idx", model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint)) as engine:
        report = engine.add([lib])
        assert report.videos == 1 and report.sampled == 2  # encoded: the two scenes' first frames
        with engine.store.read() as reader:
            times = sorted(row.meta["t"] for row in reader.items(list(reader.item_ids())).values())
    assert times == [0.0, 6.0]


def test_phone_rotation_is_applied(tmp_path):
    video = make_video(tmp_path / "r.mp4", [1.0], width=160, height=96)
    rotate_mp4(video, 90)
    sampled = sample_frames(str(video), None, None)
    assert (sampled.info.width, sampled.info.height) == (96, 160)
    frame = sampled.arrays[0]
    assert frame.shape[:2] == (160, 96)
    # scene 0 darkens its top-left quadrant; turned 90 degrees clockwise it is the top-right one
    top_left, top_right = frame[40, 24].astype(int), frame[40, 72].astype(int)
    assert top_right.sum() < top_left.sum() - 100


def test_variable_frame_rate_times_come_from_timestamps(tmp_path):
    video = make_video(tmp_path / "vfr.mp4", [3.0, 4.0], vfr=True, gop=5)
    sampled = sample_frames(str(video), 32, None, Sampling(interval=2.0))
    assert sampled.times[0] == 0.0
    assert sampled.times[1] == pytest.approx(3.0, abs=0.3)
    assert sampled.info.duration == pytest.approx(7.0, abs=0.4)


def test_the_cap_spreads_samples_over_the_whole_video(tmp_path):
    video = make_video(tmp_path / "long.mp4", [20.0], motion=True, gop=5, fps=5, width=64, height=48)
    sampled = sample_frames(str(video), 32, None, Sampling(interval=1.0, max_frames=5))
    assert len(sampled.times) == 5
    assert sampled.times[-1] >= 15.0  # not the first five seconds


# -- indexing and searching ------------------------------------------------------------------------
def test_spans_split_only_videos_long_enough_to_pay_for_it():
    assert spans(119.0, 8) == [(0.0, float("inf"))]  # a range is at least SPLIT_SECONDS long
    assert spans(600.0, 1) == [(0.0, float("inf"))]
    assert spans(600.0, 2) == [(0.0, 300.0), (300.0, float("inf"))]
    assert spans(180.0, 8) == [(0.0, 60.0), (60.0, 120.0), (120.0, float("inf"))]
    # Larger frames cost more to decode: a minute of 4K is split as four minutes of 1080p.
    assert spans(60.0, 2, 3840 * 2160) == [(0.0, 30.0), (30.0, float("inf"))]
    assert spans(60.0, 2, 1280 * 720) == [(0.0, float("inf"))]  # smaller ones count as 1080p


@pytest.mark.parametrize("gop, interval", [(5, 2.0), (300, 4.0)], ids=["keyframes", "reference-frames"])
def test_ranges_sampled_apart_give_the_whole_videos_frames(tmp_path, gop, interval):
    # Split at 9 s, inside the third scene: each scene start is found once, as by one worker; the
    # second range may add its first frame (a boundary costs at most one frame, dropped later
    # by the cosine dedup). Keyframes: the same frames, equal pixels. Long GOPs: the scene-cut
    # checks run every half second from each range's start, so a cut is found within that.
    video = str(make_video(tmp_path / "a.mp4", SCENES, gop=gop))
    sampling = Sampling(interval=interval)
    whole = sample_frames(video, 32, None, sampling)
    keys = video_mod._keyframe_times(video, whole.info.stream)
    parts = [sample_frames(video, 32, None, sampling, span=span, keyframes=keys)
             for span in [(0.0, 9.0), (9.0, float("inf"))]]
    assert all(t < 9.0 for t in parts[0].times) and all(t >= 9.0 for t in parts[1].times)
    merged = merge_samples(parts, sampling)
    assert merged.times == sorted(merged.times) and len(whole.times) <= len(merged.times) <= len(whole.times) + 1
    if gop == 5:
        extra = [t for t in merged.times if t not in whole.times]
        assert set(whole.times) <= set(merged.times) and all(t >= 9.0 for t in extra)
        for t, array in zip(whole.times, whole.arrays):
            assert np.array_equal(array, merged.arrays[merged.times.index(t)])
    for start in STARTS:
        assert any(0 <= t - start <= 0.6 for t in merged.times), start


def test_a_long_video_is_sampled_by_several_workers_and_indexed_once(tmp_path, tiny_model, monkeypatch):
    # SPLIT_SECONDS lowered so a 16.5 s video splits among 2 workers (the ranges are chosen in
    # this process; the workers sample what they are given): the same frames are indexed,
    # once each, and a still from each scene finds its moment.
    lib = tmp_path / "lib"
    lib.mkdir()
    make_video(lib / "a.mp4", SCENES, gop=5)
    monkeypatch.setattr(video_mod, "SPLIT_SECONDS", 5.0)
    assert len(spans(16.5, 2)) == 2
    with Engine(tmp_path / "idx", model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint),
                workers=2) as engine:
        report = engine.add([lib])
        assert report.videos == 1 and not report.skipped
        with engine.store.read() as reader:
            rows = reader.items(list(reader.item_ids())).values()
            times = sorted(row.meta["t"] for row in rows)
        assert len(times) == len(set(times)) and set(STARTS) <= set(times)
        for scene, start in enumerate(STARTS):
            hit = engine.search(still(tmp_path / f"s{scene}.png", scene), type="video")[0]
            assert hit.t == pytest.approx(start, abs=0.05)


@pytest.fixture(scope="module")
def videos(tmp_path_factory, tiny_model):
    """A folder with two videos and a photo, indexed with the tiny model."""
    base = tmp_path_factory.mktemp("videos")
    lib = base / "lib"
    lib.mkdir()
    make_video(lib / "holiday.mp4", SCENES, gop=5)
    make_video(lib / "other.webm", [2.0, 2.0], codec="libvpx-vp9", gop=5, colours=COLOURS[4:])
    Image.fromarray(scene_frame((90, 90, 90), 96, 72, 0, False, 3)).save(lib / "photo.png")
    index = base / "idx"
    with Engine(index, model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint)) as engine:
        report = engine.add([lib])
    assert report.videos == 2 and report.frames == 6 and report.added == 1 and not report.skipped
    return index, lib, base


def still(path: Path, scene: int) -> Path:
    """A still of scene ``scene`` of the SCENES video, as a photo."""
    Image.fromarray(scene_frame(COLOURS[scene], 160, 96, 0, False, scene)).save(path)
    return path


def test_an_image_query_finds_the_moment_and_its_segment(videos, tmp_path):
    index, lib, _ = videos
    with Engine(index) as engine:
        for scene in range(4):
            hits = engine.search(still(tmp_path / f"s{scene}.png", scene), type="video", k=5)
            assert [h.path for h in hits] == [str(lib / "holiday.mp4"), str(lib / "other.webm")]  # one hit per video
            best = hits[0]
            assert best.t == pytest.approx(STARTS[scene], abs=0.05)
            assert best.start <= best.t < best.end
            assert best.start == pytest.approx(STARTS[scene], abs=0.05)  # the scene's frame stands until the next one
            ends = STARTS[1:] + [16.5]
            assert best.end >= ends[scene] - 0.05
        everything = engine.search(still(tmp_path / "s.png", 0), k=10)
        assert sorted(h.modality for h in everything) == ["image", "video", "video"]


def test_more_like_this_on_a_video_hit_finds_other_items(videos, tmp_path):
    index, lib, _ = videos
    with Engine(index) as engine:
        hit = engine.search(still(tmp_path / "s.png", 1), type="video")[0]
        similar = engine.similar(hit.id, k=5)
        assert str(lib / "holiday.mp4") not in [h.path for h in similar]
        assert {h.path for h in similar} == {str(lib / "other.webm"), str(lib / "photo.png")}
        item = engine.get(hit.id)
        assert item.t == hit.t and item.meta["duration"] == pytest.approx(16.5, abs=0.2)


def test_cli_table_and_json_show_the_moment(videos, tmp_path, cli, monkeypatch):
    from mmsearch.cli import base

    monkeypatch.setattr(base.out, "_width", 400)  # one line per hit
    index, lib, _ = videos
    query = still(tmp_path / "s.png", 2)
    table = cli("query", str(query), "-i", index, "--type", "video").stdout
    assert "holiday.mp4 @ 00:08 (00:08-00:10)" in table
    doc = json.loads(cli("query", str(query), "-i", index, "--type", "video", "--json").stdout)
    first = doc["hits"][0]
    assert first["modality"] == "video" and first["t"] == pytest.approx(8.0, abs=0.05)
    assert first["start"] <= first["t"] < first["end"]
    images = json.loads(cli("query", "grey", "-i", index, "--type", "image", "--json").stdout)["hits"]
    assert images and not {"t", "start", "end"} & set(images[0])


def test_add_rename_delete_and_unchanged(tmp_path, tiny_model):
    lib = tmp_path / "lib"
    lib.mkdir()
    make_video(lib / "a.mp4", SCENES, gop=5)
    index = tmp_path / "idx"
    with Engine(index, model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint)) as engine:
        first = engine.add([lib])
        assert (first.videos, first.frames) == (1, 4)
        again = engine.add()
        assert (again.videos, again.unchanged, again.changed) == (0, 4, False)
        os.rename(lib / "a.mp4", lib / "b.mp4")
        renamed = engine.add()
        assert (renamed.videos, renamed.reused, renamed.removed) == (0, 4, 4)  # every frame vector reused
        hit = engine.search(still(tmp_path / "s.png", 3), type="video")[0]
        assert hit.path == str(lib / "b.mp4") and hit.t == pytest.approx(10.5, abs=0.05)
        make_video(lib / "b.mp4", [4.0, 4.0], gop=5)  # the same name, new content
        changed = engine.add()
        assert (changed.videos, changed.frames) == (1, 2)
        assert engine.count() == 2
        (lib / "b.mp4").unlink()
        gone = engine.add()
        assert gone.removed == 2 and engine.count() == 0


def test_a_video_killed_half_way_is_sampled_again(tmp_path, tiny_model):
    # Rows written but not sealed (a run killed between a video's transactions) carry an mtime
    # no file has: the next run samples the video again and writes over them.
    lib = tmp_path / "lib"
    lib.mkdir()
    make_video(lib / "a.mp4", SCENES, gop=5)
    index = tmp_path / "idx"
    with Engine(index, model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint)) as engine:
        engine.add([lib])
    with sqlite3.connect(index / "mmsearch.db") as conn:
        conn.execute("UPDATE items SET mtime_ns = -1")
        conn.execute("DELETE FROM embeddings WHERE item_id IN (SELECT id FROM items WHERE locator = 't=10.500')")
        conn.execute("DELETE FROM items WHERE locator = 't=10.500'")
    with Engine(index) as engine:
        report = engine.add()
        assert (report.videos, report.frames) == (1, 4)
        assert engine.count() == 4


def test_check_and_repair_cover_videos(tmp_path, tiny_model, cli):
    lib = tmp_path / "lib"
    lib.mkdir()
    make_video(lib / "a.mp4", SCENES, gop=5)
    index = tmp_path / "idx"
    cli("index", lib, "-i", index, *tiny_model.args, "-q")
    with sqlite3.connect(index / "mmsearch.db") as conn:
        conn.execute("DELETE FROM embeddings WHERE item_id = (SELECT min(id) FROM items)")
    make_video(lib / "b.mp4", [1.0], gop=5)
    shutil.copy(lib / "b.mp4", lib / "a.mp4")  # changed content under the indexed name
    checked = cli("check", "-i", index, "--json", ok=False)
    doc = json.loads(checked.stdout)
    assert "missing_vector" in {p["kind"] for p in doc["problems"]}
    assert "changed_file" in {p["kind"] for p in doc["out_of_date"]}
    cli("check", "-i", index, "--repair")
    assert json.loads(cli("check", "-i", index, "--json").stdout)["problems"] == []
    with Engine(index) as engine:
        assert engine.count() == 1  # the new one-second video: one frame


# -- bad input -------------------------------------------------------------------------------------
def test_bad_videos_are_skipped_with_a_reason_or_indexed_as_far_as_they_decode(tmp_path, tiny_model):
    lib = tmp_path / "lib"
    lib.mkdir()
    good = make_video(tmp_path / "good.webm", SCENES, codec="libvpx-vp9", gop=5).read_bytes()
    (lib / "truncated.webm").write_bytes(good[: len(good) * 3 // 5])  # the first scenes are there
    mp4 = make_video(tmp_path / "good.mp4", SCENES, gop=5).read_bytes()
    (lib / "truncated.mp4").write_bytes(mp4[: len(mp4) // 2])  # its index (moov) is at the end: gone
    (lib / "empty.mov").write_bytes(b"")
    make_audio_only(lib / "audio.mp4")
    (lib / "header.mkv").write_bytes(b"\x1a\x45\xdf\xa3" + os.urandom(4000))
    damaged = bytearray(mp4)
    at = damaged.find(b"mdat")
    size = int.from_bytes(damaged[at - 4:at], "big")
    damaged[at + 4:at - 4 + size] = bytes(size - 8)  # the container is fine, every frame is zeros
    (lib / "no-frames.mp4").write_bytes(bytes(damaged))
    (lib / "text.avi").write_text("not a video at all")
    index = tmp_path / "idx"
    with Engine(index, model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint)) as engine:
        report = engine.add([lib])
        reasons = {Path(s.path).name: s.reason for s in report.skipped}
        assert set(reasons) == {"truncated.mp4", "empty.mov", "audio.mp4", "header.mkv", "no-frames.mp4", "text.avi"}
        assert reasons["empty.mov"] == "empty file"
        assert "audio" in reasons["audio.mp4"] and "no video stream" in reasons["audio.mp4"]
        assert "truncated" in reasons["truncated.mp4"]
        assert "no decodable video frame" in reasons["no-frames.mp4"] or "cannot decode" in reasons["no-frames.mp4"]
        assert reasons["text.avi"].startswith("not a video")
        assert all("\n" not in r for r in reasons.values())
        assert report.videos == 1 and 1 <= report.frames <= 3  # truncated.webm: what decodes
        hit = engine.search(still(tmp_path / "s.png", 0), type="video")[0]
        assert hit.path == str(lib / "truncated.webm")


def test_a_video_past_its_deadline_is_abandoned(tmp_path, tiny_model, monkeypatch):
    from mmsearch.media import video
    from mmsearch.settings import Settings

    monkeypatch.setattr(video, "SECONDS_PER_SECOND_1080P", 0.0)  # the deadline: the base alone
    lib = tmp_path / "lib"
    lib.mkdir()
    # 900 one-frame scenes, all keyframes: every frame is sampled, so sampling takes about a
    # second, far past the millisecond deadline and the pool's check of it (every 0.1 s)
    make_video(lib / "a.mp4", [1 / 30] * 900, fps=30, gop=1)
    with Engine(tmp_path / "idx", model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint),
                settings=Settings(decode_timeout=0.001)) as engine:
        report = engine.add([lib])
    assert report.videos == 0 and len(report.skipped) == 1
    assert report.skipped[0].path == str(lib / "a.mp4") and "took longer than" in report.skipped[0].reason


def test_a_video_under_an_image_name_is_read_as_a_video(tmp_path, tiny_model):
    lib = tmp_path / "lib"
    lib.mkdir()
    make_video(tmp_path / "clip.mp4", [2.0, 2.0], gop=5).rename(lib / "clip.jpg")
    with Engine(tmp_path / "idx", model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint)) as engine:
        report = engine.add([lib])
        assert (report.videos, report.frames, report.skipped) == (1, 2, [])


def test_an_image_under_a_video_name_is_read_as_an_image(tmp_path, tiny_model):
    """The other way round: a JPEG named .webm is an image, not a one-frame video."""
    lib = tmp_path / "lib"
    lib.mkdir()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(lib / "photo.webm", format="JPEG")
    with Engine(tmp_path / "idx", model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint)) as engine:
        report = engine.add([lib])
        assert (report.added, report.videos, report.skipped) == (1, 0, [])
        hit = engine.search("red", k=1)[0]
        assert (hit.modality, hit.t, hit.width, hit.height) == ("image", None, 64, 48)


# -- the server ------------------------------------------------------------------------------------
def test_api_thumbnail_at_the_moment_and_range_requests(videos, tmp_path):
    import httpx

    from mmsearch.client import Client
    from mmsearch.server import ServerThread, create_app

    index, lib, _ = videos
    size = (lib / "holiday.mp4").stat().st_size
    with Engine(index) as engine, ServerThread(create_app(engine)) as server, \
            httpx.Client(base_url=server.url, timeout=30) as http:
        answer = http.get("/api/search", params={"q": "blue", "type": "video"}).json()
        hit = next(h for h in answer["hits"] if h["path"].endswith("holiday.mp4"))
        assert {"t", "start", "end"} <= set(hit) and hit["start"] <= hit["t"] < hit["end"]
        for scene in (1, 3):  # the thumbnail of a frame is that frame: the scene's colour
            frame = engine.search(still(tmp_path / "s.png", scene), type="video")[0]
            thumb = http.get(f"/api/items/{frame.id}/thumbnail", params={"size": 64})
            assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
            import io

            pixels = np.asarray(Image.open(io.BytesIO(thumb.content)).convert("RGB"), np.int16)
            corner = pixels[-5, 5]  # the bottom-left quadrant is never darkened by scenes 1 and 3
            assert np.abs(corner - np.array(COLOURS[scene])).max() < 40, (scene, corner)
        url = f"/api/items/{hit['id']}/file"
        whole = http.get(url)
        assert whole.status_code == 200 and whole.headers["accept-ranges"] == "bytes"
        assert whole.headers["content-type"] == "video/mp4" and len(whole.content) == size
        part = http.get(url, headers={"Range": "bytes=100-199"})
        assert part.status_code == 206 and part.content == whole.content[100:200]
        assert part.headers["content-range"] == f"bytes 100-199/{size}"
        tail = http.get(url, headers={"Range": "bytes=-10"})
        assert tail.status_code == 206 and tail.content == whole.content[-10:]
        open_ended = http.get(url, headers={"Range": f"bytes={size - 5}-"})
        assert open_ended.content == whole.content[-5:]
        beyond = http.get(url, headers={"Range": f"bytes={size}-"})
        assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{size}"
        several = http.get(url, headers={"Range": "bytes=0-1,5-6"})
        assert several.status_code == 200 and len(several.content) == size
        hits = Client(server.url).search("blue", type="video")
        assert hits[0].t is not None and hits[0].start <= hits[0].t < hits[0].end


# -- large and long videos (slow) ------------------------------------------------------------------
@pytest.mark.slow
def test_an_8k_video_indexes_with_bounded_work(tmp_path, tiny_model):
    lib = tmp_path / "lib"
    lib.mkdir()
    make_video(lib / "8k.mp4", [1.0, 1.0], width=7680, height=4320, fps=2, gop=1, preset="ultrafast")
    with Engine(tmp_path / "idx", model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint)) as engine:
        report = engine.add([lib])
        assert (report.videos, report.frames, report.skipped) == (1, 2, [])
        hit = engine.search(still(tmp_path / "s.png", 1), type="video")[0]
        assert (hit.width, hit.height) == (7680, 4320) and hit.t == pytest.approx(1.0, abs=0.05)


@pytest.mark.slow
def test_a_two_hour_video_is_sampled_over_its_whole_length_within_the_cap(tmp_path, tiny_model):
    from mmsearch.settings import Settings

    lib = tmp_path / "lib"
    lib.mkdir()
    # two hours of 1 fps moving scenes, a new scene every 10 minutes
    make_video(lib / "long.mp4", [600.0] * 12, motion=True, fps=1, gop=10, width=64, height=48, preset="ultrafast")
    with Engine(tmp_path / "idx", model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint),
                settings=Settings(video_max_frames=100)) as engine:
        report = engine.add([lib])
        assert report.videos == 1 and report.frames <= 100 and not report.skipped
        times = sorted(engine.get(i).t for i in range(1, 200) if engine.get(i))
        # every ten-minute scene is there (the tiny model sees the noise inside a scene as repeats)
        assert all(any(abs(t - 600 * k) <= 72 for t in times) for k in range(12))
    sampled = sample_frames(str(lib / "long.mp4"), 32, None, Sampling(max_frames=100))
    assert len(sampled.times) <= 100 and sampled.times[-1] > 7000  # spread to the end
    assert np.diff(sampled.times).max() <= 72 * 1.5 + 1  # the interval widened to 2 h / 100 frames = 72 s


def test_a_cut_every_frame_keeps_memory_bounded_by_the_cap(tmp_path):
    # Every frame a new colour: every frame is a scene cut, yet no more than twice the cap is
    # ever held, and the cap is what comes back.
    video = make_video(tmp_path / "flicker.mp4", [0.1] * 60, gop=1, width=64, height=48)
    sampled = sample_frames(str(video), 32, None, Sampling(interval=2.0, max_frames=8))
    assert len(sampled.times) == 8
    assert sampled.times[-1] >= 4.0


def test_a_video_file_as_a_query_term_is_refused_with_the_ways_forward(tmp_path, cli, tiny_model):
    """A video path is not read as the words of a text query: one line says what works instead."""
    from mmsearch import QueryError
    from mmsearch.search.query import parse_query

    video = make_video(tmp_path / "clip.mp4", [1.0])
    with pytest.raises(QueryError, match="is a video: query with a still from it"):
        parse_query([str(video)])
    with pytest.raises(QueryError, match="is a video"):
        parse_query(["./missing.webm"])
    assert [t.kind for t in parse_query(["clip.mp4"])] == ["text"]  # a bare word that is no file stays text
    (tmp_path / "lib").mkdir()
    make_video(tmp_path / "lib" / "a.mp4", [1.0])
    cli("index", tmp_path / "lib", "-i", tmp_path / "idx", *tiny_model.args, "-q")
    result = cli("query", str(video), "-i", tmp_path / "idx", ok=False)
    assert result.exit_code == 2 and "is a video" in result.stderr
