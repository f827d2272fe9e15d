"""Photo metadata: the capture date, camera and GPS position read at indexing time from real
files (EXIF written by Pillow here, video tags written by PyAV), stored in indexed columns, and
the filters on them (``after``, ``before``, ``camera``, ``near``, ``sort``) through the Engine,
the HTTP API, the Client and the CLI; an index created before the columns existed upgrades."""

from __future__ import annotations

import json
import os
import sqlite3
import struct
from datetime import date, datetime
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from PIL.TiffImagePlugin import IFDRational

from conftest import engines_per_filter_strategy, make_image
from mmsearch import Engine, QueryError
from mmsearch.search import candidates
from mmsearch.client import Client
from mmsearch.errors import FilterError
from mmsearch.filters import distance_km
from mmsearch.media.exif import from_image
from mmsearch.media.image import ImageHandler
from mmsearch.media.records import FileEntry
from mmsearch.server import ServerThread, create_app

PARIS, SYDNEY, NEW_YORK = (48.8584, 2.2945), (-33.8568, 151.2153), (40.7484, -73.9857)
FILE_TIME = datetime(2020, 3, 4, 5, 6, 7)  # the mtime given to files without a capture date


def _dms(value: float) -> tuple:
    value = abs(value)
    d = int(value)
    m = int((value - d) * 60)
    s = (value - d - m / 60) * 3600
    return IFDRational(d, 1), IFDRational(m, 1), IFDRational(round(s * 10000), 10000)


