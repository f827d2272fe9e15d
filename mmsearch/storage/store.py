"""One index on disk: manifest, catalogue, vector index file and the writer lock, kept in agreement.

``IndexStore`` owns the three parts. The catalogue is authoritative; the vector index is derived
from it. Writes go through ``store.write()``, which commits one catalogue transaction (the write
rule, see ``catalogue``) and then mirrors its vector changes into the store's vector index.
Searches go through ``store.snapshot()``: one catalogue snapshot and the vector index brought to
exactly that snapshot (replaying the rows changed since the index file's generation, and the
tombstones), so a reader never pairs vectors with rows of another state. Searches whose snapshot
the vector index already matches run in parallel; bringing it forward is exclusive.

The store knows nothing of models or of files on the user's disk.
"""

from __future__ import annotations

import os
import shutil
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock, Timeout

from ..errors import (
    CatalogueDatabaseError,
    DamagedManifestError,
    EmptyIndexError,
    IndexLockedError,
    IndexNotFoundError,
    IndexWriteError,
    MMSearchError,
    NotAnIndexError,
    UnfinishedCopyError,
)
from ..fsutil import digest_mismatch, file_digest
from ..media.capabilities import info_counts
from . import docindex, location
from . import manifest as mf
from . import ondisk
from . import pgvector as pgv
from .columns import ColumnCache
from .catalogue import DATABASE_ERRORS, Catalogue, Reader, Writer
from .rows import usable_rows, vectors_from_blobs
from .manifest import MANIFEST, VECTORS_FILES
from .rwlock import ReadWriteLock
from .sqlite import DB_FILE, DB_FILES
from .vectorfiles import load_latest
from .vectors import (
    AUTO,
    FLAT,
    IVF_PQ,
    ONDISK,
    TRAIN_PER_LIST,
    IndexPlan,
    VectorIndex,
    VectorSettings,
    choose,
    data_files,
    needs_rebuild,
    remove_older,
    saved_generations,
    unreferenced_data,
)

LOCK_FILE = location.LOCK_FILE
KEEP_VECTOR_RECORDS = 4
_OWN_FILES = (*DB_FILES, LOCK_FILE, location.LINK_FILE)
# What a created index holds besides the database (removed with a failed first run).
_DERIVED_PREFIXES = ("vectors.g", "documents.g", "text_encoder.", "image_encoder.", ".vectors.g", ".documents.g",
                     ".text_onnx.", ".image_onnx.", f".{MANIFEST}.")
_DERIVED_FILES = (MANIFEST, "clip_bpe_vocab.txt.gz")


@contextmanager
def writer_lock(folder: Path, wait: float = 0.0, db: str | None = None) -> Iterator[None]:
    """Hold the single-writer lock of an index folder; ``wait`` seconds before giving up (-1: forever).
    A folder whose catalogue is PostgreSQL (or ``db``) also holds the database's advisory lock."""
    lock = FileLock(str(folder / LOCK_FILE))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock.acquire(timeout=wait)
    except Timeout as exc:
        raise IndexLockedError(
            f"another mmsearch process is writing to {folder}; wait for it to finish or pass --wait SECONDS"
        ) from exc
    except OSError as exc:  # read-only file system, permissions, disk full
        raise IndexWriteError(f"cannot write to the index folder {folder}: {exc.strerror or exc}") from exc
    try:
        with location.database_lock(folder, db, wait):
            yield
    finally:
        lock.release()


