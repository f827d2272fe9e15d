"""``mmsearch check``: verify an index and, with ``repair``, fix what can be fixed.

What is checked, each reported as a ``Problem`` of one ``kind``:

- ``manifest``: the manifest is missing, unreadable, or lacks the model/dimension (not repairable:
  the model identity cannot be guessed); ``schema``: written by a newer mmsearch (not repairable:
  upgrade); ``database``: SQLite's own integrity check fails (not repairable here).
- ``generation``: rows carry a generation newer than the counter (readers could miss them);
  repair raises the counter.
- ``missing_vector`` / ``bad_vector``: an item without an embedding, or with one of the wrong
  size or with non-finite values; repair re-embeds it from its file (or drops it if the file is gone).
- ``orphan_vector``: an embedding whose item row is gone; repair deletes it.
- ``vectors_file``: a FAISS file that cannot be read or claims a generation newer than the
  database; ``vector_mismatch``: the FAISS ids or vectors, brought up to date, differ from the
  database. Repair rebuilds the FAISS file from the database (the database is authoritative).
- ``vanished_file``: items whose file no longer exists; repair drops them.
  ``changed_file``: items whose file changed since indexing; repair re-embeds them.
- ``stray_temp``: temporary files left by a killed writer; repair deletes them.

Repairs run under the index's writer lock, so they never interleave with an indexing run.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select, text, update

from .config import SCHEMA_VERSION
from .corpus import FileEntry, Record, file_kind, read_records
from .db import GENERATION, Embedding, Item, Root, Tombstone, get_int, next_generation, set_int
from .errors import DamagedManifestError, EmptyIndexError, IndexVersionError, MMSearchError
from .fsutil import digest_mismatch, printable_path
from .indexer import UNSEALED, Indexer
from .library import LibraryRoot, under_any
from .store import DB_FILE, MANIFEST, VECTORS_FILES, IndexStore, embedding_chunks, read_manifest, vectors_from_blobs, writer_lock
from .vectors import VectorIndex, saved_generations

_TEMP_RE = re.compile(r"^\.(vectors\.g\d+\.faiss|manifest\.json)\..*\.tmp$")
# Rows read per query while comparing the database with the FAISS index.
_CHUNK = 20_000


@dataclass
class Problem:
    kind: str
    detail: str
    count: int = 1
    repairable: bool = True
    repaired: bool = False
    examples: list[str] = field(default_factory=list)


@dataclass
class CheckReport:
    index: str
    items: int = 0
    problems: list[Problem] = field(default_factory=list)
    # What is worth knowing but is not damage (items waiting for an unavailable folder...).
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing is wrong any more (no problems, or all repaired)."""
        return all(p.repaired for p in self.problems)

    def as_dict(self) -> dict[str, Any]:
        return {"index": printable_path(self.index), "items": self.items, "ok": self.ok,
                "problems": [dict(asdict(p), detail=printable_path(p.detail), examples=[printable_path(e) for e in p.examples])
                             for p in self.problems],
                "notes": [printable_path(n) for n in self.notes]}


def _problem(report: CheckReport, kind: str, detail: str, examples: list[str] | None = None,
             count: int = 1, repairable: bool = True) -> Problem:
    problem = Problem(kind, detail, count, repairable, examples=(examples or [])[:5])
    report.problems.append(problem)
    return problem


def _removable_files(report: CheckReport, kind: str, detail: str, paths: list[Path], repair: bool) -> None:
    """Report files that should not be there; with ``repair``, delete them."""
    if not paths:
        return
    problem = _problem(report, kind, detail, [p.name for p in paths], count=len(paths))
    if repair:
        for path in paths:
            if path.is_dir() and not path.is_symlink():
                # Not ours to delete: moved out of the way of the file names mmsearch writes.
                path.rename(path.with_name(f"{path.name}.damaged-{os.getpid()}"))
            else:
                path.unlink(missing_ok=True)
        problem.repaired = True


