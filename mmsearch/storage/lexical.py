"""The full-text index: every item's words (its text, an embedded caption, a JSONL record's
fields) and names (file and folder names, the image a JSONL record names), ranked by BM25.

``LexicalIndex`` is the interface the rest of mmsearch sees (``ensure`` on create and open,
``search`` in a read snapshot). ``SqliteLexical`` fills it with an FTS5 table kept by triggers
on ``items``: every insert, update of the words and delete of an item changes the full-text
rows in the same statement, so inside the catalogue's write transaction (the write rule holds
for words as for vectors, and a crash can never leave them apart). ``PostgresLexical`` fills it
on a PostgreSQL catalogue with a generated ``tsvector`` column of ``items`` (computed by the
database in the statement that writes the row, so inside the same transaction too), a GIN index
and ``ts_rank_cd`` for the ranking.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

from sqlalchemy import bindparam, text
from sqlalchemy.engine import Engine as SAEngine

TABLE = "items_fts"
# BM25 column weights: words, names. Names count as much as words: a file name is often the
# only exact token a user remembers.
WEIGHTS = (1.0, 1.0)
# Longest query sent to the full-text index (terms); the rest is ignored.
MAX_TERMS = 32
# A query word held by more items than this is left out of the BM25 query (when a rarer word is
# there): FTS5 scores every match of an OR query, so one word found in a million rows would cost
# seconds, and such a word says little (its BM25 weight is near 0); the vector ranking still
# sees it. Exact tokens (codes, names, file names) are rare and always kept.
COMMON_DF = 2_000

_NAME = ("{row}.path || ' ' || coalesce(CASE WHEN json_valid({row}.meta) "
         "THEN json_extract({row}.meta, '$.image') END, '')")
_WORDS = ("coalesce({row}.text, '') || ' ' || coalesce(CASE WHEN json_valid({row}.meta) "
          "AND json_type({row}.meta) = 'object' THEN (SELECT group_concat(value, ' ') FROM json_each({row}.meta) "
          "WHERE json_each.type = 'text' AND json_each.key != 'image') END, '')")
_INSERT = f"INSERT INTO {TABLE}(rowid, words, names) VALUES (new.id, {_WORDS.format(row='new')}, {_NAME.format(row='new')});"
_DDL = (
    f"CREATE VIRTUAL TABLE IF NOT EXISTS {TABLE} USING fts5(words, names, tokenize='unicode61 remove_diacritics 2')",
    f"CREATE TRIGGER IF NOT EXISTS {TABLE}_ai AFTER INSERT ON items BEGIN {_INSERT} END",
    f"CREATE TRIGGER IF NOT EXISTS {TABLE}_ad AFTER DELETE ON items BEGIN DELETE FROM {TABLE} WHERE rowid = old.id; END",
    (f"CREATE TRIGGER IF NOT EXISTS {TABLE}_au AFTER UPDATE OF path, locator, text, meta ON items BEGIN "
    f"DELETE FROM {TABLE} WHERE rowid = old.id; {_INSERT} END"),
)


class LexicalIndex(Protocol):
    def ensure(self) -> None:
        """Create the full-text index if the database lacks it (older indexes), filled from
        every item, in one transaction."""

    def search(self, session, query: str, limit: int, every_word: bool = False) -> list[tuple[int, float]]:
        """(item id, score: higher is better) of the best ``limit`` matches of ``query``'s words
        (words in more than COMMON_DF items left out; when all are, none unless ``every_word``,
        then the rarest)."""

    def holding(self, session, terms: Sequence[str], ids: Sequence[int]) -> set[int]:
        """Those of ``ids`` whose words or names hold one of ``terms`` as a phrase (its tokens
        in order, as ``search`` matches a term)."""


def query_phrases(query: str) -> list[str]:
    """The words of free text as the full-text index's phrases (quotes doubled)."""
    return [word.replace('"', '""') for word in query.split()[:MAX_TERMS] if any(ch.isalnum() for ch in word)]


def match_expression(query: str, common: set[str] = frozenset()) -> str | None:
    """The full-text query for free text: each whitespace-separated word a quoted phrase (an
    invoice number ``INV-2024-0042`` matches its tokens in order), any of them matching; words
    in ``common`` are left out unless nothing else is left."""
    phrases = query_phrases(query)
    kept = [p for p in phrases if p.lower() not in common] or phrases[:1]
    return " OR ".join(f'"{p}"' for p in kept) if kept else None


def query_words(query: str) -> list[str]:
    """The lower-case tokens of ``query`` as the full-text index splits them (for showing
    which words a hit matched)."""
    return [t.lower() for t in re.findall(r"\w+", query)]


