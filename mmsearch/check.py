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
- ``document_index``: the document index file (``storage.docindex``) is not the one the manifest
  records or cannot be read; repair rebuilds it. A stale one (of an older generation, which
  queries pass over) is a note, and repair rebuilds it too.
- ``outside_library``: a JSONL record's image that lies outside the indexed folders (the
  library rule, ``library.outside_library``); repair removes the row.
- ``unfinished_copy``: a copy ``mmsearch migrate`` did not finish (not repairable: the same
  migrate run again starts it over).
- ``stray_temp``: temporary files left by a killed writer; repair deletes them.

Not damage, but worth saying (the index is *out of date*, ``CheckReport.outdated``: exit 0; the
next ``mmsearch index`` updates it, and so does repair):

- ``vanished_file``: items whose file no longer exists; repair drops them.
- ``changed_file``: items whose file changed since indexing; repair re-embeds them.
- ``unfinished_file``: a file an interrupted index run did not finish (a JSONL file or video is
  sealed once its last row is in); repair re-reads it.

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

from .encoders import onnx_image, onnx_text
from .indexing import exports
from .encoders import ModelSpec, TorchEncoder
from .errors import DamagedManifestError, EmptyIndexError, IndexVersionError, MMSearchError, UnfinishedCopyError
from .fsutil import printable_path
from .indexing import UNSEALED, Indexer
from .indexing.run import indexing_encoder
from .library import LibraryRoot, outside_library, under_any
from .settings import Settings
from .media import FileEntry, Record, media_registry
from .media.documents import IMAGE_FIELD, IMAGE_PART, source_path
from .media.video import is_placeholder
from .storage import docindex
from .storage import MANIFEST, SCHEMA_VERSION, IndexStore, VectorIndex, read_manifest, saved_generations, writer_lock
from .storage import location
from .storage.store import usable_rows
from .storage.vectors import read_index_file, unreferenced_data

_TEMP_RE = re.compile(r"^\.((vectors|documents)\.g\d+\.faiss|manifest\.json)\..*\.tmp$")
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
    files: list[str] = field(default_factory=list, repr=False)  # out-of-date entries: the files concerned


# ``CheckReport.state``: nothing to say; damage repaired; files changed since the last index
# run (exit 0: `mmsearch index` updates it); damage left (exit 1).
OK, REPAIRED, OUT_OF_DATE, DAMAGED = "ok", "repaired", "out_of_date", "damaged"