def check_folder(
    folder: str | Path,
    *,
    repair: bool = False,
    encoder_factory: Callable[[IndexStore], Any] | None = None,
    wait: float = 0.0,
) -> CheckReport:
    """Check the index in ``folder``; ``repair`` fixes what can be fixed.

    ``encoder_factory(store)`` returns the model used to re-embed items (only called when a
    repair needs it). Missing folders raise ``IndexNotFoundError``; every other kind of damage
    is reported in the returned ``CheckReport``.
    """
    folder = Path(folder).expanduser().absolute()
    report = CheckReport(str(folder))
    try:
        store = IndexStore.open(folder)
    except EmptyIndexError:
        raise  # nothing to check: say so in one line
    except IndexVersionError as exc:
        _problem(report, "schema", str(exc), repairable=False)
        return report
    except MMSearchError as exc:
        if not folder.exists():
            raise
        if _manifest_readable(folder) and not isinstance(exc, DamagedManifestError):
            _problem(report, "database", str(exc), repairable=False)
            return report
        store = _manifest_problem(folder, report, exc, repair, wait)
        if store is None:
            return report
    try:
        if repair:
            with writer_lock(folder, wait):
                _check(store, report, repair=True, encoder_factory=encoder_factory)
        else:
            _check(store, report, repair=False, encoder_factory=encoder_factory)
    finally:
        store.close()
    return report


def _manifest_readable(folder: Path) -> bool:
    try:
        read_manifest(folder)
    except MMSearchError:
        return False
    return True


def _manifest_problem(folder: Path, report: CheckReport, exc: MMSearchError, repair: bool, wait: float) -> IndexStore | None:
    """Report a missing, unreadable or damaged manifest; with ``repair``, rebuild it from the
    model identity the database records and return the reopened store."""
    if not (folder / DB_FILE).is_file():
        _problem(report, "manifest", str(exc), repairable=False)
        return None
    recorded = IndexStore.recorded_model_of(folder)
    if recorded is None:
        _problem(report, "manifest", f"{exc} (this index's database predates the copy of the model identity it "
                                     f"keeps now, so the manifest cannot be rebuilt)", repairable=False)
        return None
    problem = _problem(report, "manifest", str(exc))
    if not repair:
        return None
    with writer_lock(folder, wait):
        IndexStore.rebuild_manifest(folder, recorded)
    problem.repaired = True
    problem.detail += " (rebuilt from the database)"
    return IndexStore.open(folder)


def _check(store: IndexStore, report: CheckReport, *, repair: bool, encoder_factory) -> None:
    manifest = store.manifest
    if not isinstance(manifest.get("model"), dict) or not isinstance(manifest.get("dim"), int):
        _problem(report, "manifest", f"{store.folder / MANIFEST} lacks the model or the vector dimension",
                 repairable=False)
        return
    if manifest["schema_version"] < 1 or manifest["schema_version"] > SCHEMA_VERSION:
        _problem(report, "schema", f"unknown schema version {manifest['schema_version']}", repairable=False)
        return
    with store.engine.connect() as conn:
        result = [row[0] for row in conn.execute(text("PRAGMA quick_check"))]
    if result != ["ok"]:
        _problem(report, "database", "SQLite integrity check failed: " + "; ".join(result[:3]), repairable=False)
        return

    _check_stray_temps(store, report, repair)
    with store.session() as session:
        report.items = session.scalar(select(func.count()).select_from(Item)) or 0
    _check_generation(store, report, repair)
    reembed = _check_rows(store, report, repair)
    reembed += _check_files(store, report, repair)
    if repair and reembed:
        _reembed(store, reembed, encoder_factory, report)
    _check_vectors(store, report, repair)
    _check_onnx_text(store, report, repair, encoder_factory)
    if repair:
        with store.session() as session:
            report.items = session.scalar(select(func.count()).select_from(Item)) or 0


def _check_stray_temps(store: IndexStore, report: CheckReport, repair: bool) -> None:
    temps = [p for p in store.folder.iterdir() if _TEMP_RE.match(p.name)]
    _removable_files(report, "stray_temp", f"{len(temps)} temporary file(s) left by an interrupted write", temps, repair)


