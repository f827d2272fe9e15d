"""The catalogue: every item, its vector, the roots and the generation counter, in a database.

Its ``Reader`` and ``Writer`` are the only way into the database from outside the storage
package: every query of a concern is one of their methods, whose SQL lives here or in the
concern's module below (``lexical``: full text, ``filtering``: filters and capture metadata,
``documents``: a document's parts and plain rows, ``calibration``, ``pgvector``: vectors in
PostgreSQL), each taking the transaction's session. Reads happen in one snapshot
(``with catalogue.read() as r:``): everything read there belongs to one committed state. Writes
happen in one transaction (``with catalogue.write() as w:``) that holds *the write rule*: the
first change to any vector bumps the generation once, every changed row carries it, every
deleted item leaves a tombstone carrying it, and the writer keeps a list of the vector changes
so that the store can mirror them into its vector index once the transaction has committed
(``storage.store.IndexStore.write``).

Rows leave it as plain dataclasses (``rows.ItemRow``, ``ExistingItem``, ``RootRow``), never as
ORM objects. Database specifics live beside it: SQLite's pragmas and BEGIN in ``sqlite.py``,
PostgreSQL's connection, snapshot isolation and advisory lock in ``postgres.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import delete, func, insert, inspect, select, update
from sqlalchemy.engine import Engine as SAEngine
from sqlalchemy.exc import DatabaseError, OperationalError
from sqlalchemy.orm import Session

from . import calibration, documents, filtering, pgvector, postgres, sqlite
from .documents import Place
from .lexical import LexicalIndex, lexical_index
from .rows import (CAPTURE_COLUMNS, EMBEDDING_CHUNK, IN_CHUNK, ExistingItem, ItemRow, NewRow, RootRow, get_int,
                   get_text, row_of, set_text, under, usable_rows)
from .schema import (GENERATION, MODEL_KEY, PURGED_THROUGH, UNFINISHED_COPY, Base, Embedding, Item, Meta, Root,
                     Tombstone, utcnow)

if TYPE_CHECKING:  # (annotations only: the search filters are the filtering module's to read)
    from ..filters import Filters

# The errors a database raises for what mmsearch reports as unreadable or unwritable.
DATABASE_ERRORS = (OperationalError, DatabaseError)


# -- the catalogue -------------------------------------------------------------------------------------
class Catalogue:
    """Items, vectors, roots and counters in one database (SQLite by default, or PostgreSQL).

    ``dialect``: the module of the database's specifics (``sqlite`` or ``postgres``)."""

    def __init__(self, engine: SAEngine, dialect=sqlite):
        self.engine = engine
        self.dialect = dialect
        self._read_engine = dialect.read_engine(engine)
        self._pgvector: bool | None = None if dialect is postgres else False

    @classmethod
    def sqlite(cls, db_path) -> Catalogue:
        return cls(sqlite.connect(db_path))

    @classmethod
    def postgres(cls, url: str) -> Catalogue:
        return cls(postgres.connect(url), postgres)

    def close(self) -> None:
        self.engine.dispose()

    # -- schema ------------------------------------------------------------------------------------
    def create_schema(self, model: dict, dim: int, vectors: str = pgvector.FAISS, *,
                      copying_from: str | None = None) -> None:
        """The tables, counters and model record; ``vectors``: ``pgvector`` keeps the vectors in
        a pgvector column too (PostgreSQL only; the extension is created in the same transaction
        as the tables, so a server without it leaves nothing behind). ``copying_from``: the
        catalogue is a copy ``migrate`` is about to make (``Writer.copy_finished`` clears it)."""
        with self.engine.begin() as conn:  # one transaction where DDL is transactional (PostgreSQL)
            Base.metadata.create_all(conn)
            if vectors == pgvector.PGVECTOR:
                pgvector.create(conn, dim)
        self._pgvector = vectors == pgvector.PGVECTOR
        with self.write() as w:
            for key in (GENERATION, PURGED_THROUGH):
                if w.session.get(Meta, key) is None:
                    w.session.add(Meta(key=key, value="0"))
            w.record_model(model, dim, vectors)
            if copying_from is not None:
                set_text(w.session, UNFINISHED_COPY, copying_from)
        self.lexical.ensure()

    @property
    def pgvector(self) -> bool:
        """True when the catalogue keeps its vectors in a pgvector column (``--vectors pgvector``,
        recorded with the model, so every machine opening it knows)."""
        if self._pgvector is None:
            with self.read() as r:
                recorded = r.recorded_model()
            self._pgvector = bool(recorded) and recorded.get("vectors") == pgvector.PGVECTOR
        return self._pgvector

    def upgrade_schema(self) -> None:
        self.dialect.upgrade_schema(self.engine)
        self.lexical.ensure()  # indexes from before the full-text index get it, filled

    @property
    def lexical(self) -> LexicalIndex:
        """The full-text index over items' words and names (kept in the write transaction)."""
        if getattr(self, "_lexical", None) is None:
            self._lexical = lexical_index(self.engine)
        return self._lexical

    def has_tables(self) -> bool:
        """Whether the database holds a catalogue's tables (a database ``migrate`` may copy into)."""
        return inspect(self.engine).has_table("meta")

    def integrity_errors(self) -> list[str]:
        return self.dialect.integrity_errors(self.engine)

    # -- transactions ------------------------------------------------------------------------------
    @contextmanager
    def read(self) -> Iterator[Reader]:
        """One snapshot: every read inside sees the same committed state."""
        with Session(self._read_engine, expire_on_commit=False) as session:
            yield Reader(session, self.lexical)

    @contextmanager
    def write(self) -> Iterator[Writer]:
        """One write transaction (committed when the block ends, rolled back if it raises)."""
        in_pgvector = self.pgvector
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield Writer(session, self.dialect, in_pgvector, self.lexical)


