"""What every output shows: file names that are not UTF-8 in every JSON output of every mode
(CLI in a new process and HTTP on a real loopback server), one result per picture when a JSONL
record names an image file that is indexed too, the table at 80 columns, query terms that look
like missing images."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest
from conftest import make_image, one_line, run
from docs_corpus import make_docs_corpus

from mmsearch import Engine
from support.videogen import COLOURS, make_video

BAD_IMAGE = b"bad\xffname.jpg"
BAD_VIDEO = b"clip\xff.mp4"


def bad(folder: Path, name: bytes) -> str:
    return os.fsdecode(os.fsencode(str(folder)) + b"/" + name)


@pytest.fixture(scope="module")
def odd_library(tmp_path_factory, tiny_model):
    """The documents corpus plus a picture and a video whose names are not UTF-8 (the picture
    with a sidecar, so it is a document of two parts), indexed with the tiny model."""
    base = tmp_path_factory.mktemp("outputs")
    root = make_docs_corpus(base / "lib")
    picture = bad(root / "shop", BAD_IMAGE)
    make_image(Path(picture), seed=40)
    Path(bad(root / "shop", b"bad\xffname.txt")).write_text("red shoe on a shelf")
    make_video(bad(root, BAD_VIDEO), [1.0, 1.0], gop=5, colours=COLOURS[2:])
    with Engine(base / "idx", model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint)) as engine:
        report = engine.add([root])
    assert not [s for s in report.skipped if "bad" in s.path or "clip" in s.path]
    return base / "idx", root


# Every ranking the CLI and the API offer (each fusion, each mode, calibrated, dedup, video).
MODES = [
    {}, {"mode": "lexical"}, {"mode": "hybrid"}, {"fusion": "late"}, {"fusion": "early"}, {"fusion": "rrf"},
    {"mode": "hybrid", "fusion": "early"}, {"calibrated": True}, {"calibrated": True, "fusion": "late"},
    {"cutoff": "auto"}, {"dedup": True}, {"dedup": True, "fusion": "early"}, {"type": "video"},
    {"type": "image", "fusion": "early"},
]


def cli_args(options: dict) -> list[str]:
    args = []
    for key, value in options.items():
        args += [f"--{key}"] if value is True else [f"--{key}", str(value)]
    return args


def check_paths(doc, found: list[str]) -> None:
    """Every field naming a file (``path``, ``..._path``) is valid text; one that had to escape
    bytes carries the exact name in ``<key>_bytes``, which gives back the real file name."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            if (key == "path" or key.endswith("_path")) and isinstance(value, str):
                if "\\x" in value:
                    assert f"{key}_bytes" in doc, (key, doc)
                    exact = os.fsdecode(__import__("base64").b64decode(doc[f"{key}_bytes"]))
                    assert os.path.lexists(exact), exact
                    found.append(exact)
            check_paths(value, found)
    elif isinstance(doc, list):
        for value in doc:
            check_paths(value, found)


def strict(data: bytes):
    return json.loads(data.decode("utf-8"))  # raises on any byte that is not UTF-8


@pytest.mark.slow
def test_every_json_output_holds_odd_names_as_valid_utf8(odd_library):
    idx, root = odd_library
    picture, video = bad(root / "shop", BAD_IMAGE), bad(root, BAD_VIDEO)
    seen: set[str] = set()
    nested: set[str] = set()
    for options in MODES:
        result = run("query", "red shoe", "-i", idx, "-k", "30", "--json", *cli_args(options))
        assert result.returncode == 0, (options, result.stderr.decode(errors="replace"))
        doc = strict(result.stdout)
        found: list[str] = []
        check_paths(doc, found)
        seen.update(found)
        for hit in doc["hits"]:
            check_paths(hit.get("matched") or {}, (inner := []))
            nested.update(inner)
    assert picture in seen and video in seen
    assert picture in nested  # the fused hits' "matched": {"image": {"path", "path_bytes"}}
    for command in (["dupes", "--json", "--threshold", "0.5"], ["info", "--json"], ["index", "--json", "-q"]):
        result = run(*command, "-i", idx)
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        check_paths(strict(result.stdout), [])