def _check_generation(store: IndexStore, report: CheckReport, repair: bool) -> None:
    with store.session() as session:
        gen = get_int(session, GENERATION)
        top = max(session.scalar(select(func.max(Item.gen))) or 0,
                  session.scalar(select(func.max(Tombstone.gen))) or 0)
    if top > gen:
        problem = _problem(report, "generation", f"rows carry generation {top} but the counter says {gen}")
        if repair:
            with store.session() as session, session.begin():
                set_int(session, GENERATION, top + 1)
            problem.repaired = True


def _check_rows(store: IndexStore, report: CheckReport, repair: bool) -> list[int]:
    """Item/embedding agreement; returns ids of items to re-embed."""
    dim_bytes = store.dim * 4
    missing: list[int] = []
    bad: list[int] = []
    orphans: list[int] = []
    with store.session() as session:
        missing = list(session.scalars(
            select(Item.id).outerjoin(Embedding, Embedding.item_id == Item.id).where(Embedding.item_id.is_(None))
        ))
        orphans = list(session.scalars(
            select(Embedding.item_id).outerjoin(Item, Item.id == Embedding.item_id).where(Item.id.is_(None))
        ))
        for rows in embedding_chunks(session, _CHUNK):
            for item_id, blob in rows:
                if len(blob) != dim_bytes or not np.isfinite(np.frombuffer(blob, np.float32)).all():
                    bad.append(item_id)
    bad = [i for i in bad if i not in set(orphans)]
    reembed: list[int] = []
    waiting = _under_unavailable_roots(store, missing)
    if waiting:
        report.notes.append(f"{len(waiting)} item(s) under folders that cannot be read now wait for their vectors "
                            f"(the index's model changed); the next `mmsearch index` after the folder is back embeds them")
        missing = [i for i in missing if i not in waiting]
    if missing:
        problem = _problem(report, "missing_vector", f"{len(missing)} item(s) have no vector",
                           [str(i) for i in missing], count=len(missing))
        reembed += missing
        problem.repaired = repair
    if bad:
        problem = _problem(report, "bad_vector",
                           f"{len(bad)} vector(s) have the wrong size or non-finite values",
                           [str(i) for i in bad], count=len(bad))
        reembed += bad
        problem.repaired = repair
    if orphans:
        problem = _problem(report, "orphan_vector", f"{len(orphans)} vector(s) belong to no item",
                           [str(i) for i in orphans], count=len(orphans))
        if repair:
            with store.session() as session, session.begin():
                gen = next_generation(session)
                session.query(Embedding).filter(Embedding.item_id.in_(orphans)).delete(synchronize_session=False)
                session.add_all(Tombstone(item_id=i, gen=gen) for i in orphans
                                if session.get(Tombstone, i) is None)
            problem.repaired = True
    return reembed


def _check_files(store: IndexStore, report: CheckReport, repair: bool) -> list[int]:
    """Items whose files vanished (dropped on repair) or changed (re-embedded on repair)."""
    vanished: list[tuple[int, str]] = []
    changed: list[int] = []
    changed_paths: list[str] = []
    stats: dict[str, os.stat_result | None] = {}
    unavailable = tuple(r.path for r in _roots(store) if not os.path.exists(r.path))
    with store.session() as session:
        for item_id, path, size, mtime_ns in session.execute(
            select(Item.id, Item.path, Item.size, Item.mtime_ns).order_by(Item.path, Item.id)
        ):
            if path not in stats:
                try:
                    stats[path] = os.stat(path)
                except FileNotFoundError:
                    stats[path] = None
                except OSError:
                    continue  # unreadable now (permissions, unmounted): not evidence it is gone
            st = stats[path]
            if st is None:
                if not under_any(path, unavailable):  # a missing root is unmounted, not emptied
                    vanished.append((item_id, path))
            elif st.st_size != size or st.st_mtime_ns != mtime_ns:
                changed.append(item_id)
                if path not in changed_paths:
                    changed_paths.append(path)
    if vanished:
        paths = sorted({p for _, p in vanished})
        problem = _problem(report, "vanished_file", f"{len(paths)} indexed file(s) no longer exist ({len(vanished)} item(s))",
                           paths, count=len(vanished))
        if repair:
            _drop(store, [i for i, _ in vanished])
            problem.repaired = True
    if changed:
        problem = _problem(report, "changed_file", f"{len(changed_paths)} file(s) changed since they were indexed",
                           changed_paths, count=len(changed))
        problem.repaired = repair
    return changed


