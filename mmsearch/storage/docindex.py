"""The document index: one vector per document, where early fusion finds its candidates.

Early fusion scores a document (``media.documents``: an image and a text sharing a document key)
by the cosine of the query with ``normalise(w_i v_image + w_t v_text)`` (``fusion``). Searching
the item index finds documents through their parts, which is an approximation of that ranking
and costs reading every part of a few hundred candidates. This index holds the fused vector
itself, so the candidates are the documents nearest by early fusion:

* a document with an image and a text part: ``normalise(w_i v_image + w_t v_text)`` at the
  weights it was built with (``DEFAULT_WEIGHTS``, early fusion's defaults, recorded); a document
  with several image or text parts (a photo with an embedded caption *and* a sidecar) is fused
  from its lowest-id part of each side (the candidates' parts are then scored exactly, with the
  best part of each side, as on the item path);
* a document with one part: that part's vector;
* a video's frames: each frame's vector, as in the item index (a video is shown by its best frame
  among the candidates, as today; its frames are not a document).

Each vector is keyed by the id of the document's *representative* item (its image part, else its
text part: the part capture filters apply to), so a filter's passing item ids restrict this
index as they restrict the item index. The index is a ``VectorIndex`` of the type the item index
would have at its size (``IndexStore.plan_for``: flat, IVF-SQ8, IVF-PQ; an on-disk plan is held
as IVF-PQ in memory).

It is derived data, like the item vectors file, and follows the generation rule: the manifest
records (``RECORD``) the catalogue generation it reflects, the weights, and the file's checksum,
written before the file (``documents.g<generation>.faiss``) is atomically put in place. A query
uses it only when that generation is its snapshot's, the weights asked are its weights (in
ratio: the vector is normalised) and the file is the one recorded; otherwise early fusion takes
the item path (exact over its candidates, slower), never a wrong answer. A kill leaves either
the old file with its old record (stale: not used) or a record naming a file not (yet) there or
with another checksum (not used).

The writer brings it forward at the end of an index run whose catalogue changed (``refresh``),
as the store brings the item index forward: from the catalogue's changes since the recorded
generation (the items written since, and the tombstones of those deleted since, which the store
keeps until this index has caught up with them: ``tombstones_held_from``). The entries of the
touched items' documents are removed, and those documents' entries made again from all their
parts as they are now, so the result holds exactly the vectors a whole build would. Which items
form each entry of several parts is kept beside the file (``documents.g<generation>.parts.npy``,
its checksum in the same record): a deleted item's document is found through it, since the
deleted row no longer says where it was. It is built whole (one pass over the items' places and
one over their vectors) when there is nothing to update from (no usable record or parts file,
tombstones already purged), when more than ``REBUILD_SHARE`` of it changed, or when its IVF
needs retraining (``vectors.needs_rebuild``: it grew ``REGROW`` times past what it was trained
for, or the type the store would choose at its size changed). A library without documents (no
image and text sharing a key) gets a record saying so and no file: early fusion's candidates from
the item index are then exactly its documents (each one item).
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import IndexTypeError, IndexWriteError
from ..fsutil import atomic_write_via, digest_mismatch, file_digest, fsync_dir
from ..media.capabilities import IMAGE_SIDE, TEXT_SIDE, capabilities, is_text_side, on_side
from ..media.documents import doc_key
from .documents import Place
from .vectors import FLAT, IVF_PQ, ONDISK, TRAIN_PER_LIST, IndexPlan, VectorIndex, needs_rebuild, read_index_file
from ..lazy import lazy_module

faiss = lazy_module("faiss")  # imported on first use: a run that changes nothing never loads it

log = logging.getLogger(__name__)

# Manifest key of the document index's record.
RECORD = "document_index"
# The weights it is built with: early fusion's defaults (``search.request.DEFAULT_*_WEIGHT``).
DEFAULT_WEIGHTS = (0.5, 0.5)
# Search it when current (off only to measure the item path against it: scripts/bench_fusion.py).
USE_DOCUMENT_INDEX = True
_FILE_RE = re.compile(r"^documents\.g(\d+)\.faiss$")
_PARTS_RE = re.compile(r"^documents\.g(\d+)\.parts\.npy$")
TEMP_PREFIX = ".documents.g"
_BATCH = 50_000
# An update touching more items than this share of the entries (and more than
# ``INCREMENTAL_MIN`` of them) builds the index whole: a pass over everything costs about as much.
REBUILD_SHARE = 0.25
INCREMENTAL_MIN = 1_000
# The parts file: one row (item id, the id its entry is keyed by, the entry's flags) for every
# item of an entry of several parts, by item id.
PAIRED, IRREGULAR = 1, 2


def file_name(gen: int) -> str:
    return f"documents.g{gen:010d}.faiss"


def parts_file_name(gen: int) -> str:
    return f"documents.g{gen:010d}.parts.npy"


def saved_files(folder: Path) -> list[tuple[int, Path]]:
    """(generation, path) of every document index file in ``folder``, newest first."""
    found = [(int(m.group(1)), Path(e.path)) for e in os.scandir(folder) if (m := _FILE_RE.match(e.name))]
    return sorted(found, reverse=True)


def same_weights(recorded: Any, weights: Sequence[float]) -> bool:
    """True when ``weights`` fuse to the same vectors as ``recorded`` (equal in ratio)."""
    if not isinstance(recorded, (list, tuple)) or len(recorded) != 2:
        return False
    (ri, rt), (wi, wt) = (float(x) for x in recorded), (float(x) for x in weights)
    return math.isclose(ri * wt, rt * wi, rel_tol=1e-9, abs_tol=1e-12) and (ri + rt > 0) and (wi + wt > 0)


def fuse(image: np.ndarray, text: np.ndarray, weights: Sequence[float] = DEFAULT_WEIGHTS) -> np.ndarray:
    """``normalise(w_i image + w_t text)`` row by row."""
    fused = float(weights[0]) * np.asarray(image, np.float32) + float(weights[1]) * np.asarray(text, np.float32)
    norms = np.linalg.norm(fused, axis=-1, keepdims=True)
    return (fused / np.maximum(norms, 1e-6)).astype(np.float32)


# -- building (the writer) --------------------------------------------------------------------------
class _Layout:
    """Which item ids form each entry of the index: ``reps`` (the id it is keyed by) and
    ``partners`` (the text part fused with the image part, -1 for an entry of one vector)."""

    def __init__(self, reader: Any):
        entry: dict[tuple, int] = {}
        image: list[int] = []
        text: list[int] = []
        irregular: set[int] = set()
        extra_ids: list[int] = []  # parts beyond the first of their side (fused from neither)
        extra_entries: list[int] = []
        paths: dict[str, str] = {}  # one string per path (a JSONL file's lines share it)
        for rows in reader.embedded_places():
            for item_id, path, locator, modality in rows:
                if not capabilities(modality).in_documents:  # a video's frames: entries of their own
                    key: tuple = ("frame", item_id)
                else:
                    path = paths.setdefault(path, path)
                    key = doc_key(path, locator, modality)
                n = entry.get(key)
                if n is None:
                    n = entry[key] = len(image)
                    image.append(-1)
                    text.append(-1)
                side = text if is_text_side(modality) else image
                if side[n] < 0:
                    side[n] = item_id
                else:
                    irregular.add(n)
                    extra_ids.append(item_id)
                    extra_entries.append(n)
        del entry, paths
        images = np.asarray(image, np.int64)
        texts = np.asarray(text, np.int64)
        both = (images >= 0) & (texts >= 0)
        self.reps = np.where(images >= 0, images, texts)
        self.partners = np.where(both, texts, -1)
        self.documents = int(both.sum())
        self.irregular = len(irregular)
        flags = np.where(both, PAIRED, 0)
        flags[np.fromiter(irregular, np.int64, len(irregular))] |= IRREGULAR
        grouped = np.flatnonzero(both | ((flags & IRREGULAR) > 0))
        self.parts = parts_table(
            np.concatenate([self.reps[grouped], self.partners[both], np.asarray(extra_ids, np.int64)]),
            np.concatenate([grouped, np.flatnonzero(both), np.asarray(extra_entries, np.int64)]), self.reps, flags)
        # Item id -> (entry, is the partner), for the pass over the vectors (in id order).
        ids = np.concatenate([self.reps, self.partners[both]])
        entries = np.concatenate([np.arange(len(self.reps)), np.flatnonzero(both)])
        roles = np.concatenate([np.zeros(len(self.reps), bool), np.ones(int(both.sum()), bool)])
        order = np.argsort(ids, kind="stable")
        self.ids, self.entries, self.roles = ids[order], entries[order], roles[order]

    def __len__(self) -> int:
        return len(self.reps)


def parts_table(ids: np.ndarray, entries: np.ndarray, reps: np.ndarray, flags: np.ndarray) -> np.ndarray:
    """The parts file's rows for items ``ids`` of ``entries`` (indexes into ``reps`` and
    ``flags``), by item id."""
    table = np.stack([ids, reps[entries], flags[entries]], axis=1).astype(np.int64) if len(ids) else \
        np.empty((0, 3), np.int64)
    return table[np.argsort(table[:, 0], kind="stable")]


def _blob_matrix(blobs: Sequence[bytes], dim: int) -> np.ndarray:
    if not blobs:
        return np.empty((0, dim), np.float32)
    return np.frombuffer(b"".join(blobs), np.float32).reshape(len(blobs), dim)


def _training_sample(reader: Any, layout: _Layout, want: int, dim: int, weights) -> np.ndarray:
    """The vectors of about ``want`` entries spread evenly over the index."""
    picks = np.unique(np.linspace(0, len(layout) - 1, min(want, len(layout))).astype(np.int64))
    reps, partners = layout.reps[picks], layout.partners[picks]
    blobs = dict(reader.vectors_by_id(np.concatenate([reps, partners[partners >= 0]]).tolist()))
    out = []
    for rep, partner in zip(reps.tolist(), partners.tolist()):
        a = blobs.get(rep)
        if a is None or len(a) != dim * 4:
            continue
        v = np.frombuffer(a, np.float32)
        b = blobs.get(partner) if partner >= 0 else None
        out.append(fuse(v, np.frombuffer(b, np.float32), weights) if b is not None and len(b) == dim * 4 else v)
    return np.stack(out) if out else np.empty((0, dim), np.float32)


class Built:
    """A document index made by ``build`` or ``update``: the index (None when the snapshot holds
    no document of two parts), its parts table (``parts_table``) and what it is (the record)."""

    def __init__(self, index: VectorIndex | None, parts: np.ndarray | None, facts: dict):
        self.index, self.parts, self.facts = index, parts, facts


def build(store: Any, reader: Any, weights: Sequence[float] = DEFAULT_WEIGHTS) -> Built:
    """The document index of ``reader``'s snapshot, built whole."""
    started = time.perf_counter()
    dim = store.dim
    if not (any(reader.has_modality(m) for m in on_side(TEXT_SIDE, in_documents=True))
            and any(reader.has_modality(m) for m in on_side(IMAGE_SIDE, in_documents=True))):
        # A library of photos (or of notes) alone has no document of two parts: two probes of
        # the modality index instead of a pass over every item's place.
        return Built(None, None, {"gen": reader.generation(), "weights": [float(w) for w in weights], "documents": 0,
                                  "vectors": None, "irregular": 0, "update": "build",
                                  "build_s": round(time.perf_counter() - started, 2)})
    layout = _Layout(reader)
    facts: dict[str, Any] = {"gen": reader.generation(), "weights": [float(w) for w in weights],
                             "documents": layout.documents, "vectors": len(layout), "irregular": layout.irregular,
                             "update": "build"}
    if layout.documents == 0:
        facts["build_s"] = round(time.perf_counter() - started, 2)
        return Built(None, None, facts)
    plan = store.plan_for(len(layout))
    if plan.type == ONDISK:  # no on-disk lists for it: PQ codes in memory
        plan = store.plan_for(len(layout), IVF_PQ)
    train = None
    if plan.type != FLAT:
        train = _training_sample(reader, layout, plan.nlist * TRAIN_PER_LIST, dim, weights)
        if len(train) == 0:
            plan = IndexPlan(FLAT)
    index = VectorIndex.create(dim, plan, train, gen=facts["gen"], settings=store.settings)
    pending: dict[int, tuple[bool, np.ndarray]] = {}  # an entry whose other part is still to come
    out_ids: list[np.ndarray] = []
    out_vectors: list[np.ndarray] = []
    queued = 0

    def emit(ids: np.ndarray, vectors: np.ndarray, final: bool = False) -> None:
        nonlocal queued
        if len(ids):
            out_ids.append(ids)
            out_vectors.append(vectors)
            queued += len(ids)
        if queued >= _BATCH or (final and queued):
            index.add(np.concatenate(out_ids), np.concatenate(out_vectors))
            out_ids.clear()
            out_vectors.clear()
            queued = 0

    for rows in reader.embedding_chunks():
        good = [r for r in rows if len(r[1]) == dim * 4]
        if not good:
            continue
        ids = np.asarray([r[0] for r in good], np.int64)
        matrix = _blob_matrix([r[1] for r in good], dim)
        pos = np.minimum(np.searchsorted(layout.ids, ids), len(layout.ids) - 1)
        known = layout.ids[pos] == ids
        ids, matrix, pos = ids[known], matrix[known], pos[known]
        entries, roles = layout.entries[pos], layout.roles[pos]
        single = layout.partners[entries] < 0
        emit(ids[single], matrix[single])
        paired = np.flatnonzero(~single)
        if not len(paired):
            continue
        # Both parts in this chunk (the usual case: a document's parts are written together).
        order = paired[np.argsort(entries[paired], kind="stable")]
        e = entries[order]
        first = np.flatnonzero((e[:-1] == e[1:]))
        a, b = order[first], order[first + 1]
        image_rows = np.where(roles[a], b, a)
        text_rows = np.where(roles[a], a, b)
        emit(layout.reps[entries[image_rows]], fuse(matrix[image_rows], matrix[text_rows], weights))
        done = np.zeros(len(order), bool)
        done[first] = done[first + 1] = True
        for row in order[~done].tolist():  # a part whose partner is in another chunk
            n, role, v = int(entries[row]), bool(roles[row]), matrix[row].copy()
            other = pending.pop(n, None)
            if other is None:
                pending[n] = (role, v)
                continue
            image_v, text_v = (other[1], v) if role else (v, other[1])
            emit(layout.reps[n:n + 1], fuse(image_v, text_v, weights)[None, :])
    for n, (_, v) in pending.items():  # a part whose partner had no usable vector: itself
        emit(layout.reps[n:n + 1], v[None, :])
    emit(np.empty(0, np.int64), np.empty((0, dim), np.float32), final=True)
    facts.update(type=index.kind, nlist=index.nlist, nprobe=index.nprobe, trained_for=len(layout),
                 build_s=round(time.perf_counter() - started, 2))
    return Built(index, layout.parts, facts)


