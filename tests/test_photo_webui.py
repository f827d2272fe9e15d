"""The page's date, camera and place filters, in a real headless Chromium (see test_webui.py)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from mmsearch import Engine
from mmsearch.server import ServerThread, create_app
from test_photo_metadata import build_library
from test_webui import CHROMIUM, CHROMIUM_ARGS, result_ids, status_has, sync_playwright

pytestmark = pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"no Chromium at {CHROMIUM}")


def test_photo_filters_on_the_page(tmp_path, tiny_model):
    root = tmp_path / "library"
    files = build_library(root)
    index = tmp_path / "idx"
    with Engine(index, model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint)) as engine:
        engine.add([root])
        ids = {name: str(next(h.id for h in engine.search("x", k=20) if h.path == str(path)))
               for name, path in files.items()}
    with Engine(index) as engine, ServerThread(create_app(engine, preload=False)) as server, \
            sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        try:
            page.goto(server.url + "/")
            page.fill("#camera", "pixel 7")
            page.fill("#q", "a photo")
            with page.expect_response(lambda r: "/api/search" in r.url and "camera=pixel+7" in r.url):
                page.keyboard.press("Enter")
            status_has(page, "2 results")
            assert sorted(result_ids(page)) == sorted([ids["paris"], ids["webp"]])
            assert sorted(page.locator("#results .taken").all_text_contents()) == ["2022-01-02", "2024-05-01"]
            # The "to" day is included: the API gets the day after as its exclusive `before`.
            page.fill("#camera", "")
            page.fill("#after", "2019-12-31")
            with page.expect_response(lambda r: "before=2020-01-01" in r.url) as answer:
                page.fill("#before", "2019-12-31")
                page.locator("#before").dispatch_event("change")
            assert [h["id"] for h in answer.value.json()["hits"]] == [int(ids["sydney"])]
            page.wait_for_function("() => document.querySelectorAll('#results li').length === 1")
            query = parse_qs(urlsplit(page.url).query)
            assert (query["after"], query["before"]) == (["2019-12-31"], ["2020-01-01"])
            # The address restores the fields; the order and a place filter re-run the search.
            page.goto(f"{server.url}/?q=a+photo&near=0,0,20000&sort=date")
            status_has(page, "3 results")
            assert page.locator("#near").input_value() == "0,0,20000" and page.locator("#sort").input_value() == "date"
            assert result_ids(page) == [ids["paris"], ids["webp"], ids["sydney"]]  # newest first
            page.fill("#near", "95,0,1")
            page.locator("#near").dispatch_event("change")
            status_has(page, "near: latitude 95 is outside")
        finally:
            page.close()
            browser.close()
