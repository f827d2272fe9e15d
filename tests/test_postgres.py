"""A PostgreSQL catalogue shared by several machines: folders as local caches, the writer's
advisory lock, one-line errors, and a server on one "machine" that sees what another indexed."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import httpx
import psycopg
import pytest
from conftest import ENV, IMAGE_COUNT, TEXT_COUNT, make_image

from mmsearch import Engine
from mmsearch.check import check_folder
from mmsearch.errors import CatalogueDatabaseError, IndexLockedError
from mmsearch.server import ServerThread, create_app
from mmsearch.settings import Settings
from mmsearch.storage import writer_lock
from mmsearch.storage.postgres import same_database

ITEMS = IMAGE_COUNT + TEXT_COUNT


def _settings(db: str | None) -> Settings:
    return Settings.from_env().but(db=db)


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _tables(url: str) -> list[str]:
    with psycopg.connect(_libpq(url)) as conn:
        return [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]


def test_folder_remembers_its_database_but_never_the_password(tmp_path, tiny_model, corpus, cli, pg_url):
    # The test server trusts local connections, so any password is accepted: one is given to
    # check where it goes (nowhere).
    with_password = pg_url.replace("postgresql+psycopg://postgres@", "postgresql+psycopg://postgres:s3cret@", 1)
    idx = tmp_path / "idx"
    cli("index", corpus, "-i", idx, "--db", with_password, *tiny_model.args, "-q")
    assert not (idx / "mmsearch.db").exists()  # the rows are in PostgreSQL
    assert "s3cret" not in "".join(p.read_text(errors="replace") for p in idx.iterdir() if p.suffix == ".json")
    assert same_database(json.loads((idx / "database.json").read_text())["url"], pg_url)
    assert {"items", "embeddings", "tombstones", "roots", "meta"} <= set(_tables(pg_url))
    # Later commands on the folder find the database without --db.
    info = json.loads(cli("info", "-i", idx, "--json").stdout)
    assert info["items"] == ITEMS and same_database(info["database"], pg_url) and "s3cret" not in info["database"]
    assert cli("query", "a black cat", "-i", idx, "--json", "-k", "1").stdout
    # The folder belongs to that database: another one, or an SQLite index, is refused in one line.
    result = cli("info", "-i", idx, "--db", pg_url.replace("/mm_", "/other_", 1), ok=False)
    assert result.exit_code == 1 and "is the local copy of" in result.stderr
    sqlite_idx = tmp_path / "sqlite-idx"
    with Engine(sqlite_idx, model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint),
                settings=_settings(None)) as engine:
        engine.add([corpus / "notes"])
    result = cli("query", "pasta", "-i", sqlite_idx, "--db", pg_url, ok=False)
    assert result.exit_code == 1 and "holds an SQLite index" in result.stderr and "mmsearch migrate" in result.stderr


def test_writer_lock_is_held_in_the_database_across_folders(tmp_path, tiny_model, corpus, cli, pg_url):
    a, b = tmp_path / "machine-a", tmp_path / "machine-b"
    cli("index", corpus, "-i", a, "--db", pg_url, *tiny_model.args, "-q")
    # A writer on "machine A" holds the lock; "machine B" (another folder, no shared file) is refused...
    with writer_lock(a, 0):
        result = cli("index", "-i", b, "--db", pg_url, "-q", ok=False)
        assert result.exit_code == 1
        assert "another mmsearch process is writing to" in result.stderr and "--wait" in result.stderr
        assert pg_url.split("?")[0].split("@")[1] in result.stderr
        with pytest.raises(IndexLockedError), writer_lock(b, 0.3, pg_url):
            pass
    # ... and with --wait it queues behind it, then runs.
    holder_ready, release = threading.Event(), threading.Event()

    def hold() -> None:
        with writer_lock(a, 0):
            holder_ready.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    holder_ready.wait(30)
    threading.Timer(1.0, release.set).start()
    started = time.monotonic()
    result = cli("index", "-i", b, "--db", pg_url, "--json", "--wait", "60")
    holder.join()
    assert time.monotonic() - started >= 0.9  # it waited for the release
    assert json.loads(result.stdout)["unchanged"] == ITEMS


def test_two_machines_share_one_catalogue(tmp_path, tiny_model, corpus, pg_url):
    """A writer in one index folder, a real HTTP server on another folder of the same database:
    the server sees the new items after its next sync, without any file copied between them."""
    writer_folder, server_folder = tmp_path / "writer", tmp_path / "server"
    env = dict(ENV, MMSEARCH_DB=pg_url)
    index = [sys.executable, "-m", "mmsearch", "index", str(corpus), "-i", str(writer_folder), *tiny_model.args, "-q"]
    subprocess.run(index, env=env, check=True, capture_output=True, timeout=300)
    with Engine(server_folder, db=pg_url) as engine, \
            ServerThread(create_app(engine, preload=False)) as server:
        assert same_database(json.loads((server_folder / "database.json").read_text())["url"], pg_url)  # attached
        found = httpx.get(f"{server.url}/api/search", params={"q": "a dog running on green grass", "k": 50}).json()
        assert len(found["hits"]) == ITEMS
        for i in range(3):
            make_image(corpus / "new" / f"n{i}.png", seed=900 + i)
        (corpus / "notes" / "beach.md").unlink()
        subprocess.run(index, env=env, check=True, capture_output=True, timeout=300)
        found = httpx.get(f"{server.url}/api/search", params={"q": "sunset", "k": 50}).json()["hits"]
        paths = {hit["path"] for hit in found}
        assert len(found) == ITEMS + 3 - 1
        assert {str(corpus / "new" / f"n{i}.png") for i in range(3)} <= paths
        assert str(corpus / "notes" / "beach.md") not in paths
        hit = httpx.get(f"{server.url}/api/search", params={"q": "a red pasta dish with fresh basil and tomato sauce",
                                                            "k": 1}).json()["hits"][0]
        assert hit["path"].endswith("pasta.txt") and hit["score"] == pytest.approx(1.0, abs=1e-4)
    # Each folder keeps its own derived vectors file (the server's saved at its first sync, so
    # its next start loads it); neither holds a database.
    assert not (server_folder / "mmsearch.db").exists() and not (writer_folder / "mmsearch.db").exists()
    assert list(writer_folder.glob("vectors.g*.faiss")) and list(server_folder.glob("vectors.g*.faiss"))
    assert check_folder(server_folder, settings=_settings(pg_url)).problems == []


def test_without_index_folder_a_cache_folder_per_database(tmp_path, tiny_model, corpus, cli, pg_url, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("MMSEARCH_INDEX", raising=False)
    cli("index", corpus / "notes", "--db", pg_url, *tiny_model.args, "-q")
    folder = Settings().but(db=pg_url).default_index()
    assert folder.is_relative_to(tmp_path / "cache") and (folder / "manifest.json").is_file()
    monkeypatch.setenv("MMSEARCH_DB", pg_url)
    assert json.loads(cli("info", "--json").stdout)["items"] == 2
    other = Settings().but(db=pg_url.replace("/mm_", "/other_", 1)).default_index()
    assert other != folder


def test_connection_refused_missing_database_and_privileges_are_one_line(tmp_path, tiny_model, corpus, cli,
                                                                         pg_server, pg_url):
    idx = tmp_path / "idx"
    refused = "postgresql+psycopg://postgres@127.0.0.1:1/mmsearch"
    result = cli("index", corpus, "-i", idx, "--db", refused, *tiny_model.args, "-q", ok=False)
    assert result.exit_code == 1 and "cannot reach the database server" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not idx.exists()

    missing = pg_url.replace("/mm_", "/absent_", 1)
    result = cli("index", corpus, "-i", idx, "--db", missing, *tiny_model.args, "-q", ok=False)
    assert result.exit_code == 1 and "database does not exist" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not idx.exists()

    with psycopg.connect(pg_server.get_uri("postgres"), autocommit=True) as conn:
        conn.execute("CREATE ROLE mm_reader LOGIN")  # may connect, may not create tables
    reader = pg_url.replace("postgresql+psycopg://postgres@", "postgresql+psycopg://mm_reader@", 1)
    result = cli("index", corpus, "-i", idx, "--db", reader, *tiny_model.args, "-q", ok=False)
    assert result.exit_code == 1 and "lacks a privilege" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not idx.exists() and _tables(pg_url) == []  # nothing half-written, here or there

    with pytest.raises(CatalogueDatabaseError, match="names no database"):
        Engine(idx, settings=_settings("postgresql+psycopg://")).info()


@pytest.mark.slow  # two models, a full re-embed
def test_a_model_switch_on_another_machine_is_followed(tmp_path, tiny_model, other_tiny_model, corpus, pg_url,
                                                       monkeypatch):
    """A long-lived reader never encodes queries with a model the shared index no longer uses."""
    from mmsearch.storage import location

    monkeypatch.setattr(location, "MODEL_CHECK_SECONDS", 0.0)  # ask the database at every query
    writer_folder, server_folder = tmp_path / "a", tmp_path / "b"
    with Engine(writer_folder, model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint),
                settings=_settings(pg_url)) as writer:
        writer.add([corpus])
    text = "a black cat sleeping on a sofa"
    with Engine(server_folder, settings=_settings(pg_url)) as server:
        assert server.search(text, k=1)[0].score == pytest.approx(1.0, abs=1e-4)
        assert server.spec.pretrained == str(tiny_model.checkpoint)
        with Engine(writer_folder, model=str(other_tiny_model.config), pretrained=str(other_tiny_model.checkpoint),
                    settings=_settings(pg_url)) as writer:
            writer.add(None, reembed=True)
        hit = server.search(text, k=1)[0]  # the new model's vectors, queried with the new model
        assert server.spec.pretrained == str(other_tiny_model.checkpoint)
        assert hit.text == text and hit.score == pytest.approx(1.0, abs=1e-4)
    manifest = json.loads((server_folder / "manifest.json").read_text())
    assert manifest["model"]["pretrained"] == str(other_tiny_model.checkpoint)


def test_capture_filters_run_in_sql_on_postgres(tmp_path, tiny_model, pg_url, pg_server):
    """The photo-metadata filters of issue 18 on a PostgreSQL catalogue: camera names without
    ASCII case (SQLite's NOCASE columns become lower() there), dates and places, in SQL (the
    in-memory filter columns are SQLite's) — the same hits as the same library on SQLite; and
    with --vectors pgvector, where they are inside the vector search's statement."""
    from conftest import new_database
    from test_photo_metadata import photo

    lib = tmp_path / "lib"
    photo(lib / "paris.jpg", 1, taken="2023:06:01 10:00:00", make="Google", model="Pixel 7", gps=(48.8584, 2.2945))
    photo(lib / "sydney.jpg", 2, taken="2019:02:03 04:05:06", make="Canon", model="Canon EOS R5",
          gps=(-33.8568, 151.2153))
    photo(lib / "plain.jpg", 3)
    found = {}
    for name, db in (("postgres", pg_url), ("sqlite", None), ("pgvector", new_database(pg_server))):
        with Engine(tmp_path / f"idx-{name}", model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint),
                    db=db) as engine:
            engine.add([lib], vectors="pgvector" if name == "pgvector" else None)

            def paths(**filters):
                return {hit.path.rsplit("/", 1)[1] for hit in engine.search("anything", k=10, **filters)}

            found[name] = [paths(camera="pixel 7"), paths(camera="GOOGLE PIXEL 7"), paths(camera="canon"),
                           paths(after="2020"), paths(before="2020"), paths(near="48.85,2.29,5"),
                           paths(camera="Pixel 7", near="-33.86,151.21,10")]
    assert found["postgres"] == found["sqlite"] == found["pgvector"]
    assert not (tmp_path / "idx-postgres" / "mmsearch.db").exists()  # no SQLite file made beside it
    assert found["postgres"][:3] == [{"paris.jpg"}, {"paris.jpg"}, {"sydney.jpg"}]
    assert found["postgres"][5:] == [{"paris.jpg"}, set()]