def update(store: Any, reader: Any, record: Any, weights: Sequence[float] = DEFAULT_WEIGHTS) -> Built | None:
    """The document index ``record`` describes, brought forward to ``reader``'s snapshot by the
    catalogue's changes since its generation; None when it must be built whole instead (see the
    module's docstring)."""
    started = time.perf_counter()
    dim = store.dim
    gen = reader.generation()
    if not isinstance(record, dict) or not record.get("file") or not same_weights(record.get("weights"), weights):
        return None
    since, parts_record = record.get("gen"), record.get("parts")
    if not isinstance(since, int) or since > gen or since < reader.purged_through() or \
            not isinstance(parts_record, dict) or not isinstance(record.get("digest"), dict) or \
            not isinstance(record.get("trained_for"), int):
        return None
    touched = np.unique(np.asarray(reader.changed_since(since) + reader.deleted_since(since), np.int64))
    entries = int(record.get("vectors") or 0)
    if len(touched) > INCREMENTAL_MIN and len(touched) > REBUILD_SHARE * entries:
        return None
    loaded = _load_for_update(store, record, parts_record)
    if loaded is None:
        return None
    index, table = loaded
    ids, reps, flags = table[:, 0], table[:, 1], table[:, 2]

    def groups_of(members: np.ndarray) -> np.ndarray:
        """The entries (their ids) that items ``members`` belong to, where several parts form one."""
        pos = np.minimum(np.searchsorted(ids, members), max(len(ids) - 1, 0))
        return reps[pos[ids[pos] == members]] if len(ids) else np.empty(0, np.int64)

    # The entries the touched items were in go; every item still in them is looked at again.
    grouped = groups_of(touched)
    gone = np.union1d(touched, grouped)
    again = np.union1d(touched, ids[np.isin(reps, grouped)])
    places = reader.places_by_id(again.tolist(), vectors=True)
    keys = {doc_key(p.path, p.locator, p.modality) for p in places.values() if capabilities(p.modality).in_documents}
    frames = [p for p in places.values() if not capabilities(p.modality).in_documents and p.vector is not None]
    found = reader.parts_of(keys, vectors=True)
    # The entries of every part of those documents go too (a sidecar added beside a photo joins
    # its entry), and each document's entry is made again from all its parts.
    every = np.asarray([q.id for qs in found.values() for q in qs], np.int64)
    gone = np.union1d(gone, np.union1d(every, groups_of(every)))
    old = np.isin(reps, gone)
    removed_docs = len(np.unique(reps[old & ((flags & PAIRED) > 0)]))
    removed_irregular = len(np.unique(reps[old & ((flags & IRREGULAR) > 0)]))
    new_ids: list[int] = []
    new_vectors: list[np.ndarray] = []
    new_rows: list[tuple[int, int, int]] = []
    for parts in found.values():
        entry = _entry([q for q in parts if q.vector is not None], dim, weights)
        if entry is None:
            continue
        rep, vector, flag, members = entry
        if vector is not None:
            new_ids.append(rep)
            new_vectors.append(vector)
        new_rows.extend((m, rep, flag) for m in members)
    for frame in frames:  # a video's frames are entries of their own
        if len(frame.vector) == dim * 4:
            new_ids.append(frame.id)
            new_vectors.append(np.frombuffer(frame.vector, np.float32))
    index.remove(gone)
    index.add(np.asarray(new_ids, np.int64), np.stack(new_vectors) if new_vectors else np.empty((0, dim), np.float32))
    added = np.asarray(new_rows, np.int64).reshape(-1, 3)
    keep = table[~old & ~np.isin(ids, touched)]
    merged = np.concatenate([keep, added])
    merged = merged[np.argsort(merged[:, 0], kind="stable")]
    documents = int(record.get("documents") or 0) - removed_docs + len(np.unique(added[(added[:, 2] & PAIRED) > 0, 1]))
    irregular = int(record.get("irregular") or 0) - removed_irregular + \
        len(np.unique(added[(added[:, 2] & IRREGULAR) > 0, 1]))
    if documents <= 0:
        return None  # no document of two parts left: the whole build records that
    current_plan = index.plan(trained_for=int(record["trained_for"]))
    requested = store.requested_index_type
    if store.plan_for(index.ntotal).type == ONDISK:  # held as IVF-PQ in memory (see ``build``)
        requested = IVF_PQ
    if needs_rebuild(current_plan, index.ntotal, dim, requested, store.settings) is not None:
        return None  # the IVF needs training again for its size (or another type fits it now)
    index.gen = gen
    facts = {"gen": gen, "weights": [float(w) for w in weights], "documents": documents, "vectors": index.ntotal,
             "irregular": irregular, "update": "incremental", "changed": int(len(touched)), "type": index.kind,
             "nlist": index.nlist, "nprobe": index.nprobe, "trained_for": int(record["trained_for"]),
             "build_s": round(time.perf_counter() - started, 2)}
    return Built(index, merged, facts)