@dataclass
class CheckReport:
    index: str
    items: int = 0
    problems: list[Problem] = field(default_factory=list)
    # Files that vanished or changed since the last index run, or that an interrupted run did
    # not finish: not damage (the index is consistent), the next `mmsearch index` updates them.
    outdated: list[Problem] = field(default_factory=list)
    # What is worth knowing but is not damage (items waiting for an unavailable folder...).
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing is damaged (no problems, or all repaired); an out-of-date index is ok."""
        return all(p.repaired for p in self.problems)

    @property
    def state(self) -> str:
        if not self.ok:
            return DAMAGED
        if any(not p.repaired for p in self.outdated):
            return OUT_OF_DATE
        return REPAIRED if any(p.repaired for p in self.problems + self.outdated) else OK

    def out_of_date(self) -> str | None:
        """"out of date (N vanished, M changed since the last index run; ...)", or None."""
        files = {p.kind: len(p.files) for p in self.outdated if not p.repaired}
        if not files:
            return None
        unfinished = files.get("unfinished_file", 0)
        counts = f"{files.get('vanished_file', 0)} vanished, {files.get('changed_file', 0)} changed since the last index run"
        if unfinished:
            counts += f", {unfinished} not finished by an interrupted run"
        return f"out of date ({counts}; `mmsearch index` updates it)"

    def as_dict(self) -> dict[str, Any]:
        def entries(found: list[Problem], **extra: Any) -> list[dict[str, Any]]:
            return [{**{k: v for k, v in asdict(p).items() if k != "files"}, "detail": printable_path(p.detail),
                     "examples": [printable_path(e) for e in p.examples], **{k: f(p) for k, f in extra.items()}}
                    for p in found]

        return {"index": printable_path(self.index), "items": self.items, "ok": self.ok, "state": self.state,
                "problems": entries(self.problems),
                "out_of_date": entries(self.outdated, files=lambda p: len(p.files)),
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
    settings: Settings | None = None,
) -> CheckReport:
    """Check the index in ``folder``; ``repair`` fixes what can be fixed.

    ``encoder_factory(store)`` returns the model used to re-embed items (only called when a
    repair needs it; by default the index's own model, loaded with torch); images are re-embedded
    by the index's ONNX image encoder where indexing uses it, so repaired vectors are indexing's. Missing folders raise
    ``IndexNotFoundError``; every other kind of damage is reported in the returned ``CheckReport``.
    """
    settings = settings or Settings.from_env()
    encoder_factory = encoder_factory or (lambda store: TorchEncoder(
        ModelSpec.from_manifest(store.manifest["model"]), cpu_bf16=settings.cpu_bf16))
    folder = Path(folder).expanduser().absolute()
    report = CheckReport(str(folder))
    try:
        store = IndexStore.open(folder, db=settings.db)
    except EmptyIndexError:
        raise  # nothing to check: say so in one line
    except IndexVersionError as exc:
        _problem(report, "schema", str(exc), repairable=False)
        return report
    except UnfinishedCopyError as exc:  # never "ok": the same migrate again starts it over
        _problem(report, "unfinished_copy", str(exc), repairable=False)
        return report
    except MMSearchError as exc:
        if not folder.exists():
            raise
        if _manifest_readable(folder) and not isinstance(exc, DamagedManifestError):
            _problem(report, "database", str(exc), repairable=False)
            return report
        store = _manifest_problem(folder, report, exc, repair, wait, settings.db)
        if store is None:
            return report
    try:
        if repair:
            with writer_lock(folder, wait, settings.db):
                _check(store, report, repair=True, encoder_factory=encoder_factory, settings=settings)
        else:
            _check(store, report, repair=False, encoder_factory=encoder_factory, settings=settings)
    finally:
        store.close()
    return report


def _manifest_readable(folder: Path) -> bool:
    try:
        read_manifest(folder)
    except MMSearchError:
        return False
    return True


def _manifest_problem(folder: Path, report: CheckReport, exc: MMSearchError, repair: bool, wait: float,
                      db: str | None = None) -> IndexStore | None:
    """Report a missing, unreadable or damaged manifest; with ``repair``, rebuild it from the
    model identity the database records and return the reopened store."""
    if not location.has_catalogue(folder):
        _problem(report, "manifest", str(exc), repairable=False)
        return None
    recorded = IndexStore.recorded_model_of(folder, db)
    if recorded is None:
        _problem(report, "manifest", f"{exc} (this index's database predates the copy of the model identity it "
                                     f"keeps now, so the manifest cannot be rebuilt)", repairable=False)
        return None
    problem = _problem(report, "manifest", str(exc))
    if not repair:
        return None
    with writer_lock(folder, wait, db):
        IndexStore.rebuild_manifest(folder, recorded)
    problem.repaired = True
    problem.detail += " (rebuilt from the database)"
    return IndexStore.open(folder, db=db)


def _check(store: IndexStore, report: CheckReport, *, repair: bool, encoder_factory, settings: Settings) -> None:
    manifest = store.manifest
    if not isinstance(manifest.get("model"), dict) or not isinstance(manifest.get("dim"), int):
        _problem(report, "manifest", f"{store.folder / MANIFEST} lacks the model or the vector dimension",
                 repairable=False)
        return
    if manifest["schema_version"] < 1 or manifest["schema_version"] > SCHEMA_VERSION:
        _problem(report, "schema", f"unknown schema version {manifest['schema_version']}", repairable=False)
        return
    errors = store.catalogue.integrity_errors()
    if errors:
        _problem(report, "database", "SQLite integrity check failed: " + "; ".join(errors[:3]), repairable=False)
        return

    _check_stray_temps(store, report, repair)
    report.items = _count(store)
    _check_generation(store, report, repair)
    _check_outside(store, report, repair)
    reembed = _check_rows(store, report, repair)
    reembed += _check_files(store, report, repair)
    if repair and reembed:
        _reembed(store, reembed, encoder_factory, report, settings)
    _check_vectors(store, report, repair)
    _check_documents(store, report, repair)
    _check_onnx_exports(store, report, repair, encoder_factory, settings)
    if repair:
        report.items = _count(store)


def _count(store: IndexStore) -> int:
    with store.read() as r:
        return r.item_count()


def _check_stray_temps(store: IndexStore, report: CheckReport, repair: bool) -> None:
    temps = [p for p in store.folder.iterdir() if _TEMP_RE.match(p.name)]
    _removable_files(report, "stray_temp", f"{len(temps)} temporary file(s) left by an interrupted write", temps, repair)


def _check_generation(store: IndexStore, report: CheckReport, repair: bool) -> None:
    with store.read() as r:
        gen, top = r.generation(), r.top_generation()
    if top > gen:
        problem = _problem(report, "generation", f"rows carry generation {top} but the counter says {gen}")
        if repair:
            with store.write() as w:
                w.set_generation(top + 1)
            problem.repaired = True


def _check_rows(store: IndexStore, report: CheckReport, repair: bool) -> list[int]:
    """Item/embedding agreement; returns ids of items to re-embed."""
    dim_bytes = store.dim * 4
    missing: list[int] = []
    bad: list[int] = []
    orphans: list[int] = []
    with store.read() as r:
        missing = r.items_without_vector()
        orphans = r.orphan_vectors()
        for rows in r.embedding_chunks(_CHUNK):
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
                           _row_names(store, missing), count=len(missing))
        reembed += missing
        problem.repaired = repair
    if bad:
        problem = _problem(report, "bad_vector",
                           f"{len(bad)} vector(s) have the wrong size or non-finite values",
                           _row_names(store, bad), count=len(bad))
        reembed += bad
        problem.repaired = repair
    if orphans:
        problem = _problem(report, "orphan_vector", f"{len(orphans)} vector(s) belong to no item",
                           [str(i) for i in orphans], count=len(orphans))
        if repair:
            with store.write() as w:
                w.remove_orphan_vectors(orphans)
            problem.repaired = True
    return reembed


def _check_outside(store: IndexStore, report: CheckReport, repair: bool) -> None:
    """JSONL records' images must lie inside the library (``library.outside_library``, the rule
    indexing applies): rows whose image does not (an index made before that rule, or a root
    indexed again without --follow-links) are damage, removed by repair."""
    roots = _roots(store)
    if not roots:  # no library recorded: nothing to judge by
        return
    unavailable = tuple(r.path for r in roots if not os.path.exists(r.path))
    with store.read() as r:
        rows = r.rows_with_locator_suffix(":" + IMAGE_PART)
    outside: list[tuple[int, str]] = []
    for item_id, path, locator, meta in rows:
        source = source_path(path, locator, meta)
        if not under_any(path, unavailable) and outside_library(source, roots):
            name = meta.get(IMAGE_FIELD) if isinstance(meta, dict) else source
            outside.append((item_id, f"{path}:{locator.rsplit(':', 1)[0]} -> {name}"))
    if outside:
        problem = _problem(report, "outside_library",
                           f"{len(outside)} JSONL record image(s) lie outside the indexed folders (nothing outside "
                           f"them is indexed)", [where for _, where in outside], count=len(outside))
        if repair:
            _drop(store, [i for i, _ in outside])
            problem.repaired = True


def _row_names(store: IndexStore, ids: list[int], limit: int = 5) -> list[str]:
    """The first ``limit`` of the items ``ids`` named as the rows they are: item id, file, and
    the line (``:N``) or moment within it."""
    with store.read() as r:
        places = {item_id: (path, locator) for item_id, path, locator in r.places(ids[:limit])}
    return [f"item {i}: {places[i][0]}{':' + places[i][1] if places[i][1] else ''}" if i in places else f"item {i}"
            for i in ids[:limit]]


def _check_files(store: IndexStore, report: CheckReport, repair: bool) -> list[int]:
    """Items whose files vanished (dropped on repair), changed or were left unfinished by an
    interrupted run (re-embedded on repair): the index is out of date, not damaged."""
    vanished: list[tuple[int, str]] = []
    changed: list[int] = []
    changed_paths: dict[str, dict[str, int]] = {"changed_file": {}, "unfinished_file": {}}  # path -> items
    stats: dict[str, os.stat_result | None] = {}
    unavailable = tuple(r.path for r in _roots(store) if not os.path.exists(r.path))
    with store.read() as r:
        for item_id, path, size, mtime_ns in r.file_rows():
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
                paths = changed_paths["unfinished_file" if mtime_ns == UNSEALED else "changed_file"]
                paths[path] = paths.get(path, 0) + 1
    if vanished:
        paths = sorted({p for _, p in vanished})
        problem = _outdated(report, "vanished_file",
                            f"{len(paths)} indexed file(s) no longer exist ({len(vanished)} item(s))", paths, len(vanished))
        if repair:
            _drop(store, [i for i, _ in vanished])
            problem.repaired = True
    for kind, why in (("changed_file", "changed since they were indexed"),
                      ("unfinished_file", "were not finished by an interrupted index run")):
        paths = changed_paths[kind]
        if paths:
            _outdated(report, kind, f"{len(paths)} file(s) {why}", list(paths), sum(paths.values())).repaired = repair
    return changed


def _outdated(report: CheckReport, kind: str, detail: str, paths: list[str], count: int) -> Problem:
    entry = Problem(kind, detail, count, examples=paths[:5], files=paths)
    report.outdated.append(entry)
    return entry


def _drop(store: IndexStore, ids: list[int]) -> None:
    for start in range(0, len(ids), _CHUNK):
        with store.write() as w:
            w.remove(ids[start:start + _CHUNK])


def _reembed(store: IndexStore, ids: list[int], encoder_factory, report: CheckReport,
             settings: Settings | None = None) -> None:
    """Read the files of ``ids`` again and embed them, under the indexing run's policy: a file
    that is gone, or whose content can no longer be decoded, loses its items; one that cannot be
    read now (permissions, I/O) keeps them as they are. Both outcomes are reported."""
    kinds = media_registry()
    roots = _roots(store)
    by_path: dict[str, dict[str, int]] = {}
    with store.read() as r:
        for item_id, path, locator in r.places(ids):
            by_path.setdefault(path, {})[locator] = item_id
    items: list[tuple[int, Record]] = []
    videos: list[tuple[Record, dict[str, int]]] = []
    drop: list[tuple[int, str, str]] = []
    kept: list[str] = []
    for path, locators in by_path.items():
        kind = kinds.kind_of(path)
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
        records, skips = kinds.read_records(FileEntry(path, st.st_size, st.st_mtime_ns, kind), roots=roots)
        if not records and skips and any(s.protects for s in skips):
            kept.append(f"{path}: {skips[0].reason}")
            continue
        if len(records) == 1 and is_placeholder(records[0]):
            # A video is sampled again as a whole, its frames written over all its rows.
            with store.read() as r:
                rows = {o.locator: o.id for o in r.existing_under([path]).get(path, [])}
            videos.append((records[0], rows))
            continue
        found = {r.locator: r for r in records}
        if getattr(kinds.handler(kind), "multi_record", False):
            with store.read() as r:
                indexed = {o.locator for o in r.existing_under([path]).get(path, [])}
            if set(found) - indexed:
                # Lines not in the index yet: leave the file marked unfinished so `index` adds
                # them. (Only then: a file whose every line is indexed stays sealed, or the next
                # check would take it for a changed file and this repair would never end.)
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
    if not items and not videos:
        return
    settings = settings or Settings.from_env()
    # The encoder indexing uses (ONNX where that is the index's choice), so repaired vectors are
    # the ones an indexing run gives.
    done = Indexer(store, lambda: indexing_encoder(store, settings, lambda: encoder_factory(store))).reembed(items, videos)
    if done.skipped:
        _problem(report, "unusable_file", f"{len(done.skipped)} file(s) could not be decoded again; their items were removed",
                 [f"{s.path}: {s.reason}" for s in done.skipped], count=len(done.skipped)).repaired = True


def _roots(store: IndexStore) -> list[LibraryRoot]:
    with store.read() as r:
        return [LibraryRoot.from_row(row.path, row.options) for row in r.roots()]


def _under_unavailable_roots(store: IndexStore, ids: list[int]) -> set[int]:
    """Those of ``ids`` whose items lie under a root that cannot be read now."""
    if not ids:
        return set()
    unavailable = tuple(r.path for r in _roots(store) if not os.path.exists(r.path))
    if not unavailable:
        return set()
    with store.read() as r:
        rows = r.places(ids)
    return {item_id for item_id, path, _ in rows if under_any(path, unavailable)}


def _check_vectors(store: IndexStore, report: CheckReport, repair: bool) -> None:
    """FAISS files readable (an on-disk IVF with its lists' file), not ahead of the database, and
    equal to it once caught up; on-disk lists no vectors file names are stray."""
    with store.read() as r:
        db_gen = r.generation()
    damaged: list[Path] = []
    ahead: list[Path] = []
    for gen, path in saved_generations(store.folder):
        try:
            if not path.is_file():
                raise RuntimeError(f"{path.name} is not a file")
            if not store.file_matches_record(path, gen):  # every file this index wrote has its checksum recorded
                raise RuntimeError(f"{path.name} is not the file the manifest records")
            index = read_index_file(path)  # an on-disk IVF: its lists' file too
        except RuntimeError:
            damaged.append(path)
            continue
        if gen > db_gen:
            ahead.append(path)
        elif index.d != store.dim:
            damaged.append(path)
    damaged += unreferenced_data(store.folder, [p for _, p in saved_generations(store.folder) if p not in damaged])
    _removable_files(report, "vectors_file", f"{len(damaged)} vectors file(s) cannot be read, have the wrong "
                     f"dimension, differ from the checksum the manifest records, or are on-disk lists no "
                     f"vectors file names", damaged, repair)
    _removable_files(report, "vectors_file",
                     f"{len(ahead)} vectors file(s) claim a generation newer than the database ({db_gen})", ahead, repair)

    vectors = store.synced_copy()
    with store.read() as r:
        mismatch = _compare(store, r, vectors)
    if mismatch:
        problem = _problem(report, "vector_mismatch", mismatch)
        if repair:
            # From the database, as the manifest asks; the manifest's vector_index entry follows.
            store.fit_vectors(force=True)
            problem.repaired = True
    elif repair and any(p.repaired for p in report.problems + report.outdated):
        # Persist the caught-up state after the repairs above; the manifest's vector_index entry
        # (what `mmsearch info` shows) follows the vectors it describes.
        store.fit_vectors()
        store.save_vectors()
        store.update_manifest()


def _check_documents(store: IndexStore, report: CheckReport, repair: bool) -> None:
    """The document index (``storage.docindex``): a damaged file (not the one recorded, or
    unreadable) is a problem; a stale one (of an older generation: early fusion searches the
    item index, as after repairs of rows) a note. Repair rebuilds either."""
    found = docindex.problem(store)
    if found is None:
        return
    kind, why = found
    problem = _problem(report, "document_index", why) if kind == "damaged" else None
    if kind == "stale" and not repair:
        report.notes.append(f"{why}; `mmsearch index` or `mmsearch check --repair` rebuilds it")
    if repair:
        docindex.refresh(store, force=kind == "damaged")
        if problem is not None:
            problem.repaired = True
        else:
            report.notes.append(f"the document index was rebuilt ({why})")


def _check_onnx_exports(store: IndexStore, report: CheckReport, repair: bool, encoder_factory,
                        settings: Settings) -> None:
    """The ONNX text and image encoders are the ones the manifest records (whole-file checksums);
    with ``repair``, a damaged export is removed and made again from the model."""
    for tower, module in (("text", onnx_text), ("image", onnx_image)):
        record = module.usable_record(store.manifest)
        if record is None:
            continue
        problem_text = module.export_mismatch(store.folder, record, full=True)
        if problem_text is None:
            continue
        problem = _problem(report, f"onnx_{tower}",
                           f"the ONNX {tower} encoder is not the one the manifest records: {problem_text}")
        if repair:
            for path in module.export_files(store.folder, record).values():
                path.unlink(missing_ok=True)
            store.update_manifest(**{module.MANIFEST_KEY: None})
            if encoder_factory is not None:
                exports.ensure_exported(store, module.TOWER, ModelSpec.from_manifest(store.manifest["model"]),
                                        lambda: encoder_factory(store), settings.cache)
            problem.repaired = True


def _compare(store: IndexStore, reader, vectors: VectorIndex) -> str | None:
    """None when ``vectors`` holds exactly the database's embeddings, else what differs."""
    ids = vectors.ids()
    position = {int(i): p for p, i in enumerate(ids)}
    if len(position) != len(ids):
        return f"the vectors index holds {len(ids) - len(position)} duplicate id(s)"
    differ = 0
    damaged: set[int] = set()  # blobs of the wrong size: never in a vectors index (bad_vector says so)
    for rows in reader.embedding_chunks(_CHUNK):
        damaged.update(r[0] for r in rows if len(r[1]) != store.dim * 4)
        ids, matrix = usable_rows([r for r in rows if r[0] in position], store.dim)
        if len(ids):
            differ += vectors.differing(ids, matrix)
    db_ids = reader.vector_ids() - damaged
    extra, missing = set(position) - db_ids, db_ids - set(position)
    if extra or missing:
        return (f"the vectors index and the database disagree: {len(extra)} id(s) only in the vectors index, "
                f"{len(missing)} only in the database")
    if differ:
        return f"{differ} vector(s) in the vectors index differ from the database"
    return None


__all__ = ["CheckReport", "Problem", "check_folder"]
