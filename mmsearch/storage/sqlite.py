"""SQLite specifics of the catalogue: the connection, its pragmas, transactions, page size,
schema upgrades and the integrity check. A PostgreSQL catalogue is a sibling of this module."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine as SAEngine

from .schema import ADDED_COLUMNS, ADDED_INDEXES, Base

DB_FILE = "mmsearch.db"
# What SQLite keeps beside the database file (all of it belongs to the index).
DB_FILES = (DB_FILE, f"{DB_FILE}-wal", f"{DB_FILE}-shm", f"{DB_FILE}-journal")
# Page cache per connection, KiB (SQLite's default is 2 MiB). It fills only with pages read, so a
# small index costs nothing more; at 1M documents a hybrid query reads the full-text index's
# common words and thousands of rows, and keeping those hot pages in the process cut hybrid +
# late fusion from 1.42x to 1.35x the vector-only p50 (scripts/bench_fusion.py, BENCHMARKS.md).
PAGE_CACHE_KIB = 65536


def _set_pragmas(dbapi_connection, _record) -> None:
    # Python's sqlite3 only opens a transaction before writes, so without this each SELECT of a
    # "read transaction" would see whatever was committed at that moment. mmsearch emits BEGIN
    # itself (``_begin``): a session's reads all come from one snapshot.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # WAL: readers see the last committed state while a writer works; FULL sync: a commit that
    # returned survives a crash or power loss.
    # 16 KiB pages: a 2 KiB embedding row fits once in a 4 KiB page but seven times in 16 KiB,
    # so the database takes ~2.3 KB per item instead of ~4.1 KB. Only takes effect when the file
    # is created (before WAL mode is set); existing databases keep their page size.
    cursor.execute("PRAGMA page_size=16384")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=60000")
    cursor.execute(f"PRAGMA cache_size=-{PAGE_CACHE_KIB}")
    cursor.close()


def _begin(conn) -> None:
    conn.exec_driver_sql("BEGIN")


def connect(db_path: Path) -> SAEngine:
    """An SQLAlchemy engine for the SQLite database at ``db_path`` (snapshot reads, WAL)."""
    engine = create_engine(f"sqlite:///{db_path}", future=True)
    event.listen(engine, "connect", _set_pragmas)
    event.listen(engine, "begin", _begin)
    return engine


def read_engine(engine: SAEngine) -> SAEngine:
    """The engine readers use: the same one (``_begin`` makes each session one snapshot)."""
    return engine


def after_explicit_ids(session) -> None:
    """Nothing to do: SQLite's next id follows the largest one present."""


def upgrade_schema(engine: SAEngine) -> None:
    """Add columns that databases written by earlier releases lack (idempotent, one transaction)."""
    with engine.begin() as conn:
        for table, column, kind in ADDED_COLUMNS:
            present = {row[1] for row in conn.exec_driver_sql(f"PRAGMA table_info({table})")}
            if column not in present:
                conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        for table in Base.metadata.sorted_tables:
            for index in table.indexes:
                if index.name in ADDED_INDEXES:
                    index.create(conn, checkfirst=True)


def integrity_errors(engine: SAEngine) -> list[str]:
    """SQLite's own quick check: [] when the file is sound, else its complaints."""
    with engine.connect() as conn:
        result = [row[0] for row in conn.execute(text("PRAGMA quick_check"))]
    return [] if result == ["ok"] else result
