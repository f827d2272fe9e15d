"""``IndexingRun``: one ``Engine.add`` (or ``rebuild_vectors``) from start to end, with all its
phases: the checks made before anything is created, the index's creation (or its move to another
model), the ONNX exports, the ``Indexer``'s scan and encoding, the manifest's record of what
encoded, capture metadata, the vector index fit, score calibration and the document index.

A run works on the Engine's ``IndexHandle`` (so an index it creates, or a failed first run it
removes, is the Engine's at once) and its ``QueryEncoders`` (the model choice and the torch
encoder, shared with queries; their lock is held while the run switches models or writes).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..encoders import random_weights_note
from ..encoders import onnx_export, onnx_image, onnx_text
from ..errors import IndexingInterrupted, OnnxImageUnavailable, IndexTypeError, IndexWriteError, PathNotFoundError, QueryError
from ..fsutil import display_path
from ..library import LibraryRoot
from ..settings import Settings
from ..storage import CHOICES, IndexStore, docindex, location, writer_lock
from ..storage.pgvector import FAISS, PGVECTOR, check_layout
from ..storage.vectors import AUTO
from . import exports, metadata
from .report import IndexReport, NullProgress, Progress
from .runner import Indexer

if TYPE_CHECKING:  # pragma: no cover
    from ..encoders.queries import QueryEncoders
    from .handle import IndexHandle

log = logging.getLogger(__name__)


class IndexingRun:
    """Indexing of ``handle``'s index with ``encoders``' model (see the module's docstring).
    ``calibration``: what measures the index's background scores after a run (the search side's
    ``search.calibration``: ``load(store)``, ``refresh(store, encode_texts, shared)``; None: no
    calibration). ``batch_size``/``workers``: the encoder batch and decode worker processes
    (None: defaults)."""

    def __init__(self, handle: IndexHandle, encoders: QueryEncoders, settings: Settings, calibration: Any = None,
                 batch_size: int | None = None, workers: int | None = None):
        self.handle = handle
        self.encoders = encoders
        self.settings = settings
        self.calibration = calibration
        self.folder = handle.folder
        self.batch_size = batch_size
        self.workers = workers

    @property
    def store(self) -> IndexStore:
        return self.handle.store

    # -- Engine.add --------------------------------------------------------------------------------
    def add(self, paths: Sequence[str | Path] | str | Path | None = None, *, exclude: Sequence[str] = (),
            include_hidden: bool = False, follow_links: bool = False, reembed: bool = False, wait: float = 0.0,
            progress: Progress | None = None, index_type: str | None = None, refresh_metadata: bool = False,
            runner: str | Any = "local", ray_address: str | None = None, vectors: str | None = None) -> IndexReport:
        """``Engine.add`` (see there): the checks, then the run under the writer lock; a first
        run that fails leaves nothing behind (one interrupted once its folders were recorded is
        kept, for a bare ``mmsearch index`` to resume)."""
        check_index_type(index_type)
        executor = self.executor(runner, ray_address)
        if isinstance(paths, (str, Path)):
            paths = [paths]
        given = [os.path.abspath(os.path.expanduser(str(p))) for p in paths or ()]
        missing = [p for p in given if not os.path.lexists(p)]
        if missing:
            raise PathNotFoundError(
                f"no such file or folder: {', '.join(display_path(p) for p in missing)} (nothing was indexed)"
            )
        explicit = [LibraryRoot(p, tuple(exclude), include_hidden, follow_links) for p in given]
        with self.encoders.lock:
            self.encoders.refresh()
            creating = self.handle.current is None and not IndexStore.is_index(self.folder)
            self.check_layout(vectors, index_type, creating)
            if creating:
                IndexStore.check_creatable(self.folder)
                if not explicit:
                    raise QueryError(f"nothing to index: there is no index in {display_path(str(self.folder))} yet; "
                                     f"name a folder or file to index")
                if self.cached_dim(executor) is None:
                    self.encoders.torch  # noqa: B018 - load (and so check) the model before creating anything
            existed = self.folder.exists()
            try:
                with writer_lock(self.folder, wait, self.handle.db):
                    return self._locked(explicit, reembed, progress or NullProgress(), index_type,
                                        refresh_metadata, executor, vectors or FAISS)
            except BaseException as exc:
                if creating:
                    stopped = isinstance(exc, (KeyboardInterrupt, IndexingInterrupted))
                    self.remove_failed_first_run(existed, keep_roots=stopped)
                raise

    def _locked(self, explicit: list[LibraryRoot], reembed: bool, progress: Progress, index_type: str | None,
                refresh_metadata: bool, executor: Any, vectors: str) -> IndexReport:
        """The run itself, under the writer lock: its phases in order."""
        self.handle.created_meanwhile()  # by another process
        if self.handle.current is not None and not self.encoders.matches_index():
            if not reembed:
                raise self.encoders.mismatch("pass --reembed to embed everything again with the new model, "
                                             "or use another --index")
            self.switch_model()
        roots = explicit or (self._known_roots() if self.handle.current is not None else [])
        if not roots:
            raise QueryError("nothing to index: name a folder or file (the index has no known roots yet)")
        if self.handle.current is None:
            self._create(roots, executor, vectors, progress)
        store = self.store
        exported = self.export(progress)
        indexer = self.indexer(progress, executor)
        report = indexer.run(roots)
        if exported is not None:  # the first run's cost is part of the run: shown as a stage and in its time
            report.stages["export"] = exported
            report.seconds += exported
        if report.added or report.updated or report.reembedded or report.videos:
            self.record_encoders_used()
        if refresh_metadata:
            report.metadata = metadata.refresh(store, [root.path for root in roots], report, progress, indexer.workers)
        store.fit_vectors(index_type)
        self.calibrate(report.changed)
        self.index_documents()
        if report.changed:
            store.update_manifest()  # `updated_at`: when the index's contents last changed
        return report

    def _known_roots(self) -> list[LibraryRoot]:
        with self.store.read() as r:
            return [LibraryRoot.from_row(row.path, row.options) for row in r.roots()]

    def _create(self, roots: list[LibraryRoot], executor: Any, vectors: str, progress: Progress) -> None:
        """Create the index with the folders it indexes, before the exports and any item: a first
        run interrupted from here on is resumed by a bare ``mmsearch index``."""
        spec, dim = self.encoders.spec, self.cached_dim(executor)
        if dim is None:
            dim = self.encoders.torch.dim
        self.handle.create(spec.identity(), dim, vectors, [(root.path, root.options()) for root in roots])
        note = random_weights_note(spec)  # said once, here, not at every load
        if note:
            progress.note(note)

    # -- the phases ----------------------------------------------------------------------------------
    def switch_model(self) -> None:
        """Move the index to the requested model: every vector is dropped and items keep their
        rows (and ids) until they are embedded again, by this run or, for items under folders
        that cannot be read now, by a later one."""
        store = self.store
        encoder = self.encoders.torch  # load (and so validate) the new model before changing anything
        identity = encoder.spec.identity()
        with store.write() as w:
            w.drop_all_vectors()
            w.record_model(identity, encoder.dim)
        # No vector of the old model is left; only now does the manifest name the new model.
        store.update_manifest(model=identity, dim=encoder.dim, vectors_files={}, encoded_with={})
        store.forget_vectors()
        self.encoders.switched()

    def export(self, progress: Progress) -> float | None:
        """Export the model's towers to ONNX where the index needs it (or take them from the
        cache), before indexing, so queries during a long first run already start fast. Once
        per model (tens of seconds for ViT-B-32), so it shows as a phase of its own; returns its
        seconds, or None when nothing was needed."""
        store, spec = self.store, self.encoders.spec
        towers = exports.needed(store, self.settings.onnx)
        if not towers:
            return None
        started = time.monotonic()
        progress.note(f"exporting {spec.display} to ONNX (once per model on this machine; "
                      f"tens of seconds for ViT-B-32)")
        progress.start("exporting", len(towers))
        for tower in towers:
            exports.ensure_exported(store, tower, spec, lambda: self.encoders.torch, self.settings.cache,
                                    self.settings.onnx)
            progress.advance(1)
        return time.monotonic() - started

    def record_encoders_used(self) -> None:
        """Add this run's encoders to the manifest's ``encoded_with`` (each one that made vectors
        now in the index, in the order first used), so ``info`` shows what built the vectors, not
        what the current environment would use."""
        store = self.store
        used = dict(store.manifest.get("encoded_with") or {})
        for kind, encoder in self.encoders.encoders_now().items():
            if encoder not in used.get(kind, []):
                used[kind] = [*used.get(kind, []), encoder]
        if used != store.manifest.get("encoded_with"):
            store.update_manifest(encoded_with=used)

    def index_documents(self) -> None:
        """Bring the document index (``storage.docindex``, early fusion's candidates) to the
        catalogue's generation when it is not there; a failure leaves early fusion on the item
        index (slower, as exact), not the run failed."""
        try:
            docindex.refresh(self.store)
        except IndexWriteError as exc:
            log.warning("%s", exc)

    def calibrate(self, changed: bool) -> None:
        """Measure the background scores of the index (``self.calibration``) when its contents
        changed or it has none yet; a failure costs calibrated scores, not the run."""
        calibration, store = self.calibration, self.store
        if calibration is None:
            return
        try:
            if changed or calibration.load(store) is None:
                fingerprint = str(store.manifest.get("model", {}).get("fingerprint"))
                shared = onnx_export.cache_dir(self.settings.cache) / fingerprint if self.settings.onnx else None
                calibration.refresh(store, self.encoders.encode_texts, shared)
        except Exception as exc:  # noqa: BLE001 - calibration is an extra; indexing succeeded
            log.warning("could not measure score calibration: %s", exc)

    def indexer(self, progress: Progress | None = None, executor: Any = None) -> Indexer:
        """An indexer over the store and the indexing encoder (the caller holds the writer lock);
        ``executor``: where images are decoded (default: local worker processes)."""
        factory = self.indexing_encoder
        plan = getattr(executor, "encoder_plan", None)  # Ray: the actors load the model, not this process
        if plan is not None and not self.encoders.on_gpu() and self.encoders.matches_index():
            factory = lambda: plan(self.store, self.indexing_encoder)  # noqa: E731
        return Indexer(
            self.store, factory, progress=progress, settings=self.settings,
            batch_size=self.batch_size or self.encoders.default_batch(), workers=self.workers,
            never=[str(self.folder)],  # the index folder itself, even inside an indexed root
            executor=executor,
        )

    def indexing_encoder(self) -> Any:
        """The encoder the run uses: ONNX for images where that is the choice (measured or set,
        ``onnx_image.indexing_choice``), else the torch encoder."""
        store, encoders = self.handle.current, self.encoders
        if store is None or encoders.on_gpu() or not encoders.matches_index():
            return encoders.torch
        return indexing_encoder(store, self.settings, lambda: encoders.torch, lambda: encoders.text)

    def cached_dim(self, executor: Any = None) -> int | None:
        """The model's vector dimension when a new index of it needs no torch (its ONNX exports
        and this CPU's encoder timing are in the cache, ``onnx_image.cached_dim``), else None.
        A GPU run or ``--no-onnx`` loads the model as before; so does the torch image encoder,
        unless ``executor`` encodes elsewhere (Ray's actors: ``encoder_plan``)."""
        torch_here = self.settings.image_encoder == "torch" and not hasattr(executor, "encoder_plan")
        if self.encoders.torch_loaded or self.encoders.on_gpu() or torch_here:
            return None
        return onnx_image.cached_dim(self.encoders.spec.identity()["fingerprint"], self.settings.cache,
                                     self.settings.onnx)

    def executor(self, runner: str | Any, ray_address: str | None) -> Any:
        """The decode executor ``runner`` names (None: the local one), checked before any work:
        Ray missing is said at once, with how to install it."""
        if runner == "local" or runner is None:
            if ray_address is not None:
                raise QueryError("ray_address (--ray-address) needs runner 'ray' (--runner ray)")
            return None
        if runner == "ray":
            from .ray_executor import RayExecutor

            return RayExecutor(ray_address, workers=self.workers, spec=self.encoders.spec, settings=self.settings)
        if isinstance(runner, str):
            raise QueryError(f"unknown runner {runner!r}: choose local or ray")
        return runner  # a decode executor made by the caller

    def remove_failed_first_run(self, existed: bool, keep_roots: bool = False) -> None:
        """Undo a first run that failed before any item was saved: no half-made index is left.
        ``keep_roots``: keep it when its folders were recorded (an interrupted run, resumable)."""
        store = self.handle.current
        if store is not None:
            try:
                with store.read() as r:
                    if r.item_count() or (keep_roots and r.roots()):
                        return  # items (or roots) were saved: keep them (a bare `mmsearch index` resumes)
            except Exception:  # noqa: BLE001 - an unreadable database is ours to remove too
                pass
            self.handle.forget()
        IndexStore.remove_own_files(self.folder, remove_folder=not existed)

    def check_layout(self, vectors: str | None, index_type: str | None, creating: bool) -> None:
        """IndexTypeError (one line) for a vector layout this index cannot take, before anything
        is created or the model loads."""
        db = self.handle.db
        if vectors is not None:
            check_layout(vectors, db if db is not None else (None if creating else location.resolve(self.folder, None)))
        if creating:
            current = vectors or FAISS
        else:
            current = PGVECTOR if self.store.in_pgvector else FAISS
            if vectors is not None and vectors != current:
                raise IndexTypeError(
                    f"{self.folder} keeps its vectors in {current}; the layout is chosen when an index is created "
                    f"(index into a new --index folder or database with --vectors {vectors})")
        if current == PGVECTOR and index_type not in (None, AUTO):
            raise IndexTypeError(f"--index-type {index_type} is a local FAISS index: a --vectors pgvector index "
                                 f"searches PostgreSQL's HNSW index instead")

    # -- Engine.rebuild_vectors --------------------------------------------------------------------
    def rebuild_vectors(self, index_type: str | None = None, *, wait: float = 0.0) -> dict[str, Any]:
        """Rebuild the vector index from the stored embeddings (no re-encoding) as ``index_type``
        and return the manifest's new ``vector_index`` entry (see ``Engine.rebuild_vectors``)."""
        check_index_type(index_type)
        self.check_layout(None, index_type, creating=False)
        with self.encoders.lock, writer_lock(self.folder, wait, self.handle.db):
            self.store.fit_vectors(index_type, force=True)
            return dict(self.store.manifest["vector_index"])


def indexing_encoder(store: IndexStore, settings: Any, torch_encoder: Any, text_encoder: Any = None) -> Any:
    """The encoder an indexing run (or ``check --repair``) uses on ``store``: ONNX for images
    where that is the choice (``onnx_image.indexing_choice``), texts by ``text_encoder()`` (default: the
    index's ONNX text encoder, else torch); else ``torch_encoder()``. Every path that embeds
    into an index goes through here, so re-embedded items get the vectors indexing gives."""
    choice = onnx_image.indexing_choice(store.manifest, settings.image_encoder, settings.onnx)
    if choice == "torch":
        return torch_encoder()
    try:
        image = onnx_image.OnnxImageEncoder(store.folder, onnx_image.usable_record(store.manifest), choice)
    except OnnxImageUnavailable as exc:
        log.warning("images are encoded by the torch model: %s", exc)
        return torch_encoder()
    if text_encoder is None:
        def text_encoder() -> Any:
            record = onnx_text.usable_record(store.manifest, settings.onnx)
            if record is not None:
                try:
                    return onnx_text.OnnxTextEncoder(store.folder, record)
                except Exception as exc:  # noqa: BLE001 - OnnxTextUnavailable: texts then use torch
                    log.warning("texts are encoded by the torch model: %s", exc)
            return torch_encoder()
    return onnx_image.IndexingEncoder(image, onnx_image.once_per_process(text_encoder))


def check_index_type(index_type: str | None) -> None:
    if index_type is not None and index_type not in CHOICES:
        raise IndexTypeError(f"unknown vector index type {index_type!r}: choose one of {', '.join(CHOICES)}")