def _entry(parts: list[Place], dim: int, weights: Sequence[float]) -> tuple[int, np.ndarray | None, int, list[int]] | None:
    """The entry of one document from its parts that have a vector, as ``build`` makes it: (the
    id it is keyed by, its vector or None when no part's vector is usable, its flags, the ids of
    its parts when it has several)."""
    if not parts:
        return None
    parts = sorted(parts, key=lambda q: q.id)
    image = next((q for q in parts if not is_text_side(q.modality)), None)
    text = next((q for q in parts if is_text_side(q.modality)), None)
    rep = image if image is not None else text

    def usable(q: Place | None) -> np.ndarray | None:
        return np.frombuffer(q.vector, np.float32)[None, :] if q is not None and len(q.vector) == dim * 4 else None

    vi, vt = usable(image), usable(text)
    both = image is not None and text is not None
    if vi is not None and vt is not None:
        vector = fuse(vi, vt, weights)[0]
    else:
        vector = vi[0] if vi is not None else vt[0] if vt is not None else None
    flags = (PAIRED if both else 0) | (IRREGULAR if len(parts) > (2 if both else 1) else 0)
    return rep.id, vector, flags, [q.id for q in parts] if len(parts) > 1 else []


def _load_for_update(store: Any, record: dict, parts_record: dict) -> tuple[VectorIndex, np.ndarray] | None:
    """The recorded index file, read into memory, and its parts table; None when either is not
    the file recorded or cannot be read."""
    folder = store.folder
    path, parts_path = folder / str(record["file"]), folder / str(parts_record.get("file"))
    if digest_mismatch(path, record["digest"]) or digest_mismatch(parts_path, parts_record):
        return None
    try:
        table = np.load(parts_path, allow_pickle=False)
        found = faiss.read_index(str(path))
        if found.d != store.dim or table.ndim != 2 or table.shape[1] != 3 or table.dtype != np.int64:
            return None
        return VectorIndex(found.d, found, int(record["gen"]), store.settings), table
    except (OSError, ValueError, RuntimeError, IndexTypeError):
        return None


