"""PostgreSQL specifics of the catalogue: the connection, snapshot reads, the writer's advisory
lock, schema upgrades, sequences, and one clear line for each way a server can refuse us.

A sibling of ``sqlite.py``: the catalogue (``catalogue.py``) and its tables (``schema.py``) are the
same for both; only what differs lives here. URLs are SQLAlchemy's, with the psycopg 3 driver:
``postgresql+psycopg://user@host:5432/dbname`` (a plain ``postgresql://`` gets psycopg too).
Passwords come from the URL given on the command line or in ``MMSEARCH_DB``, or from libpq's own
``PGPASSWORD`` / ``~/.pgpass``; mmsearch never writes one to a file.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.engine import Engine as SAEngine
from sqlalchemy.exc import ArgumentError, DBAPIError

from ..errors import CatalogueDatabaseError, IndexLockedError
from .schema import ADDED_COLUMNS

SCHEMES = ("postgresql", "postgresql+psycopg")
# The key of the writer's advisory lock: one catalogue per database, so one constant key
# (the first 8 bytes of a hash of a fixed name, as a signed 64-bit integer).
WRITER_LOCK_KEY = int.from_bytes(hashlib.sha256(b"mmsearch writer").digest()[:8], "big", signed=True)
# How often a waiting writer asks again for the lock.
LOCK_POLL_SECONDS = 0.2
# Seconds a connection attempt may take before it counts as unreachable.
CONNECT_TIMEOUT = 10

# SQLSTATE codes and what they mean to a user (errors.CatalogueDatabaseError's one line).
_STATES = {
    "3D000": "the database does not exist (create it with `createdb`, or check the name in the URL)",
    "28000": "the server refused this user (check the user name and pg_hba.conf)",
    "28P01": "the password was not accepted (give it in the URL, MMSEARCH_DB, PGPASSWORD or ~/.pgpass)",
    "42501": "the user lacks a privilege it needs (it must be able to create tables in the database, "
             "or at least read and write mmsearch's tables)",
    "0A000": "the server lacks a feature mmsearch needs",
    "58P01": "the pgvector extension is not installed on the server",
    "53300": "the server has too many connections",
    "57P03": "the server is starting up or shutting down",
}


def is_url(value: str | None) -> bool:
    """True when ``value`` is a PostgreSQL URL (an SQLite index is a folder, never a URL)."""
    return bool(value) and value.split("://", 1)[0] in SCHEMES and "://" in value


def parse(url: str) -> URL:
    """The SQLAlchemy URL of ``url`` with the psycopg 3 driver (CatalogueDatabaseError when it is
    not a PostgreSQL URL)."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise CatalogueDatabaseError(f"{redact(url)} is not a database URL (expected postgresql+psycopg://USER@HOST/DB)") from exc
    if parsed.drivername not in SCHEMES:
        raise CatalogueDatabaseError(
            f"{redact(url)}: only PostgreSQL through psycopg 3 is supported (postgresql+psycopg://USER@HOST/DB)")
    if not parsed.database:
        raise CatalogueDatabaseError(f"{redact(url)} names no database (postgresql+psycopg://USER@HOST/DB)")
    return parsed.set(drivername="postgresql+psycopg")


def redact(url: str | URL) -> str:
    """``url`` without its password: what may be shown, logged or written to a file."""
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except ArgumentError:
        return "<unparsable URL>"
    return parsed._replace(password=None).render_as_string(hide_password=False)  # (set() ignores None)


def same_database(a: str, b: str) -> bool:
    """True when two URLs name the same database (passwords and driver aside)."""
    pa, pb = make_url(a), make_url(b)
    def key(u: URL) -> tuple:
        return (u.username, u.host, u.port or 5432, u.database, tuple(sorted((u.query or {}).items())))

    return key(pa) == key(pb)


def server_error(exc: BaseException, where: str) -> str | None:
    """One line (``describe``) for a PostgreSQL server's refusal that reached a caller unnamed (a
    connection lost mid-command, a privilege missing on one table); None for any other exception,
    so callers outside storage need not know the database driver's error types."""
    if not isinstance(exc, DBAPIError) or not type(exc.orig).__module__.startswith("psycopg"):
        return None
    return describe(exc, where)


def describe(exc: BaseException, url: str) -> str:
    """One line saying why the database at ``url`` cannot be used."""
    orig = getattr(exc, "orig", exc)
    state = getattr(orig, "sqlstate", None)
    first = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    where = redact(url) if is_url(url) else url
    if state in _STATES:
        if state == "0A000" and "vector" in first:
            return f"cannot use {where}: the pgvector extension is not available on the server ({first})"
        return f"cannot use {where}: {_STATES[state]} ({first})"
    low = first.lower()
    reason = first.split("FATAL:", 1)[-1].strip()  # libpq's "connection to server ... failed: FATAL: why"
    if "database" in low and "does not exist" in low:
        return f"cannot use {where}: {_STATES['3D000']} ({reason})"
    if "password authentication failed" in low or "no password supplied" in low:
        return f"cannot use {where}: {_STATES['28P01']} ({reason})"
    if "role" in low and "does not exist" in low or "no pg_hba.conf entry" in low:
        return f"cannot use {where}: {_STATES['28000']} ({reason})"
    if "refused" in low or "no such file or directory" in low or "could not translate host" in low or "timeout" in low:
        return f"cannot reach the database server of {where}: {reason} (is PostgreSQL running there?)"
    return f"cannot use {where}: {reason}"


def connect(url: str) -> SAEngine:
    """An SQLAlchemy engine for the PostgreSQL database at ``url``, checked by connecting once
    (CatalogueDatabaseError with the reason when that fails)."""
    try:
        engine = create_engine(parse(url), future=True, pool_pre_ping=True,
                               connect_args={"connect_timeout": CONNECT_TIMEOUT, "application_name": "mmsearch"})
    except ImportError as exc:
        raise CatalogueDatabaseError(f"PostgreSQL catalogues need psycopg 3: pip install 'mmsearch[postgres]' ({exc})") from None
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except DBAPIError as exc:
        engine.dispose()
        raise CatalogueDatabaseError(describe(exc, url)) from None
    return engine


def read_engine(engine: SAEngine) -> SAEngine:
    """The engine readers use: one REPEATABLE READ transaction per snapshot, so every statement
    of ``catalogue.read()`` sees the same committed state (PostgreSQL takes it at the first)."""
    return engine.execution_options(isolation_level="REPEATABLE READ")


def upgrade_schema(engine: SAEngine) -> None:
    """Add columns that catalogues written by earlier releases lack (idempotent, one transaction)."""
    with engine.begin() as conn:
        present = set(conn.execute(text(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = current_schema()")))
        for table, column, kind in ADDED_COLUMNS:
            # Only when missing: ALTER TABLE locks the table exclusively even when it changes nothing.
            if (table, column) not in present:
                kind = kind.replace(" COLLATE NOCASE", "").replace("DATETIME", "TIMESTAMP")  # SQLite's words
                conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {kind}")


def integrity_errors(engine: SAEngine) -> list[str]:
    """PostgreSQL keeps its own pages sound (WAL, checksums at initdb); nothing to check here
    beyond the rows, which ``mmsearch check`` compares itself."""
    return []


def after_explicit_ids(session) -> None:
    """Move the items' id sequence past ids inserted explicitly (bulk inserts, migrations), so the
    next ordinary insert gets a free id."""
    session.execute(text("SELECT setval(pg_get_serial_sequence('items', 'id'), "
                         "GREATEST((SELECT COALESCE(max(id), 0) FROM items), 1))"))


@contextmanager
def advisory_lock(url: str, wait: float = 0.0, what: str = "") -> Iterator[None]:
    """Hold the writer's advisory lock in the database at ``url`` for the block; ``wait`` seconds
    before giving up (-1: forever). The lock belongs to a connection of its own: if this process
    dies, the server ends the session and the lock with it, so a killed writer never leaves one."""
    engine = connect(url)
    try:
        conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        deadline = None if wait < 0 else time.monotonic() + wait
        while not conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": WRITER_LOCK_KEY}).scalar():
            if deadline is not None and time.monotonic() >= deadline:
                raise IndexLockedError(
                    f"another mmsearch process is writing to {redact(url)}{what}; wait for it to finish or "
                    f"pass --wait SECONDS")
            time.sleep(LOCK_POLL_SECONDS)
    except DBAPIError as exc:
        engine.dispose()
        raise CatalogueDatabaseError(describe(exc, url)) from None
    except BaseException:
        engine.dispose()
        raise
    try:
        yield
    finally:
        try:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": WRITER_LOCK_KEY})
            conn.close()
        except DBAPIError:
            pass  # the connection is gone, and the lock with it
        engine.dispose()