def writer_running(folder: Path) -> bool:
    """True when an indexing run holds the writer lock of ``folder`` now (on this machine's file
    lock). Probed with a shared, non-blocking lock taken and dropped at once: a writer starting in
    those microseconds would see the folder locked, as with any reader of the lock."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): unknown, say nothing
        return False
    try:
        fd = os.open(folder / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def empty_index_error(folder: Path) -> EmptyIndexError:
    """What a reader says of an index without anything indexed yet: a first run still going
    (the writer lock tells), or one that stopped before it saved anything."""
    if writer_running(folder):
        return EmptyIndexError(
            f"empty index: a first indexing run is in progress in {folder} and has not saved anything yet; "
            f"try again when it has (the items appear as it saves them)"
        )
    return EmptyIndexError(
        f"empty index: nothing indexed yet in {folder} (a first indexing run stopped before it saved "
        f"anything); run `mmsearch index` again to resume it, or `mmsearch index PATH` to index a folder"
    )


def read_manifest(folder: Path) -> dict[str, Any]:
    """The checked manifest of the index in ``folder``.

    Raises ``EmptyIndexError`` for a folder a first run left without a manifest and without
    items, ``DamagedManifestError`` when an index that holds items lost it, ``NotAnIndexError``
    for a missing, unreadable or incomplete one, ``IndexVersionError`` for a newer one.
    """
    try:
        manifest = mf.read_raw(folder)
    except FileNotFoundError as exc:
        raise_if_unfinished_copy(folder)
        if _holds_items(folder / DB_FILE, unreadable=False):
            raise DamagedManifestError(
                f"{folder / MANIFEST} is missing from an index that holds items; "
                f"`mmsearch check --repair` rebuilds it from the database"
            ) from exc
        if folder.is_dir() and IndexStore.holds_only_own_files(folder):
            raise empty_index_error(folder) from exc
        raise NotAnIndexError(f"{folder} is not an mmsearch index (no {MANIFEST})") from exc
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise NotAnIndexError(f"{folder / MANIFEST} is unreadable ({exc}); `mmsearch check --repair` rebuilds it "
                              f"from the database") from exc
    return mf.check_manifest(folder, manifest)


def unfinished_copy(folder: Path, db: str | None = None) -> str | None:
    """What ``migrate`` was copying into the catalogue of ``folder`` (its SQLite file, or the
    database it or ``db`` names) when it stopped; None when that catalogue is not a copy being
    made (or there is none)."""
    try:
        url = location.resolve(folder, db)
    except MMSearchError:
        return None
    if url is None and not (folder / DB_FILE).is_file():
        return None
    return _ask(location.catalogue(folder, url), lambda r: r.unfinished_copy())


def _ask(catalogue: Catalogue, question: Callable[[Reader], Any]) -> Any:
    """``question(reader)`` of ``catalogue`` (closed after), read without a manifest; None when
    it cannot be read (no tables yet, no server)."""
    try:
        with catalogue.read() as r:
            return question(r)
    except DATABASE_ERRORS:
        return None
    finally:
        catalogue.close()


def raise_if_unfinished_copy(folder: Path, source: str | None = None, db: str | None = None) -> None:
    """UnfinishedCopyError when ``folder`` holds a copy ``migrate`` did not finish (``source``:
    what it copied, when already known)."""
    source = source or unfinished_copy(folder, db)
    if source is not None:
        raise UnfinishedCopyError(
            f"{folder} holds an unfinished copy of {source}: a `mmsearch migrate` into it stopped before it "
            f"finished; run the same migrate again to start it over, or delete {folder}"
        )


def _holds_items(db_path: Path, unreadable: bool = True) -> bool:
    """True when the database at ``db_path`` exists and holds at least one item (``unreadable``:
    the answer for a database that cannot be read)."""
    if not db_path.is_file():
        return False
    catalogue = Catalogue.sqlite(db_path)
    try:
        with catalogue.read() as r:
            return r.item_count() > 0
    except DATABASE_ERRORS:
        return unreadable
    finally:
        catalogue.close()


class IndexStore:
    """Owns an index folder. Open with ``IndexStore.open`` or ``IndexStore.create``."""

    def __init__(self, folder: Path, manifest: dict[str, Any], settings: VectorSettings | None = None,
                 db: str | None = None):
        self.folder = folder
        self.manifest = manifest
        self.settings = settings or VectorSettings()
        self._manifest_stamp = mf.stamp(folder)
        self.db = db  # the PostgreSQL URL of the catalogue (None: the folder's SQLite file)
        self.catalogue = location.catalogue(folder, db)
        self._vectors: VectorIndex | None = None
        self._rw = ReadWriteLock()
        self._columns: ColumnCache | None = None
        self.model_checked = -1e9  # when ``location.model_moved`` last asked the shared catalogue (monotonic)

    # -- opening and creating ------------------------------------------------------------------
    @staticmethod
    def is_index(folder: Path) -> bool:
        return (Path(folder) / MANIFEST).is_file()

    @classmethod
    def open(cls, folder: str | Path, settings: VectorSettings | None = None, db: str | None = None) -> IndexStore:
        """``db``: the PostgreSQL URL asked for (a new folder is attached to its catalogue)."""
        folder = Path(folder).expanduser().absolute()
        url = location.resolve(folder, db) if folder.is_dir() or db else None
        if url is not None:
            location.attach(folder, url)
        if not folder.exists():
            raise IndexNotFoundError(f"index not found: {folder} (create it with `mmsearch index PATH`)")
        if not folder.is_dir():
            raise NotAnIndexError(f"{folder} is not a folder")
        manifest = read_manifest(folder)
        if url is None and not (folder / DB_FILE).is_file():
            raise NotAnIndexError(f"{folder} has a manifest but no database ({DB_FILE})")
        store = cls(folder, manifest, settings, url)
        try:
            with store.read() as r:
                r.generation()
                copying = r.unfinished_copy()
            raise_if_unfinished_copy(folder, copying)
            store.catalogue.upgrade_schema()
            if location.model_moved(store, force=True):  # this machine's manifest is a cache of the catalogue's
                store.manifest = location.follow_model(store)
            store._check_manifest_against_catalogue()
        except DATABASE_ERRORS as exc:
            store.close()
            if url is not None:
                raise CatalogueDatabaseError(location.postgres.describe(exc, url)) from None
            raise NotAnIndexError(f"{folder / DB_FILE} is not a readable mmsearch database: {exc.orig}") from exc
        except MMSearchError:
            store.close()
            raise
        return store

    @classmethod
    def create(cls, folder: str | Path, model_identity: dict, dim: int,
               settings: VectorSettings | None = None, *, db: str | None = None,
               vectors: str = pgv.FAISS, copying_from: str | None = None,
               roots: Sequence[tuple[str, dict]] = ()) -> IndexStore:
        """``vectors``: ``faiss`` (a local vector index file derived from the catalogue) or
        ``pgvector`` (the vectors in the PostgreSQL catalogue itself; see ``storage.pgvector``).
        ``roots``: (path, options) of the library's folders, recorded before the manifest makes
        the folder an index, so an index is never seen without them (a first run interrupted at
        any moment after is resumed by a bare ``mmsearch index``).
        ``copying_from``: the index is a copy of that one that ``migrate`` is about to make; until
        its ``Writer.copy_finished`` commits, nothing opens it as an index."""
        folder = Path(folder).expanduser().absolute()
        cls.check_creatable(folder)
        url = location.resolve(folder, db)
        pgv.check_layout(vectors, url)
        folder.mkdir(parents=True, exist_ok=True)
        if url is not None:
            location.link(folder, url)
        store = cls(folder, mf.new_manifest(model_identity, dim, vectors=vectors), settings, url)
        try:
            store.catalogue.create_schema(model_identity, dim, vectors, copying_from=copying_from)
        except DATABASE_ERRORS as exc:  # PostgreSQL: no privilege to create tables (nothing was created)
            store.close()
            if url is None:
                raise
            raise CatalogueDatabaseError(pgv.describe_error(exc, location.postgres.redact(url))
                                         or location.postgres.describe(exc, url)) from None
        if roots:
            with store.write() as w:
                for path, options in roots:
                    w.record_root(path, options)
        # The manifest is written last: its presence is what makes the folder an index.
        store._write_manifest(store.manifest)
        return store

    def _check_manifest_against_catalogue(self) -> None:
        """DamagedManifestError when the manifest's model or dimension is not the catalogue's."""
        with self.read() as r:
            recorded = r.recorded_model()
            blob = None if recorded is not None else next(iter(r.embedding_chunks(1)), [(0, None)])[0][1]
        if recorded is not None:
            model, dim = recorded["model"], recorded.get("dim")
            if model.get("fingerprint") != self.manifest["model"].get("fingerprint") or dim != self.dim:
                raise DamagedManifestError(
                    f"{self.folder / MANIFEST} names another model or dimension ({self.manifest['model'].get('name')}, "
                    f"{self.dim}) than the database records ({model.get('name')}, {dim}); "
                    f"`mmsearch check --repair` rebuilds it from the database"
                )
        elif blob is not None and len(blob) != self.dim * 4:  # an index from before the catalogue kept the model
            raise DamagedManifestError(
                f"{self.folder / MANIFEST} says the vectors have {self.dim} dimensions but the database holds "
                f"{len(blob) // 4}-dimensional ones; the manifest is damaged"
            )

    @staticmethod
    def check_creatable(folder: Path) -> None:
        """Raise unless ``folder`` is absent, empty, or holds only a half-created index."""
        if folder.exists():
            if not folder.is_dir():
                raise NotAnIndexError(f"{folder} exists and is not a folder")
            if _holds_items(folder / DB_FILE, unreadable=False):
                read_manifest(folder)  # an index whose manifest is lost: say so, never overwrite it
            foreign = [p.name for p in folder.iterdir() if p.name not in _OWN_FILES and not p.name.startswith(f".{MANIFEST}.")]
            if foreign:
                raise NotAnIndexError(
                    f"{folder} is not empty and holds no mmsearch index; choose another --index folder"
                )

    @staticmethod
    def holds_only_own_files(folder: Path) -> bool:
        """True when ``folder`` holds what an unfinished first run leaves behind (its lock, its
        database) and nothing else."""
        names = [p.name for p in folder.iterdir()]
        return bool(names) and all(n in _OWN_FILES or n.startswith(f".{MANIFEST}.") for n in names)

    @staticmethod
    def remove_own_files(folder: Path, remove_folder: bool) -> None:
        """Delete what a failed first run created in ``folder`` (and the folder, if it made it)."""
        if not folder.is_dir():
            return
        for path in folder.iterdir():
            if path.name in _OWN_FILES or path.name in _DERIVED_FILES or path.name.startswith(_DERIVED_PREFIXES):
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
        if remove_folder:
            try:
                folder.rmdir()
            except OSError:
                pass  # something else was put there meanwhile: leave it

    @staticmethod
    def recorded_model_of(folder: Path, db: str | None = None) -> dict[str, Any] | None:
        """The model identity the catalogue of ``folder`` records, read without the manifest."""
        return _ask(location.catalogue(folder, location.resolve(folder, db)), lambda r: r.recorded_model())

    @staticmethod
    def rebuild_manifest(folder: Path, recorded: dict[str, Any]) -> None:
        """Write a new manifest from what the catalogue records (call under the writer lock)."""
        mf.write_manifest(folder, mf.rebuilt(folder, recorded))

    def close(self) -> None:
        self.catalogue.close()
        self._vectors = None

    def filter_columns(self) -> ColumnCache | None:
        """The in-memory filter columns of this store's catalogue (``columns.ColumnCache``, closed
        with the store object); None for a catalogue that is not the folder's SQLite file
        (PostgreSQL: its filters run in SQL, where the planner uses the columns' indexes; the
        columns' freshness test is SQLite's)."""
        if self.db is not None:
            return None
        cache = self._columns
        if cache is None:
            cache = self._columns = ColumnCache(self.folder / DB_FILE)
            weakref.finalize(self, cache.close)
        return cache

    # -- parts ---------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    def read(self):
        """One catalogue snapshot (``with store.read() as r:``)."""
        return self.catalogue.read()

    @contextmanager
    def write(self) -> Iterator[Writer]:
        """One catalogue write transaction; once it commits, its vector changes are mirrored into
        the store's vector index (call under the writer lock)."""
        with self.catalogue.write() as w:
            yield w
        changes = w.changes
        if changes.gen is None:
            return
        with self._rw.writing():
            vectors = self._vectors
            if vectors is None or vectors.gen != changes.gen - 1 or changes.dropped_all:
                if changes.dropped_all:
                    self._vectors = None
                return  # not loaded, or behind: the next sync replays the catalogue
            vectors.remove(changes.removed)
            for ids, added in zip(changes.added_ids, changes.added):
                vectors.add(ids, added)
            vectors.gen = changes.gen

    def writer_lock(self, wait: float = 0.0):
        return writer_lock(self.folder, wait, self.db)

    def update_manifest(self, **changes: Any) -> None:
        self._write_manifest(dict(self.manifest, **changes, updated_at=mf.now()))

    def _write_manifest(self, manifest: dict[str, Any]) -> None:
        mf.write_manifest(self.folder, manifest)
        self.manifest = manifest
        self._manifest_stamp = mf.stamp(self.folder)

    def manifest_changed(self) -> bool:
        """True when another process rewrote the manifest since this store read it (one stat), or
        another machine moved a shared catalogue to another model."""
        return mf.stamp(self.folder) != self._manifest_stamp or location.model_moved(self)

    def reload_manifest(self) -> None:
        moved = location.model_moved(self, force=True)
        self.manifest = location.follow_model(self) if moved else read_manifest(self.folder)
        self._manifest_stamp = mf.stamp(self.folder)

    def remove_stray_temps(self) -> list[Path]:
        """Delete temporary files a killed writer left behind (call only while holding the writer lock)."""
        removed = []
        for path in self.folder.iterdir():
            if path.name.startswith((".vectors.g", ".documents.g", f".{MANIFEST}.")) and \
                    path.name.endswith((".tmp", ".tmp.part")):
                path.unlink(missing_ok=True)
                removed.append(path)
        for path in unreferenced_data(self.folder, [p for _, p in saved_generations(self.folder)]):
            path.unlink(missing_ok=True)  # on-disk lists whose index file a killed build never wrote
            removed.append(path)
        return removed

    # -- the vector index -------------------------------------------------------------------------
    def load_vectors(self) -> VectorIndex | None:
        """The newest vector index file that is what the manifest records, or None."""
        try:
            records = read_manifest(self.folder).get(VECTORS_FILES)  # fresh: a writer adds records
        except MMSearchError:
            records = self.manifest.get(VECTORS_FILES)
        return load_latest(self.folder, records if isinstance(records, dict) else None, self.settings)

    def file_records(self) -> dict[str, dict] | None:
        """The manifest's checksums of vectors files by generation (None for old indexes)."""
        records = self.manifest.get(VECTORS_FILES)
        return records if isinstance(records, dict) else None

    def file_matches_record(self, path: Path, gen: int) -> bool:
        """True when a vectors file is the one this index wrote for ``gen`` (checked in full)."""
        records = self.file_records()
        if records is None:
            return True
        record = records.get(str(gen))
        return record is not None and digest_mismatch(path, record, full=True) is None

    @property
    def in_pgvector(self) -> bool:
        """True when the vectors live in the PostgreSQL catalogue (``--vectors pgvector``): no
        vector index file, every search one SQL statement in the reader's snapshot."""
        return self.catalogue.pgvector

    def _pgvector_index(self, reader: Reader | None = None) -> pgv.PgVectorIndex:
        pgv.check_available()  # one line when the pgvector package is missing on this machine
        if reader is not None:
            return pgv.PgVectorIndex(self.catalogue, self.dim, reader.generation(), reader)
        with self.read() as r:
            gen = r.generation()
        return pgv.PgVectorIndex(self.catalogue, self.dim, gen)

    @contextmanager
    def snapshot(self) -> Iterator[Snapshot]:
        """A catalogue snapshot and the store's vector index synced to it, for searching.

        Searches whose snapshot the vector index already matches share it and run in parallel;
        bringing it forward (after another process committed) is exclusive.
        """
        if self.in_pgvector:  # nothing to sync: the vectors are in the snapshot itself
            with self.read() as reader:
                yield Snapshot(self, reader, self._pgvector_index(reader))
            return
        with self.read() as reader, self._rw.reading():
            vectors = self._vectors
            if vectors is not None and vectors.gen == reader.generation() and vectors.dim == self.dim:
                yield Snapshot(self, reader, vectors)
                return
        with self._rw.writing(), self.read() as reader:
            self._vectors = self._synced(reader, self._vectors)
            self._keep_local_copy(reader)
            yield Snapshot(self, reader, self._vectors)

    def _keep_local_copy(self, reader: Reader) -> None:
        """A folder of a shared catalogue whose vectors file is missing or too old to catch up from
        (a machine that only serves) saves the vectors it just built, so its next start loads them
        instead of rebuilding. Only while no writer holds the folder; the database's tombstones stay
        the writer's to purge. (Called by ``snapshot`` after bringing its vectors forward.)"""
        if self.db is None or self._vectors is None:
            return
        saved = saved_generations(self.folder)
        if saved and saved[0][0] >= reader.purged_through():
            return
        lock = FileLock(str(self.folder / LOCK_FILE))
        try:
            lock.acquire(timeout=0)
        except (Timeout, OSError):
            return
        try:
            self._save_file(self._vectors)
        except MMSearchError:
            pass  # a cache: without it the next start rebuilds, as this one did
        finally:
            lock.release()

    def vectors(self) -> VectorIndex:
        """The store's vector index, brought to the catalogue's latest state (the writer's view)."""
        if self.in_pgvector:
            return self._pgvector_index()
        with self._rw.writing(), self.read() as reader:
            self._vectors = self._synced(reader, self._vectors)
            return self._vectors

    def synced_copy(self) -> VectorIndex:
        """The newest vector index file, brought to the latest state, as a separate object
        (``mmsearch check`` compares it with the catalogue)."""
        if self.in_pgvector:
            return self._pgvector_index()
        vectors = self.load_vectors()
        with self.read() as reader:
            return self._synced(reader, vectors)

    def _synced(self, reader: Reader, vectors: VectorIndex | None) -> VectorIndex:
        """``vectors`` brought exactly to the state of ``reader``'s snapshot."""
        db_gen = reader.generation()
        if vectors is not None and vectors.gen == db_gen and vectors.dim == self.dim:
            return vectors
        purged = reader.purged_through()

        def stale(v: VectorIndex | None) -> bool:
            return v is None or v.gen < purged or v.gen > db_gen or v.dim != self.dim

        if stale(vectors):
            vectors = self.load_vectors()
        if stale(vectors):
            return self._rebuild(reader)
        since = vectors.gen
        changed = reader.changed_since(since)
        vectors.remove(changed + reader.deleted_since(since))
        vectors.add(*usable_rows(reader.embeddings(changed), self.dim))
        vectors.gen = db_gen
        return vectors

    def _rebuild(self, reader: Reader, plan: IndexPlan | None = None) -> VectorIndex:
        """A new vector index from every embedding of the snapshot (never re-encoding).

        ``plan``: the index to build; by default the type the manifest asks for (``auto``:
        chosen from the item count). IVF types are trained on an evenly spread sample first.
        """
        gen = reader.generation()
        if plan is None:
            plan = self.plan_for(reader.embedding_count())
            if plan.type == ONDISK:
                # Only the writer writes files: a reader that finds no usable on-disk index
                # (the writer is building it, or it was damaged) serves PQ codes from memory.
                plan = self.plan_for(reader.embedding_count(), IVF_PQ)
        elif plan.type == ONDISK:
            return self._build_ondisk(reader, plan)
        train = None
        if plan.type != FLAT:
            blobs = reader.embedding_sample(plan.nlist * TRAIN_PER_LIST, plan.nlist)
            train = vectors_from_blobs([b for b in blobs if len(b) == self.dim * 4], self.dim)
            if len(train) == 0:
                plan = IndexPlan(FLAT)
        vectors = VectorIndex.create(self.dim, plan, train, gen=gen, settings=self.settings)
        for rows in reader.embedding_chunks():
            vectors.add(*usable_rows(rows, self.dim))
        return vectors

    def _build_ondisk(self, reader: Reader, plan: IndexPlan) -> ondisk.OnDiskVectorIndex:
        """Write an on-disk IVF of the snapshot as its generation's vectors file (writer only;
        see ``ondisk.build_index``) and drop older files (``save_vectors`` then forgets the
        tombstones it covers)."""
        gen = reader.generation()
        blobs = reader.embedding_sample(plan.nlist * ondisk.TRAIN_PER_LIST, plan.nlist)
        sample = vectors_from_blobs([b for b in blobs if len(b) == self.dim * 4], self.dim)
        chunks = (usable_rows(rows, self.dim) for rows in reader.embedding_chunks())
        vectors = ondisk.build_index(self.folder, gen, plan, sample, chunks, self.settings,
                                     record=lambda tmp: self._record_vectors_file(tmp, gen))
        remove_older(self.folder, gen)
        return vectors

    def _record_vectors_file(self, tmp: Path, gen: int) -> None:
        """Put the checksum of ``tmp``, about to become generation ``gen``'s vectors file, in the
        manifest (so a file this index wrote always has its record; the newest few are kept)."""
        records = {k: v for k, v in (self.manifest.get(VECTORS_FILES) or {}).items() if k.isdigit()}
        records[str(gen)] = file_digest(tmp)
        keep = sorted(records, key=int)[-KEEP_VECTOR_RECORDS:]
        self.update_manifest(**{VECTORS_FILES: {k: records[k] for k in keep}})

    # -- vector index type ------------------------------------------------------------------------
    @property
    def requested_index_type(self) -> str:
        """The vector index type asked for (``auto`` unless an expert chose one)."""
        return str(self.manifest.get("vector_index", {}).get("requested", AUTO))

    def plan_for(self, n: int, requested: str | None = None) -> IndexPlan:
        return choose(n, self.dim, requested or self.requested_index_type, settings=self.settings)

    def current_plan(self, vectors: VectorIndex) -> IndexPlan:
        """``vectors``' parameters, read from the index itself; ``trained_for`` from the manifest
        when the manifest describes this very index (the file wins when they disagree)."""
        recorded = self.manifest.get("vector_index", {})
        same = recorded.get("type") == vectors.kind and int(recorded.get("nlist", 0)) == vectors.nlist
        plan = vectors.plan(int(recorded.get("trained_for", 0)) if same else None)
        if same and recorded.get("rerank"):
            plan.rerank = int(recorded["rerank"])
        return plan

    def fit_vectors(self, requested: str | None = None, *, force: bool = False) -> VectorIndex | None:
        """Rebuild the vector index (writer only, under the lock) when its type has become a poor
        fit for its size or ``requested`` differs, save it, and record the choice in the manifest.

        ``requested``: None keeps the manifest's choice. ``force``: rebuild even when it fits.
        Returns the vector index, or None when the manifest says it was fitted at the catalogue's
        generation and it is not loaded (nothing changed since: nothing to load).
        """
        if self.in_pgvector:
            return self._fit_pgvector(force)
        requested = requested or self.requested_index_type
        if not force and self._vectors is None and requested == self.requested_index_type:
            recorded = self.manifest.get("vector_index", {})
            with self.read() as reader:
                if recorded.get("gen") == reader.generation() and recorded.get("tuning") == self._tuning():
                    return None  # fitted at this generation with these settings (a run that changed nothing)
        vectors = None if force else self.vectors()
        if vectors is None:
            with self.read() as reader:
                count = reader.embedding_count()
            wanted = current = choose(count, self.dim, requested, settings=self.settings)
        else:
            current = self.current_plan(vectors)
            changed = requested != self.requested_index_type
            wanted = needs_rebuild(current, vectors.ntotal, self.dim, requested, self.settings)
            if wanted is None and changed and requested != AUTO and requested != current.type:
                wanted = choose(vectors.ntotal, self.dim, requested, settings=self.settings)
            if wanted is None and vectors.kind == ONDISK and vectors.needs_fold():
                wanted = current  # fold the changes since the on-disk base into a new one
        if wanted is not None:
            with self._rw.writing(), self.read() as reader:
                vectors = self._vectors = self._rebuild(reader, wanted)
            self.save_vectors()  # the file first: it describes itself, the manifest follows
            current = vectors.plan(trained_for=vectors.ntotal)
        entry = dict(current.manifest(requested, vectors.ntotal), gen=vectors.gen, tuning=self._tuning())
        if vectors.kind == ONDISK:
            entry["data_bytes"] = vectors.data_file().stat().st_size
        if entry != self.manifest.get("vector_index"):
            self.update_manifest(vector_index=entry)
        return vectors

    def _fit_pgvector(self, force: bool) -> pgv.PgVectorIndex:
        """``fit_vectors`` of the pgvector layout: the HNSW index built once the first rows are in
        (then it takes additions as they come); ``force`` (``check --repair``, ``rebuild_vectors``)
        writes every vector row again from the stored embeddings, without the index (built after:
        many times faster), all in one transaction. The manifest's entry says what there is."""
        with self.write() as w:
            if force:
                w.refill_pgvector(self.dim)
            w.ensure_pgvector_index()
        vectors = self.vectors()
        entry = {"type": pgv.PGVECTOR, "requested": pgv.PGVECTOR, "items": vectors.ntotal,
                 "hnsw": {"m": pgv.HNSW_M, "ef_construction": pgv.HNSW_EF_CONSTRUCTION}}
        if entry != self.manifest.get("vector_index"):
            self.update_manifest(vector_index=entry)
        return vectors

    def _tuning(self) -> list:
        """The settings that choose the vector index (``VectorSettings`` but the GPU switch)."""
        s = self.settings
        return [s.flat_max, s.nlist, s.nprobe, s.rerank]

    def save_vectors(self) -> None:
        """Persist the vector index, brought up to date (writer only, under the lock), with its
        checksum recorded in the manifest before the file is visible; then forget the tombstones
        it covers, but those the document index still has to take in (``docindex``)."""
        if self.in_pgvector:  # no file to save: no reader needs the tombstones
            with self.write() as w:
                w.purge_tombstones(w.generation())
            return
        through = self._saved_current() if self._vectors is None else None
        if through is None:  # (else a run that changed nothing: no file to load, none to write)
            vectors = self.vectors()
            with self._rw.writing():  # saving copies memory-mapped cells into memory first
                # (an on-disk IVF writes nothing: its changes since are the catalogue's to replay)
                self._save_file(vectors)
            through = vectors.durable_gen
        held = docindex.tombstones_held_from(self)
        through = through if held is None else min(through, held)
        with self.read() as reader:
            if through <= reader.purged_through():
                return  # nothing newer to forget
        with self.write() as w:
            w.purge_tombstones(through)

    def _saved_current(self) -> int | None:
        """The catalogue's generation when the newest vectors file already holds it and is the
        one the manifest records (cheap check), else None."""
        files = saved_generations(self.folder)
        with self.read() as reader:
            gen = reader.generation()
        if not files or files[0][0] != gen:
            return None
        record = (self.file_records() or {}).get(str(gen))
        return gen if record is not None and digest_mismatch(files[0][1], record) is None else None

    def _save_file(self, vectors: VectorIndex) -> None:
        """Write ``vectors`` as this folder's file of its generation, its checksum in the manifest."""
        try:
            vectors.save(self.folder, vectors.gen,
                         before_replace=lambda tmp: self._record_vectors_file(tmp, vectors.gen))
        except (OSError, RuntimeError) as exc:  # faiss reports failed writes as RuntimeError
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).strip().splitlines()[-1]
            raise IndexWriteError(
                f"cannot save vectors in {self.folder}: {reason} (the previous vectors file is kept; "
                f"the database is complete and the next run catches up)"
            ) from exc

    def forget_vectors(self) -> None:
        """Delete every saved vectors file (the model changed: none describes the catalogue)."""
        with self._rw.writing():
            self._vectors = None
            for _, path in saved_generations(self.folder) + data_files(self.folder):
                path.unlink(missing_ok=True)

    # -- description ------------------------------------------------------------------------------
    def raise_if_never_indexed(self) -> None:
        """EmptyIndexError when no item was ever saved and no indexing run ever completed."""
        with self.read() as r:
            if r.ever_indexed():
                return
        raise empty_index_error(self.folder)

    def stats(self) -> dict[str, Any]:
        with self.read() as r:
            counts = r.modality_counts()
            by_modality = info_counts(counts, r.file_count)  # images, texts, videos (files), video_frames
            roots = [row.path for row in r.roots()]
            generation = r.generation()
        files = saved_generations(self.folder)
        disk = sum(p.stat().st_size for p in self.folder.iterdir() if p.is_file())
        return {
            "index": str(self.folder),
            "database": location.postgres.redact(self.db) if self.db else "sqlite",
            "schema_version": self.manifest["schema_version"],
            "model": self.manifest["model"],
            "dim": self.dim,
            "vector_index": self.manifest.get("vector_index", {}),
            "items": sum(counts.values()),
            **by_modality,  # a video's frames are counted in "items" and "video_frames", its file in "videos"
            "roots": roots,
            "generation": generation,
            "vectors_saved_generation": files[0][0] if files else None,
            "vectors_up_to_date": self.in_pgvector or (bool(files) and files[0][0] == generation),
            "vectors": pgv.PGVECTOR if self.in_pgvector else pgv.FAISS,
            "disk_bytes": disk,
            "created_at": self.manifest.get("created_at"),
            "updated_at": self.manifest.get("updated_at"),
        }