def current(store: Any, gen: int, weights: Sequence[float] = DEFAULT_WEIGHTS) -> bool:
    """True when the manifest records a document index of generation ``gen`` at ``weights``
    whose file (if it needs one) is there and is the one recorded (cheap check)."""
    record = store.manifest.get(RECORD)
    if not isinstance(record, dict) or record.get("gen") != gen or not same_weights(record.get("weights"), weights):
        return False
    if not record.get("file"):
        return record.get("documents") == 0
    digest = record.get("digest")
    return isinstance(digest, dict) and digest_mismatch(store.folder / record["file"], digest) is None


def refresh(store: Any, *, force: bool = False) -> dict | None:
    """Bring the document index to the catalogue's generation when it is not there: updated
    from the changes since its record's generation where it can be (``update``), else built
    whole (``force``: built whole whatever its state); call as the writer, under the writer
    lock. Returns the manifest's record (None on pgvector, whose vectors live in PostgreSQL).
    IndexWriteError when a file cannot be written (the old one stays, unused: queries take the
    item path)."""
    if store.in_pgvector:
        return None
    with store.read() as reader:
        gen = reader.generation()
        if not force and current(store, gen):
            return store.manifest.get(RECORD)
        built = None if force else update(store, reader, store.manifest.get(RECORD))
        if built is None:
            built = build(store, reader)
    folder = store.folder
    if built.index is None:
        store.update_manifest(**{RECORD: built.facts})
        _remove_older(folder, ())
        return built.facts
    index, facts = built.index, built.facts
    target, parts_target = folder / file_name(gen), folder / parts_file_name(gen)

    def save_parts(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, built.parts, allow_pickle=False)

    def record(tmp: Path) -> None:  # before the file is visible: a file in place always has its record
        store.update_manifest(**{RECORD: dict(facts, file=target.name, digest=file_digest(tmp), bytes=tmp.stat().st_size,
                                              parts=dict(file_digest(parts_target), file=parts_target.name))})

    try:
        # The parts first: a writer killed between the two leaves the old record, naming old files.
        atomic_write_via(parts_target, save_parts)
        atomic_write_via(target, lambda tmp: faiss.write_index(index.index, str(tmp)), record)
    except (OSError, RuntimeError) as exc:  # faiss reports failed writes as RuntimeError
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).strip().splitlines()[-1]
        raise IndexWriteError(f"cannot save the document index in {folder}: {reason} (early fusion searches "
                              f"the item index until the next run writes it)") from exc
    _remove_older(folder, (target.name, parts_target.name))
    _forget(store)
    return store.manifest.get(RECORD)


