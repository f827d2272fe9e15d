"""A video in the web page, in a real headless Chromium: a search for a scene (an image of it)
returns the video with the frame of that moment as its thumbnail, and a click plays the video in
the page from that second (VP9 in WebM, which Debian's Chromium decodes; the server answers range
requests so the browser can seek)."""

from __future__ import annotations

import os

import pytest
from PIL import Image

from mmsearch import Engine
from support.videogen import COLOURS, make_video, scene_frame
from test_webui import browser, running_server, status_has, thumbnails_loaded  # noqa: F401 - fixtures

pytestmark = pytest.importorskip("test_webui").pytestmark

SCENES = [3.0, 4.0, 3.0, 4.0]  # starts 0, 3, 7, 10; ends 14
STARTS = [0.0, 3.0, 7.0, 10.0]


@pytest.fixture(scope="module")
def video_server(tmp_path_factory, tiny_model):
    base = tmp_path_factory.mktemp("videoui")
    lib = base / "lib"
    lib.mkdir()
    make_video(lib / "trip.webm", SCENES, codec="libvpx-vp9", gop=5, width=192, height=108)
    Image.fromarray(scene_frame((90, 90, 90), 96, 72, 0, False, 3)).save(lib / "photo.png")
    index = base / "idx"
    with Engine(index, model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint)) as engine:
        report = engine.add([lib])
        assert report.videos == 1 and not report.skipped
    with running_server(index, base / "server.log") as url:
        yield url, base


def test_a_click_on_a_video_hit_plays_it_from_the_scene(video_server, browser):  # noqa: F811
    url, base = video_server
    scene = 2
    query = base / "scene.png"
    Image.fromarray(scene_frame(COLOURS[scene], 192, 108, 0, False, scene)).save(query)
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    ranges: list[str] = []
    page.on("request", lambda r: ranges.append(r.headers.get("range", "")) if r.url.endswith("/file") else None)
    try:
        page.goto(url + "/")
        page.get_by_label("videos").check()
        page.set_input_files("#image-input", str(query))
        status_has(page, "image scene.png")
        card = page.locator("#results li").first
        assert card.get_attribute("data-modality") == "video"
        # The name may be cut to fit the card, never the moment: it has a line of its own.
        assert card.locator(".name").inner_text() == "trip.webm"
        moment = card.locator(".moment")
        assert moment.inner_text() == "@ 00:07 (00:07-00:10)"
        assert moment.evaluate("e => e.scrollWidth <= e.clientWidth && getComputedStyle(e).textOverflow !== 'ellipsis'")
        # The header adds up as `mmsearch info` does: a video's frames are its items.
        stats = page.locator("#stats").inner_text()
        frames = int(stats.split("texts, ")[1].split(" frames")[0])
        assert stats.startswith(f"{1 + frames} items (1 images, 0 texts, {frames} frames of 1 videos)"), stats
        thumbnails_loaded(page)  # the frame at the moment, decoded by the browser
        if os.environ.get("MMSEARCH_SCREENSHOT"):
            page.screenshot(path=os.environ["MMSEARCH_SCREENSHOT"].replace(".png", "-video.png"), full_page=True)
        card.locator("button.play").click()
        video = card.locator("video")
        page.wait_for_function(
            "() => { const v = document.querySelector('#results video');"
            " return v && v.readyState >= 2 && v.currentTime > 0; }", timeout=30_000)
        state = video.evaluate("v => ({t: v.currentTime, error: v.error && v.error.code, src: v.currentSrc})")
        assert state["error"] is None, state
        assert STARTS[scene] <= state["t"] < STARTS[scene + 1], state
        assert any(r.startswith("bytes=") for r in ranges)  # the browser fetched the video by ranges
        assert not errors
    finally:
        page.close()
