"""Vectors kept in PostgreSQL itself (``--vectors pgvector``): a pgvector column with an HNSW index.

An index created with ``vectors="pgvector"`` on a PostgreSQL catalogue keeps each item's vector
twice in the database: the float32 blob in ``embeddings`` (what ``check``, duplicates, re-scoring
and video segments read, as for every index) and a ``vector(dim)`` row in ``item_vectors``, written
by the same transaction as the item (``catalogue.Writer``), so the write rule and crash safety
hold unchanged. An HNSW index (``vector_ip_ops``: the vectors are L2-normalised, so the inner
product is the cosine) serves the search; it is built at the end of the first indexing run
(``ensure_index``, from ``IndexStore.fit_vectors`` through ``Writer.ensure_pgvector_index``), as pgvector advises: building it over the
loaded rows took seconds where inserting 10k rows one by one into it took 34 s here. Until it
exists (a first run killed midway), searches are exact scans: slower, never wrong. No FAISS file exists: a query is one SQL statement in
the reader's snapshot, its filters (type, folder, dates, camera, place) in the statement's WHERE.

Filters and HNSW (``scripts/bench_pgvector.py``, BENCHMARKS.md): an HNSW scan that returns its
``ef_search`` nearest and then filters them starves a selective filter (recall 0.04 at 1%), and
even pgvector 0.8's iterative scan reached only recall 0.85 in 100 ms at 1% of 100k, where
reading the passing rows and ordering them exactly is both exact and faster. So a filtered
search first counts its passing items (up to ``EXACT_ROWS_MAX``, in the same snapshot): that
few are ordered exactly (their ids through the catalogue's indexes, then their vectors by key:
as a join, the planner chose to scan every vector row, 80 ms at 100k against 5 ms). A broader filter, or none, walks HNSW with the iterative scan
(``relaxed_order``: it goes on until enough rows pass, up to ``MAX_SCAN_TUPLES``); its rows are
put in exact order here, and a scan that still gave up early is run again with an exact ordering.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
from sqlalchemy import Column, Integer, MetaData, Table, and_, any_, delete, func, literal, select, text
from sqlalchemy.exc import DBAPIError

from ..errors import CatalogueDatabaseError, IndexTypeError
from .schema import Item

PGVECTOR = "pgvector"
FAISS = "faiss"
LAYOUTS = (FAISS, PGVECTOR)
TABLE = "item_vectors"
HNSW_INDEX = "ix_item_vectors_hnsw"
# HNSW build parameters (pgvector's defaults): 16 links per node, a candidate list of 64 while building.
HNSW_M, HNSW_EF_CONSTRUCTION = 16, 64
# ef_search: at least 400, else the rows asked for (pgvector's maximum is 1000). Unfiltered at 100k
# (scripts/bench_pgvector.py, synthetic 512-d, BENCHMARKS.md): ef 40 (pgvector's default) gave
# recall@10 0.34 in 7 ms, 100: 0.55 / 8 ms, 200: 0.71 / 10 ms, 400: 0.86 / 16 ms, where FAISS's
# auto IVF-SQ8 gave 0.75 / 8 ms: 400 is the first to pass it.
EF_SEARCH_MIN, EF_SEARCH_MAX = 400, 1000
# How many index tuples an iterative scan may visit before it gives up (pgvector's default 20000):
# a filter that reaches HNSW passes more than EXACT_ROWS_MAX items, so at 1M items at least 0.5%
# of them, about 100 in 20000 tuples: plenty for k=10 (fewer: the exact fallback).
MAX_SCAN_TUPLES = 20_000
# A filter passing at most this many items is ordered exactly instead of walking HNSW (at 1% of
# 100k, 1000 rows: exact and faster than the iterative scan; see the module's docstring).
EXACT_ROWS_MAX = 5_000
# An HNSW statement asks for at least this many rows and keeps the best n (in exact order): the
# scan's later rows sometimes beat its earlier ones (relaxed order, approximate graph walk).
CANDIDATES_MIN = 40
# Rows written per INSERT statement.
WRITE_CHUNK = 1000
# Memory the HNSW build may use, for the building transaction only (pgvector builds much faster
# while the graph fits in it; PostgreSQL's default is 64 MB, and a 512-d vector alone is 2 KB).
BUILD_MEMORY = "1GB"


def table(dim: int | None = None) -> Table:
    """``item_vectors`` (item_id, embedding vector(dim)), outside the catalogue's own metadata so
    SQLite catalogues and ``migrate`` never see it."""
    from pgvector.sqlalchemy import VECTOR

    return Table(TABLE, MetaData(), Column("item_id", Integer, primary_key=True),
                 Column("embedding", VECTOR(dim), nullable=False))


_VECTORS = None


def _t() -> Table:
    global _VECTORS
    if _VECTORS is None:
        _VECTORS = table()
    return _VECTORS


def check_layout(vectors: str, url: str | None) -> None:
    """IndexTypeError unless ``vectors`` is a vector layout this catalogue can hold."""
    if vectors not in LAYOUTS:
        raise IndexTypeError(f"unknown vector layout {vectors!r}: choose one of {', '.join(LAYOUTS)}")
    if vectors == PGVECTOR:
        if url is None:
            raise IndexTypeError("--vectors pgvector keeps the vectors in a PostgreSQL catalogue: give one with "
                                 "--db postgresql+psycopg://USER@HOST/DB (this index's catalogue is SQLite)")
        check_available()


def check_available() -> None:
    """CatalogueDatabaseError when the ``pgvector`` Python package is missing."""
    try:
        import pgvector.sqlalchemy  # noqa: F401
    except ImportError:
        raise CatalogueDatabaseError(
            "--vectors pgvector (vectors kept in PostgreSQL) needs the pgvector package: "
            "pip install 'mmsearch[postgres]'") from None


def create(conn, dim: int) -> None:
    """The extension and the table (in the caller's transaction: a failure, e.g. no privilege
    to create the extension, leaves nothing behind). The HNSW index comes later (``ensure_index``)."""
    conn.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS vector")
    conn.exec_driver_sql(
        f"CREATE TABLE IF NOT EXISTS {TABLE} (item_id integer PRIMARY KEY REFERENCES items(id) ON DELETE CASCADE, "
        f"embedding vector({int(dim)}) NOT NULL)")


def has_index(session) -> bool:
    return session.execute(text("SELECT 1 FROM pg_indexes WHERE indexname = :n"), {"n": HNSW_INDEX}).first() is not None


def drop_index(session) -> None:
    session.execute(text(f"DROP INDEX IF EXISTS {HNSW_INDEX}"))


def ensure_index(session) -> bool:
    """Build the HNSW index over the rows there are, unless it exists (in the caller's write
    transaction); True when it was built now."""
    if has_index(session):
        return False
    session.execute(text(f"SET LOCAL maintenance_work_mem = '{BUILD_MEMORY}'"))
    session.execute(text(
        f"CREATE INDEX IF NOT EXISTS {HNSW_INDEX} ON {TABLE} USING hnsw (embedding vector_ip_ops) "
        f"WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION})"))
    # Fresh statistics after a first load, so the planner can tell a selective filter (read
    # the passing rows and sort them: exact) from a broad one (walk HNSW).
    session.execute(text(f"ANALYZE items, {TABLE}"))
    return True


def retype(session, dim: int) -> None:
    """Give the column another dimension (a model switch; every vector was dropped before)."""
    current = session.execute(text(
        "SELECT atttypmod FROM pg_attribute WHERE attrelid = CAST(:t AS regclass) AND attname = 'embedding'"),
        {"t": TABLE}).scalar()
    if current == int(dim):
        return
    session.execute(text(f"DROP INDEX IF EXISTS {HNSW_INDEX}"))  # built again by the run's end (ensure_index)
    session.execute(text(f"DELETE FROM {TABLE}"))
    session.execute(text(f"ALTER TABLE {TABLE} ALTER COLUMN embedding TYPE vector({int(dim)})"))


def write(session, ids: Sequence[int], vectors: np.ndarray) -> None:
    """Insert or replace the vectors of items ``ids`` (in the caller's write transaction)."""
    t = _t()
    vectors = np.ascontiguousarray(vectors, np.float32)
    ids = [int(i) for i in ids]
    for start in range(0, len(ids), WRITE_CHUNK):
        rows = [{"item_id": i, "embedding": v} for i, v in zip(ids[start:start + WRITE_CHUNK],
                                                                 vectors[start:start + WRITE_CHUNK])]
        from sqlalchemy.dialects.postgresql import insert as pg_insert  # PostgreSQL only: not on every start

        statement = pg_insert(t).values(rows)
        session.execute(statement.on_conflict_do_update(index_elements=[t.c.item_id],
                                                        set_={"embedding": statement.excluded.embedding}))


def remove(session, ids: Sequence[int]) -> None:
    t = _t()
    ids = [int(i) for i in ids]
    for start in range(0, len(ids), 30_000):
        session.execute(delete(t).where(t.c.item_id.in_(ids[start:start + 30_000])))


def clear(session) -> None:
    session.execute(delete(_t()))


def ids(session) -> np.ndarray:
    t = _t()
    return np.fromiter(session.scalars(select(t.c.item_id).order_by(t.c.item_id)), np.int64)


def count(session) -> int:
    return session.scalar(select(func.count()).select_from(_t())) or 0


def vectors_of(session, wanted: Sequence[int]) -> dict[int, np.ndarray]:
    t = _t()
    return {int(i): np.asarray(v, np.float32) for i, v in
            session.execute(select(t.c.item_id, t.c.embedding).where(t.c.item_id.in_([int(i) for i in wanted])))}


def search(session, query: np.ndarray, n: int, conditions: Sequence = (), allowed: np.ndarray | None = None,
           ) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` items nearest to ``query`` among those passing ``conditions`` (on ``Item``'s
    columns) and in ``allowed`` (ids, when given): (cosines, ids), best first. One statement
    through the HNSW index with an iterative scan; again with an exact ordering when that
    returned fewer than ``n`` rows (see the module's docstring)."""
    if n <= 0:
        return np.empty(0, np.float32), np.empty(0, np.int64)
    t = _t()
    q = np.asarray(query, np.float32).reshape(-1)
    distance = t.c.embedding.max_inner_product(q)  # <#>: the negative inner product
    where = list(conditions)  # on Item's columns
    if allowed is not None:
        where.append(Item.id.in_([int(i) for i in allowed]))
    statement = select(t.c.item_id, distance)
    exact = distance + literal(0.0)  # not the indexed expression: the planner cannot use HNSW for it
    if where:
        statement = statement.join(Item, Item.id == t.c.item_id).where(and_(*where))
        passing = list(session.scalars(select(Item.id).where(*where).limit(EXACT_ROWS_MAX + 1)))
        if len(passing) <= EXACT_ROWS_MAX:  # their vectors by key (a join made the planner scan them all)
            from sqlalchemy.dialects.postgresql import ARRAY

            rows = session.execute(select(t.c.item_id, distance).where(
                t.c.item_id == any_(literal(passing, ARRAY(Integer)))).order_by(exact).limit(n)).all()
            return _best(rows, n)
    # For this transaction only (the reader's snapshot), in one round trip.
    session.execute(text("SELECT set_config('hnsw.ef_search', :ef, true), "
                         "set_config('hnsw.iterative_scan', 'relaxed_order', true), "
                         "set_config('hnsw.max_scan_tuples', :scan, true)"),
                    {"ef": str(max(EF_SEARCH_MIN, min(int(n), EF_SEARCH_MAX))), "scan": str(MAX_SCAN_TUPLES)})
    want = max(int(n), CANDIDATES_MIN)
    rows = session.execute(statement.order_by(distance).limit(want)).all()
    if len(rows) < want:  # the scan gave up before enough rows passed (or fewer exist): exactly
        rows = session.execute(statement.order_by(exact).limit(n)).all()
    return _best(rows, n)


def _best(rows, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(cosines, ids) of the best ``n`` of (id, negative inner product) rows, best first."""
    scores = np.fromiter((-float(r[1]) for r in rows), np.float32, len(rows))
    found = np.fromiter((int(r[0]) for r in rows), np.int64, len(rows))
    order = np.argsort(-scores, kind="stable")[:n]  # relaxed_order: nearly sorted, not exactly
    return scores[order], found[order]


class PgVectorIndex:
    """The vectors of a ``--vectors pgvector`` catalogue, in the shape of ``vectors.VectorIndex``
    (what a ``Snapshot``, ``check`` and the engine ask of one). Bound to a reader's snapshot when
    given one; else each call reads its own snapshot of ``catalogue``."""

    kind = PGVECTOR
    lossy = False
    nlist = 0

    def __init__(self, catalogue, dim: int, gen: int, reader=None):
        self.catalogue = catalogue
        self.dim = dim
        self.gen = self.durable_gen = gen
        self.reader = reader
        self._ntotal: int | None = None

    @contextmanager
    def _session(self) -> Iterator:
        if self.reader is not None:
            yield self.reader.session
        else:
            with self.catalogue.read() as r:
                yield r.session

    @property
    def ntotal(self) -> int:
        if self._ntotal is None:
            with self._session() as s:
                self._ntotal = count(s)
        return self._ntotal

    def search(self, query: np.ndarray, fetch: int, allowed: np.ndarray | None = None,
               conditions: Sequence = ()) -> tuple[np.ndarray, np.ndarray]:
        with self._session() as s:
            return search(s, query, fetch, conditions, allowed)

    def ids(self) -> np.ndarray:
        with self._session() as s:
            return ids(s)

    def differing(self, wanted: np.ndarray, vectors: np.ndarray) -> int:
        """How many of ``wanted``'s vectors differ from ``vectors`` (rows in the same order)."""
        with self._session() as s:
            stored = vectors_of(s, wanted.tolist())
        return sum(1 for i, v in zip(wanted.tolist(), vectors)
                   if i not in stored or stored[i].shape != v.shape or not np.array_equal(stored[i], v))

    def needs_fold(self) -> bool:
        return False


def describe_error(exc: DBAPIError, where: str) -> str | None:
    """One line for a server that lacks the pgvector extension or the privilege to create it
    (None for other errors)."""
    orig = getattr(exc, "orig", exc)
    state = getattr(orig, "sqlstate", None)
    first = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    if "vector" not in first.lower() and state not in ("58P01",):
        return None
    if state == "42501":
        return (f"cannot use {where} with --vectors pgvector: this user may not create the pgvector extension "
                f"(run `CREATE EXTENSION vector` as a superuser or the database owner once) ({first})")
    if state in ("58P01", "0A000") or "extension" in first.lower():
        return (f"cannot use {where} with --vectors pgvector: the pgvector extension is not installed on the "
                f"server ({first})")
    return None
