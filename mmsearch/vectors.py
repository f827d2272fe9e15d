"""FAISS vector index keyed by item id, persisted atomically with its generation.

The vector ids stored in FAISS are the items' primary keys (``IndexIDMap2``), never row
positions, so a deletion or a reordering can never shift which vector belongs to which row.

Files are named ``vectors.g<generation>.faiss``. A save writes a temporary file, fsyncs it and
renames it into place, then removes older generations, so a reader (or a process killed
mid-save) always finds a complete file. Which generation a file holds is in its name, so the
database can tell how far behind it is (see ``mmsearch.store``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

import faiss
import numpy as np

from .fsutil import atomic_write_via, fsync_dir

_FILE_RE = re.compile(r"^vectors\.g(\d+)\.faiss$")


def _file_name(gen: int) -> str:
    return f"vectors.g{gen:010d}.faiss"


def saved_generations(folder: Path) -> list[tuple[int, Path]]:
    """(generation, path) of every complete FAISS file in ``folder``, newest first."""
    found = []
    for entry in os.scandir(folder):
        match = _FILE_RE.match(entry.name)
        if match:
            found.append((int(match.group(1)), Path(entry.path)))
    return sorted(found, reverse=True)


class VectorIndex:
    """In-memory FAISS index of L2-normalised vectors; inner product = cosine similarity."""

    def __init__(self, dim: int, index: faiss.Index | None = None, gen: int = 0):
        self.dim = dim
        self.index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self.gen = gen

    # -- persistence -------------------------------------------------------------------------
    @classmethod
    def load_latest(cls, folder: Path) -> VectorIndex | None:
        """The newest readable FAISS file in ``folder``, or None if there is none."""
        for _ in range(3):  # a concurrent save may delete the file between listing and reading
            for gen, path in saved_generations(folder):
                try:
                    index = faiss.read_index(str(path))
                except RuntimeError:
                    if path.exists():
                        continue  # unreadable (damaged) file: fall back to an older one
                    break  # replaced by a newer save: list again
                return cls(index.d, index, gen)
            else:
                return None
        return None

    def save(self, folder: Path, gen: int) -> Path:
        """Write this index as generation ``gen`` and delete older files."""
        target = folder / _file_name(gen)
        atomic_write_via(target, lambda tmp: faiss.write_index(self.index, str(tmp)))
        self.gen = gen
        for old_gen, path in saved_generations(folder):
            if old_gen < gen:
                path.unlink(missing_ok=True)
        fsync_dir(folder)
        return target

    # -- contents ----------------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape[1] != self.dim:
            raise ValueError(f"vector dimension {vectors.shape[1]} != index dimension {self.dim}")
        self.index.add_with_ids(vectors, np.ascontiguousarray(ids, dtype=np.int64))

    def remove(self, ids: Iterable[int]) -> int:
        ids = np.asarray(ids if isinstance(ids, np.ndarray) else list(ids), dtype=np.int64)
        if len(ids) == 0:
            return 0
        return int(self.index.remove_ids(faiss.IDSelectorBatch(ids)))

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` (scores, ids) for one query vector; ids are -1 past the end."""
        k = min(k, self.ntotal)
        if k <= 0:
            return np.empty(0, np.float32), np.empty(0, np.int64)
        q = np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32)
        scores, ids = self.index.search(q, k)
        keep = ids[0] >= 0
        return scores[0][keep], ids[0][keep]

    def ids(self) -> np.ndarray:
        """Every item id held (for integrity checks)."""
        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

    def describe(self) -> dict:
        return {"type": "Flat (exact, inner product)", "ntotal": self.ntotal, "dim": self.dim}