class Reader:
    """Queries against one snapshot of the catalogue: every read of a concern (items, vectors,
    full-text search, filters, documents, calibration) is a method here, so no code outside
    the storage package sees a session, a statement or a table."""

    def __init__(self, session: Session, lexical: LexicalIndex | None = None):
        self.session = session
        self.lexical = lexical if lexical is not None else lexical_index(session.get_bind())

    # -- full-text search (``lexical``) -------------------------------------------------------------
    def lexical_search(self, query: str, limit: int, every_word: bool = False) -> list[tuple[int, float]]:
        """(item id, score: higher is better) of the best ``limit`` full-text matches of
        ``query`` (``LexicalIndex.search``)."""
        return self.lexical.search(self.session, query, limit, every_word=every_word)

    def lexical_holding(self, terms: Sequence[str], ids: Sequence[int]) -> set[int]:
        """Those of ``ids`` whose words or names hold one of ``terms`` (``LexicalIndex.holding``)."""
        return self.lexical.holding(self.session, terms, ids)

    # -- filters (``filtering``) ------------------------------------------------------------------
    def passing_ids(self, filters: Filters, modality: str | None = None, prefixes: Sequence[str] | None = None,
                    cap: int | None = None) -> np.ndarray | None:
        """Ids of the items that pass ``filters`` (of ``modality``, under ``prefixes``),
        ascending; None when more than ``cap`` do."""
        return filtering.passing_ids(self.session, filters, modality, prefixes, cap)

    @staticmethod
    def sql_conditions(filters: Filters, modality: str | None = None, prefixes: Sequence[str] | None = None) -> list:
        """``filters`` (a modality, folders) as the conditions a pgvector search takes inside its
        one statement (``PgVectorIndex.search(conditions=...)``); opaque to callers."""
        return filtering.sql_conditions(filters, modality, prefixes)

    def capture_rows(self, modalities: Sequence[str], prefixes: Sequence[str] | None = None) -> list[tuple[int, str, str]]:
        """(id, path, modality) of the items of ``modalities`` (under ``prefixes``), by path."""
        return filtering.capture_rows(self.session, modalities, prefixes)

    # -- calibration (``calibration``) ------------------------------------------------------------
    def calibration(self) -> dict[str, Any] | None:
        """The stored score calibration (None: never measured, or unreadable)."""
        return calibration.load(self.session)

    def calibration_probes(self, fingerprint: str, dim: int) -> np.ndarray | None:
        """The probe vectors stored for the model ``fingerprint`` (None: none, or another model's)."""
        return calibration.load_probes(self.session, fingerprint, dim)

    def calibration_sample(self, modalities: tuple[str, ...], want: int, dim: int) -> np.ndarray:
        """About ``want`` vectors of items of ``modalities``, spread evenly over their ids."""
        return calibration.sample_vectors(self.session, modalities, want, dim)

    # -- documents and plain rows (``documents``) -------------------------------------------------
    def places_by_id(self, ids: Sequence[int], vectors: bool = False) -> dict[int, Place]:
        return documents.places_by_id(self.session, ids, vectors)

    def rows_by_id(self, ids: Sequence[int]) -> dict[int, ItemRow]:
        return documents.rows_by_id(self.session, ids)

    def images_by_hash(self, hashes: Iterable[str]) -> list[ItemRow]:
        return documents.images_by_hash(self.session, hashes)

    def vectors_by_id(self, ids: Sequence[int]) -> list[tuple[int, bytes]]:
        return documents.vectors_by_id(self.session, ids)

    def parts_of(self, keys: Iterable[tuple[str, str]], vectors: bool = False) -> dict[tuple[str, str], list[Place]]:
        return documents.parts_of(self.session, keys, vectors)

    def has_modality(self, modality: str) -> bool:
        return documents.has_modality(self.session, modality)

    def embedded_places(self, size: int = 50_000) -> Iterator[list[tuple[int, str, str, str]]]:
        return documents.embedded_places(self.session, size)

    # -- vectors in PostgreSQL (``pgvector``) -----------------------------------------------------
    def pgvector_has_index(self) -> bool:
        """Whether the pgvector HNSW index exists (a ``--vectors pgvector`` catalogue)."""
        return pgvector.has_index(self.session)

    # -- counters ----------------------------------------------------------------------------------
    def generation(self) -> int:
        return get_int(self.session, GENERATION)

    def purged_through(self) -> int:
        return get_int(self.session, PURGED_THROUGH)

    def recorded_model(self) -> dict[str, Any] | None:
        """{"model": identity, "dim": n} as the database records it (None for old indexes)."""
        raw = get_text(self.session, MODEL_KEY)
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            return None
        return data if isinstance(data, dict) and isinstance(data.get("model"), dict) else None

    def top_generation(self) -> int:
        """The highest generation any row or tombstone carries."""
        return max(self.session.scalar(select(func.max(Item.gen))) or 0,
                   self.session.scalar(select(func.max(Tombstone.gen))) or 0)

    # -- vectors -----------------------------------------------------------------------------------
    def changed_since(self, gen: int) -> list[int]:
        return list(self.session.scalars(select(Item.id).where(Item.gen > gen)))

    def deleted_since(self, gen: int) -> list[int]:
        return list(self.session.scalars(select(Tombstone.item_id).where(Tombstone.gen > gen)))

    def embeddings(self, ids: Sequence[int]) -> list[tuple[int, bytes]]:
        """(item id, vector blob) of those of ``ids`` that have one."""
        found: list[tuple[int, bytes]] = []
        ids = list(ids)
        for start in range(0, len(ids), IN_CHUNK):
            found.extend(tuple(row) for row in self.session.execute(
                select(Embedding.item_id, Embedding.vector).where(Embedding.item_id.in_(ids[start:start + IN_CHUNK]))))
        return found

    def embedding_chunks(self, size: int = EMBEDDING_CHUNK, modality: str | None = None) -> Iterator[list[tuple[int, bytes]]]:
        """Every (item id, vector blob) of the snapshot (of items of ``modality`` only, when
        given), in id order, ``size`` rows at a time."""
        last = 0
        while True:
            query = select(Embedding.item_id, Embedding.vector).where(Embedding.item_id > last)
            if modality is not None:
                query = query.join(Item, Item.id == Embedding.item_id).where(Item.modality == modality)
            rows = [tuple(row) for row in self.session.execute(query.order_by(Embedding.item_id).limit(size))]
            if not rows:
                return
            yield rows
            last = rows[-1][0]

    def embedding_count(self) -> int:
        return self.session.scalar(select(func.count()).select_from(Embedding)) or 0

    def embedding_sample(self, want: int, minimum: int) -> list[bytes]:
        """About ``want`` vector blobs spread evenly over the item ids (a training sample for an
        IVF); the first ``want`` when ids are too unevenly spread to give ``minimum`` that way."""
        total = self.embedding_count()
        step = max(1, total // max(1, want))
        rows = list(self.session.scalars(
            select(Embedding.vector).where(Embedding.item_id % step == 0).order_by(Embedding.item_id)))
        if len(rows) < min(total, minimum):
            rows = list(self.session.scalars(select(Embedding.vector).order_by(Embedding.item_id).limit(want)))
        return rows

    def vector_of(self, item_id: int) -> bytes | None:
        return self.session.scalar(select(Embedding.vector).where(Embedding.item_id == item_id))

    def vector_ids(self) -> set[int]:
        """Ids of items that have a vector."""
        return set(self.session.scalars(select(Embedding.item_id).join(Item, Item.id == Embedding.item_id)))

    def items_without_vector(self) -> list[int]:
        return list(self.session.scalars(
            select(Item.id).outerjoin(Embedding, Embedding.item_id == Item.id).where(Embedding.item_id.is_(None))
        ))

    def orphan_vectors(self) -> list[int]:
        return list(self.session.scalars(
            select(Embedding.item_id).outerjoin(Item, Item.id == Embedding.item_id).where(Item.id.is_(None))
        ))

    def vector_sources(self, keys: Iterable[tuple[str, str]], vector_bytes: int | None = None) -> dict[tuple[str, str], int]:
        """For (modality, content hash) pairs, an item that holds a vector of that content (of
        ``vector_bytes`` bytes when given: a damaged one is never copied)."""
        wanted = set(keys)
        hashes = sorted({h for _, h in wanted})
        found: dict[tuple[str, str], int] = {}
        for start in range(0, len(hashes), 500):
            query = (select(Item.modality, Item.content_hash, func.min(Item.id))
                     .join(Embedding, Embedding.item_id == Item.id)
                     .where(Item.content_hash.in_(hashes[start:start + 500])))
            if vector_bytes is not None:
                query = query.where(func.length(Embedding.vector) == vector_bytes)
            rows = self.session.execute(query.group_by(Item.modality, Item.content_hash))
            for modality, content_hash, item_id in rows:
                if (modality, content_hash) in wanted:
                    found[(modality, content_hash)] = item_id
        return found

    def rows_in_hash_ranges(self, modality: str, ranges: Iterable[tuple[str, str]],
                            skip_mtime: int | None = None) -> dict[tuple[str, str], list[ItemRow]]:
        """Items of ``modality`` holding a vector whose content hash lies in each ``(low, high)``
        range (``low <= hash < high``: the frames of a video), leaving out rows whose mtime is
        ``skip_mtime`` (a file not completely written), each range's rows of one path only."""
        found: dict[tuple[str, str], list[ItemRow]] = {}
        for low, high in ranges:
            query = (select(Item).join(Embedding, Embedding.item_id == Item.id)
                     .where(Item.modality == modality, Item.content_hash >= low, Item.content_hash < high)
                     .order_by(Item.path, Item.id))
            if skip_mtime is not None:
                query = query.where(Item.mtime_ns != skip_mtime)
            rows = [row_of(item) for item in self.session.scalars(query)]
            if rows:
                first = rows[0].path
                found[(low, high)] = [row for row in rows if row.path == first]
        return found

    def rows_with_vectors_of(self, path: str, modality: str) -> list[tuple[ItemRow, bytes]]:
        """Every item of ``modality`` in the file ``path`` with its vector blob (a video's frames)."""
        return [(row_of(item), blob) for item, blob in self.session.execute(
            select(Item, Embedding.vector).join(Embedding, Embedding.item_id == Item.id)
            .where(Item.path == path, Item.modality == modality))]

    # -- items -------------------------------------------------------------------------------------
    def item(self, item_id: int) -> ItemRow | None:
        item = self.session.get(Item, item_id)
        return row_of(item) if item is not None else None

    def items(self, ids: Sequence[int]) -> dict[int, ItemRow]:
        found: dict[int, ItemRow] = {}
        ids = list(ids)
        for start in range(0, len(ids), IN_CHUNK):
            for item in self.session.scalars(select(Item).where(Item.id.in_(ids[start:start + IN_CHUNK]))):
                found[item.id] = row_of(item)
        return found

    def item_ids(self) -> set[int]:
        return set(self.session.scalars(select(Item.id)))

    def ids_of_parts(self, parts: Sequence[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """The ids of the items at (path, locator), for those this catalogue holds; a locator of
        "" for a file of moments (a video) names its first moment."""
        found: dict[tuple[str, str], int] = {}
        for path, locator in dict.fromkeys(parts):
            item_id = self.session.scalar(select(Item.id).where(Item.path == path, Item.locator == locator)
                                          .order_by(Item.id).limit(1))
            if item_id is None and locator == "":
                item_id = self.session.scalar(select(Item.id).where(Item.path == path).order_by(Item.id).limit(1))
            if item_id is not None:
                found[(path, locator)] = item_id
        return found

    def item_count(self) -> int:
        return self.session.scalar(select(func.count()).select_from(Item)) or 0

    def modality_counts(self) -> dict[str, int]:
        return {modality: count for modality, count in
                self.session.execute(select(Item.modality, func.count()).group_by(Item.modality))}

    def file_count(self, modality: str) -> int:
        """How many files hold items of ``modality`` (videos: one file, many frames)."""
        return self.session.scalar(
            select(func.count(func.distinct(Item.path))).where(Item.modality == modality)) or 0

    def any_item_under(self, prefixes: Sequence[str]) -> bool:
        return self.session.scalar(select(Item.id).where(under(Item.path, prefixes)).limit(1)) is not None

    def any_item_of(self, modality: str) -> bool:
        return self.session.scalar(select(Item.id).where(Item.modality == modality).limit(1)) is not None

    def existing_under(self, roots: Sequence[str]) -> dict[str, list[ExistingItem]]:
        """Indexed items under each root, by path, with what tells whether their file changed."""
        by_path: dict[str, list[ExistingItem]] = {}
        for root in roots:
            rows = self.session.execute(
                select(Item.id, Item.path, Item.locator, Item.size, Item.mtime_ns, Item.content_hash, Item.modality,
                       Embedding.item_id.is_not(None))
                .outerjoin(Embedding, Embedding.item_id == Item.id)
                .where(under(Item.path, [root]))
            )
            for row in rows:
                by_path.setdefault(row[1], []).append(
                    ExistingItem(row[0], row[2], row[3], row[4], row[5], row[6], bool(row[7])))
        return by_path

    def file_rows(self) -> Iterator[tuple[int, str, int, int]]:
        """(id, path, size, mtime_ns) of every item, by path."""
        for row in self.session.execute(
                select(Item.id, Item.path, Item.size, Item.mtime_ns).order_by(Item.path, Item.id)):
            yield tuple(row)

    def rows_with_locator_suffix(self, suffix: str) -> list[tuple[int, str, str, dict[str, Any] | None]]:
        """(id, path, locator, meta) of every item whose locator ends with ``suffix`` (a JSONL
        record's image parts: ``":image"``)."""
        return [tuple(row) for row in self.session.execute(
            select(Item.id, Item.path, Item.locator, Item.meta).where(Item.locator.endswith(suffix, autoescape=True))
            .order_by(Item.path, Item.id))]

    def places(self, ids: Sequence[int]) -> list[tuple[int, str, str]]:
        """(id, path, locator) of those of ``ids`` that exist."""
        found: list[tuple[int, str, str]] = []
        ids = list(ids)
        for start in range(0, len(ids), IN_CHUNK):
            found.extend(tuple(row) for row in self.session.execute(
                select(Item.id, Item.path, Item.locator).where(Item.id.in_(ids[start:start + IN_CHUNK]))))
        return found

    # -- roots -------------------------------------------------------------------------------------
    def roots(self) -> list[RootRow]:
        return [RootRow(r.path, r.options, r.indexed_at) for r in self.session.scalars(select(Root).order_by(Root.path))]

    def table_chunks(self, table: str, size: int = EMBEDDING_CHUNK) -> Iterator[list[dict[str, Any]]]:
        """Every row of ``table`` (``items``, ``embeddings``, ``roots``) as a dict of all its
        columns, in key order, ``size`` rows at a time: what ``Writer.copy_rows`` takes in another
        catalogue (``mmsearch migrate``), whatever columns the schema has grown."""
        t = Base.metadata.tables[table]
        key = next(iter(t.primary_key.columns))
        last = None
        while True:
            query = select(t).order_by(key).limit(size)
            if last is not None:
                query = query.where(key > last)
            rows = [dict(row._mapping) for row in self.session.execute(query)]
            if not rows:
                return
            yield rows
            last = rows[-1][key.name]

    def unfinished_copy(self) -> str | None:
        """What ``migrate`` was copying into this catalogue when it stopped (None: not a copy
        being made)."""
        return get_text(self.session, UNFINISHED_COPY)

    def ever_indexed(self) -> bool:
        """True once an item was saved or an indexing run completed."""
        if self.session.scalar(select(Item.id).limit(1)) is not None:
            return True
        return self.session.scalar(select(Root.path).where(Root.indexed_at.is_not(None)).limit(1)) is not None


@dataclass
class VectorChanges:
    """What a committed write did to vectors, for the store to mirror into its vector index."""

    removed: list[int] = field(default_factory=list)
    added_ids: list[np.ndarray] = field(default_factory=list)
    added: list[np.ndarray] = field(default_factory=list)
    gen: int | None = None  # the generation the write bumped to (None: no vector changed)
    dropped_all: bool = False


class Writer(Reader):
    """One write transaction; the first vector change bumps the generation (the write rule)."""

    def __init__(self, session: Session, dialect=sqlite, in_pgvector: bool = False,
                 lexical: LexicalIndex | None = None):
        super().__init__(session, lexical)
        self.dialect = dialect
        self.in_pgvector = in_pgvector  # vectors also go to the pgvector column, in this transaction
        self.changes = VectorChanges()

    @property
    def gen(self) -> int:
        """The generation of this transaction's vector changes (bumped on first use)."""
        if self.changes.gen is None:
            gen = self.generation() + 1
            set_text(self.session, GENERATION, str(gen))
            self.changes.gen = gen
        return self.changes.gen

    # -- items and vectors -------------------------------------------------------------------------
    def write_items(self, rows: Sequence[NewRow], vectors: np.ndarray) -> np.ndarray:
        """Insert or update ``rows`` with ``vectors`` (one per row); returns their ids."""
        gen = self.gen
        items: list[Item] = []
        for row, vector in zip(rows, vectors):
            fields = dict(path=row.path, locator=row.locator, modality=row.modality, size=row.size,
                          mtime_ns=row.mtime_ns, content_hash=row.content_hash, width=row.width, height=row.height,
                          text=row.text, meta=row.meta, gen=gen)
            fields.update({name: (row.captured or {}).get(name) for name in CAPTURE_COLUMNS})
            blob = np.ascontiguousarray(vector, dtype=np.float32).tobytes()
            if row.item_id is None:
                item = Item(**fields)
                item.embedding = Embedding(vector=blob)
                self.session.add(item)
            else:
                item = self.session.get(Item, row.item_id)
                for key, value in fields.items():
                    setattr(item, key, value)
                if item.embedding is None:
                    item.embedding = Embedding(vector=blob)
                else:
                    item.embedding.vector = blob
                self.changes.removed.append(row.item_id)
            items.append(item)
        self.session.flush()
        ids = np.array([item.id for item in items], np.int64)
        if self.in_pgvector:
            pgvector.write(self.session, ids, vectors)
        self.changes.added_ids.append(ids)
        self.changes.added.append(np.ascontiguousarray(vectors, dtype=np.float32))
        return ids

    def touch(self, changes: Iterable[tuple[int, int, int]]) -> None:
        """New (size, mtime_ns) for items whose content is unchanged: (id, size, mtime_ns)."""
        for item_id, size, mtime_ns in changes:
            self.session.execute(update(Item).where(Item.id == item_id).values(size=size, mtime_ns=mtime_ns))

    def seal(self, files: Iterable[tuple[str, int, int]]) -> None:
        """Give every row of each (path, size, mtime_ns) that file's real size and mtime."""
        for path, size, mtime_ns in files:
            self.session.execute(update(Item).where(Item.path == path).values(size=size, mtime_ns=mtime_ns))

    def remove(self, ids: Sequence[int]) -> None:
        """Delete items (their vectors go with them), each leaving a tombstone."""
        if not ids:
            return
        gen = self.gen
        ids = list(ids)
        for start in range(0, len(ids), IN_CHUNK):
            chunk = ids[start:start + IN_CHUNK]
            self.session.execute(delete(Item).where(Item.id.in_(chunk)))
            self._tombstones(chunk, gen)
        self.changes.removed.extend(ids)

    def remove_orphan_vectors(self, ids: Sequence[int]) -> None:
        """Delete vectors whose item is gone."""
        gen = self.gen
        ids = list(ids)
        self.session.execute(delete(Embedding).where(Embedding.item_id.in_(ids)))
        if self.in_pgvector:
            pgvector.remove(self.session, ids)
        self._tombstones(ids, gen)
        self.changes.removed.extend(ids)

    def drop_all_vectors(self) -> None:
        """Delete every vector (a change of model); items keep their rows until embedded again."""
        gen = self.gen
        ids = list(self.session.scalars(select(Embedding.item_id)))
        self.session.execute(delete(Embedding))
        if self.in_pgvector:
            pgvector.clear(self.session)
        self.session.execute(delete(Tombstone))
        self.session.add_all(Tombstone(item_id=i, gen=gen) for i in ids)
        self.changes.removed.extend(ids)
        self.changes.dropped_all = True

    def _tombstones(self, ids: Sequence[int], gen: int) -> None:
        existing = set(self.session.scalars(select(Tombstone.item_id).where(Tombstone.item_id.in_(ids))))
        self.session.add_all(Tombstone(item_id=i, gen=gen) for i in ids if i not in existing)
        if existing:
            self.session.execute(update(Tombstone).where(Tombstone.item_id.in_(existing)).values(gen=gen))

    def bulk_insert(self, rows: Sequence[dict[str, Any]], vectors: np.ndarray) -> None:
        """Insert many new items with explicit ids at once (benchmarks' synthetic collections):
        each row holds Item's columns; vectors one per row."""
        gen = self.gen
        self.session.execute(insert(Item), [dict(row, gen=gen) for row in rows])
        self.session.execute(insert(Embedding), [
            {"item_id": row["id"], "vector": np.ascontiguousarray(v, np.float32).tobytes()} for row, v in zip(rows, vectors)])
        self.dialect.after_explicit_ids(self.session)
        ids = np.array([row["id"] for row in rows], np.int64)
        if self.in_pgvector:
            pgvector.write(self.session, ids, vectors)
        self.changes.added_ids.append(ids)
        self.changes.added.append(np.ascontiguousarray(vectors, dtype=np.float32))

    def copy_rows(self, table: str, rows: Sequence[dict[str, Any]]) -> None:
        """Insert rows read by ``Reader.table_chunks`` from another catalogue, ids kept; items
        carry this transaction's generation (so every reader's vector index takes them in)."""
        t = Base.metadata.tables[table]
        if table == Item.__tablename__:
            gen = self.gen
            rows = [dict(row, gen=gen) for row in rows]
        self.session.execute(insert(t), list(rows))
        if table == Item.__tablename__:
            self.dialect.after_explicit_ids(self.session)

    # -- vectors in PostgreSQL (``pgvector``) -----------------------------------------------------
    def refill_pgvector(self, dim: int) -> None:
        """Write every pgvector row again from the stored embeddings (those of ``dim``
        dimensions), without the HNSW index (``ensure_pgvector_index`` builds it after: many times
        faster). No vector changes: the blobs, the generation and the tombstones stay as they are."""
        pgvector.drop_index(self.session)
        pgvector.clear(self.session)
        for rows in self.embedding_chunks():
            ids, vectors = usable_rows(rows, dim)
            pgvector.write(self.session, ids, vectors)

    def ensure_pgvector_index(self) -> bool:
        """Build the pgvector HNSW index over the rows there are, unless it exists; True when built now."""
        return pgvector.ensure_index(self.session)

    # -- capture metadata and calibration (no vector changes: no generation bump) -------------------
    def set_captured(self, values: Iterable[tuple[int, dict[str, Any] | None]]) -> int:
        """Write the capture metadata of existing items; returns how many rows changed."""
        return filtering.set_captured(self.session, values)

    def save_calibration(self, data: dict[str, Any]) -> None:
        calibration.save(self.session, data)

    def save_calibration_probes(self, fingerprint: str, vectors: np.ndarray) -> None:
        calibration.save_probes(self.session, fingerprint, vectors)

    # -- roots and counters ------------------------------------------------------------------------
    def record_root(self, path: str, options: dict[str, Any], done: bool = False) -> None:
        row = self.session.get(Root, path)
        if row is None:
            row = Root(path=path)
            self.session.add(row)
        row.options = options
        if done:
            row.indexed_at = utcnow()

    def record_model(self, model: dict, dim: int, vectors: str | None = None) -> None:
        """Keep the model identity in the database too, so a damaged manifest can be rebuilt;
        with where the vectors live (``vectors``: None keeps what is recorded)."""
        if vectors is None:
            vectors = (self.recorded_model() or {}).get("vectors", pgvector.FAISS)
        record = {"model": model, "dim": int(dim)}
        if vectors == pgvector.PGVECTOR:
            record["vectors"] = vectors
            pgvector.retype(self.session, dim)  # a model switch may change the dimension
        set_text(self.session, MODEL_KEY, json.dumps(record, sort_keys=True))

    def clear_copied_rows(self) -> None:
        """Delete the rows an unfinished copy holds (``migrate``, starting it over in the same
        transaction that copies them again)."""
        for table in (Embedding, Tombstone, Item, Root):
            self.session.execute(delete(table))

    def copy_finished(self) -> None:
        """The copy ``migrate`` made into this catalogue is complete."""
        self.session.execute(delete(Meta).where(Meta.key == UNFINISHED_COPY))

    def set_generation(self, gen: int) -> None:
        set_text(self.session, GENERATION, str(gen))

    def purge_tombstones(self, through: int) -> None:
        """Forget deletions every saved vector index file has caught up with."""
        self.session.execute(delete(Tombstone).where(Tombstone.gen <= through))
        if through > self.purged_through():
            set_text(self.session, PURGED_THROUGH, str(through))
