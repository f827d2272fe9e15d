"""Storage: the catalogue (the only SQL, and the write rule), the manifest, the vector index, and
the store that keeps them in agreement. SQLAlchemy is imported here and nowhere else."""

from .catalogue import DATABASE_ERRORS, Catalogue, ExistingItem, ItemRow, NewRow, Reader, RootRow, Writer
from .manifest import MANIFEST, SCHEMA_VERSION
from .store import IndexStore, Snapshot, read_manifest, writer_lock
from .vectors import AUTO, CHOICES, FLAT, IVF_PQ, IVF_SQ8, TYPES, IndexPlan, VectorIndex, VectorSettings, saved_generations

__all__ = [
    "AUTO", "CHOICES", "DATABASE_ERRORS", "FLAT", "IVF_PQ", "IVF_SQ8", "MANIFEST", "SCHEMA_VERSION", "TYPES",
    "Catalogue", "ExistingItem", "IndexPlan", "IndexStore", "ItemRow", "NewRow", "Reader", "RootRow", "Snapshot",
    "VectorIndex", "VectorSettings", "Writer", "read_manifest", "saved_generations", "writer_lock",
]