@pytest.mark.slow
def test_the_api_and_the_client_answer_every_mode_with_odd_names(odd_library):
    from mmsearch.client import Client
    from mmsearch.server import ServerThread, create_app

    idx, root = odd_library
    picture = bad(root / "shop", BAD_IMAGE)
    with Engine(idx) as engine, ServerThread(create_app(engine)) as server, \
            httpx.Client(base_url=server.url, timeout=60) as http, Client(server.url) as client:
        seen: list[str] = []
        for options in MODES:
            params = {"q": "red shoe", "k": 30, **{k: str(v).lower() if v is True else v for k, v in options.items()}}
            answer = http.get("/api/search", params=params)
            assert answer.status_code == 200, (options, answer.text)
            check_paths(strict(answer.content), seen)
        assert picture in seen
        for path in ("/api/info", "/api/duplicates?threshold=0.5"):
            answer = http.get(path)
            if answer.status_code != 404:
                assert answer.status_code == 200, answer.text
                check_paths(strict(answer.content), [])
        hits = client.search("red shoe", k=30, fusion="early")
        mine = [h for h in hits if h.path == picture]
        assert mine and mine[0].matched["image"]["path"] == picture  # the exact name, back from the server
        # The file's download name: the undecodable byte read as Windows-1252 (README says so).
        answer = http.get(mine[0].file_url)
        assert answer.status_code == 200
        assert "filename*=UTF-8''bad%C3%BFname.jpg" in answer.headers["content-disposition"]