class SqliteLexical:
    """FTS5 with BM25, kept by triggers (see the module's docstring)."""

    def __init__(self, engine: SAEngine):
        self.engine = engine
        # How many items hold each query word (capped at COMMON_DF + 1), for the generation the
        # counts were read at: common words repeat across queries, and counting costs a query.
        self._held: dict[str, int] = {}
        self._held_gen: str | None = None

    def ensure(self) -> None:
        with self.engine.begin() as conn:
            present = {name for (name,) in conn.exec_driver_sql(
                "SELECT name FROM sqlite_master WHERE type IN ('table', 'trigger') AND name LIKE ?", (f"{TABLE}%",))}
            if present >= {TABLE, f"{TABLE}_ai", f"{TABLE}_ad", f"{TABLE}_au"}:
                return
            fresh = TABLE not in present
            for statement in _DDL:
                conn.exec_driver_sql(statement)
            if fresh:  # an index from before the full-text index: fill it from every item
                conn.exec_driver_sql(
                    f"INSERT INTO {TABLE}(rowid, words, names) SELECT id, {_WORDS.format(row='items')}, "
                    f"{_NAME.format(row='items')} FROM items")

    def search(self, session, query: str, limit: int, every_word: bool = False) -> list[tuple[int, float]]:
        phrases = query_phrases(query)
        if not phrases or limit < 1:
            return []
        single = [p.lower() for p in phrases if re.fullmatch(r"\w+", p)]
        common: dict[str, int] = {}
        if len(phrases) > 1 and single:
            connection = session.connection()
            gen = connection.exec_driver_sql("SELECT value FROM meta WHERE key = 'generation'").scalar()
            if gen != self._held_gen:
                self._held, self._held_gen = {}, gen
            for word in single:
                held = self._held.get(word)
                if held is None:
                    # Counting stops past COMMON_DF: a common word costs no more than a rare one.
                    held = connection.exec_driver_sql(
                        f"SELECT count(*) FROM (SELECT rowid FROM {TABLE} WHERE {TABLE} MATCH ? LIMIT ?)",
                        (f'"{word}"', COMMON_DF + 1)).scalar()
                    if len(self._held) < 100_000:
                        self._held[word] = held
                if held > COMMON_DF:
                    common[word] = held
            if len(common) == len(phrases):  # every word is common
                if not every_word:
                    return []  # nothing exact to find: the vector ranking alone decides
                common.pop(next(iter(common)))  # words asked for: keep one
        expression = match_expression(query, set(common))
        if expression is None:
            return []
        rows = session.execute(
            text(f"SELECT rowid, bm25({TABLE}, {WEIGHTS[0]}, {WEIGHTS[1]}) AS rank FROM {TABLE} "
                 f"WHERE {TABLE} MATCH :q ORDER BY rank LIMIT :n"),
            {"q": expression, "n": int(limit)})
        return [(int(item_id), -float(rank)) for item_id, rank in rows]

    def holding(self, session, terms: Sequence[str], ids: Sequence[int]) -> set[int]:
        expression = match_expression(" ".join(terms))
        if expression is None or not ids:
            return set()
        statement = text(f"SELECT rowid FROM {TABLE} WHERE {TABLE} MATCH :q AND rowid IN :ids").bindparams(
            bindparam("ids", expanding=True))
        return {int(i) for (i,) in session.execute(statement, {"q": expression, "ids": [int(i) for i in ids]})}


# PostgreSQL: the same words and names as FTS5's columns, split as unicode61 splits them (every
# run of characters that are not letters or digits separates tokens; PostgreSQL's own parser
# would keep a path or a file name whole), lower-cased by the 'simple' configuration (no
# stemming, no stop words, like FTS5 here). Words weigh as 'A', names as 'B' (WEIGHTS).
PG_COLUMN = "fts"
PG_INDEX = "ix_items_fts"
PG_FUNCTION = "mmsearch_fts_doc"
_PG_SPLIT = "regexp_replace(lower({value}), '[^[:alnum:]]+', ' ', 'g')"
_PG_DDL = (
    f"""CREATE OR REPLACE FUNCTION {PG_FUNCTION}(body text, meta json, path text) RETURNS tsvector
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT setweight(to_tsvector('simple', {_PG_SPLIT.format(value=
        "coalesce(body, '') || ' ' || coalesce(CASE WHEN json_typeof(meta) = 'object' THEN "
        "(SELECT string_agg(e.value, ' ') FROM json_each_text(meta) AS e "
        "WHERE e.key <> 'image' AND json_typeof(meta -> e.key) = 'string') END, '')")}), 'A')
        || setweight(to_tsvector('simple', {_PG_SPLIT.format(value=
        "coalesce(path, '') || ' ' || coalesce(CASE WHEN json_typeof(meta) = 'object' THEN meta ->> 'image' END, '')")}),
        'B')
    $$""",
    f"ALTER TABLE items ADD COLUMN IF NOT EXISTS {PG_COLUMN} tsvector "
    f"GENERATED ALWAYS AS ({PG_FUNCTION}(text, meta, path)) STORED",
    f"CREATE INDEX IF NOT EXISTS {PG_INDEX} ON items USING gin ({PG_COLUMN})",
)
# ts_rank_cd's weights for D, C, B, A.
_PG_WEIGHTS = f"'{{0.1, 0.2, {WEIGHTS[1]}, {WEIGHTS[0]}}}'"


