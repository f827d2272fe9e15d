"""Where a search's ranked candidates come from, given its filters.

Without filters the vector index ranks everything. A filter that could drop most hits is
pushed into the search rather than over-fetching ranked hits until enough pass (which, for a
1%-selective filter, means ranking ~100x k hits and reading their rows):

- the ids that pass come from the in-memory filter columns (``storage.columns``: a few ms at 1M
  items, any filter) when they are current, else from the catalogue's SQL through its indexes
  (``storage.filtering``), up to ``PUSHDOWN_MAX`` of them (a filter passing more is cheap to
  over-fetch), while the columns reload in the background;
- at most ``EXACT_MAX`` ids are scored exactly from their stored vectors (exact recall, and
  cheaper than any scan);
- more are searched in the vector index with a FAISS ID selector (IVF cells probed as usual,
  more of them while fewer than k pass).

The thresholds come from ``scripts/bench_filters.py`` (see BENCHMARKS.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..filters import Filters
from ..storage import IndexStore, Snapshot
from ..storage import pgvector

# Filters passing more items than this are applied to over-fetched hits instead (5% at 1M).
PUSHDOWN_MAX = 50_000
# Up to this many passing items are scored exactly from the catalogue's vectors (at 1M items:
# 200 ids in 2 ms against 50 ms for the selector, which must probe most IVF cells to find
# enough of so few; 500 in 5 ms against 16 ms when their pages are cached, but 1,000 uncached
# took 70-110 ms against 36 ms).
EXACT_MAX = 300

# A folder (``--under``) holding more than this share of the index is found by over-fetching
# ranked hits (about FOLDER_SHARE x k of them at most); a smaller one is listed through the path
# index and pushed into the search like a filter (a 1% folder at 100k items took 1.1 s
# over-fetching).
FOLDER_SHARE = 20

OVERFETCH, EXACT, SELECTOR, SQL = "over-fetch", "exact", "selector", "sql"
# The candidate count of an SQL search until a statement returns fewer rows than it asked for
# (counting the passing rows first would cost as much as the search).
_UNKNOWN = 2**62
# Evaluate filters on the in-memory columns (``storage.columns``) when they are current.
USE_COLUMNS = True


def column_cache(store: IndexStore):
    """The filter columns of ``store``'s catalogue (closed with the store object); None for a
    catalogue that is not the folder's SQLite file (PostgreSQL: its filters run in SQL, where
    the planner uses the columns' indexes; the columns' freshness test is SQLite's)."""
    return store.filter_columns()


class Candidates:
    """Ranked (score, id) candidates of one query in one snapshot."""

    def __init__(self, snap: Snapshot, vector: np.ndarray, filters: Filters, modality: str | None,
                 prefixes: Sequence[str] | None):
        self.snap = snap
        self.vector = vector
        self.allowed: np.ndarray | None = None
        if snap.vectors.kind == pgvector.PGVECTOR:
            # One statement: the filters inside the ANN search (``storage.pgvector``).
            self.mode, self.total = SQL, _UNKNOWN
            self._conditions = snap.reader.sql_conditions(filters, modality, prefixes)
            return
        if filters.active:
            cache = column_cache(snap.store) if USE_COLUMNS and not prefixes else None
            columns = cache.current() if cache is not None else None
            if columns is not None:  # milliseconds at 1M items, whatever the filter passes
                self.allowed = columns.passing(filters, modality)
            else:
                self.allowed = snap.reader.passing_ids(filters, modality, prefixes, PUSHDOWN_MAX)
        elif prefixes:  # a folder alone: listed through the path index when it is a small part
            cap = min(PUSHDOWN_MAX, max(EXACT_MAX, snap.total // FOLDER_SHARE))
            self.allowed = snap.reader.passing_ids(filters, modality, prefixes, cap)
        if self.allowed is None:
            self.mode, self.total = OVERFETCH, snap.total
        elif len(self.allowed) <= EXACT_MAX:
            self.mode = EXACT
            self._scores, self._ids = snap.score(vector, self.allowed) if len(self.allowed) else (
                np.empty(0, np.float32), np.empty(0, np.int64))
            self.total = len(self._ids)
        else:
            self.mode, self.total = SELECTOR, len(self.allowed)

    @property
    def pushed(self) -> bool:
        """True when every candidate already passes the filters."""
        return self.mode != OVERFETCH

    def fetch(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The best ``n`` candidates, best first, with exact cosine scores."""
        if self.mode == EXACT:
            return self._scores[:n], self._ids[:n]
        if self.mode == SQL:
            scores, ids = self.snap.vectors.search(self.vector, n, conditions=self._conditions)
            if len(ids) < n:  # every passing item was returned
                self.total = len(ids)
            return scores, ids
        return self.snap.search(self.vector, n, allowed=self.allowed)