def photo(path: Path, seed: int, *, taken: str | None = None, make: str | None = None, model: str | None = None,
          gps: tuple[float, float] | None = None, fmt: str | None = None, datetime_only: bool = False) -> Path:
    """A real image file whose EXIF Pillow writes: DateTimeOriginal (or only IFD0 DateTime),
    Make/Model, and a GPS IFD with hemisphere refs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    exif = Image.Exif()
    if make:
        exif[0x010F] = make
    if model:
        exif[0x0110] = model
    if taken and datetime_only:
        exif[0x0132] = taken
    elif taken:
        exif.get_ifd(0x8769)[0x9003] = taken
    if gps:
        lat, lon = gps
        info = exif.get_ifd(0x8825)
        info[1], info[2] = ("N" if lat >= 0 else "S"), _dms(lat)
        info[3], info[4] = ("E" if lon >= 0 else "W"), _dms(lon)
    img.save(path, format=fmt, exif=exif)
    return path


def corrupt_exif_jpeg(path: Path, seed: int) -> Path:
    """A JPEG whose EXIF block claims a Model string and a GPS IFD far past its end."""
    entries = struct.pack("<HHII", 0x0110, 2, 1000, 5000) + struct.pack("<HHII", 0x8825, 4, 1, 99999)
    blob = b"Exif\x00\x00II*\x00\x08\x00\x00\x00" + struct.pack("<H", 2) + entries + b"\x00" * 4
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path, "JPEG", exif=blob)
    return path


def _set_mtime(path: Path, when: datetime) -> None:
    stamp = when.timestamp()
    os.utime(path, (stamp, stamp))


def build_library(root: Path) -> dict[str, Path]:
    files = {
        "paris": photo(root / "paris.jpg", 1, taken="2024:05:01 13:45:10", make="Google", model="Pixel 7", gps=PARIS),
        "sydney": photo(root / "sydney.jpg", 2, taken="2019:12:31 23:59:59", make="Canon", model="Canon EOS R5",
                        gps=SYDNEY),
        "png": photo(root / "shot.png", 3, taken="2023:07:14 10:00:00", make="Apple", model="iPhone 12", fmt="PNG"),
        "webp": photo(root / "nyc.webp", 4, taken="2022:01:02 03:04:05", make="Google", model="Pixel 7",
                      gps=NEW_YORK, fmt="WEBP"),
        "ifd0": photo(root / "old.jpg", 5, taken="2010:08:09 10:11:12", make="NIKON CORPORATION", model="NIKON D70",
                      datetime_only=True),
        "plain": make_image(root / "plain.jpg", seed=6),
        "corrupt": corrupt_exif_jpeg(root / "corrupt.jpg", 7),
    }
    (root / "note.txt").write_text("a note about nothing in particular")
    files["text"] = root / "note.txt"
    for name in ("plain", "corrupt", "text"):
        _set_mtime(files[name], FILE_TIME)
    return files


@pytest.fixture(scope="module")
def library(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("photos") / "library"
    files = build_library(root)
    index = root.parent / "idx"
    with Engine(index, model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint)) as engine:
        report = engine.add([root])
    assert report.added == len(files) and not report.skipped  # broken EXIF never fails an item
    return index, root, files


def paths(hits) -> set[str]:
    return {os.path.basename(h.path) for h in hits}


# -- reading ----------------------------------------------------------------------------------------
def test_exif_fields_are_read_from_the_opened_header(tmp_path):
    files = build_library(tmp_path)
    handler = ImageHandler()

    def captured(name: str):
        data = files[name].read_bytes()
        records, skips = handler.records(FileEntry(str(files[name]), len(data), 0, "image"), data)
        assert not skips and len(records) == 1
        return records[0].captured

    paris = captured("paris")
    assert (paris.taken_at, paris.date_source) == (datetime(2024, 5, 1, 13, 45, 10), "exif")
    assert (paris.camera_make, paris.camera_model, paris.camera) == ("Google", "Pixel 7", "Google Pixel 7")
    assert paris.lat == pytest.approx(PARIS[0], abs=1e-5) and paris.lon == pytest.approx(PARIS[1], abs=1e-5)
    sydney = captured("sydney")  # southern and eastern hemispheres; the model already names the make
    assert sydney.lat == pytest.approx(SYDNEY[0], abs=1e-5) and sydney.lon == pytest.approx(SYDNEY[1], abs=1e-5)
    assert sydney.camera == "Canon EOS R5"
    nyc = captured("webp")  # WebP's EXIF chunk; western hemisphere
    assert nyc.lon == pytest.approx(NEW_YORK[1], abs=1e-5) and nyc.taken_at == datetime(2022, 1, 2, 3, 4, 5)
    png = captured("png")  # PNG's eXIf chunk, no GPS
    assert (png.taken_at, png.camera, png.lat, png.lon) == (datetime(2023, 7, 14, 10), "Apple iPhone 12", None, None)
    assert captured("ifd0").taken_at == datetime(2010, 8, 9, 10, 11, 12)  # DateTime when there is no DateTimeOriginal
    assert captured("plain").empty and captured("corrupt").empty


def test_nonsense_values_lose_their_field_only(tmp_path):
    path = photo(tmp_path / "odd.jpg", 1, taken="0000:00:00 00:00:00", make="  Sony\x00 ", model="ILCE-7M3")
    with Image.open(path) as img:
        got = from_image(img)
    assert got.taken_at is None and got.date_source is None and got.camera == "Sony ILCE-7M3"
    no_fix = photo(tmp_path / "nofix.jpg", 2, taken="2021:02:30 10:00:00", gps=(0.0, 0.0))  # 30 February; 0,0
    with Image.open(no_fix) as img:
        got = from_image(img)
    assert got.empty


# -- the Engine -------------------------------------------------------------------------------------
def test_hits_carry_their_metadata_and_date_source(library):
    index, root, files = library
    with Engine(index) as engine:
        hits = {os.path.basename(h.path): h for h in engine.search("anything", k=20)}
    paris = hits["paris.jpg"]
    assert (paris.taken_at, paris.date_source, paris.camera) == ("2024-05-01T13:45:10", "exif", "Google Pixel 7")
    assert paris.lat == pytest.approx(PARIS[0], abs=1e-5)
    for name in ("plain.jpg", "corrupt.jpg", "note.txt"):  # no capture date: the file's time stands in
        assert (hits[name].taken_at, hits[name].date_source) == (FILE_TIME.isoformat(), "file")
        assert hits[name].camera is None and hits[name].lat is None
    assert paris.as_dict()["camera"] == "Google Pixel 7" and "camera" not in hits["note.txt"].as_dict()


def test_date_camera_and_place_filters(library):
    index, _, _ = library
    with Engine(index) as engine:
        def found(**filters):
            return paths(engine.search("anything", k=20, **filters))

        assert found(after="2022-01-01") == {"paris.jpg", "shot.png", "nyc.webp"}
        assert found(after="2020", before="2023") == {"nyc.webp", "plain.jpg", "corrupt.jpg", "note.txt"}
        assert found(after=date(2020, 3, 4), before=datetime(2020, 3, 4, 5, 6, 8)) == {
            "plain.jpg", "corrupt.jpg", "note.txt"}  # file times, to the second
        assert found(before="2019-12-31T23:59:59") == {"old.jpg"}  # before is exclusive
        assert found(before="2020-01-01") == {"old.jpg", "sydney.jpg"}
        for name in ("Pixel 7", "pixel 7", "Google Pixel 7", "GOOGLE"):
            assert found(camera=name) == {"paris.jpg", "nyc.webp"}, name
        assert found(camera="Canon EOS R5") == found(camera="canon") == {"sydney.jpg"}
        assert found(camera="nikon corporation nikon d70") == {"old.jpg"}
        assert found(camera="Pixel") == set()  # names, not substrings
        assert found(near="48.85,2.29,5") == {"paris.jpg"}
        assert found(near=(40.7, -74.0, 10)) == {"nyc.webp"}
        assert found(near="0,0,20000") == {"paris.jpg", "sydney.jpg", "nyc.webp"}
        assert found(camera="Pixel 7", after="2023") == {"paris.jpg"}
        assert found(type="text", after="2020") == {"note.txt"}
        empty = engine.search("anything", k=5, camera="Leica M6")
        assert list(empty) == [] and "camera 'Leica M6'" in empty.why_empty


FILTERS = ({"after": "2020"}, {"before": "2020-03-04T05:06:07.5"}, {"camera": "pixel 7"},
           {"camera": "Google Pixel 7", "type": "image"}, {"near": "0,0,20000"}, {"near": "-33.86,151.21,1"},
           {"after": "2019", "before": "2023", "near": "40,-74,200"}, {"type": "text", "after": "2020"})


def test_every_way_of_applying_a_filter_gives_the_same_hits(library, monkeypatch):
    """The passing ids from SQLite or from the in-memory columns, over-fetching, exact scoring
    of the passing ids and the FAISS ID selector all agree."""
    index, _, _ = library
    results = [[[(h.id, round(h.score, 5)) for h in engine.search("a photo", k=k, **f)] for f in FILTERS for k in (1, 3)]
               for engine in engines_per_filter_strategy(index, monkeypatch)]
    assert all(r == results[0] for r in results[1:])
    assert [len(r) for r in results[0]] == [1, 3, 1, 3, 1, 2, 1, 2, 1, 3, 1, 1, 1, 1, 1, 1]


def test_filter_columns_go_stale_on_any_commit(library, tmp_path, tiny_model):
    """The in-memory columns are used only while nothing was committed since they were read."""
    _, root, _ = library
    index = tmp_path / "idx"
    with Engine(index, model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint)) as engine:
        engine.add([root / "paris.jpg"])
        cache = candidates.column_cache(engine.store)
        first = cache.load_now()
        assert first is not None and cache.current() is first and len(first.ids) == 1
        engine.add([root / "sydney.jpg"])
        assert cache.current() is None  # stale: the search uses SQL while they reload
        assert paths(engine.search("x", camera="canon")) == {"sydney.jpg"}
        assert len(cache.load_now().ids) == 2


def test_sort_by_date_orders_the_hits_that_pass_the_relevance_cut(library):
    index, _, _ = library
    with Engine(index) as engine:
        best = engine.search("a red pasta dish", k=5, type="image")
        newest = engine.search("a red pasta dish", k=5, type="image", sort="date")
        oldest = engine.search("a red pasta dish", k=5, type="image", sort="date-asc")
    assert {h.id for h in newest} == {h.id for h in oldest} == {h.id for h in best}  # the same cut
    assert [h.taken_at for h in newest] == sorted((h.taken_at for h in best), reverse=True)
    assert [h.taken_at for h in oldest] == sorted(h.taken_at for h in best)
    assert [h.rank for h in newest] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("options, words", [
    ({"after": "yesterday"}, "after: 'yesterday' is not a date"),
    ({"after": "2024", "before": "2023"}, "must be earlier than before"),
    ({"near": "48.8,2.3"}, "near: expected LAT,LON,KM"),
    ({"near": "95,2,3"}, "latitude 95 is outside"),
    ({"near": "48,2,-1"}, "more than 0 km"),
    ({"camera": "  "}, "camera: empty"),
    ({"sort": "size"}, "sort: unknown order 'size'"),
])
def test_bad_filter_values_name_the_option(library, options, words):
    index, _, _ = library
    with Engine(index) as engine, pytest.raises(FilterError, match=words):
        engine.search("anything", **options)
    assert issubclass(FilterError, QueryError)


# -- HTTP: the Client (GET and multipart POST) and a JSON body ----------------------------------------
@pytest.fixture(scope="module")
def served(library):
    index, _, _ = library
    engine = Engine(index)
    with ServerThread(create_app(engine, preload=False)) as server, Client(server.url) as client:
        yield engine, client, server.url
    engine.close()


def test_client_and_engine_filter_alike(served, library):
    engine, client, _ = served
    _, root, files = library
    for options in ({"after": "2022-01-01"}, {"camera": "pixel 7", "sort": "date-asc"}, {"near": PARIS + (5,)},
                    {"after": date(2020, 1, 1), "before": datetime(2023, 1, 1), "type": "image"}):
        mine = engine.search("anything", k=10, **options)
        theirs = client.search("anything", k=10, **options)
        assert [(h.id, h.taken_at, h.camera, h.lat) for h in mine] == [(h.id, h.taken_at, h.camera, h.lat)
                                                                       for h in theirs], options
        assert theirs and theirs[0].date_source
    target = engine.search("anything", k=20, camera="Canon")[0]
    assert [h.id for h in client.similar(target.id, k=5, near="0,0,20000")] == [
        h.id for h in engine.similar(target.id, k=5, near="0,0,20000")]
    by_image = client.search_image(files["paris"], k=5, camera="pixel 7", include_query=True)
    assert paths(by_image) == {"paris.jpg", "nyc.webp"}
    # Checked on this side before anything is sent, as Engine checks it (the same error and
    # message); the server still refuses the value with a 400 naming it.
    for searcher in (client, engine):
        with pytest.raises(FilterError, match="near: latitude 95"):
            searcher.search("anything", near="95,0,1")
    refused = httpx.get(f"{client.url}/api/search", params={"q": "anything", "near": "95,0,1"})
    assert refused.status_code == 400 and "near: latitude 95" in refused.json()["detail"]


def test_json_body_and_query_string_filters(served):
    _, _, url = served
    answer = httpx.post(f"{url}/api/search", json={"q": "anything", "k": 10, "camera": "Google Pixel 7",
                                                   "sort": "date"}).json()
    assert [os.path.basename(h["path"]) for h in answer["hits"]] == ["paris.jpg", "nyc.webp"]
    assert answer["hits"][0]["taken_at"] == "2024-05-01T13:45:10" and answer["hits"][0]["rank"] == 1
    got = httpx.get(f"{url}/api/search", params={"q": "anything", "near": "-33.85,151.2,10"}).json()
    assert [os.path.basename(h["path"]) for h in got["hits"]] == ["sydney.jpg"]
    bad = httpx.get(f"{url}/api/search", params={"q": "anything", "after": "soon"})
    assert bad.status_code == 400 and "after: 'soon' is not a date" in bad.json()["detail"]
    bad = httpx.post(f"{url}/api/search", json={"q": "anything", "sort": "size"})
    assert bad.status_code == 422


# -- the CLI ----------------------------------------------------------------------------------------
def test_cli_filters_sort_and_one_line_errors(library, cli):
    index, _, _ = library
    result = cli("query", "anything", "-i", index, "--camera", "pixel 7", "--sort", "date-asc", "--json")
    hits = json.loads(result.stdout)["hits"]
    assert [os.path.basename(h["path"]) for h in hits] == ["nyc.webp", "paris.jpg"]
    result = cli("query", "anything", "-i", index, "--after", "2019-12-31", "--before", "2020-01-01", "--paths")
    assert [os.path.basename(p) for p in result.stdout.split()] == ["sydney.jpg"]
    result = cli("query", "anything", "-i", index, "--near", "48.85,2.29", ok=False)
    assert result.exit_code == 2 and result.stderr.strip().startswith("error: --near: expected LAT,LON,KM")
    assert len(result.stderr.strip().splitlines()) == 1
    result = cli("query", "anything", "-i", index, "--after", "2024-13-01", ok=False)
    assert result.exit_code == 2 and "--after: '2024-13-01' is not a date" in result.stderr


# -- upgrades and videos ----------------------------------------------------------------------------------
def _strip_metadata_columns(db: Path) -> None:
    """Make the database what an earlier release wrote: no capture columns, no indexes on them."""
    with sqlite3.connect(db) as conn:
        for name in ("ix_items_taken", "ix_items_camera_make", "ix_items_camera_model", "ix_items_place"):
            conn.execute(f"DROP INDEX {name}")
        for column in ("taken_at", "date_source", "camera_make", "camera_model", "lat", "lon"):
            conn.execute(f"ALTER TABLE items DROP COLUMN {column}")


def test_an_index_made_before_the_columns_upgrades_and_refreshes(tmp_path, tiny_model, cli):
    root = tmp_path / "library"
    build_library(root)
    index = tmp_path / "idx"
    cli("index", root, "-i", index, *tiny_model.args, "-q")
    _strip_metadata_columns(index / "mmsearch.db")
    with Engine(index) as engine:
        # Opened: the columns and their indexes are back; the file time dates every item.
        hits = engine.search("anything", k=20)
        assert {h.date_source for h in hits} == {"file"} and len(hits) == 8
        assert list(engine.search("anything", camera="pixel 7")) == []
    with sqlite3.connect(index / "mmsearch.db") as conn:
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"ix_items_taken", "ix_items_camera_make", "ix_items_camera_model", "ix_items_place"} <= names
    # An unchanged file is not read again by a plain run; --refresh-metadata reads the headers.
    cli("index", "-i", index, "-q")
    with Engine(index) as engine:
        assert list(engine.search("anything", camera="pixel 7")) == []
    result = cli("index", "-i", index, "--refresh-metadata", "--json")
    report = json.loads(result.stdout)
    assert report["metadata_refreshed"] == 7 and report["added"] == report["updated"] == 0
    with Engine(index) as engine:
        assert paths(engine.search("anything", k=20, camera="pixel 7")) == {"paris.jpg", "nyc.webp"}
        assert paths(engine.search("anything", k=20, after="2024")) == {"paris.jpg"}


def test_video_creation_time_and_location_from_its_tags(tmp_path, tiny_model):
    from support.videogen import make_video

    root = tmp_path / "videos"
    root.mkdir()
    make_video(root / "trip.mp4", [1.0, 1.0], tags={"creation_time": "2021-06-05T10:20:30.000000Z",
                                                    "location": "+48.8584+002.2945/"})
    make_video(root / "plain.mp4", [1.0])
    _set_mtime(root / "plain.mp4", FILE_TIME)
    with Engine(tmp_path / "idx", model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint)) as engine:
        engine.add([root])
        hits = {os.path.basename(h.path): h for h in engine.search("anything", k=10, type="video")}
        expected = datetime.fromisoformat("2021-06-05T10:20:30+00:00").astimezone().replace(tzinfo=None)
        assert (hits["trip.mp4"].taken_at, hits["trip.mp4"].date_source) == (expected.isoformat(), "container")
        assert distance_km(hits["trip.mp4"].lat, hits["trip.mp4"].lon, *PARIS) < 0.01
        assert hits["plain.mp4"].date_source == "file"
        assert paths(engine.search("anything", k=10, near="48.85,2.29,3")) == {"trip.mp4"}
        assert paths(engine.search("anything", k=10, after="2021", before="2022")) == {"trip.mp4"}


# -- the pushed-down search on an approximate (IVF) index -------------------------------------------------
def test_filters_pushed_into_an_ivf_index_find_the_exact_best(tmp_path, monkeypatch):
    """Synthetic items written through the catalogue's bulk insert into an IVF index: each
    strategy returns the passing items and the selector's top hits match brute force."""
    from mmsearch.storage import IndexStore, VectorSettings, writer_lock
    from support.synthetic import clustered_queries, clustered_vectors

    n, dim = 4000, 32
    vectors = clustered_vectors(n, dim, seed=3)
    rng = np.random.default_rng(5)
    cameras = rng.integers(0, 40, n)
    folder = tmp_path / "ivf"
    settings = VectorSettings(flat_max=100)
    store = IndexStore.create(folder, {"name": "synthetic", "fingerprint": "synthetic"}, dim, settings)
    with writer_lock(folder), store.catalogue.write() as w:
        w.bulk_insert([{"id": i + 1, "path": f"/s/{i}.jpg", "locator": "", "modality": "image", "size": 1,
                        "mtime_ns": 1_600_000_000_000_000_000 + i, "content_hash": f"{i:064x}",
                        "camera_make": "Make", "camera_model": f"M{cameras[i]}"} for i in range(n)], vectors)
    with writer_lock(folder):
        store.fit_vectors("ivf-sq8", force=True)
        store.save_vectors()
    store.close()
    passing = np.flatnonzero(cameras == 7)
    with Engine(folder, settings=None) as engine:
        assert engine.store.vectors().kind == "ivf-sq8"
        for q in clustered_queries(5, dim, seed=3):
            truth = (passing[np.argsort(-(vectors[passing] @ q))[:5]] + 1).tolist()
            for pushdown, exact in ((10**6, 10**6), (10**6, 0), (0, 0)):
                monkeypatch.setattr(candidates, "PUSHDOWN_MAX", pushdown)
                monkeypatch.setattr(candidates, "EXACT_MAX", exact)
                hits = engine.search_vector(q, k=5, camera="m7")
                assert all(cameras[h.id - 1] == 7 for h in hits) and len(hits) == 5
                if exact:
                    assert [h.id for h in hits] == truth
                else:  # approximate cells, exact re-ranking: the best stay found
                    assert len(set(truth) & {h.id for h in hits}) >= 4