def _pg_query(phrases: list[str]) -> tuple[str, dict[str, str]]:
    """A tsquery expression matching any of ``phrases`` (each its tokens in order), and its
    parameters."""
    parts = [f"phraseto_tsquery('simple', {_PG_SPLIT.format(value=f':p{i}')})" for i in range(len(phrases))]
    return " || ".join(parts), {f"p{i}": p.replace('""', '"') for i, p in enumerate(phrases)}


class PostgresLexical:
    """A generated tsvector column with a GIN index, ranked by ts_rank_cd (see above)."""

    def __init__(self, engine: SAEngine):
        self.engine = engine

    def ensure(self) -> None:
        with self.engine.begin() as conn:
            present = conn.exec_driver_sql(
                "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() "
                "AND table_name = 'items' AND column_name = %(c)s", {"c": PG_COLUMN}).first()
            indexed = conn.exec_driver_sql("SELECT 1 FROM pg_indexes WHERE indexname = %(i)s", {"i": PG_INDEX}).first()
            if present and indexed:
                return
            for statement in _PG_DDL:  # an index from before: its rows get their words as the column is added
                conn.exec_driver_sql(statement)

    def search(self, session, query: str, limit: int, every_word: bool = False) -> list[tuple[int, float]]:
        phrases = query_phrases(query)
        if not phrases or limit < 1:
            return []
        single = [p.lower() for p in phrases if re.fullmatch(r"\w+", p)]
        common: set[str] = set()
        if len(phrases) > 1 and single:
            for word in single:
                expression, params = _pg_query([word])
                held = session.execute(text(
                    f"SELECT count(*) FROM (SELECT 1 FROM items WHERE {PG_COLUMN} @@ ({expression}) LIMIT :cap) AS m"),
                    {**params, "cap": COMMON_DF + 1}).scalar()
                if held > COMMON_DF:
                    common.add(word)
            if len(common) == len(phrases):  # every word is common
                if not every_word:
                    return []  # nothing exact to find: the vector ranking alone decides
                common.discard(single[0])  # words asked for: keep one
        kept = [p for p in phrases if p.lower() not in common] or phrases[:1]
        expression, params = _pg_query(kept)
        rows = session.execute(text(
            f"SELECT id, ts_rank_cd({_PG_WEIGHTS}, {PG_COLUMN}, q) AS rank FROM items CROSS JOIN (SELECT {expression} AS q) AS x "
            f"WHERE {PG_COLUMN} @@ q ORDER BY rank DESC, id LIMIT :n"), {**params, "n": int(limit)})
        return [(int(item_id), float(rank)) for item_id, rank in rows]

    def holding(self, session, terms: Sequence[str], ids: Sequence[int]) -> set[int]:
        phrases = query_phrases(" ".join(terms))
        if not phrases or not ids:
            return set()
        expression, params = _pg_query(phrases)
        statement = text(f"SELECT id FROM items WHERE {PG_COLUMN} @@ ({expression}) AND id IN :ids").bindparams(
            bindparam("ids", expanding=True))
        return {int(i) for (i,) in session.execute(statement, {**params, "ids": [int(i) for i in ids]})}


class NoLexical:
    """A database without a full-text implementation yet: nothing to create; searching its
    words says so."""

    def __init__(self, engine: SAEngine):
        self.engine = engine

    def ensure(self) -> None:
        return None

    def search(self, session, query: str, limit: int, every_word: bool = False) -> list[tuple[int, float]]:
        from ..errors import QueryError

        raise QueryError(f"lexical search is not available on a {self.engine.dialect.name} catalogue yet: "
                         "use --mode vector")

    def holding(self, session, terms: Sequence[str], ids: Sequence[int]) -> set[int]:
        return set()


def lexical_index(engine: SAEngine) -> LexicalIndex:
    """The full-text index of the catalogue's database."""
    name = engine.dialect.name
    return SqliteLexical(engine) if name == "sqlite" else PostgresLexical(engine) if name == "postgresql" \
        else NoLexical(engine)
