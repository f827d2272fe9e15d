"""``mmsearch migrate``: copy an index's catalogue between SQLite and PostgreSQL, both ways.

Rows and vectors are copied as they are (ids kept, nothing re-encoded) in one write transaction
of the new catalogue, under the writer locks of both sides; the new folder's vector index is then
rebuilt from the copied embeddings, and ``mmsearch check`` verifies the result. Until the copy is
complete its catalogue says so (``IndexStore.create(copying_from=...)``), so a migrate that was
killed leaves a folder no command takes for an index (``UnfinishedCopyError``), and the same
migrate run again starts the copy over. The source is never changed. A ``--vectors pgvector``
index is copied with its blobs and gets a FAISS vector index; a copy into the pgvector layout is
not offered (index into a new database with ``--vectors pgvector`` instead).

    migrate("indexes/photos", "postgresql+psycopg://me@db/photos")          # SQLite -> PostgreSQL
    migrate("indexes/photos", "indexes/photos-local", source_db=URL)        # PostgreSQL -> SQLite
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .check import CheckReport, check_folder
from .errors import NotAnIndexError
from .fsutil import printable_path
from .settings import Settings, database_cache_folder
from .storage import AUTO, IndexStore, VectorSettings, location, postgres, writer_lock
from .storage.store import unfinished_copy

# What is copied, in this order (items before the embeddings that refer to them).
TABLES = ("roots", "items", "embeddings")


@dataclass
class MigrateReport:
    source: str  # the source folder, and its database when PostgreSQL
    target: str  # the new index folder
    database: str  # the new catalogue: "sqlite" or the URL without password
    rows: dict[str, int]
    check: CheckReport

    @property
    def ok(self) -> bool:
        return self.check.ok

    def as_dict(self) -> dict[str, Any]:
        return {"source": printable_path(self.source), "target": printable_path(self.target),
                "database": self.database, "rows": self.rows, "ok": self.ok, "check": self.check.as_dict()}


def migrate(source: str | Path, to: str | Path, *, source_db: str | None = None, target: str | Path | None = None,
            settings: Settings | None = None, wait: float = 0.0) -> MigrateReport:
    """Copy the index in ``source`` (its catalogue at ``source_db`` when PostgreSQL) to ``to``: a
    PostgreSQL URL (the new folder is ``target``, by default this machine's cache folder of that
    database) or a folder for a new SQLite index. The new catalogue must be empty."""
    s = settings or Settings.from_env()
    vector_settings = VectorSettings(s.flat_max, s.nlist, s.nprobe, s.rerank, s.faiss_gpu)
    to_db = str(to) if postgres.is_url(str(to)) else None
    if to_db is None and target is not None:
        raise NotAnIndexError("--to-index is for a PostgreSQL --to; for SQLite, --to is the new folder")
    folder = Path(target if target is not None else database_cache_folder(to_db) if to_db else to).expanduser().absolute()
    src = IndexStore.open(source, vector_settings, db=source_db)
    source_name = str(src.folder) + (f" ({postgres.redact(src.db)})" if src.db else "")
    try:
        if to_db is not None and src.db is not None and postgres.same_database(src.db, to_db):
            raise NotAnIndexError(f"{postgres.redact(to_db)} already is this index's catalogue: nothing to migrate")
        if folder == src.folder:
            raise NotAnIndexError(f"{folder} is the source index: choose another folder for the copy")
        _check_target(folder, to_db)  # before anything is created
        existed = folder.exists()
        rows = dict.fromkeys(TABLES, 0)
        with src.writer_lock(wait), writer_lock(folder, wait, to_db):
            # Again under the target's lock: a copy another migrate made meanwhile is an index.
            if _check_target(folder, to_db):  # a migrate into it was killed: start over
                IndexStore.remove_own_files(folder, remove_folder=False)  # (PostgreSQL rows: in the copy's transaction)
            dst = IndexStore.create(folder, src.manifest["model"], src.dim, vector_settings, db=to_db,
                                    copying_from=printable_path(source_name))
            try:
                with src.read() as reader, dst.write() as writer:
                    writer.clear_copied_rows()  # an unfinished copy's rows, in PostgreSQL
                    for table in TABLES:
                        for chunk in reader.table_chunks(table):
                            writer.copy_rows(table, chunk)
                            rows[table] += len(chunk)
                # A pgvector index's blobs are complete: its copy gets a FAISS index of the usual kind.
                dst.fit_vectors(AUTO if src.in_pgvector else src.requested_index_type, force=True)
                dst.update_manifest()
                with dst.write() as w:  # the copy is complete: it is an index from now on
                    w.copy_finished()
            except BaseException:
                dst.close()
                IndexStore.remove_own_files(folder, remove_folder=not existed)
                raise
            dst.close()
    finally:
        src.close()
    check = check_folder(folder, settings=s.but(db=to_db, index=None))
    return MigrateReport(source_name, str(folder), postgres.redact(to_db) if to_db else "sqlite", rows, check)


def _check_target(folder: Path, to_db: str | None) -> bool:
    """Raise unless ``folder`` (and ``to_db``) can take the copy: new, or what a migrate or a first
    indexing run left unfinished. True when it holds an unfinished copy, to be started over."""
    if unfinished_copy(folder, to_db) is not None:
        return True
    if IndexStore.is_index(folder):
        raise NotAnIndexError(f"{folder} already holds an index: migrate into a new folder")
    if to_db is not None and _holds_an_index(to_db):
        raise NotAnIndexError(f"{postgres.redact(to_db)} already holds an mmsearch index: migrate into an empty database")
    IndexStore.check_creatable(folder)
    return False


def _holds_an_index(url: str) -> bool:
    """True when the database at ``url`` holds a catalogue that was ever indexed (and is not a
    copy a killed migrate left unfinished)."""
    cat = location.catalogue(Path("."), url)
    try:
        if not cat.has_tables():
            return False
        with cat.read() as r:
            return r.ever_indexed() and r.unfinished_copy() is None
    finally:
        cat.close()

