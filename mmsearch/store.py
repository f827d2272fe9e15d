"""One index store on disk: manifest, SQLite database, FAISS vectors and the writer lock.

``IndexStore`` knows nothing about models or files on the user's disk; it keeps the three parts
of an index in agreement. The database is authoritative; the FAISS file is brought up to date
from it by ``sync`` (replaying rows whose ``gen`` is newer than the file, and tombstones), so a
reader always sees exactly the committed state of its database snapshot.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock, Timeout
from sqlalchemy import func, select
from sqlalchemy.exc import DatabaseError, OperationalError
from sqlalchemy.orm import Session

from . import __version__
from .config import SCHEMA_VERSION
from .db import (
    GENERATION,
    PURGED_THROUGH,
    Embedding,
    Item,
    Root,
    Tombstone,
    create_schema,
    MODEL_KEY,
    get_int,
    get_text,
    make_engine,
    set_int,
    set_text,
    upgrade_schema,
)
from .errors import (
    DamagedManifestError,
    EmptyIndexError,
    IndexLockedError,
    IndexNotFoundError,
    IndexVersionError,
    IndexWriteError,
    MMSearchError,
    NotAnIndexError,
)
from .fsutil import atomic_write_json, file_digest
from .vectors import AUTO, FLAT, TRAIN_PER_LIST, IndexPlan, VectorIndex, choose, needs_rebuild, saved_generations

MANIFEST = "manifest.json"
DB_FILE = "mmsearch.db"
LOCK_FILE = ".lock"
# Manifest key of the checksums of the vectors files this index wrote, by generation.
VECTORS_FILES = "vectors_files"
KEEP_VECTOR_RECORDS = 4
_OWN_FILES = (DB_FILE, f"{DB_FILE}-wal", f"{DB_FILE}-shm", f"{DB_FILE}-journal", LOCK_FILE)
# Rows fetched per query when replaying embeddings into FAISS.
_SYNC_CHUNK = 50_000
# Ids per IN (...) query (SQLite allows 32766 bound parameters).
_IN_CHUNK = 30_000


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of the index in ``folder``, checked enough that every reader can rely on it.

    Raises ``EmptyIndexError`` for a folder a first run left without a manifest,
    ``NotAnIndexError`` for a missing, unreadable or incomplete one (naming what is wrong and
    what to do), and ``IndexVersionError`` for one written by a newer mmsearch.
    """
    manifest_path = folder / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        if _holds_items(folder / DB_FILE, unreadable=False):
            raise DamagedManifestError(
                f"{manifest_path} is missing from an index that holds items; "
                f"`mmsearch check --repair` rebuilds it from the database"
            ) from exc
        if folder.is_dir() and IndexStore.holds_only_own_files(folder):
            raise EmptyIndexError(
                f"empty index: nothing indexed yet in {folder} (a first indexing run stopped before it saved "
                f"anything); run `mmsearch index PATH` to index a folder, or delete {folder}"
            ) from exc
        raise NotAnIndexError(f"{folder} is not an mmsearch index (no {MANIFEST})") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NotAnIndexError(f"{manifest_path} is unreadable ({exc}); `mmsearch check --repair` rebuilds it from the database") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("schema_version"), int):
        raise NotAnIndexError(f"{manifest_path} has no schema_version: not an mmsearch manifest")
    if manifest["schema_version"] > SCHEMA_VERSION:
        raise IndexVersionError(
            f"{folder} was written by a newer mmsearch (schema {manifest['schema_version']}, "
            f"this version reads up to {SCHEMA_VERSION}); upgrade mmsearch"
        )
    model, dim = manifest.get("model"), manifest.get("dim")
    if not isinstance(model, dict) or not isinstance(model.get("name"), str) or not model.get("fingerprint") \
            or not isinstance(dim, int) or isinstance(dim, bool) or dim <= 0:
        raise DamagedManifestError(
            f"{manifest_path} is damaged (the model or the vector dimension is missing or invalid); "
            f"`mmsearch check --repair` rebuilds it from the database"
        )
    return manifest


def _holds_items(db_path: Path, unreadable: bool = True) -> bool:
    """True when the database at ``db_path`` exists and holds at least one item (``unreadable``:
    the answer for a database that cannot be read)."""
    if not db_path.is_file():
        return False
    engine = make_engine(db_path)
    try:
        with Session(engine) as session:
            return session.scalar(select(Item.id).limit(1)) is not None
    except (OperationalError, DatabaseError):
        return unreadable
    finally:
        engine.dispose()