def _drop(store: IndexStore, ids: list[int]) -> None:
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start:start + _CHUNK]
        with store.session() as session, session.begin():
            gen = next_generation(session)
            session.query(Item).filter(Item.id.in_(chunk)).delete(synchronize_session=False)
            session.add_all(Tombstone(item_id=i, gen=gen) for i in chunk if session.get(Tombstone, i) is None)
            session.execute(update(Tombstone).where(Tombstone.item_id.in_(chunk)).values(gen=gen))


def _reembed(store: IndexStore, ids: list[int], encoder_factory, report: CheckReport) -> None:
    """Read the files of ``ids`` again and embed them, under the indexing run's policy: a file
    that is gone, or whose content can no longer be decoded, loses its items; one that cannot be
    read now (permissions, I/O) keeps them as they are. Both outcomes are reported."""
    by_path: dict[str, dict[str, int]] = {}
    with store.session() as session:
        for item_id, path, locator in session.execute(
            select(Item.id, Item.path, Item.locator).where(Item.id.in_(ids))
        ):
            by_path.setdefault(path, {})[locator] = item_id
    items: list[tuple[int, Record]] = []
    drop: list[tuple[int, str, str]] = []
    kept: list[str] = []
    for path, locators in by_path.items():
        kind = file_kind(path)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            drop.extend((i, path, "file no longer exists") for i in locators.values())
            continue
        except OSError as exc:
            kept.append(f"{path}: {exc.strerror or exc}")
            continue
        if kind is None:
            drop.extend((i, path, "not a supported file type") for i in locators.values())
            continue
        records, skips = read_records(FileEntry(path, st.st_size, st.st_mtime_ns, kind))
        if not records and skips and any(s.protects for s in skips):
            kept.append(f"{path}: {skips[0].reason}")
            continue
        found = {r.locator: r for r in records}
        if kind == "jsonl" and set(found) - set(locators):
            # Lines not in the index yet: leave the file marked unfinished so `index` adds them.
            for record in records:
                record.mtime_ns = UNSEALED
        reason = skips[0].reason if skips else "no longer in the file"
        for locator, item_id in locators.items():
            if locator in found:
                items.append((item_id, found[locator]))
            else:
                drop.append((item_id, path, reason))
    if drop:
        _drop(store, [i for i, _, _ in drop])
        _problem(report, "unusable_file", f"{len(drop)} item(s) removed: their files are gone or can no longer be decoded",
                 [f"{p}: {why}" for _, p, why in drop], count=len(drop)).repaired = True
    for line in kept:
        report.notes.append(f"kept as indexed (cannot be read now): {line}")
    if not items:
        return
    if encoder_factory is None:
        raise MMSearchError("re-embedding needs the index's model, and none was given")
    indexer = Indexer(store, lambda: encoder_factory(store), _synced_vectors(store))
    done = indexer.reembed(items)
    if done.skipped:
        _problem(report, "unusable_file", f"{len(done.skipped)} file(s) could not be decoded again; their items were removed",
                 [f"{s.path}: {s.reason}" for s in done.skipped], count=len(done.skipped)).repaired = True


def _roots(store: IndexStore) -> list[LibraryRoot]:
    with store.session() as session:
        return [LibraryRoot.from_row(r.path, r.options) for r in session.scalars(select(Root))]


def _under_unavailable_roots(store: IndexStore, ids: list[int]) -> set[int]:
    """Those of ``ids`` whose items lie under a root that cannot be read now."""
    if not ids:
        return set()
    unavailable = tuple(r.path for r in _roots(store) if not os.path.exists(r.path))
    if not unavailable:
        return set()
    with store.session() as session:
        rows = session.execute(select(Item.id, Item.path).where(Item.id.in_(ids))).all()
    return {item_id for item_id, path in rows if under_any(path, unavailable)}


def _synced_vectors(store: IndexStore) -> VectorIndex:
    vectors = store.load_vectors()
    with store.session() as session:
        return store.sync(session, vectors)


