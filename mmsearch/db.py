"""SQLite schema (SQLAlchemy 2 ORM) and connection setup.

The database is the source of truth of an index: item rows *and* their embeddings live here,
and every write transaction bumps a generation counter. The FAISS file is derived from it (see
``mmsearch.vectors``): a reader that finds the FAISS file older than the database replays the
rows changed since (``items.gen``) and the deletions since (``tombstones``).
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
    select,
)
from sqlalchemy.engine import Engine as SAEngine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from .fsutil import path_from_db, path_to_db


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class FsPath(TypeDecorator):
    """A file path: TEXT in SQLite, with undecodable names stored reversibly (``fsutil.path_to_db``)."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return path_to_db(value) if isinstance(value, str) else value

    def process_result_value(self, value, dialect):
        return path_from_db(value) if isinstance(value, str) else value


class Item(Base):
    """One searchable thing: an image file, a text file, or one line of a JSONL file."""

    __tablename__ = "items"
    __table_args__ = (
        UniqueConstraint("path", "locator", name="uq_items_path_locator"),
        Index("ix_items_hash_modality", "content_hash", "modality"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(FsPath, index=True)
    # Position inside the file: "" for whole files, the 1-based line number for JSONL lines.
    locator: Mapped[str] = mapped_column(String(32), default="")
    modality: Mapped[str] = mapped_column(String(8), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    content_hash: Mapped[str] = mapped_column(String(64))
    width: Mapped[int | None] = mapped_column(Integer, nullable=True)
    height: Mapped[int | None] = mapped_column(Integer, nullable=True)
    text: Mapped[str | None] = mapped_column(Text, nullable=True)
    meta: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # Generation of the last change to this item's vector.
    gen: Mapped[int] = mapped_column(BigInteger, index=True)

    embedding: Mapped[Embedding] = relationship(
        back_populates="item", cascade="all, delete-orphan", passive_deletes=True, uselist=False
    )


class Embedding(Base):
    """The L2-normalised float32 vector of an item (kept here so FAISS can always be rebuilt)."""

    __tablename__ = "embeddings"

    item_id: Mapped[int] = mapped_column(
        ForeignKey("items.id", ondelete="CASCADE"), primary_key=True
    )
    vector: Mapped[bytes] = mapped_column(LargeBinary)

    item: Mapped[Item] = relationship(back_populates="embedding")


class Tombstone(Base):
    """An item id deleted at a generation, until every FAISS file has caught up with it."""

    __tablename__ = "tombstones"

    item_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    gen: Mapped[int] = mapped_column(BigInteger, index=True)


class Root(Base):
    """A folder or file the user asked to index; `mmsearch index` with no path refreshes these."""

    __tablename__ = "roots"

    path: Mapped[str] = mapped_column(FsPath, primary_key=True)
    added_at: Mapped[datetime] = mapped_column(default=utcnow)
    indexed_at: Mapped[datetime | None] = mapped_column(nullable=True)
    # How the root was scanned, so a bare `mmsearch index` scans it the same way again:
    # {"exclude": [globs], "hidden": bool, "follow_links": bool, "link_targets": [real paths
    # reached through symlinks that lead outside the root, when follow_links]}.
    options: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class Meta(Base):
    """Key/value state that must change atomically with the rows (generation counters)."""

    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


GENERATION = "generation"
# Tombstones up to this generation have been deleted; a reader whose vectors are older must
# reload the FAISS file instead of replaying deletions.
PURGED_THROUGH = "tombstones_purged_through"
# The model identity and vector dimension (JSON), mirroring the manifest's, written in the same
# transactions that make the vectors belong to that model.
MODEL_KEY = "model"


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
    cursor.close()


def _begin(conn) -> None:
    conn.exec_driver_sql("BEGIN")


def make_engine(db_path: Path) -> SAEngine:
    engine = create_engine(f"sqlite:///{db_path}", future=True)
    event.listen(engine, "connect", _set_pragmas)
    event.listen(engine, "begin", _begin)
    return engine


# Columns added after schema version 1 was first released: (table, column, SQL type). Databases
# created before get them on open (``upgrade_schema``); new ones have them from the start.
_ADDED_COLUMNS = (("roots", "options", "JSON"),)


def upgrade_schema(engine: SAEngine) -> None:
    """Add columns that databases written by earlier releases lack (idempotent, one transaction)."""
    with engine.begin() as conn:
        for table, column, kind in _ADDED_COLUMNS:
            present = {row[1] for row in conn.exec_driver_sql(f"PRAGMA table_info({table})")}
            if column not in present:
                conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")


def create_schema(engine: SAEngine) -> None:
    Base.metadata.create_all(engine)
    with Session(engine) as session, session.begin():
        for key in (GENERATION, PURGED_THROUGH):
            if session.get(Meta, key) is None:
                session.add(Meta(key=key, value="0"))


def get_int(session: Session, key: str) -> int:
    value = session.scalar(select(Meta.value).where(Meta.key == key))
    return int(value) if value is not None else 0


def set_int(session: Session, key: str, value: int) -> None:
    row = session.get(Meta, key)
    if row is None:
        session.add(Meta(key=key, value=str(value)))
    else:
        row.value = str(value)


def get_text(session: Session, key: str) -> str | None:
    return session.scalar(select(Meta.value).where(Meta.key == key))


def set_text(session: Session, key: str, value: str) -> None:
    row = session.get(Meta, key)
    if row is None:
        session.add(Meta(key=key, value=value))
    else:
        row.value = value


def next_generation(session: Session) -> int:
    """Bump and return the generation inside the caller's write transaction."""
    gen = get_int(session, GENERATION) + 1
    set_int(session, GENERATION, gen)
    return gen