@pytest.fixture(scope="module")
def shop(tmp_path_factory, tiny_model):
    """A shop folder: six pictures under img/ and a catalogue naming each of them, plus notes
    (three text records); the whole folder indexed, so each picture is a file and a record's image."""
    base = tmp_path_factory.mktemp("shop")
    root = base / "shop"
    records = []
    for n in range(6):
        make_image(root / "img" / f"p{n}.jpg", seed=50 + n)
        records.append({"image": f"img/p{n}.jpg", "text": f"shoe model {n}, leather"})
    (root / "catalogue.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    (root / "notes.jsonl").write_text("".join(json.dumps({"text": f"a cat note {n}"}) + "\n" for n in range(3)))
    idx = base / "idx"
    result = run("index", root, "-i", idx, *tiny_model.args, "-q")
    assert result.returncode == 0, result.stderr.decode()
    return idx, root


def query_json(idx: Path, *args: str) -> list[dict]:
    result = run("query", *args, "-i", idx, "--json")
    assert result.returncode == 0, result.stderr.decode()
    return strict(result.stdout)["hits"]


@pytest.mark.parametrize("ranking", [[], ["--fusion", "late"], ["--fusion", "early"], ["--mode", "hybrid"],
                                     ["--dedup"]])
def test_a_picture_a_record_names_is_one_result(shop, ranking):
    idx, root = shop
    hits = query_json(idx, "shoe", "--type", "image", "--under", root, "-k", "12", *ranking)
    pictures = {str(root / "img" / f"p{n}.jpg") for n in range(6)}
    if "--dedup" not in ranking:  # (random tiny-model pictures may be near-duplicates of each other)
        assert len(hits) == 6
    assert len({h["path"] for h in hits}) == len(hits) and {h["path"] for h in hits} <= pictures
    for hit in hits:  # shown by the file, naming the record it belongs to
        n = int(Path(hit["path"]).stem[1:])
        assert hit["locator"] == "" and hit["record"] == {"path": str(root / "catalogue.jsonl"), "line": str(n + 1)}
    if ranking[:1] == ["--fusion"]:  # one document: the file's picture with the record's text
        everything = query_json(idx, "shoe", "--under", root, "-k", "30", *ranking)
        shown = [h for h in everything if h["path"] in pictures]
        assert len(shown) == 6
        assert all(h["matched"]["text"]["text"].startswith("shoe model") for h in shown)
        assert not [h for h in everything if h["locator"].endswith(":image")]


def test_paths_print_the_picture_file_once_per_hit(shop):
    idx, root = shop
    result = run("query", "shoe", "--type", "image", "-k", "12", "--paths", "-i", idx)
    lines = result.stdout.decode().splitlines()
    assert sorted(lines) == sorted(str(root / "img" / f"p{n}.jpg") for n in range(6))
    result = run("query", "cat", "--type", "text", "-k", "3", "--paths", "-i", idx)
    assert result.stdout.decode().splitlines() == [str(root / "notes.jsonl")] * 3  # three hits, three lines
    table = run("query", "shoe", "--type", "image", "-k", "1", "-i", idx,
                env={**os.environ, "COLUMNS": "200"}).stdout.decode()
    assert ".jpg" in table and "(record " in table and "catalogue.jsonl:" in table


def test_dupes_never_lists_a_picture_as_its_own_duplicate(shop):
    idx, _ = shop
    result = run("dupes", "--json", "--threshold", "0.999999", "-i", idx)
    assert result.returncode == 0, result.stderr.decode()
    groups = strict(result.stdout)["groups"]
    assert groups == []  # the same picture as a file and as a record's image: no group


@pytest.fixture(scope="module")
def photos(tmp_path_factory, tiny_model):
    """Photos with long names (spaces too), capture dates and cameras, indexed."""
    from test_photo_metadata import photo

    base = tmp_path_factory.mktemp("table")
    root = base / "holiday pictures"
    for n, (taken, model) in enumerate([("2021:05:01 10:00:00", "Pixel 7"), ("2023:08:15 18:30:00", "EOS R5"),
                                        ("2019:01:02 08:00:00", "Pixel 7")]):
        photo(root / f"a rather long file name with spaces number {n}.jpg", seed=70 + n, taken=taken,
              make="Google" if model.startswith("Pixel") else "Canon", model=model)
    idx = base / "idx"
    result = run("index", root, "-i", idx, *tiny_model.args, "-q")
    assert result.returncode == 0, result.stderr.decode()
    return idx, root


def table_at_80(idx: Path, *args: str) -> list[str]:
    result = run("query", "holiday", "-i", idx, *args, env={**os.environ, "COLUMNS": "80"})
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode().splitlines()


def test_the_table_at_80_columns_keeps_paths_whole_and_shows_what_a_sort_or_filter_uses(photos):
    idx, root = photos
    names = sorted(str(p) for p in root.iterdir())
    lines = table_at_80(idx)
    assert sorted(n for n in names if any(n in line for line in lines)) == names  # each path on one line
    # --sort date: a date column, in the order sorted
    lines = table_at_80(idx, "--sort", "date")
    header = next(line for line in lines if "path" in line)
    assert "date" in header
    dates = [d for line in lines for d in ("2023-08-15 18:30", "2021-05-01 10:00", "2019-01-02 08:00") if d in line]
    assert dates == ["2023-08-15 18:30", "2021-05-01 10:00", "2019-01-02 08:00"]
    assert sum(any(n in line for line in lines) for n in names) == 3
    # --camera: a camera column naming each hit's camera
    lines = table_at_80(idx, "--camera", "pixel 7")
    assert "camera" in next(line for line in lines if "path" in line)
    shown = [line for line in lines if ".jpg" in line]
    assert len(shown) == 2 and all("Google Pixel 7" in line for line in shown)


def test_a_missing_image_term_is_an_error_unless_it_means_words(shop, tmp_path):
    idx, root = shop
    result = run("query", "nope.jpg", "-i", idx, cwd=tmp_path)
    assert result.returncode != 0
    assert one_line(result.stderr) == ("error: image not found: nope.jpg (a term named like an image is read as "
                                       "a file: to search for these words, add --text)")
    for words in (["--text"], ["--mode", "hybrid"], ["--mode", "lexical"]):
        result = run("query", "nope.jpg", "-i", idx, "--json", *words, cwd=tmp_path)
        assert result.returncode == 0, (words, result.stderr.decode())
    make_image(tmp_path / "there.jpg", seed=3)  # an image that exists is an image term, without ./
    hits = strict(run("query", "there.jpg", "-i", idx, "--json", "--type", "image", cwd=tmp_path).stdout)["hits"]
    assert hits


def test_the_readmes_first_command_shows_photos(tmp_path, tiny_model):
    """The README's first command, run over the sample photos (the tiny model in place of the
    default one): every hit is a photo, never the folder's own README."""
    import shlex

    from conftest import README, ROOT

    line = next(line for line in README.read_text().splitlines() if "mmsearch index tests/data/photos" in line)
    query = shlex.split(line.split("&&")[-1])
    assert query[:2] == ["mmsearch", "query"], line
    idx = tmp_path / "idx"
    assert run("index", ROOT / "tests" / "data" / "photos", "-i", idx, *tiny_model.args, "-q").returncode == 0
    result = run(*query[1:], "-i", idx, "--json")
    assert result.returncode == 0, result.stderr.decode()
    hits = strict(result.stdout)["hits"]
    assert hits and {h["modality"] for h in hits} == {"image"}


def test_every_column_of_the_table_keeps_its_cells_beside_a_long_text(tmp_path, tiny_model):
    """The sample photos' folder holds a README whose text is long: at 80 and 120 columns each hit
    line still shows its rank, score and type (rich's flexible text column used to shrink them to
    nothing), and at 50 the table is wider than the terminal rather than cut."""
    from conftest import ROOT

    photos = ROOT / "tests" / "data" / "photos"
    idx = tmp_path / "idx"
    assert run("index", photos, "-i", idx, *tiny_model.args, "-q").returncode == 0
    for columns in ("50", "80", "120"):
        result = run("query", "a cat", "-i", idx, "-k", "3", env={**os.environ, "COLUMNS": columns})
        assert result.returncode == 0, result.stderr.decode()
        lines = result.stdout.decode().splitlines()
        header = next(line for line in lines if "path" in line)
        assert header.split()[:5] == ["#", "┃", "score", "┃", "type"], (columns, lines)
        rows = [line for line in lines if str(photos) in line]
        assert len(rows) == 3, (columns, lines)
        for rank, row in enumerate(rows, 1):
            cells = [c.strip() for c in row.split("│")]
            assert cells[0] == str(rank) and float(cells[1]) and cells[2] in ("image", "text"), (columns, row)
            assert any(cell.startswith(str(photos)) and not cell.endswith("…") for cell in cells), (columns, row)
