"""The web page, driven in a real headless Chromium by Playwright.

`mmsearch serve` runs as a subprocess on a free loopback port over an index built with the tiny
model; the test searches by text (typed with the keyboard), filters to images, uploads a query
image, clicks "more like this", opens an original, and saves a screenshot. It uses Debian's
``chromium`` package (``apt-get install -y chromium``); Playwright never downloads a browser.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import make_image
from mmsearch import Engine

CHROMIUM = Path(os.environ.get("MMSEARCH_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
CAPTIONS = ["a dog running on green grass", "a black cat sleeping on a sofa", "a red pasta dish with basil"]

sync_playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed").sync_playwright
pytestmark = pytest.mark.skipif(
    not CHROMIUM.is_file(),
    reason=f"no Chromium at {CHROMIUM}: install Debian's package (apt-get install -y chromium) "
           "or set MMSEARCH_TEST_CHROMIUM",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def server(tmp_path, tiny_model):
    root = tmp_path / "photos"
    for i, name in enumerate(["beach.jpg", "forest.png", "city.webp", "night.jpg", "garden.png", "river.jpg"]):
        make_image(root / name, seed=10 + i, size=(160, 120))
    (root / "captions.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in CAPTIONS))
    index = tmp_path / "index"
    with Engine(index, model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint)) as engine:
        engine.add([root])
    port = free_port()
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mmsearch", "serve", "--index", str(index), "--port", str(port), "--log-level", "warning"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"server did not start:\n{(tmp_path / 'server.log').read_text()}")
            time.sleep(0.1)
        yield url, root
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_search_page_in_headless_chromium(server, tmp_path):
    url, root = server
    requested: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("request", lambda request: requested.append(request.url))
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(url + "/")
            page.wait_for_function("() => document.getElementById('stats').textContent.includes('9 items')")

            # Text search, typed with the keyboard: "/" focuses the box, Enter searches.
            page.locator("body").click(position={"x": 5, "y": 5})
            page.keyboard.press("/")
            page.keyboard.type(CAPTIONS[1])
            page.keyboard.press("Enter")
            page.wait_for_function("() => document.getElementById('status').textContent.includes('results for')")
            first = page.locator("#results li").first
            assert first.get_attribute("data-modality") == "text"
            assert first.locator(".snippet").inner_text() == CAPTIONS[1]
            assert first.locator(".score").inner_text() == "1.000"

            # Filter to images: every card is a thumbnail that the browser really decoded.
            page.get_by_label("images").check()
            page.wait_for_function(
                "() => { const cards = [...document.querySelectorAll('#results li')];"
                " return cards.length === 6 && cards.every(c => c.dataset.modality === 'image'); }"
            )
            page.wait_for_function(
                "() => [...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)"
            )
            assert page.locator("#results img").count() == 6

            # Image upload: the uploaded file's own indexed copy comes first with score 1.
            page.fill("#q", "")
            page.set_input_files("#image-input", str(root / "city.webp"))
            page.wait_for_function("() => document.getElementById('status').textContent.includes('image city.webp')")
            top = page.locator("#results li").first
            assert top.locator(".name").inner_text() == "city.webp"
            assert top.locator(".score").inner_text() == "1.000"
            assert page.locator("#query-image-preview").is_visible()

            # "More like this" on the second result, with the keyboard (focus + Enter).
            second = page.locator("#results li").nth(1)
            second_id = second.get_attribute("data-id")
            second.locator("button.similar").focus()
            page.keyboard.press("Enter")
            page.wait_for_function(f"() => document.getElementById('status').textContent.includes('(#{second_id})')")
            ids = page.locator("#results li").evaluate_all("cards => cards.map(c => c.dataset.id)")
            assert second_id not in ids and len(ids) == 5  # the six images but itself
            assert page.locator("#query-image").is_hidden()  # the uploaded image no longer applies
            page.wait_for_function(
                "() => [...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)"
            )

            # "Open" links to the original file.
            href = page.locator("#results li a.open").first.get_attribute("href")
            original = page.request.get(url + href)
            name = page.locator("#results li .name").first.inner_text()
            assert original.status == 200 and original.body() == (root / name).read_bytes()

            shot = tmp_path / "webui.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            if os.environ.get("MMSEARCH_SCREENSHOT"):
                page.screenshot(path=os.environ["MMSEARCH_SCREENSHOT"], full_page=True)
            assert not errors, errors
        finally:
            browser.close()

    # Everything the page loaded came from the server itself: no CDN, no other host.
    outside = [u for u in requested if not u.startswith(url + "/") and not u.startswith(("blob:", "data:"))]
    assert requested and not outside, outside
