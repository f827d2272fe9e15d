"""One search request, checked once, and one ``Searcher`` protocol that ``Engine`` (in process)
and ``Client`` (over HTTP) both implement with the same signatures and return types."""

from __future__ import annotations

import inspect
from datetime import datetime

import pytest

from mmsearch import Engine, QueryError, QueryTerm
from mmsearch.client import Client
from mmsearch.errors import FilterError, TextInputError
from mmsearch.search.request import Ranking, SearchRequest, Searcher

METHODS = [name for name, value in vars(Searcher).items() if callable(value) and not name.startswith("_")]


def _shape(function) -> tuple:
    """A method's parameters (name, kind, default, annotation as written) and return annotation."""
    signature = inspect.signature(function)
    return ([(p.name, p.kind, p.default, p.annotation) for p in signature.parameters.values()],
            signature.return_annotation)


def test_the_protocol_lists_every_search_method():
    assert set(METHODS) == {"search", "search_image", "similar", "search_request", "get", "count", "info",
                            "duplicates"}
    # The options are written once: both sides inherit the search methods and answer a request.
    for name in ("search", "search_image", "similar"):
        assert getattr(Engine, name) is getattr(Searcher, name) is getattr(Client, name)
    assert Searcher.__abstractmethods__ == {"search_request", "get", "count", "info", "duplicates"}


@pytest.mark.parametrize("name", METHODS)
def test_engine_and_client_implement_the_searcher_protocol_alike(name):
    """Client drifted from Engine (``**filters`` against named filters, a ``search_image`` Engine
    lacked, ``get`` returning ``Item`` against ``Item | None``): the signatures are held equal."""
    protocol = _shape(getattr(Searcher, name))
    assert _shape(getattr(Engine, name)) == protocol, f"Engine.{name} differs from Searcher.{name}"
    assert _shape(getattr(Client, name)) == protocol, f"Client.{name} differs from Searcher.{name}"


def test_a_request_is_parsed_and_checked_once():
    request = SearchRequest.build("2:beach + sunset - people", k=3, after="2024-05", camera="  Pixel   7 ",
                                  near="48.85,2.29,5", dedup=True, fusion="late", image_weight=2, cutoff="0.5")
    assert [(t.kind, t.value, t.weight) for t in request.terms] == [
        ("text", "beach", 2.0), ("text", "sunset", 1.0), ("text", "people", -1.0)]
    assert request.words == "beach sunset"
    assert request.filters.after == datetime(2024, 5, 1) and request.filters.camera == "Pixel 7"
    assert request.filters.near.km == 5 and request.dedup == pytest.approx(0.97)
    assert request.ranking == Ranking("late", "vector", 2.0, 0.5, False, 0.5)
    # Immutable, and a changed copy is checked again.
    with pytest.raises(AttributeError):
        request.k = 4  # type: ignore[misc]
    assert request.but(k=4).k == 4
    with pytest.raises(QueryError, match="k must be"):
        request.but(k=0)


@pytest.mark.parametrize("options, error, words", [
    ({"k": 0}, QueryError, "k must be an integer of at least 1"),
    ({"k": True}, QueryError, "k must be an integer"),
    ({"type": "audio"}, QueryError, "unknown type 'audio'"),
    ({"min_score": float("nan")}, QueryError, "min_score must be a finite number"),
    ({"after": "yesterday"}, FilterError, "after"),
    ({"near": "1,2"}, FilterError, "near"),
    ({"sort": "size"}, FilterError, "unknown order 'size'"),
    ({"fusion": "mid"}, QueryError, "unknown fusion 'mid'"),
    ({"mode": "fuzzy"}, QueryError, "unknown mode 'fuzzy'"),
    ({"image_weight": -1}, QueryError, "image weight must be a number of at least 0"),
    ({"image_weight": 0, "text_weight": 0}, QueryError, "cannot both be 0"),
    ({"cutoff": "high"}, QueryError, "cutoff must be 'auto' or a calibrated score"),
    ({"dedup": 0.1}, QueryError, "from 0.5 to 1"),
    ({"under": "a\x00b"}, TextInputError, "under"),
])
def test_bad_options_fail_when_the_request_is_built(options, error, words):
    with pytest.raises(error, match=words):
        SearchRequest.build("cats", **options)


def test_the_command_line_names_its_options_in_errors():
    with pytest.raises(QueryError, match="--min-score must be a finite number"):
        SearchRequest.build("cats", min_score=float("inf"), option_prefix="--")
    with pytest.raises(FilterError, match="--after"):
        SearchRequest.build("cats", after="soon", option_prefix="--")


