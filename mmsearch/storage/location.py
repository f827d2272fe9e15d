"""Where an index folder's catalogue lives: its own SQLite file, or a PostgreSQL database.

An index folder always holds the manifest and the vector index file. Its catalogue is either
``mmsearch.db`` beside them (the default) or a PostgreSQL database that several machines share;
then the folder is that machine's local cache of the database (manifest and vectors brought up to
date by generation, as ever) and remembers the database's URL in ``database.json``, *without*
its password (which comes from the URL given again, ``MMSEARCH_DB``, ``PGPASSWORD`` or
``~/.pgpass``). A new folder for a database that already holds a catalogue is *attached*: its
manifest is rebuilt from the model identity the catalogue records, and the vectors from its rows.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from filelock import FileLock, Timeout

from ..errors import NotAnIndexError
from ..fsutil import atomic_write_json
from . import manifest as mf
from . import postgres
from .catalogue import Catalogue
from .sqlite import DB_FILE

LINK_FILE = "database.json"
LOCK_FILE = ".lock"  # the folder's writer lock (``store.writer_lock``)


def linked_url(folder: Path) -> str | None:
    """The URL (without password) of the database whose cache ``folder`` is, or None."""
    try:
        data = json.loads((Path(folder) / LINK_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise NotAnIndexError(f"{Path(folder) / LINK_FILE} is unreadable ({exc}); it names the index's database") from exc
    url = data.get("url") if isinstance(data, dict) else None
    if not isinstance(url, str) or not postgres.is_url(url):
        raise NotAnIndexError(f"{Path(folder) / LINK_FILE} names no PostgreSQL database")
    return url


def resolve(folder: Path, db: str | None) -> str | None:
    """The URL of ``folder``'s catalogue (None: its own SQLite file). ``db``: the database asked
    for (``--db`` / ``MMSEARCH_DB``), which must be the one a linked folder names."""
    folder = Path(folder)
    linked = linked_url(folder)
    if db is None:
        return linked
    postgres.parse(db)
    if linked is not None and not postgres.same_database(linked, db):
        raise NotAnIndexError(f"{folder} is the local copy of {linked}, not of {postgres.redact(db)}; "
                              f"choose another --index folder")
    if linked is None and (folder / DB_FILE).is_file():
        raise NotAnIndexError(f"{folder} holds an SQLite index, not one in {postgres.redact(db)}: copy it there with "
                              f"`mmsearch migrate --index {folder} --to URL`, or leave out --db")
    return db


def has_catalogue(folder: Path) -> bool:
    """True when ``folder`` holds an SQLite database or names a PostgreSQL one."""
    return (Path(folder) / DB_FILE).is_file() or (Path(folder) / LINK_FILE).is_file()


def link(folder: Path, url: str) -> None:
    """Remember in ``folder`` that its catalogue is the database at ``url`` (never its password)."""
    atomic_write_json(Path(folder) / LINK_FILE, {"url": postgres.redact(url)})


def catalogue(folder: Path, url: str | None) -> Catalogue:
    return Catalogue.postgres(url) if url else Catalogue.sqlite(Path(folder) / DB_FILE)


def attach(folder: Path, url: str) -> bool:
    """Make ``folder`` this machine's copy of the catalogue at ``url`` when that catalogue was
    ever indexed and the folder has no manifest yet: link it and write the manifest from the model
    identity the catalogue records. False when there is nothing to attach to."""
    folder = Path(folder)
    if (folder / mf.MANIFEST).is_file():
        return False
    resolve(folder, url)
    cat = Catalogue.postgres(url)
    try:
        if not cat.has_tables():
            return False
        with cat.read() as r:
            recorded = r.recorded_model() if r.ever_indexed() else None
    finally:
        cat.close()
    if recorded is None:
        return False
    folder.mkdir(parents=True, exist_ok=True)
    link(folder, url)
    mf.write_manifest(folder, mf.rebuilt(folder, recorded))
    return True


@contextmanager
def database_lock(folder: Path, db: str | None, wait: float) -> Iterator[None]:
    """The writer lock held in the database itself when ``folder``'s catalogue is PostgreSQL
    (an advisory lock: one writer across every machine); nothing for SQLite, whose folder lock
    is the writer lock."""
    url = resolve(folder, db)
    with (postgres.advisory_lock(url, wait, f" (index folder {folder})") if url else nullcontext()):
        yield


# -- following a model change made on another machine ----------------------------------------------
# How often a long-lived reader (a server) asks the database whether another machine moved the
# shared index to another model (`mmsearch index --reembed`); its own manifest cannot tell it.
MODEL_CHECK_SECONDS = 1.0


def model_moved(store, force: bool = False) -> bool:
    """True when the shared catalogue of ``store`` records another model or dimension than the
    folder's manifest (at most one question to the database per MODEL_CHECK_SECONDS)."""
    now = time.monotonic()
    if store.db is None or (not force and now - store.model_checked < MODEL_CHECK_SECONDS):
        return False
    store.model_checked = now
    with store.read() as r:
        recorded = r.recorded_model()
    if recorded is None:
        return False
    return (recorded["model"].get("fingerprint"), recorded.get("dim")) != \
        (store.manifest["model"].get("fingerprint"), store.manifest.get("dim"))


def follow_model(store) -> dict:
    """The folder's manifest rebuilt from the model the shared catalogue records (this machine's
    manifest is a cache of it), written when no writer holds the folder; returns it."""
    with store.read() as r:
        recorded = r.recorded_model()
    manifest = mf.rebuilt(store.folder, recorded)
    lock = FileLock(str(store.folder / LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except (Timeout, OSError):
        return manifest  # a writer works in this folder: it writes the manifest itself
    try:
        mf.write_manifest(store.folder, manifest)
    except OSError:
        pass  # kept in memory; the next open rebuilds it again
    finally:
        lock.release()
    return manifest
