"""``Engine``: the public API that the CLI, the server and users' programs share.

    from mmsearch import Engine

    with Engine("indexes/photos") as engine:
        engine.add(["~/Pictures"])
        for hit in engine.search("red pasta dish", k=5, type="image"):
            print(hit.rank, f"{hit.score:.3f}", hit.path)

An Engine owns one index store and, loaded on first need, its encoders: the torch model, and
for text queries the index's ONNX text encoder when it has one (no torch import). ``search`` is
safe to call from many threads at once, and searches run in parallel; ``add`` takes the index's
writer lock. ``mmsearch.client.Client`` offers the same methods over HTTP.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .encoders import ModelSpec, TorchEncoder, random_weights_note
from .encoders import onnx_export, onnx_image, onnx_text
from .errors import IndexNotFoundError, ModelMismatchError, OnnxImageUnavailable, OnnxTextUnavailable, PathNotFoundError, QueryError
from .fsutil import display_path
from .indexing import Indexer, IndexReport, NullProgress, Progress, metadata
from .library import LibraryRoot
from .media import BadInput
from .search.dupes import DuplicateGroup
from .search.query import IMAGE, ITEM, KINDS, TEXT, Hits, Item, QueryTerm, combine, item_of
from .search.request import Ranking, SearchRequest, Searcher
from .search import spaces
from .search.searcher import IndexSearcher
from .settings import Settings
from .storage import CHOICES, IndexStore, VectorSettings, location, writer_lock
from .storage.pgvector import FAISS, PGVECTOR
from .storage.pgvector import check_layout
from .storage.vectors import AUTO
from .errors import DamagedIndexError, IndexingInterrupted, IndexTypeError, IndexWriteError

log = logging.getLogger(__name__)

DEFAULT_BATCH_CPU = 32  # larger batches stop paying off on CPU beyond ~32
DEFAULT_BATCH_GPU = 256  # GPUs want a few hundred to stay busy
SPACES_DIR = "spaces"  # an index's other embedding spaces: one index folder each
MAIN_SPACE = "main"  # the name of an index's own space


class Engine(Searcher):
    """An index folder plus the model that embeds into it.

    ``index``: the index folder (default ``$MMSEARCH_INDEX`` or ``./indexes/default``); it is
    created by the first ``add``. ``model``/``pretrained``: see ``ModelSpec.resolve``; when
    omitted, an existing index uses the model recorded in its manifest. ``device``: 'cuda',
    'mps', 'cpu' or None for automatic. ``settings``: the environment's (``Settings.from_env()``)
    unless given. ``text_encoder``: an ONNX text encoder already loading
    (``onnx_text.preload``), used when it is this index's; ``image_encoder`` likewise
    (``onnx_image.preload``). ``db``: a PostgreSQL catalogue shared by several machines
    (``postgresql+psycopg://USER@HOST/DB``, default ``$MMSEARCH_DB``); ``index`` is then this
    machine's local copy of it (default: a cache folder per database).
    """

    def __init__(
        self,
        index: str | Path | None = None,
        *,
        model: str | None = None,
        pretrained: str | None = None,
        device: str | None = None,
        batch_size: int | None = None,
        workers: int | None = None,
        settings: Settings | None = None,
        text_encoder: onnx_text.Preload | None = None,
        image_encoder: onnx_image.Preload | None = None,
        db: str | None = None,
    ):
        self.settings = settings or Settings.from_env()
        if db is not None:
            self.settings = self.settings.but(db=db)
        self.folder = Path(index if index is not None else self.settings.default_index()).expanduser().absolute()
        self._default_folder = index is None and self.settings.index is None and self.settings.db is None
        s = self.settings
        self._vector_settings = VectorSettings(s.flat_max, s.nlist, s.nprobe, s.rerank, s.faiss_gpu)
        self.db = s.db  # a PostgreSQL catalogue shared with other machines (None: the folder's SQLite)
        if self.db is not None and not IndexStore.is_index(self.folder):
            location.attach(self.folder, self.db)  # this machine's first use of a shared catalogue
        self._store: IndexStore | None = (IndexStore.open(self.folder, self._vector_settings, self.db)
                                          if IndexStore.is_index(self.folder) else None)
        known = self._store.manifest.get("model") if self._store is not None else None
        self._requested = (ModelSpec.resolve(model, pretrained, known, defaults=(s.model, s.pretrained),
                                             exported=self._exported)
                           if (model or pretrained) else None)
        self._device = device
        self._batch_size = batch_size
        self._workers = workers
        self._encoder: TorchEncoder | None = None
        self._onnx: onnx_text.OnnxTextEncoder | None = None  # the index's torch-free text encoder
        self._onnx_key: tuple | None = None  # the export record _onnx was loaded for
        self._preloaded = text_encoder
        self._onnx_image_encoder: onnx_image.OnnxImageEncoder | None = None  # the torch-free image encoder
        self._onnx_image_key: tuple | None = None
        self._preloaded_image = image_encoder
        self.warmed = False  # `warm()` loaded what queries need
        self._lock = threading.RLock()  # guards loading the encoders and switching models
        self._spaces: dict[str, Engine] = {}  # the index's other embedding spaces, opened on first use
        self._searcher = IndexSearcher(lambda: self.store, self._refresh, self._encode_for_search, self.roots)

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for other in self._spaces.values():
            other.close()
        if self._store is not None:
            self._store.close()
        self._encoder = None
        self._onnx = self._onnx_key = None
        self._onnx_image_encoder = self._onnx_image_key = None

    # -- model -------------------------------------------------------------------------------
    @property
    def store(self) -> IndexStore:
        if self._store is None:
            # Raises the precise reason: no such folder, not an index, newer schema...
            try:
                self._store = IndexStore.open(self.folder, self._vector_settings, self.db)
            except IndexNotFoundError as exc:
                if not self._default_folder:
                    raise
                raise IndexNotFoundError(f"{exc} ({self.settings.default_index_rule()})") from None
        return self._store

    @property
    def spec(self) -> ModelSpec:
        """The model this engine embeds with."""
        if self._requested is not None:
            return self._requested
        if self._store is not None:
            return ModelSpec.from_manifest(self._store.manifest["model"])
        return ModelSpec.resolve(defaults=(self.settings.model, self.settings.pretrained))

    @property
    def encoder(self) -> TorchEncoder:
        """The torch encoder (loaded on first use)."""
        with self._lock:
            if self._encoder is None:
                self._encoder = TorchEncoder(self.spec, self._device, self.settings.cpu_bf16)
            return self._encoder

    @property
    def model_loaded(self) -> bool:
        """True once the torch model has been loaded (image queries and indexing load it)."""
        return self._encoder is not None

    @property
    def text_encoder(self) -> Any:
        """The text encoder text queries use (a ``TextEncoder``): the index's ONNX export when it
        has a valid one (``kind`` "onnx", no torch), else the torch encoder (``kind`` "torch")."""
        return self._onnx_text() or self.encoder

    @property
    def image_encoder(self) -> Any:
        """The image encoder image queries use (an ``ImageEncoder``): the index's ONNX export
        when it has a valid one (``kind`` "onnx" or "onnx-int8", no torch), else the torch encoder."""
        return self._onnx_image() or self.encoder

    def warm(self) -> None:
        """Load the encoders queries use (ONNX where the index has exports, else torch), so the
        first query is as fast as the next (the server calls this at start)."""
        if self._store is None or self.text_encoder.kind == "torch" or self.image_encoder.kind == "torch":
            self.encoder  # noqa: B018 - no index yet, or an encoder without export: the torch model
        self.warmed = True

    def _refresh(self) -> None:
        """Follow another process's change of the index's model (``--reembed``).

        A long-lived Engine (a server) must never encode queries with a model the index no
        longer uses: one stat per call notices a rewritten manifest, and a new model identity
        drops the loaded encoders, which reload for the new model on next use.
        """
        store = self._store
        if store is None or not store.manifest_changed():
            return
        with self._lock:
            before = (store.manifest.get("model", {}).get("fingerprint"), store.manifest.get("dim"))
            store.reload_manifest()
            if (store.manifest["model"].get("fingerprint"), store.manifest["dim"]) != before:
                log.info("the index's model changed to %s: reloading", store.manifest["model"].get("name"))
                self._encoder = None
                self._onnx = self._onnx_key = None
                self._onnx_image_encoder = self._onnx_image_key = None

    def _check_model(self) -> bool:
        """True when the requested model is the index's; False when it differs."""
        if self._requested is None or self._store is None:
            return True
        recorded = self._store.manifest["model"]
        return self._requested.identity(known=recorded)["fingerprint"] == recorded.get("fingerprint")

    def _mismatch(self, action: str) -> ModelMismatchError:
        recorded = ModelSpec.from_manifest(self.store.manifest["model"])
        return ModelMismatchError(
            f"{self.folder} was built with {recorded.display}, not {self._requested.display}; {action}"
        )

    # -- indexing ----------------------------------------------------------------------------
    def add(
        self,
        paths: Sequence[str | Path] | str | Path | None = None,
        *,
        exclude: Sequence[str] = (),
        include_hidden: bool = False,
        follow_links: bool = False,
        reembed: bool = False,
        wait: float = 0.0,
        progress: Progress | None = None,
        index_type: str | None = None,
        refresh_metadata: bool = False,
        runner: str | Any = "local",
        ray_address: str | None = None,
        vectors: str | None = None,
    ) -> IndexReport:
        """Index ``paths`` (folders or files) incrementally; None re-scans every known root.

        New and changed files are embedded, renamed and duplicate files reuse stored vectors,
        and items of files that disappeared under the given paths are removed. Each path is
        remembered with ``exclude``, ``include_hidden`` and ``follow_links`` (follow symlinks
        that lead outside it), so a later ``add()`` with no paths scans it the same way.
        ``reembed=True`` allows switching the index to a different model: every item is
        embedded again (items under folders that cannot be read now keep their rows and get
        their new vectors when the folder is back). ``index_type`` (``auto``, ``flat``,
        ``ivf-sq8``, ``ivf-pq``, ``ivf-ondisk``; None: keep the index's choice) is remembered; the vector index
        is rebuilt from the stored embeddings when it changes or when growth makes the current
        type a poor fit. A named path that does not exist raises ``PathNotFoundError`` before
        anything is created or changed. ``refresh_metadata``: also read the capture metadata
        (EXIF, video tags) of the image and video items already indexed under the paths, from
        their headers, without encoding (items indexed before mmsearch read EXIF). ``runner``:
        ``local`` (worker processes here) or ``ray`` (decoding and encoding on Ray: a local Ray,
        or the cluster at ``ray_address``, ``auto`` or ``ray://...``; see
        ``indexing.ray_executor``), or a decode executor instance. ``vectors``: where a new
        index keeps its vectors, ``faiss`` (a local vector index file, the default) or
        ``pgvector`` (in the PostgreSQL catalogue, searched by one SQL statement with its filters;
        see ``storage.pgvector``); chosen at creation (None: the index's).
        """
        _check_index_type(index_type)
        executor = self._executor(runner, ray_address)
        if isinstance(paths, (str, Path)):
            paths = [paths]
        given = [os.path.abspath(os.path.expanduser(str(p))) for p in paths or ()]
        missing = [p for p in given if not os.path.lexists(p)]
        if missing:
            raise PathNotFoundError(
                f"no such file or folder: {', '.join(display_path(p) for p in missing)} (nothing was indexed)"
            )
        explicit = [LibraryRoot(p, tuple(exclude), include_hidden, follow_links) for p in given]
        with self._lock:
            self._refresh()
            creating = self._store is None and not IndexStore.is_index(self.folder)
            self._check_layout(vectors, index_type, creating)
            if creating:
                IndexStore.check_creatable(self.folder)
                if not explicit:
                    raise QueryError(f"nothing to index: there is no index in {display_path(str(self.folder))} yet; "
                                     f"name a folder or file to index")
                if self._cached_dim(executor) is None:
                    self.encoder  # noqa: B018 - load (and so check) the model before creating anything
            existed = self.folder.exists()
            try:
                with writer_lock(self.folder, wait, self.db):
                    return self._add_locked(explicit, reembed, progress or NullProgress(), index_type,
                                            refresh_metadata, executor, vectors or FAISS)
            except BaseException as exc:
                if creating:
                    # Interrupted (Ctrl-C) once its folders were recorded, a first run is kept for a
                    # bare `mmsearch index` to resume; any other failure leaves nothing behind.
                    stopped = isinstance(exc, (KeyboardInterrupt, IndexingInterrupted))
                    self._remove_failed_first_run(existed, keep_roots=stopped)
                raise

    def _add_locked(self, explicit: list[LibraryRoot], reembed: bool, progress: Progress,
                    index_type: str | None, refresh_metadata: bool = False, executor: Any = None,
                    vectors: str = FAISS) -> IndexReport:
        if self._store is None and (IndexStore.is_index(self.folder)
                                    or (self.db is not None and location.attach(self.folder, self.db))):
            self._store = IndexStore.open(self.folder, self._vector_settings, self.db)  # created meanwhile by another process
        if self._store is not None and not self._check_model():
            if not reembed:
                raise self._mismatch("pass --reembed to embed everything again with the new model, or use another --index")
            self._switch_model()
        roots = explicit or (self.roots() if self._store is not None else [])
        if not roots:
            raise QueryError("nothing to index: name a folder or file (the index has no known roots yet)")
        if self._store is None:
            spec, dim = self.spec, self._cached_dim(executor)
            if dim is None:
                dim = self.encoder.dim
            # The folders are recorded with the index, before the exports and any item: a first
            # run interrupted from here on is resumed by a bare `mmsearch index`.
            self._store = IndexStore.create(self.folder, spec.identity(), dim, self._vector_settings, db=self.db,
                                            vectors=vectors, roots=[(root.path, root.options()) for root in roots])
            note = random_weights_note(spec)  # said once, here, not at every load
            if note:
                progress.note(note)
        store = self._store
        # Before indexing, so queries during a long first run already start fast. Once per model
        # (tens of seconds for ViT-B-32), so it shows as a phase of its own.
        exports = [module for module in (onnx_text, onnx_image) if module.export_needed(store.manifest, self.settings.onnx)]
        exported = time.monotonic()
        if exports:
            progress.note(f"exporting {self.spec.display} to ONNX (once per model on this machine; "
                          f"tens of seconds for ViT-B-32)")
            progress.start("exporting", len(exports))
            for module in exports:
                module.ensure_exported(store, self.spec, lambda: self.encoder, self.settings.cache, self.settings.onnx)
                progress.advance(1)
        exported = time.monotonic() - exported
        indexer = self.indexer(progress, executor)
        report = indexer.run(roots)
        if exports:  # the first run's cost is part of the run: shown as a stage and in its time
            report.stages["export"] = exported
            report.seconds += exported
        if report.added or report.updated or report.reembedded or report.videos:
            self._record_encoders_used()
        if refresh_metadata:
            report.metadata = metadata.refresh(store, [root.path for root in roots], report, progress, indexer.workers)
        store.fit_vectors(index_type)
        self._calibrate(report.changed)
        self._index_documents()
        if report.changed:
            store.update_manifest()  # `updated_at`: when the index's contents last changed
        return report

    def encoders_now(self) -> dict[str, str]:
        """What an indexing run here would encode with now: images (``torch``, ``onnx`` or
        ``onnx-int8``, as ``MMSEARCH_IMAGE_ENCODER`` and the measurement choose) and texts."""
        manifest = self.store.manifest
        gpu = self._device not in (None, "cpu")
        return {
            "images": "torch" if gpu else onnx_image.indexing_choice(manifest, self.settings.image_encoder, self.settings.onnx),
            "texts": "torch" if gpu or not onnx_text.usable_record(manifest, self.settings.onnx) else "onnx",
        }

    def _record_encoders_used(self) -> None:
        """Add this run's encoders to the manifest's ``encoded_with`` (each one that made vectors
        now in the index, in the order first used), so ``info`` shows what built the vectors, not
        what the current environment would use."""
        used = dict(self.store.manifest.get("encoded_with") or {})
        for kind, encoder in self.encoders_now().items():
            if encoder not in used.get(kind, []):
                used[kind] = [*used.get(kind, []), encoder]
        if used != self.store.manifest.get("encoded_with"):
            self.store.update_manifest(encoded_with=used)

    def _index_documents(self) -> None:
        """Bring the document index (``storage.docindex``, early fusion's candidates) to the
        catalogue's generation when it is not there; a failure leaves early fusion on the item
        index (slower, as exact), not the run failed."""
        from .storage import docindex

        try:
            docindex.refresh(self.store)
        except IndexWriteError as exc:
            log.warning("%s", exc)

    def _calibrate(self, changed: bool) -> None:
        """Measure the background scores of the index (``mmsearch.search.calibration``) when its
        contents changed or it has none yet; a failure costs calibrated scores, not the run."""
        from .search import calibration

        try:
            if changed or calibration.load(self.store) is None:
                fingerprint = str(self.store.manifest.get("model", {}).get("fingerprint"))
                shared = onnx_export.cache_dir(self.settings.cache) / fingerprint if self.settings.onnx else None
                calibration.refresh(self.store, self.encode_texts, shared)
        except Exception as exc:  # noqa: BLE001 - calibration is an extra; indexing succeeded
            log.warning("could not measure score calibration: %s", exc)

    def indexer(self, progress: Progress | None = None, executor: Any = None) -> Indexer:
        """An indexer over this engine's store and encoder (the caller holds the writer lock);
        ``executor``: where images are decoded (default: local worker processes)."""
        factory = self._indexing_encoder
        plan = getattr(executor, "encoder_plan", None)  # Ray: the actors load the model, not this process
        if plan is not None and self._device in (None, "cpu") and self._check_model():
            factory = lambda: plan(self.store, self._indexing_encoder)  # noqa: E731
        return Indexer(
            self.store, factory, progress=progress, settings=self.settings,
            batch_size=self._batch_size or self._default_batch(), workers=self._workers,
            never=[str(self.folder)],  # the index folder itself, even inside an indexed root
            executor=executor,
        )

    def _exported(self, spec: ModelSpec) -> bool:
        return onnx_image.cached_dim(spec.identity()["fingerprint"], self.settings.cache, self.settings.onnx) is not None

    def _cached_dim(self, executor: Any = None) -> int | None:
        """The model's vector dimension when a new index of it needs no torch (its ONNX exports
        and this CPU's encoder timing are in the cache, ``onnx_image.cached_dim``), else None.
        A GPU run or ``--no-onnx`` loads the model as before; so does the torch image encoder,
        unless ``executor`` encodes elsewhere (Ray's actors: ``encoder_plan``)."""
        torch_here = self.settings.image_encoder == "torch" and not hasattr(executor, "encoder_plan")
        if self._encoder is not None or self._device not in (None, "cpu") or torch_here:
            return None
        return onnx_image.cached_dim(self.spec.identity()["fingerprint"], self.settings.cache, self.settings.onnx)

    def _executor(self, runner: str | Any, ray_address: str | None) -> Any:
        """The decode executor ``runner`` names (None: the local one), checked before any work:
        Ray missing is said at once, with how to install it."""
        if runner == "local" or runner is None:
            if ray_address is not None:
                raise QueryError("ray_address (--ray-address) needs runner 'ray' (--runner ray)")
            return None
        if runner == "ray":
            from .indexing.ray_executor import RayExecutor

            return RayExecutor(ray_address, workers=self._workers, spec=self.spec, settings=self.settings)
        if isinstance(runner, str):
            raise QueryError(f"unknown runner {runner!r}: choose local or ray")
        return runner  # a decode executor made by the caller

    def _indexing_encoder(self) -> Any:
        """The encoder an indexing run uses: ONNX for images where that is the choice (measured
        or set, ``onnx_image.indexing_choice``), else the torch encoder."""
        store = self._store
        if store is None or self._device not in (None, "cpu") or not self._check_model():
            return self.encoder
        return onnx_image.indexing_encoder(store, self.settings, lambda: self.encoder, lambda: self.text_encoder)

    def _remove_failed_first_run(self, existed: bool, keep_roots: bool = False) -> None:
        """Undo a first run that failed before any item was saved: no half-made index is left.
        ``keep_roots``: keep it when its folders were recorded (an interrupted run, resumable)."""
        store = self._store
        if store is not None:
            try:
                with store.read() as r:
                    if r.item_count() or (keep_roots and r.roots()):
                        return  # items (or roots) were saved: keep them (a bare `mmsearch index` resumes)
            except Exception:  # noqa: BLE001 - an unreadable database is ours to remove too
                pass
            store.close()
            self._store = None
        IndexStore.remove_own_files(self.folder, remove_folder=not existed)

    def _check_layout(self, vectors: str | None, index_type: str | None, creating: bool) -> None:
        """IndexTypeError (one line) for a vector layout this index cannot take, before anything
        is created or the model loads."""
        if vectors is not None:
            check_layout(vectors, self.db if self.db is not None else (
                None if creating else location.resolve(self.folder, None)))
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

    def rebuild_vectors(self, index_type: str | None = None, *, wait: float = 0.0) -> dict[str, Any]:
        """Rebuild the vector index from the stored embeddings (no re-encoding) as ``index_type``
        (None: the index's choice, ``auto`` by default), remember the choice, and return the
        manifest's new ``vector_index`` entry."""
        _check_index_type(index_type)
        self._check_layout(None, index_type, creating=False)
        with self._lock, writer_lock(self.folder, wait, self.db):
            self.store.fit_vectors(index_type, force=True)
            return dict(self.store.manifest["vector_index"])

    def _switch_model(self) -> None:
        """Move the index to the requested model: every vector is dropped and items keep their
        rows (and ids) until they are embedded again, by this run or, for items under folders
        that cannot be read now, by a later one."""
        store = self.store
        encoder = self.encoder  # load (and so validate) the new model before changing anything
        identity = encoder.spec.identity()
        with store.write() as w:
            w.drop_all_vectors()
            w.record_model(identity, encoder.dim)
        # No vector of the old model is left; only now does the manifest name the new model.
        store.update_manifest(model=identity, dim=encoder.dim, vectors_files={}, encoded_with={})
        store.forget_vectors()
        self._onnx = self._onnx_key = None
        self._onnx_image_encoder = self._onnx_image_key = None
        self._requested = None

    def _default_batch(self) -> int:
        device = self._encoder.device if self._encoder else (self._device or "")
        return DEFAULT_BATCH_GPU if str(device).startswith("cuda") else DEFAULT_BATCH_CPU

    # -- encoding queries ---------------------------------------------------------------------
    def encode_query(self, terms: Sequence[QueryTerm]) -> np.ndarray:
        """The query vector for ``terms``: the normalised weighted sum of their vectors."""
        vectors: list[np.ndarray] = []
        for term in terms:
            if term.kind == TEXT:
                vectors.append(self.encode_texts([term.value])[0])
            elif term.kind == IMAGE:
                ahead = self._image_encoded_ahead(term)
                vectors.append(ahead if ahead is not None else self.encode_images([self._query_image(term)])[0])
            else:
                vectors.append(self._item_vector(term.value))
        return combine(np.stack(vectors), [t.weight for t in terms])

    def _query_image(self, term: QueryTerm) -> Any:
        """A query image decoded as indexing decodes (draft, reduce, caps), so an indexed image
        finds itself; in-memory images as given (bytes are decoded the same way)."""
        from PIL import Image

        from .media.image import decode_image, load_image, to_rgb

        value, size, limit = term.value, self.image_encoder.image_size, self.settings.max_pixels
        try:
            if isinstance(value, Image.Image):
                return to_rgb(value)
            if isinstance(value, (bytes, bytearray, memoryview)):
                return decode_image(bytes(value), size, limit)
            path = os.path.expanduser(os.fspath(value))
            if not os.path.isfile(path):
                raise QueryError(f"image not found: {value}")
            return load_image(path, size, limit)
        except BadInput as exc:
            raise QueryError(f"cannot use image {value if isinstance(value, (str, os.PathLike)) else 'given'}: {exc}") from exc

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Text vectors in the index's space: by its ONNX text encoder when it has a valid one
        (no torch import), else by the torch model."""
        onnx = self._onnx_text()
        if onnx is not None:
            try:
                return onnx.encode_texts(texts)
            except OnnxTextUnavailable as exc:
                log.warning("text queries use the torch model: %s", exc)
                with self._lock:
                    self._onnx = None
        return self.encoder.encode_texts(texts)

    def _image_encoded_ahead(self, term: QueryTerm) -> np.ndarray | None:
        """The vector the preload encoded for this image path, when its encoder is the one in use."""
        preloaded = self._preloaded_image
        if preloaded is None or not isinstance(term.value, str) or self._onnx_image() is not preloaded._encoder:
            return None
        return preloaded.take(os.path.expanduser(term.value))

    def encode_images(self, images: list[Any]) -> np.ndarray:
        """Image vectors in the index's space: by its ONNX image encoder when it has a valid one
        (no torch import), else by the torch model."""
        onnx = self._onnx_image()
        if onnx is not None:
            try:
                return onnx.encode_images(images)
            except OnnxImageUnavailable as exc:
                log.warning("image queries use the torch model: %s", exc)
                with self._lock:
                    self._onnx_image_encoder = None
        return self.encoder.encode_images(images)

    def _onnx_image(self) -> onnx_image.OnnxImageEncoder | None:
        store = self._store
        if store is None or (self._requested is not None and not self._check_model()):
            return None
        variant = onnx_image.query_variant(store.manifest, self.settings.image_encoder, self.settings.onnx)
        if variant is None:
            return None
        record = store.manifest[onnx_image.MANIFEST_KEY]
        key = (str(store.folder), record["file"], record.get("exported_at"), variant)
        with self._lock:
            if self._onnx_image_key != key:  # first use, or the index was re-exported
                self._onnx_image_key, self._onnx_image_encoder = key, None
                try:
                    preloaded = self._preloaded_image
                    if preloaded is not None and preloaded.matches(store.folder, record, variant):
                        self._onnx_image_encoder = preloaded.result()
                    else:
                        self._onnx_image_encoder = onnx_image.OnnxImageEncoder(store.folder, record, variant)
                except OnnxImageUnavailable as exc:
                    log.warning("image queries use the torch model: %s", exc)
            return self._onnx_image_encoder

    def _onnx_text(self) -> onnx_text.OnnxTextEncoder | None:
        store = self._store
        record = onnx_text.usable_record(store.manifest, self.settings.onnx) if store is not None else None
        if record is None or (self._requested is not None and not self._check_model()):
            return None
        key = (str(store.folder), record["file"], record.get("exported_at"))
        with self._lock:
            if self._onnx_key != key:  # first use, or the index was re-exported
                self._onnx_key, self._onnx = key, None
                try:
                    self._onnx = onnx_text.load(store.folder, record, self._preloaded)
                except OnnxTextUnavailable as exc:
                    log.warning("text queries use the torch model: %s", exc)
            return self._onnx

    def _item_vector(self, value: Any) -> np.ndarray:
        try:
            item_id = int(value)
        except (TypeError, ValueError) as exc:
            raise QueryError(f"item id must be an integer, got {value!r}") from exc
        with self.store.read() as r:
            blob = r.vector_of(item_id)
        if blob is None:
            raise QueryError(f"no item with id {item_id} in {self.folder}")
        if len(blob) != self.store.dim * 4:
            raise DamagedIndexError(f"the stored vector of item {item_id} is damaged (wrong size); "
                                    f"run `mmsearch check --repair`")
        return np.frombuffer(blob, np.float32).copy()

    # -- items and description -------------------------------------------------------------------
    def get(self, item_id: int) -> Item | None:
        """The stored metadata of one item, or None."""
        with self.store.read() as r:
            row = r.item(int(item_id))
        return item_of(row) if row is not None else None

    def count(self) -> int:
        """How many items the index holds."""
        with self.store.read() as r:
            return r.item_count()

    def roots(self) -> list[LibraryRoot]:
        """The indexed folders and files with the options they are scanned with."""
        with self.store.read() as r:
            return [LibraryRoot.from_row(row.path, row.options) for row in r.roots()]

    def vector_ids(self) -> set[int]:
        """The item ids the vector index holds, brought to the catalogue's latest state."""
        with self.store.snapshot() as snap:
            return set(snap.vectors.ids().tolist())

    def info(self) -> dict[str, Any]:
        """What is in the index: counts, roots, model, vector index, sizes."""
        self.store.raise_if_never_indexed()
        self._refresh()
        stats = self.store.stats()
        manifest = self.store.manifest
        stats["encoders"] = {
            "text": "onnx" if onnx_text.usable_record(manifest, self.settings.onnx) else "torch",
            "image": onnx_image.describe(manifest, self.settings.image_encoder, self.settings.onnx),
        }
        # What built the vectors (each encoder used by an indexing run; None: not recorded by the
        # mmsearch that built them), beside what a run would use now (``encoders``).
        stats["encoded_with"] = manifest.get("encoded_with")
        return stats

    # -- searching (``Searcher``: the options are written once there, ``Client`` has the same) -----
    def search_request(self, request: SearchRequest) -> Hits:
        """The hits of a checked request, from every embedding space that takes it."""
        return spaces.search(self.spaces, request)

    def search_vector(self, vector: np.ndarray, request: SearchRequest | None = None, *,
                      exclude: set[Any] | frozenset = frozenset(), **options: Any) -> Hits:
        """Ranked hits for a query vector already in this index's space: with ``request``'s
        options, or ``search``'s keywords (``k``, ``type``, ``min_score``, ``under``, ``dedup``,
        the filters, ``sort``, the ranking); ``exclude``: paths and ids left out. Words for a
        lexical or fused ranking: ``search_fused``."""
        return self._searcher.run(request or SearchRequest.build(None, **options), vector, exclude=exclude)

    def search_fused(self, vector: np.ndarray, words: str | None, ranking: Ranking,
                     request: SearchRequest | None = None, *, exclude: set[Any] | frozenset = frozenset(),
                     query_side: str = TEXT, **options: Any) -> Hits:
        """Ranked documents or items for a query vector and its ``words``, ranked as ``ranking``
        says (options as ``search_vector``; ``query_side``: 'text' or 'image', the query's kind,
        for calibration)."""
        request = (request or SearchRequest.build(None, **options)).but(ranking=ranking)
        return self._searcher.run(request, vector, words=words or "", exclude=exclude, query_side=query_side)

    def duplicates(self, *, threshold: float | None = None, type: str = "all", limit: int | None = None,
                   progress: Progress | None = None) -> list[DuplicateGroup]:
        """Groups of near-duplicate items (cosine similarity at least ``threshold``, default
        ``dupes.DEFAULT_THRESHOLD``; chains join: a~b and b~c make one group), of one modality
        each (``type``: 'image', 'text', 'video' or 'all'; files of moments (videos) group as
        whole files, each shown by its best-matching moment). Each group's ``keeper`` is the item
        with the largest resolution, then the oldest file, then the lowest id; ``others`` carry
        their similarity to it. Largest groups first; at most ``limit`` groups (None: all).
        ``progress`` receives the scan's progress."""
        groups = self._searcher.duplicates(threshold, type, progress)
        return groups if limit is None else groups[:max(0, int(limit))]

    @property
    def spaces(self) -> list[spaces.Space]:
        """The index's embedding spaces: its own (the model it was built with: images, texts and
        video frames; it takes text, image and item queries), then each index under its
        ``spaces/`` folder (another model over the same library), which takes texts and images."""
        folder = self.folder / SPACES_DIR
        names = sorted(p.name for p in folder.iterdir() if IndexStore.is_index(p)) if folder.is_dir() else []
        # What each space embeds matters only when several answer (a catalogue query each).
        own = spaces.Space(MAIN_SPACE, self.modalities() if names else (), frozenset(KINDS),
                           self._searcher, primary=True)
        found = [own]
        with self._lock:
            for name in names:
                if name not in self._spaces:
                    self._spaces[name] = Engine(folder / name, settings=self.settings.but(db=None))
                other = self._spaces[name]
                found.append(spaces.Space(name, other.modalities(), frozenset(KINDS) - {ITEM}, other._searcher))
        return found

    def modalities(self) -> tuple[str, ...]:
        """The modalities this index's vectors embed (what its catalogue holds)."""
        if self._store is None:
            return ()
        with self._store.read() as r:
            return tuple(sorted(r.modality_counts()))

    def _encode_for_search(self, terms: Sequence[QueryTerm]) -> np.ndarray:
        """The query vector, once the index exists and the model asked for is the index's."""
        self.store.raise_if_never_indexed()  # before the model is loaded
        self._refresh()
        if self._requested is not None and not self._check_model():
            raise self._mismatch("query it with the model it was built with")
        return self.encode_query(terms)


def _check_index_type(index_type: str | None) -> None:
    if index_type is not None and index_type not in CHOICES:
        raise IndexTypeError(f"unknown vector index type {index_type!r}: choose one of {', '.join(CHOICES)}")
