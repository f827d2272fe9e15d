"""Storage: the catalogue (the only SQL, and the write rule), the manifest, the vector index, and
the store that keeps them in agreement. SQLAlchemy is imported here and nowhere else.

Its modules form layers; each imports only modules of the layers below it:

1. ``schema`` (the tables), ``manifest``, ``rwlock``, ``columns`` (in-memory filter columns);
2. ``rows`` (rows as dataclasses, shared SQL helpers, vector blobs), ``sqlite``, ``postgres``,
   ``lexical`` (full-text), ``pgvector`` (vectors in PostgreSQL);
3. the catalogue's query modules, each one concern's SQL taking a session: ``filtering``,
   ``calibration``, ``documents``;
4. ``catalogue``: ``Catalogue``, and its ``Reader`` and ``Writer`` whose methods are the only way
   in from outside (``reader.lexical_search``, ``reader.passing_ids``, ``writer.save_calibration``...);
5. the FAISS vector indexes: ``vectors`` (in-memory, plans, vectors files), ``ondisk`` (on-disk
   IVF, above ``vectors``), ``vectorfiles`` (opens the newest file of either kind);
6. ``location`` (where a catalogue lives), ``docindex`` (the document vectors), then ``store``
   on top: every write goes through ``IndexStore.write()`` (the write rule).
"""

from .catalogue import DATABASE_ERRORS, Catalogue, Reader, Writer
from .manifest import MANIFEST, SCHEMA_VERSION
from .rows import ExistingItem, ItemRow, NewRow, RootRow
from .store import IndexStore, Snapshot, read_manifest, writer_lock
from .vectors import AUTO, CHOICES, FLAT, IVF_PQ, IVF_SQ8, TYPES, IndexPlan, VectorIndex, VectorSettings, saved_generations

__all__ = [
    "AUTO", "CHOICES", "DATABASE_ERRORS", "FLAT", "IVF_PQ", "IVF_SQ8", "MANIFEST", "SCHEMA_VERSION", "TYPES",
    "Catalogue", "ExistingItem", "IndexPlan", "IndexStore", "ItemRow", "NewRow", "Reader", "RootRow", "Snapshot",
    "VectorIndex", "VectorSettings", "Writer", "read_manifest", "saved_generations", "writer_lock",
]