def _check_vectors(store: IndexStore, report: CheckReport, repair: bool) -> None:
    """FAISS files readable, not ahead of the database, and equal to it once caught up."""
    import faiss

    with store.session() as session:
        db_gen = get_int(session, GENERATION)
    damaged: list[Path] = []
    ahead: list[Path] = []
    records = manifest_records(store)
    for gen, path in saved_generations(store.folder):
        try:
            if not path.is_file():
                raise RuntimeError(f"{path.name} is not a file")
            if records is not None:  # every file this index wrote has its checksum recorded
                record = records.get(str(gen))
                if record is None or digest_mismatch(path, record, full=True):
                    raise RuntimeError(f"{path.name} is not the file the manifest records")
            index = faiss.read_index(str(path))
        except RuntimeError:
            damaged.append(path)
            continue
        if gen > db_gen:
            ahead.append(path)
        elif index.d != store.dim:
            damaged.append(path)
    _removable_files(report, "vectors_file", f"{len(damaged)} vectors file(s) cannot be read, have the wrong "
                     f"dimension, or differ from the checksum the manifest records", damaged, repair)
    _removable_files(report, "vectors_file",
                     f"{len(ahead)} vectors file(s) claim a generation newer than the database ({db_gen})", ahead, repair)

    with store.session() as session:
        vectors = store.sync(session, store.load_vectors())
        mismatch = _compare(store, session, vectors)
    if mismatch:
        problem = _problem(report, "vector_mismatch", mismatch)
        if repair:
            # From the database, as the manifest asks; the manifest's vector_index entry follows.
            store.fit_vectors(None, force=True)
            problem.repaired = True
    elif repair and any(p.repaired for p in report.problems):
        # Persist the caught-up state after the repairs above; the manifest's vector_index entry
        # (what `mmsearch info` shows) follows the vectors it describes.
        store.save_vectors(store.fit_vectors(vectors))
        store.update_manifest()


def _check_onnx_text(store: IndexStore, report: CheckReport, repair: bool, encoder_factory) -> None:
    """The ONNX text encoder is the one the manifest records (whole-file checksums)."""
    from . import onnx_text

    record = onnx_text.usable_record(store.manifest)
    if record is None:
        return
    problem_text = onnx_text.export_mismatch(store.folder, record, full=True)
    if problem_text is None:
        return
    problem = _problem(report, "onnx_text", f"the ONNX text encoder is not the one the manifest records: {problem_text}")
    if repair:
        for path in onnx_text.export_files(store.folder, record).values():
            path.unlink(missing_ok=True)
        store.update_manifest(**{onnx_text.MANIFEST_KEY: None})
        if encoder_factory is not None:
            onnx_text.ensure_exported(store, encoder_factory(store))
        problem.repaired = True


def manifest_records(store: IndexStore) -> dict | None:
    records = store.manifest.get(VECTORS_FILES)
    return records if isinstance(records, dict) else None


def _compare(store: IndexStore, session, vectors: VectorIndex) -> str | None:
    """None when ``vectors`` holds exactly the database's embeddings, else what differs."""
    ids = vectors.ids()
    position = {int(i): p for p, i in enumerate(ids)}
    if len(position) != len(ids):
        return f"the vectors index holds {len(ids) - len(position)} duplicate id(s)"
    db_ids = set(session.scalars(select(Embedding.item_id).join(Item, Item.id == Embedding.item_id)))
    extra, missing = set(position) - db_ids, db_ids - set(position)
    if extra or missing:
        return (f"the vectors index and the database disagree: {len(extra)} id(s) only in the vectors index, "
                f"{len(missing)} only in the database")
    differ = 0
    for rows in embedding_chunks(session, _CHUNK):
        rows = [r for r in rows if r[0] in position and len(r[1]) == store.dim * 4]
        if rows:
            ids = np.array([r[0] for r in rows], np.int64)
            differ += vectors.differing(ids, vectors_from_blobs([r[1] for r in rows], store.dim))
    if differ:
        return f"{differ} vector(s) in the vectors index differ from the database"
    return None


__all__ = ["CheckReport", "Problem", "check_folder"]