class Snapshot:
    """One catalogue snapshot and the vector index synced to it (see ``IndexStore.snapshot``)."""

    def __init__(self, store: IndexStore, reader: Reader, vectors: VectorIndex):
        self.store = store
        self.reader = reader
        self.vectors = vectors

    @property
    def total(self) -> int:
        return self.vectors.ntotal

    def search(self, query: np.ndarray, fetch: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top ``fetch`` (scores, ids) with exact cosine scores, best first (``allowed``: among
        these ids only).

        Lossy index types return ``rerank_depth`` candidates, re-scored with their float32
        embeddings from this snapshot.
        """
        vectors = self.vectors
        if not vectors.lossy:
            return vectors.search(query, fetch, allowed=allowed)
        recorded = self.store.manifest.get("vector_index", {})
        rerank = int(recorded["rerank"]) if recorded.get("type") == vectors.kind and recorded.get("rerank") else None
        _, ids = vectors.search(query, vectors.rerank_depth(fetch, rerank), allowed=allowed)
        if len(ids) == 0:
            return np.empty(0, np.float32), np.empty(0, np.int64)
        return self.score(query, ids, fetch)

    def score(self, query: np.ndarray, ids: np.ndarray, fetch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Exact cosine scores of the items ``ids`` (those with a vector), best first; the top
        ``fetch`` of them when given."""
        dim = self.store.dim
        rows = [(i, blob) for i, blob in self.reader.embeddings(ids.tolist()) if len(blob) == dim * 4]
        if not rows:
            return np.empty(0, np.float32), np.empty(0, np.int64)
        found = np.asarray([r[0] for r in rows], np.int64)
        exact = vectors_from_blobs([r[1] for r in rows], dim) @ np.asarray(query, np.float32).reshape(-1)
        order = np.argsort(-exact, kind="stable")[:fetch]
        return exact[order].astype(np.float32), found[order]