def vectors_from_blobs(blobs: list[bytes], dim: int) -> np.ndarray:
    if not blobs:
        return np.empty((0, dim), np.float32)
    return np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), dim)


@contextmanager
def writer_lock(folder: Path, wait: float = 0.0) -> Iterator[None]:
    """Hold the single-writer lock of an index folder; ``wait`` seconds before giving up (-1: forever)."""
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
        yield
    finally:
        lock.release()


def embedding_chunks(session: Session, size: int = _SYNC_CHUNK) -> Iterator[list]:
    """Every (item_id, vector blob) row of the snapshot, in id order, ``size`` rows at a time."""
    last = 0
    while True:
        rows = session.execute(
            select(Embedding.item_id, Embedding.vector)
            .where(Embedding.item_id > last)
            .order_by(Embedding.item_id)
            .limit(size)
        ).all()
        if not rows:
            return
        yield rows
        last = rows[-1][0]


class IndexStore:
    """Owns an index folder. Open with ``IndexStore.open`` or ``IndexStore.create``."""

    def __init__(self, folder: Path, manifest: dict[str, Any]):
        self.folder = folder
        self.manifest = manifest
        self._manifest_stamp = _stamp(folder / MANIFEST)
        self.engine = make_engine(folder / DB_FILE)

    # -- opening -----------------------------------------------------------------------------
    @staticmethod
    def is_index(folder: Path) -> bool:
        return (Path(folder) / MANIFEST).is_file()

    @classmethod
    def open(cls, folder: str | Path) -> IndexStore:
        folder = Path(folder).expanduser().absolute()
        if not folder.exists():
            raise IndexNotFoundError(f"index not found: {folder} (create it with `mmsearch index PATH`)")
        if not folder.is_dir():
            raise NotAnIndexError(f"{folder} is not a folder")
        manifest = read_manifest(folder)
        if not (folder / DB_FILE).is_file():
            raise NotAnIndexError(f"{folder} has a manifest but no database ({DB_FILE})")
        store = cls(folder, manifest)
        try:
            with store.session() as session:
                get_int(session, GENERATION)
            upgrade_schema(store.engine)
            store._check_manifest_against_database()
        except (OperationalError, DatabaseError) as exc:
            store.close()
            raise NotAnIndexError(f"{folder / DB_FILE} is not a readable mmsearch database: {exc.orig}") from exc
        except MMSearchError:
            store.close()
            raise
        return store

    def _check_manifest_against_database(self) -> None:
        """DamagedManifestError when the manifest's model or dimension is not the database's."""
        recorded = self.recorded_model()
        if recorded is not None:
            model, dim = recorded["model"], recorded.get("dim")
            if model.get("fingerprint") != self.manifest["model"].get("fingerprint") or dim != self.dim:
                raise DamagedManifestError(
                    f"{self.folder / MANIFEST} names another model or dimension ({self.manifest['model'].get('name')}, "
                    f"{self.dim}) than the database records ({model.get('name')}, {dim}); "
                    f"`mmsearch check --repair` rebuilds it from the database"
                )
            return
        with self.session() as session:  # an index from before the database kept the model
            blob = session.scalar(select(Embedding.vector).limit(1))
        if blob is not None and len(blob) != self.dim * 4:
            raise DamagedManifestError(
                f"{self.folder / MANIFEST} says the vectors have {self.dim} dimensions but the database holds "
                f"{len(blob) // 4}-dimensional ones; the manifest is damaged"
            )

    @staticmethod
    def recorded_model_of(folder: Path) -> dict[str, Any] | None:
        """The model identity the database in ``folder`` records, read without the manifest."""
        engine = make_engine(Path(folder) / DB_FILE)
        try:
            with Session(engine) as session:
                raw = get_text(session, MODEL_KEY)
        except (OperationalError, DatabaseError):
            return None
        finally:
            engine.dispose()
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            return None
        return data if isinstance(data, dict) and isinstance(data.get("model"), dict) else None

    @staticmethod
    def rebuild_manifest(folder: Path, recorded: dict[str, Any]) -> None:
        """Write a new manifest from what the database records (call under the writer lock).
        Derived files it described (ONNX export, vector index parameters) are found again by
        the next run."""
        old: dict[str, Any] = {}
        try:
            old = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
            old = old if isinstance(old, dict) else {}
        except (OSError, ValueError):
            pass
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "mmsearch_version": __version__,
            "created_at": old.get("created_at") if isinstance(old.get("created_at"), str) else _now(),
            "updated_at": _now(),
            "model": recorded["model"],
            "dim": int(recorded["dim"]),
            "vector_index": {"type": "flat", "requested": AUTO},
        }
        atomic_write_json(folder / MANIFEST, manifest)

    @staticmethod
    def holds_only_own_files(folder: Path) -> bool:
        """True when ``folder`` holds what an unfinished first run leaves behind (its lock, its
        database) and nothing else."""
        names = [p.name for p in folder.iterdir()]
        return bool(names) and all(n in _OWN_FILES or n.startswith(f".{MANIFEST}.") for n in names)

    @staticmethod
    def remove_own_files(folder: Path, remove_folder: bool) -> None:
        """Delete what a failed first run created in ``folder`` (and the folder, if it made it)."""
        import shutil

        if not folder.is_dir():
            return
        for path in folder.iterdir():
            if path.name in _OWN_FILES or path.name.startswith((f".{MANIFEST}.", ".vectors.g", ".text_onnx.")) \
                    or path.name in (MANIFEST, "clip_bpe_vocab.txt.gz") or path.name.startswith(("vectors.g", "text_encoder.")):
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

    @classmethod
    def create(cls, folder: str | Path, model_identity: dict, dim: int) -> IndexStore:
        folder = Path(folder).expanduser().absolute()
        cls.check_creatable(folder)
        folder.mkdir(parents=True, exist_ok=True)
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "mmsearch_version": __version__,
            "created_at": _now(),
            "updated_at": _now(),
            "model": model_identity,
            "dim": dim,
            "vector_index": {"type": "flat"},
        }
        store = cls(folder, manifest)
        create_schema(store.engine)
        with store.session() as session, session.begin():
            store.record_model(session, model_identity, dim)
        # The manifest is written last: its presence is what makes the folder an index.
        atomic_write_json(folder / MANIFEST, manifest)
        store._manifest_stamp = _stamp(folder / MANIFEST)
        return store

    @staticmethod
    def record_model(session: Session, identity: dict, dim: int) -> None:
        """Keep the model identity in the database too (inside the caller's write transaction),
        so a damaged manifest can be rebuilt from it (``mmsearch check --repair``)."""
        set_text(session, MODEL_KEY, json.dumps({"model": identity, "dim": int(dim)}, sort_keys=True))

    def recorded_model(self) -> dict[str, Any] | None:
        """{"model": identity, "dim": n} as the database records it (None for old indexes)."""
        with self.session() as session:
            raw = get_text(session, MODEL_KEY)
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            return None
        return data if isinstance(data, dict) and isinstance(data.get("model"), dict) else None

    def close(self) -> None:
        self.engine.dispose()

    # -- parts -------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def update_manifest(self, **changes: Any) -> None:
        manifest = dict(self.manifest, **changes, updated_at=_now())
        atomic_write_json(self.folder / MANIFEST, manifest)
        self.manifest = manifest
        self._manifest_stamp = _stamp(self.folder / MANIFEST)

    def manifest_changed(self) -> bool:
        """True when another process rewrote the manifest since this store read it (one stat)."""
        return _stamp(self.folder / MANIFEST) != self._manifest_stamp

    def reload_manifest(self) -> None:
        self.manifest = read_manifest(self.folder)
        self._manifest_stamp = _stamp(self.folder / MANIFEST)

    def remove_stray_temps(self) -> list[Path]:
        """Delete temporary files a killed writer left behind (call only while holding the writer lock)."""
        removed = []
        for path in self.folder.iterdir():
            if path.name.startswith((".vectors.g", f".{MANIFEST}.")) and path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)
                removed.append(path)
        return removed

    def write_lock(self, wait: float = 0.0):
        return writer_lock(self.folder, wait)

    # -- vectors -----------------------------------------------------------------------------
    def load_vectors(self) -> VectorIndex | None:
        """The newest FAISS file that is what the manifest records (call before opening the
        session that ``sync`` will use)."""
        try:
            records = read_manifest(self.folder).get(VECTORS_FILES)  # fresh: a writer adds records
        except MMSearchError:
            records = self.manifest.get(VECTORS_FILES)
        return VectorIndex.load_latest(self.folder, records if isinstance(records, dict) else None)

    def sync(self, session: Session, vectors: VectorIndex | None) -> VectorIndex:
        """``vectors`` brought exactly to the state of ``session``'s database snapshot."""
        db_gen = get_int(session, GENERATION)
        if vectors is not None and vectors.gen == db_gen and vectors.dim == self.dim:
            return vectors
        purged = get_int(session, PURGED_THROUGH)
        if vectors is None or vectors.gen < purged or vectors.gen > db_gen or vectors.dim != self.dim:
            vectors = self.load_vectors()
        if vectors is None or vectors.gen < purged or vectors.gen > db_gen or vectors.dim != self.dim:
            return self.rebuild(session)
        since = vectors.gen
        changed = list(session.scalars(select(Item.id).where(Item.gen > since)))
        deleted = list(session.scalars(select(Tombstone.item_id).where(Tombstone.gen > since)))
        vectors.remove(changed + deleted)
        for start in range(0, len(changed), _SYNC_CHUNK):
            chunk = changed[start:start + _SYNC_CHUNK]
            rows = session.execute(
                select(Embedding.item_id, Embedding.vector).where(Embedding.item_id.in_(chunk))
            ).all()
            vectors.add(np.array([r[0] for r in rows], np.int64), vectors_from_blobs([r[1] for r in rows], self.dim))
        vectors.gen = db_gen
        return vectors

    def rebuild(self, session: Session, plan: IndexPlan | None = None) -> VectorIndex:
        """A new FAISS index from every embedding in the database snapshot (never re-encoding).

        ``plan``: the index to build; by default the type the manifest asks for (``auto``:
        chosen from the item count). IVF types are trained on an evenly spread sample first.
        """
        gen = get_int(session, GENERATION)
        if plan is None:
            plan = self.plan_for(session.scalar(select(func.count()).select_from(Embedding)) or 0)
        train = None
        if plan.type != FLAT:
            total = session.scalar(select(func.count()).select_from(Embedding)) or 0
            step = max(1, total // max(1, plan.nlist * TRAIN_PER_LIST))
            rows = session.execute(
                select(Embedding.vector).where(Embedding.item_id % step == 0).order_by(Embedding.item_id)
            ).all()
            if len(rows) < min(total, plan.nlist):  # ids unevenly spread: take the first rows instead
                rows = session.execute(select(Embedding.vector).order_by(Embedding.item_id)
                                       .limit(plan.nlist * TRAIN_PER_LIST)).all()
            train = vectors_from_blobs([r[0] for r in rows if len(r[0]) == self.dim * 4], self.dim)
            if len(train) == 0:
                plan = IndexPlan(FLAT)
        vectors = VectorIndex.create(self.dim, plan, train, gen=gen)
        for rows in embedding_chunks(session):
            vectors.add(np.array([r[0] for r in rows], np.int64), vectors_from_blobs([r[1] for r in rows], self.dim))
        return vectors

    # -- vector index type -------------------------------------------------------------------
    @property
    def requested_index_type(self) -> str:
        """The vector index type asked for (``auto`` unless an expert chose one)."""
        return str(self.manifest.get("vector_index", {}).get("requested", AUTO))

    def plan_for(self, n: int, requested: str | None = None) -> IndexPlan:
        return choose(n, self.dim, requested or self.requested_index_type)

    def current_plan(self, vectors: VectorIndex) -> IndexPlan:
        """``vectors``' parameters, read from the index itself; ``trained_for`` from the manifest
        when the manifest describes this very index (the file wins when they disagree)."""
        recorded = self.manifest.get("vector_index", {})
        same = recorded.get("type") == vectors.kind and int(recorded.get("nlist", 0)) == vectors.nlist
        plan = vectors.plan(int(recorded.get("trained_for", 0)) if same else None)
        if same and recorded.get("rerank"):
            plan.rerank = int(recorded["rerank"])
        return plan

    def fit_vectors(self, vectors: VectorIndex | None, requested: str | None = None, *, force: bool = False) -> VectorIndex:
        """Rebuild ``vectors`` (synced, writer only, under the lock) when its type has become a
        poor fit for its size or ``requested`` differs; record the choice in the manifest.

        ``requested``: None keeps the manifest's choice. ``force``: rebuild even when it fits.
        ``vectors`` None: rebuild from the database as ``requested``.
        """
        requested = requested or self.requested_index_type
        if vectors is None:  # forced rebuild with nothing loaded: count the database's embeddings
            with self.session() as session:
                count = session.scalar(select(func.count()).select_from(Embedding)) or 0
            wanted = current = choose(count, self.dim, requested)
        else:
            current = self.current_plan(vectors)
            changed = requested != self.requested_index_type
            wanted = needs_rebuild(current, vectors.ntotal, self.dim, requested)
            if wanted is None and (force or (changed and requested != AUTO and requested != current.type)):
                wanted = choose(vectors.ntotal, self.dim, requested)
        if wanted is not None:
            with self.session() as session:
                vectors = self.rebuild(session, wanted)
            self.save_vectors(vectors)  # the file first: it describes itself, the manifest follows
            current = vectors.plan(trained_for=vectors.ntotal)
        entry = current.manifest(requested, vectors.ntotal)
        if entry != self.manifest.get("vector_index"):
            self.update_manifest(vector_index=entry)
        return vectors

    def search(self, session: Session, vectors: VectorIndex, query: np.ndarray, fetch: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``fetch`` (scores, ids) with exact cosine scores, best first.

        Lossy index types return ``rerank_depth`` candidates, which are re-scored with their
        float32 embeddings read from ``session`` (the same snapshot ``vectors`` was synced to).
        """
        if not vectors.lossy:
            return vectors.search(query, fetch)
        recorded = self.manifest.get("vector_index", {})
        rerank = int(recorded["rerank"]) if recorded.get("type") == vectors.kind and recorded.get("rerank") else None
        _, ids = vectors.search(query, vectors.rerank_depth(fetch, rerank))
        if len(ids) == 0:
            return np.empty(0, np.float32), np.empty(0, np.int64)
        found: list[int] = []
        blobs: list[bytes] = []
        candidates = ids.tolist()
        for start in range(0, len(candidates), _IN_CHUNK):
            for item_id, blob in session.execute(
                select(Embedding.item_id, Embedding.vector).where(Embedding.item_id.in_(candidates[start:start + _IN_CHUNK]))
            ):
                if len(blob) == self.dim * 4:
                    found.append(item_id)
                    blobs.append(blob)
        exact = vectors_from_blobs(blobs, self.dim) @ np.asarray(query, np.float32).reshape(-1)
        order = np.argsort(-exact, kind="stable")[:fetch]
        return exact[order].astype(np.float32), np.asarray(found, np.int64)[order]

    def save_vectors(self, vectors: VectorIndex) -> None:
        """Persist ``vectors`` (writer only, under the lock) and drop tombstones it covers."""
        def record(tmp: Path) -> None:
            # The checksum is in the manifest before the file is visible under its name, so a
            # file this index wrote always has its record; the newest few are kept.
            records = {k: v for k, v in (self.manifest.get(VECTORS_FILES) or {}).items() if k.isdigit()}
            records[str(vectors.gen)] = file_digest(tmp)
            keep = sorted(records, key=int)[-KEEP_VECTOR_RECORDS:]
            self.update_manifest(**{VECTORS_FILES: {k: records[k] for k in keep}})

        try:
            vectors.save(self.folder, vectors.gen, before_replace=record)
        except (OSError, RuntimeError) as exc:  # faiss reports failed writes as RuntimeError
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).strip().splitlines()[-1]
            raise IndexWriteError(
                f"cannot save vectors in {self.folder}: {reason} (the previous vectors file is kept; "
                f"the database is complete and the next run catches up)"
            ) from exc
        with self.session() as session, session.begin():
            session.query(Tombstone).filter(Tombstone.gen <= vectors.gen).delete()
            if vectors.gen > get_int(session, PURGED_THROUGH):
                set_int(session, PURGED_THROUGH, vectors.gen)

    # -- description -------------------------------------------------------------------------
    def raise_if_never_indexed(self) -> None:
        """EmptyIndexError when no item was ever saved and no indexing run ever completed."""
        with self.session() as session:
            if session.scalar(select(Item.id).limit(1)) is not None:
                return
            if session.scalar(select(Root.path).where(Root.indexed_at.is_not(None)).limit(1)) is not None:
                return
        raise EmptyIndexError(
            f"empty index: nothing indexed yet in {self.folder} (a first indexing run stopped before it "
            f"saved anything); run `mmsearch index` again to resume it"
        )

    def stats(self) -> dict[str, Any]:
        with self.session() as session:
            counts = dict(session.execute(select(Item.modality, func.count()).group_by(Item.modality)).all())
            roots = [r.path for r in session.scalars(select(Root).order_by(Root.path))]
            generation = get_int(session, GENERATION)
        files = saved_generations(self.folder)
        disk = sum(p.stat().st_size for p in self.folder.iterdir() if p.is_file())
        return {
            "index": str(self.folder),
            "schema_version": self.manifest["schema_version"],
            "model": self.manifest["model"],
            "dim": self.dim,
            "vector_index": self.manifest.get("vector_index", {}),
            "items": sum(counts.values()),
            "images": counts.get("image", 0),
            "texts": counts.get("text", 0),
            "roots": roots,
            "generation": generation,
            "vectors_saved_generation": files[0][0] if files else None,
            "disk_bytes": disk,
            "created_at": self.manifest.get("created_at"),
            "updated_at": self.manifest.get("updated_at"),
        }

