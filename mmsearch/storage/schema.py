"""The catalogue's tables (SQLAlchemy 2 ORM), the same for every database it runs on.

The database is the source of truth of an index: item rows *and* their embeddings live here,
and every transaction that changes vectors bumps a generation counter. The vector index file
is derived from it (see ``storage.store``): a reader whose file is older than the database
replays the rows changed since (``items.gen``) and the deletions since (``tombstones``).
Only the ``storage`` package imports this module.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from ..fsutil import path_from_db, path_to_db


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class FsPath(TypeDecorator):
    """A file path: text, with undecodable names stored reversibly (``fsutil.path_to_db``)."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return path_to_db(value) if isinstance(value, str) else value

    def process_result_value(self, value, dialect):
        return path_from_db(value) if isinstance(value, str) else value


NOCASE_NAME = String(64).with_variant(String(64, collation="NOCASE"), "sqlite")


class Item(Base):
    """One searchable thing: an image file, a text file, or one line of a JSONL file."""

    __tablename__ = "items"
    __table_args__ = (
        UniqueConstraint("path", "locator", name="uq_items_path_locator"),
        Index("ix_items_hash_modality", "content_hash", "modality"),
        # Search filters (``storage.filtering``): a date range reads the taken_at range, and for
        # items without a capture date (taken_at NULL) the mtime_ns range, from this one index.
        Index("ix_items_taken", "taken_at", "mtime_ns"),
        Index("ix_items_camera_make", "camera_make"),
        Index("ix_items_camera_model", "camera_model"),
        Index("ix_items_place", "lat", "lon"),
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
    # When, where and with what it was taken (``media.exif``): a capture date from EXIF or the
    # video container (NULL: the file's mtime stands in, derived at query time), camera (compared
    # case-insensitively), GPS position in decimal degrees.
    taken_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    date_source: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # Compared without ASCII case: SQLite's NOCASE collation (so its indexes serve the filter);
    # other databases compare lower() (``storage.filtering``).
    camera_make: Mapped[str | None] = mapped_column(NOCASE_NAME, nullable=True)
    camera_model: Mapped[str | None] = mapped_column(NOCASE_NAME, nullable=True)
    lat: Mapped[float | None] = mapped_column(Float, nullable=True)
    lon: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Generation of the last change to this item's vector.
    gen: Mapped[int] = mapped_column(BigInteger, index=True)

    embedding: Mapped[Embedding] = relationship(
        back_populates="item", cascade="all, delete-orphan", passive_deletes=True, uselist=False
    )


class Embedding(Base):
    """The L2-normalised float32 vector of an item (kept here so the vector index can always be rebuilt)."""

    __tablename__ = "embeddings"

    item_id: Mapped[int] = mapped_column(
        ForeignKey("items.id", ondelete="CASCADE"), primary_key=True
    )
    vector: Mapped[bytes] = mapped_column(LargeBinary)

    item: Mapped[Item] = relationship(back_populates="embedding")


class Tombstone(Base):
    """An item id deleted at a generation, until every vector index file has caught up with it."""

    __tablename__ = "tombstones"

    item_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    gen: Mapped[int] = mapped_column(BigInteger, index=True)


class Root(Base):
    """A folder or file the user asked to index; `mmsearch index` with no path refreshes these."""

    __tablename__ = "roots"

    path: Mapped[str] = mapped_column(FsPath, primary_key=True)
    added_at: Mapped[datetime] = mapped_column(default=utcnow)
    indexed_at: Mapped[datetime | None] = mapped_column(nullable=True)
    # How the root is scanned (``library.LibraryRoot.options``), so a bare `mmsearch index`
    # scans it the same way again.
    options: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class Meta(Base):
    """Key/value state that must change atomically with the rows (generation counters, model)."""

    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


GENERATION = "generation"
# Tombstones up to this generation have been deleted; a reader whose vectors are older must
# reload the vector index file instead of replaying deletions.
PURGED_THROUGH = "tombstones_purged_through"
# The model identity and vector dimension (JSON), mirroring the manifest's, written in the same
# transactions that make the vectors belong to that model.
MODEL_KEY = "model"
# Set while ``mmsearch migrate`` copies rows into this catalogue (the source it copies), from
# before the manifest makes the folder an index until the copy is complete: a half copy is never
# taken for an index, and the same migrate run again starts it over.
UNFINISHED_COPY = "unfinished_copy"

# Columns added after schema version 1 was first released: (table, column, SQL type). Databases
# created before get them on open; new ones have them from the start.
ADDED_COLUMNS = (
    ("roots", "options", "JSON"),
    ("items", "taken_at", "DATETIME"),
    ("items", "date_source", "VARCHAR(16)"),
    ("items", "camera_make", "VARCHAR(64) COLLATE NOCASE"),
    ("items", "camera_model", "VARCHAR(64) COLLATE NOCASE"),
    ("items", "lat", "FLOAT"),
    ("items", "lon", "FLOAT"),
)
# Indexes added after schema version 1 was first released (on the tables above): created on open
# when missing, from their definitions in the tables.
ADDED_INDEXES = ("ix_items_taken", "ix_items_camera_make", "ix_items_camera_model", "ix_items_place")