def tombstones_held_from(store: Any) -> int | None:
    """The generation whose later deletions the document index has still to take in (the
    store keeps their tombstones), or None when it needs none: it has no file to update (none
    yet, a library without documents, pgvector), so its next refresh builds it whole anyway."""
    record = store.manifest.get(RECORD)
    if store.in_pgvector or not isinstance(record, dict) or not record.get("file") or not record.get("parts"):
        return None
    gen = record.get("gen")
    return gen if isinstance(gen, int) else None


def _remove_older(folder: Path, keep: Sequence[str]) -> None:
    for entry in os.scandir(folder):
        if (_FILE_RE.match(entry.name) or _PARTS_RE.match(entry.name)) and entry.name not in keep:
            Path(entry.path).unlink(missing_ok=True)
    fsync_dir(folder)


def problem(store: Any, full: bool = True) -> tuple[str, str] | None:
    """('damaged' or 'stale', why) when the recorded document index cannot serve queries of
    the catalogue's generation, else None (no record at all: None too, an index from before it
    gets one at its next run). ``full``: hash the whole file."""
    record = store.manifest.get(RECORD)
    if store.in_pgvector or not isinstance(record, dict):
        return None
    if record.get("file"):
        path = store.folder / str(record["file"])
        digest = record.get("digest")
        why = digest_mismatch(path, digest, full=full) if isinstance(digest, dict) else "no checksum recorded"
        if why is None:
            try:
                found = read_index_file(path)
                if found.d != store.dim:
                    why = f"{path.name} holds {found.d}-dimensional vectors, the index {store.dim}"
            except RuntimeError as exc:
                why = f"{path.name} cannot be read ({str(exc).strip().splitlines()[-1]})"
        if why is not None:
            return "damaged", why
    with store.read() as r:
        gen = r.generation()
    if record.get("gen") != gen:
        return "stale", (f"the document index reflects generation {record.get('gen')}, the catalogue is at {gen} "
                         f"(early fusion searches the item index until it is rebuilt)")
    return None


