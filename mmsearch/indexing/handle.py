"""``IndexHandle``: one index folder's store, opened when it exists and on first need, shared by
the Engine's parts (its query encoders, its indexing runs, its searches) so that none of them
keeps a copy of its own: a run that creates the index, or removes a first run that failed, is
seen by every part at once."""

from __future__ import annotations

from pathlib import Path

from ..errors import IndexNotFoundError
from ..settings import Settings
from ..storage import IndexStore, VectorSettings, location


class IndexHandle:
    """The store of ``folder`` (``current``: None until it exists). ``db``: a PostgreSQL catalogue
    shared by several machines, ``folder`` then being this machine's copy of it. ``default``:
    the folder came from no setting, so a missing index says how the default is chosen."""

    def __init__(self, folder: Path, settings: Settings, default: bool = False):
        self.folder = folder
        self.settings = settings
        self.db = settings.db  # None: the folder's SQLite
        self._default = default
        s = settings
        self.vector_settings = VectorSettings(s.flat_max, s.nlist, s.nprobe, s.rerank, s.faiss_gpu)
        if self.db is not None and not IndexStore.is_index(folder):
            location.attach(folder, self.db)  # this machine's first use of a shared catalogue
        self.current: IndexStore | None = self.open() if IndexStore.is_index(folder) else None

    def open(self) -> IndexStore:
        return IndexStore.open(self.folder, self.vector_settings, self.db)

    @property
    def store(self) -> IndexStore:
        """The store, opened now if needed; raises the precise reason when there is none (no such
        folder, not an index, newer schema...)."""
        if self.current is None:
            try:
                self.current = self.open()
            except IndexNotFoundError as exc:
                if not self._default:
                    raise
                raise IndexNotFoundError(f"{exc} ({self.settings.default_index_rule()})") from None
        return self.current

    def created_meanwhile(self) -> bool:
        """True when another process made the index since this handle looked (the store is then open)."""
        if self.current is None and (IndexStore.is_index(self.folder)
                                     or (self.db is not None and location.attach(self.folder, self.db))):
            self.current = self.open()
        return self.current is not None

    def create(self, identity: dict, dim: int, vectors: str, roots: list) -> IndexStore:
        self.current = IndexStore.create(self.folder, identity, dim, self.vector_settings, db=self.db,
                                         vectors=vectors, roots=roots)
        return self.current

    def forget(self) -> None:
        """Close the store and let go of it (its files are about to go)."""
        if self.current is not None:
            self.current.close()
            self.current = None

    def close(self) -> None:
        if self.current is not None:
            self.current.close()