def test_terms_are_checked_in_the_request():
    with pytest.raises(QueryError, match="positive weight"):
        SearchRequest((QueryTerm("text", "cats", -1.0),))
    with pytest.raises(TextInputError):
        SearchRequest.build("nul \x00 inside")
    with pytest.raises(QueryError, match="mix of QueryTerm objects and strings"):
        SearchRequest.build([QueryTerm("text", "a"), "b"])


def test_engine_searches_a_request_as_it_searches_its_keywords(built):
    idx, corpus = built
    with Engine(idx) as engine:
        for options in ({"k": 4, "type": "image"}, {"k": 3, "dedup": True}, {"k": 3, "mode": "hybrid"}):
            request = SearchRequest.build("a red square", **options)
            by_request = engine.search(request)
            by_keywords = engine.search("a red square", **options)
            assert [(h.id, h.score) for h in by_request] == [(h.id, h.score) for h in by_keywords], options
        assert len(by_request) == 3
        typed = engine.search(SearchRequest.build("a red square", k=4, type="image"))
        assert len(typed) == 4 and {h.modality for h in typed} == {"image"}
        # A request carries its own options: one given beside it would be silently ignored.
        with pytest.raises(QueryError, match="do not pass k beside it"):
            engine.search(request, k=2)
        # search_image and similar are searches too.
        image = corpus / "b.png"
        found = engine.search_image(image, k=1, include_query=True)
        assert found[0].path == str(image)
        assert engine.search_image(image.read_bytes(), k=1, include_query=True)[0].path == str(image)
        similar = engine.similar(found[0].id, k=3)
        assert found[0].id not in [h.id for h in similar] and len(similar) == 3
        assert engine.get(10**9) is None


@pytest.mark.parametrize("options, found", [
    ({"after": "0001-01-01"}, True), ({"after": "0001"}, True), ({"before": "0001-01-02"}, False),
    ({"after": "9999-12-31T23:59"}, False), ({"before": "9999-12-31T23:59"}, True),
])
def test_dates_no_file_time_can_hold_compare_as_its_bounds(built, options, found):
    """Year 1 and year 9999 raised ValueError and OverflowError (a traceback on the command line,
    a 500 over HTTP): a file's time is int64 nanoseconds, 1677 to 2262."""
    idx, _ = built
    with Engine(idx) as engine:
        hits = engine.search("a photo", k=3, **options)
        assert bool(hits) is found and (found or "no item passes the filters" in hits.why_empty)


def test_client_and_engine_fail_alike_and_take_names_that_are_not_utf8(built, tmp_path):
    """Client raised ServerError where Engine raised QueryError (an unknown item, a threshold out
    of range, a missing image), and a traceback from httpx for an image whose name is not UTF-8."""
    import os
    import shutil

    from mmsearch.server import ServerThread, create_app

    idx, corpus = built
    odd = tmp_path / os.fsdecode(b"caf\xe9.png")
    shutil.copyfile(corpus / "b.png", odd)
    with Engine(idx) as engine, ServerThread(create_app(engine, preload=False)) as server, \
            Client(server.url) as client:
        for searcher in (engine, client):
            with pytest.raises(QueryError, match="no item with id 999999"):
                searcher.similar(999999)
            with pytest.raises(QueryError, match="from 0.5 to 1"):
                searcher.duplicates(threshold=0.1)
            with pytest.raises(QueryError, match="image not found"):
                searcher.search_image(tmp_path / "nope.jpg")
        # The same picture under a name that is not UTF-8: uploaded, found, exact path back.
        mine, theirs = engine.search_image(odd, k=1), client.search_image(odd, k=1)
        assert mine[0].path == theirs[0].path == str(corpus / "b.png")
        assert mine[0].score == pytest.approx(theirs[0].score, abs=1e-5)
        with pytest.raises(QueryError, match="not valid UTF-8"):
            client.search("a photo", under=os.fsdecode(b"/tmp/caf\xe9"))
        # A number that is not one is named as such over HTTP (it read "less than or equal to 1").
        import httpx

        for path, params in (("/api/search", {"q": "a", "min_score": "nan"}),
                             ("/api/search", {"q": "a", "image_weight": "inf"}),
                             ("/api/duplicates", {"threshold": "nan"})):
            answer = httpx.get(server.url + path, params=params)
            assert answer.status_code == 422 and "finite number" in answer.text, (path, answer.text)
