"""The web page, driven in a real headless Chromium by Playwright.

`mmsearch serve` runs as a subprocess on a free loopback port over an index built with the tiny
model; the test searches by text (typed with the keyboard), filters to images, uploads a query
image, clicks "more like this", opens an original, and saves a screenshot. It uses Debian's
``chromium`` package (``apt-get install -y chromium``); Playwright never downloads a browser.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest

from conftest import make_image, serve_process
from mmsearch import Engine
from mmsearch.server import ServerThread, create_app

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


ODD_NAMES = [b"caf\xe9.jpg", b"\xff odd.png"]  # a Latin-1 name and bytes that are no encoding at all
TOKEN = "webui-test-token-7f3a9c"


def build_index(base: Path, tiny_model) -> tuple[Path, Path]:
    root = base / "photos"
    for i, name in enumerate(["beach.jpg", "forest.png", "city.webp", "night.jpg", "garden.png", "river.jpg"]):
        make_image(root / name, seed=10 + i, size=(160, 120))
    for i, raw in enumerate(ODD_NAMES):
        make_image(Path(os.fsdecode(os.fsencode(str(root)) + b"/" + raw)), seed=40 + i, size=(160, 120))
    (root / "captions.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in CAPTIONS))
    index = base / "index"
    with Engine(index, model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint)) as engine:
        engine.add([root])
    return index, root


def running_server(index: Path, log_path: Path, *extra: str):
    """`mmsearch serve` in a subprocess on a free loopback port; yields its URL."""
    return serve_process(index, log_path, *extra)


@pytest.fixture(scope="module")
def library(tmp_path_factory, tiny_model) -> tuple[Path, Path, Path]:
    base = tmp_path_factory.mktemp("webui")
    index, root = build_index(base, tiny_model)
    return base, index, root


@pytest.fixture(scope="module")
def server(library):
    base, index, root = library
    with running_server(index, base / "server.log") as url:
        yield url, root


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def status_has(page, text: str) -> None:
    page.wait_for_function("(t) => document.getElementById('status').textContent.includes(t)", arg=text)


def result_ids(page) -> list[str]:
    return page.locator("#results li").evaluate_all("cards => cards.map(c => c.dataset.id)")


def thumbnails_loaded(page) -> None:
    page.wait_for_function(
        "() => [...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)"
    )


def test_search_page_in_headless_chromium(server, browser, tmp_path):
    url, root = server
    requested: list[str] = []
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    try:
        page.on("request", lambda request: requested.append(request.url))
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(url + "/")
        page.wait_for_function("() => document.getElementById('stats').textContent.includes('11 items')")
        # Images by default, as the README's first command: texts outrank images on cross-modal scores.
        assert page.locator("input[name=type][value=image]").is_checked()
        assert page.locator("#stats").inner_text().startswith("11 items (8 images, 3 texts)")

        # Text search over everything, typed with the keyboard: "/" focuses the box, Enter searches.
        page.check("input[name=type][value=all]")
        page.locator("body").click(position={"x": 5, "y": 5})
        page.keyboard.press("/")
        page.keyboard.type(CAPTIONS[1])
        page.keyboard.press("Enter")
        status_has(page, "results for")
        first = page.locator("#results li").first
        assert first.get_attribute("data-modality") == "text"
        assert first.locator(".snippet").inner_text() == CAPTIONS[1]
        assert first.locator(".score").inner_text() == "1.000"

        # Filter to images: every card is a thumbnail that the browser really decoded.
        page.get_by_label("images").check()
        page.wait_for_function(
            "() => { const cards = [...document.querySelectorAll('#results li')];"
            " return cards.length === 8 && cards.every(c => c.dataset.modality === 'image'); }"
        )
        thumbnails_loaded(page)
        assert page.locator("#results img").count() == 8

        # Image upload: the uploaded file's own indexed copy comes first with score 1.
        page.fill("#q", "")
        page.set_input_files("#image-input", str(root / "city.webp"))
        status_has(page, "image city.webp")
        top = page.locator("#results li").first
        assert top.locator(".name").inner_text() == "city.webp"
        assert top.locator(".score").inner_text() == "1.000"
        assert page.locator("#query-image-preview").is_visible()

        # "More like this" on the second result, with the keyboard (focus + Enter).
        second = page.locator("#results li").nth(1)
        second_id = second.get_attribute("data-id")
        second.locator("button.similar").focus()
        page.keyboard.press("Enter")
        status_has(page, f"(#{second_id})")
        ids = result_ids(page)
        assert second_id not in ids and len(ids) == 7  # the eight images but itself
        assert page.locator("#query-image").is_hidden()  # the uploaded image no longer applies
        thumbnails_loaded(page)

        # "Open" links to the original file.
        href = page.locator("#results li a.open").first.get_attribute("href")
        original = page.request.get(url + href)
        name = page.locator("#results li .name").first.inner_text()
        assert original.status == 200
        if "\\x" not in name:
            assert original.body() == (root / name).read_bytes()

        shot = tmp_path / "webui.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        if os.environ.get("MMSEARCH_SCREENSHOT"):
            page.screenshot(path=os.environ["MMSEARCH_SCREENSHOT"], full_page=True)
        assert not errors, errors
    finally:
        page.close()

    # Everything the page loaded came from the server itself: no CDN, no other host.
    outside = [u for u in requested if not u.startswith(url + "/") and not u.startswith(("blob:", "data:"))]
    assert requested and not outside, outside


def test_the_search_lives_in_the_address(server, browser):
    """Searches are pushed into the address: Back shows the earlier results, a bookmark re-runs one."""
    url, _ = server
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    try:
        page.goto(url + "/")
        page.fill("#q", CAPTIONS[0])
        page.keyboard.press("Enter")
        status_has(page, f"results for “{CAPTIONS[0]}”")
        text_results = result_ids(page)
        assert parse_qs(urlsplit(page.url).query)["q"] == [CAPTIONS[0]]

        # "More like this" on the first image: a new entry in the history, with the item id.
        card = page.locator("#results li[data-modality=image]").first
        item = card.get_attribute("data-id")
        card.locator("button.similar").click()
        status_has(page, f"(#{item})")
        similar_results = result_ids(page)
        query = parse_qs(urlsplit(page.url).query)
        assert query["item"] == [item] and "q" not in query and similar_results != text_results

        page.go_back()
        status_has(page, f"results for “{CAPTIONS[0]}”")
        assert result_ids(page) == text_results and page.input_value("#q") == CAPTIONS[0]
        page.go_forward()
        status_has(page, f"(#{item})")
        assert result_ids(page) == similar_results

        # Bookmarks: opening the address directly runs the search, filters included.
        bookmark = browser.new_page()
        bookmark.goto(f"{url}/?item={item}&type=image&k=12")
        status_has(bookmark, f"(#{item})")
        cards = bookmark.locator("#results li")
        assert cards.count() == 7 and set(cards.evaluate_all("cs => cs.map(c => c.dataset.modality)")) == {"image"}
        assert bookmark.locator("input[name=type][value=image]").is_checked() and bookmark.input_value("#k") == "12"
        bookmark.goto(f"{url}/?q={quote(CAPTIONS[2])}&type=all")
        status_has(bookmark, f"results for “{CAPTIONS[2]}”")
        assert bookmark.locator("#results li .snippet").first.inner_text() == CAPTIONS[2]
        bookmark.goto(f"{url}/?q={quote(CAPTIONS[2])}")  # no type in the address: images
        status_has(bookmark, f"results for “{CAPTIONS[2]}”")
        assert set(bookmark.locator("#results li").evaluate_all("cs => cs.map(c => c.dataset.modality)")) == {"image"}
        bookmark.close()
    finally:
        page.close()


def test_hide_near_duplicates_checkbox(server, browser):
    """The checkbox asks the API for dedup, lives in the address, and hidden copies show as +N."""
    url, _ = server
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    try:
        page.goto(url + "/")
        page.fill("#q", CAPTIONS[0])
        page.keyboard.press("Enter")
        status_has(page, f"results for “{CAPTIONS[0]}”")
        plain = result_ids(page)
        with page.expect_response(lambda r: "/api/search" in r.url and "dedup=true" in r.url) as answer:
            page.check("#dedup")
        hits = answer.value.json()["hits"]
        assert parse_qs(urlsplit(page.url).query)["dedup"] == ["true"]
        page.wait_for_function("n => document.querySelectorAll('#results li').length === n", arg=len(hits))
        assert result_ids(page) == [str(h["id"]) for h in hits] and set(result_ids(page)) <= set(plain) | {
            str(d) for h in hits for d in h["duplicates"]}
        assert page.locator("#results .dupes").count() == sum(1 for h in hits if h["duplicates"])
        page.goto(f"{url}/?q={quote(CAPTIONS[0])}&dedup=true&type=all")
        status_has(page, f"results for “{CAPTIONS[0]}”")
        assert page.locator("#dedup").is_checked()
    finally:
        page.close()


def test_file_names_that_are_not_utf8_show_readably(server, browser):
    url, root = server
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    try:
        page.goto(f"{url}/?q=photo&type=image")
        status_has(page, "8 results")
        names = page.locator("#results li .name").all_inner_texts()
        assert "caf\\xe9.jpg" in names and "\\xff odd.png" in names, names
        thumbnails_loaded(page)
        odd = page.locator("#results li", has_text="caf\\xe9.jpg")
        href = odd.locator("a.open").get_attribute("href")
        original = page.request.get(url + href)
        assert original.status == 200
        assert original.body() == Path(os.fsdecode(os.fsencode(str(root)) + b"/caf\xe9.jpg")).read_bytes()
        assert "filename*=UTF-8''caf%C3%A9.jpg" in original.headers["content-disposition"]
        odd.locator("button.similar").click()
        status_has(page, "items like caf\\xe9.jpg")
        assert "Search failed" not in page.locator("#status").inner_text()
    finally:
        page.close()


def test_page_with_a_token(library, browser):
    """A server started with --token: the page asks for it, or takes it once from /#token=...;
    thumbnails and links work through the session cookie; the token never stays in the address."""
    base, index, _ = library
    # In-process (the command line's --token is tested in test_server_security.py): starts faster.
    with Engine(index) as engine, ServerThread(create_app(engine, token=TOKEN)) as running:
        url = running.url
        assert httpx.get(f"{url}/api/info").status_code == 401

        context = browser.new_context(viewport={"width": 1200, "height": 900})
        page = context.new_page()
        page.goto(url + "/")
        page.wait_for_selector("#auth-form", state="visible")
        status_has(page, "access token")
        page.fill("#token", "not-the-token")
        page.keyboard.press("Enter")
        status_has(page, "wrong token")
        page.fill("#token", TOKEN)
        page.keyboard.press("Enter")
        page.wait_for_function("() => document.getElementById('stats').textContent.includes('11 items')")
        assert page.locator("#auth-form").is_hidden()
        page.fill("#q", "photo")
        page.get_by_label("images").check()
        page.keyboard.press("Enter")
        status_has(page, "8 results")
        thumbnails_loaded(page)
        context.close()

        # The link `mmsearch serve` prints: the token unlocks the page and leaves the address.
        context = browser.new_context()
        page = context.new_page()
        page.goto(f"{url}/?q={quote(CAPTIONS[1])}&type=all#token={TOKEN}")
        status_has(page, f"results for “{CAPTIONS[1]}”")
        assert TOKEN not in page.url and page.locator("#results li .snippet").first.inner_text() == CAPTIONS[1]
        thumbnail = page.request.get(url + "/api/items/1/thumbnail")  # with the page's cookie
        assert thumbnail.status in (200, 404)
        cookies = context.cookies()
        assert len(cookies) == 1 and cookies[0]["httpOnly"] and cookies[0]["sameSite"] == "Strict"
        assert TOKEN not in cookies[0]["value"]
        context.close()


def test_api_docs_render_offline_under_the_page_policy(server, browser):
    """/docs is Swagger UI from the server's own files: it renders with no CDN and no CSP error."""
    url, _ = server
    page = browser.new_page()
    messages: list[str] = []
    requested: list[str] = []
    page.on("console", lambda m: messages.append(f"{m.type}: {m.text}"))
    page.on("request", lambda r: requested.append(r.url))
    try:
        page.goto(url + "/docs")
        page.wait_for_selector(".swagger-ui .info .title", timeout=20_000)
        assert page.locator(".swagger-ui .info .title").inner_text().startswith("mmsearch")
        assert page.locator(".opblock-summary-path", has_text="/api/search").count() == 2  # GET and POST
    finally:
        page.close()
    assert not [m for m in messages if m.startswith("error") or "Content Security Policy" in m], messages
    assert not [u for u in requested if not u.startswith(url + "/") and not u.startswith("data:")], requested