# -- searching (any reader) -------------------------------------------------------------------------
_loaded: weakref.WeakKeyDictionary[Any, tuple[tuple, VectorIndex | None]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def _forget(store: Any) -> None:
    with _lock:
        _loaded.pop(store, None)


def for_query(snap: Any, weights: Sequence[float]) -> VectorIndex | None:
    """The document index to search for early fusion in ``snap`` at ``weights``, or None when
    there is none that holds exactly this snapshot's documents at these weights (the caller
    then searches the item index)."""
    store = snap.store
    if not USE_DOCUMENT_INDEX or store.in_pgvector:
        return None
    record = store.manifest.get(RECORD)
    if not isinstance(record, dict) or not record.get("file") or not same_weights(record.get("weights"), weights):
        return None
    if record.get("gen") != snap.reader.generation() or not isinstance(record.get("digest"), dict):
        return None
    key = (record["file"], record["digest"].get("blake2b"), record["gen"])
    with _lock:
        cached = _loaded.get(store)
        if cached is not None and cached[0] == key:
            return cached[1]
        index = _load(store, record)
        _loaded[store] = (key, index)
        return index


def _load(store: Any, record: dict) -> VectorIndex | None:
    path = store.folder / str(record["file"])
    why = digest_mismatch(path, record["digest"])
    if why is None:
        try:
            found = read_index_file(path)
            if found.d == store.dim:
                return VectorIndex(found.d, found, int(record["gen"]), store.settings)
            why = f"{path.name} holds {found.d}-dimensional vectors"
        except (RuntimeError, ValueError) as exc:
            why = f"{path.name} cannot be read ({exc})"
    log.warning("document index passed over: %s; early fusion searches the item index (`mmsearch check "
                "--repair` or the next index run rebuilds it)", why)
    return None
