"""``Engine``: the public API that the CLI, the server and users' programs share.

    from mmsearch import Engine

    with Engine("indexes/photos") as engine:
        engine.add(["~/Pictures"])
        for hit in engine.search("red pasta dish", k=5, type="image"):
            print(hit.rank, f"{hit.score:.3f}", hit.path)

An Engine owns one index store and, loaded on first need, one model. It is safe to call
``search`` from several threads; ``add`` takes the index's writer lock.
"""

from __future__ import annotations

import glob
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import delete, select

from .config import DEFAULT_BATCH_CPU, DEFAULT_BATCH_GPU, default_index_dir
from . import onnx_text
from .corpus import BadInput, ScanOptions, load_image
from .db import GENERATION, Item, Root, Tombstone, get_int, next_generation
from .errors import ModelMismatchError, OnnxTextUnavailable, QueryError
from .indexer import Indexer, IndexReport, Progress
from .library import LibraryRoot
from .model import Encoder, ModelSpec
from .query import IMAGE, ITEM, TEXT, TYPES, Hit, QueryTerm, combine, parse_query, query_image_paths
from .store import IndexStore, writer_lock
from .vectors import CHOICES, IndexTypeError, VectorIndex, saved_generations

QueryInput = str | Path | QueryTerm | Sequence[str | Path | QueryTerm]

log = logging.getLogger(__name__)


class Engine:
    """An index folder plus the model that embeds into it.

    ``index``: the index folder (default ``$MMSEARCH_INDEX`` or ``./indexes/default``); it is
    created by the first ``add``. ``model``/``pretrained``: see ``ModelSpec.resolve``; when
    omitted, an existing index uses the model recorded in its manifest. ``device``: 'cuda',
    'mps', 'cpu' or None for automatic.
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
    ):
        self.folder = Path(index if index is not None else default_index_dir()).expanduser().absolute()
        self._store: IndexStore | None = IndexStore.open(self.folder) if IndexStore.is_index(self.folder) else None
        known = self._store.manifest.get("model") if self._store is not None else None
        self._requested = ModelSpec.resolve(model, pretrained, known) if (model or pretrained) else None
        self._device = device
        self._batch_size = batch_size
        self._workers = workers
        self._encoder: Encoder | None = None
        self._vectors: VectorIndex | None = None
        self._onnx: onnx_text.OnnxTextEncoder | None = None  # the index's torch-free text encoder
        self._onnx_key: tuple | None = None  # the export record _onnx was loaded for
        self._lock = threading.RLock()

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
        self._encoder = None
        self._vectors = None
        self._onnx = self._onnx_key = None

    # -- model -------------------------------------------------------------------------------
    @property
    def store(self) -> IndexStore:
        if self._store is None:
            # Raises the precise reason: no such folder, not an index, newer schema...
            self._store = IndexStore.open(self.folder)
        return self._store

    @property
    def spec(self) -> ModelSpec:
        """The model this engine embeds with."""
        if self._requested is not None:
            return self._requested
        if self._store is not None:
            return ModelSpec.from_manifest(self._store.manifest["model"])
        return ModelSpec.resolve()

    @property
    def encoder(self) -> Encoder:
        with self._lock:
            if self._encoder is None:
                self._encoder = Encoder(self.spec, self._device)
            return self._encoder

    @property
    def model_loaded(self) -> bool:
        """True once the model has been loaded (the first query or indexing run loads it)."""
        return self._encoder is not None

    def _check_model(self) -> bool:
        """True when the requested model is the index's; False when it differs."""
        if self._requested is None or self._store is None:
            return True
        recorded = self._store.manifest["model"]
        return self._requested.identity(known=recorded)["fingerprint"] == recorded.get("fingerprint")

    def _mismatch(self, action: str) -> ModelMismatchError:
        recorded = ModelSpec.from_manifest(self.store.manifest["model"])
        return ModelMismatchError(
            f"{self.folder} was built with {recorded.display}, not {self._requested.display}; "
            f"{action}"
        )

    # -- indexing ----------------------------------------------------------------------------
    def add(
        self,
        paths: Sequence[str | Path] | str | Path | None = None,
        *,
        exclude: Sequence[str] = (),
        include_hidden: bool = False,
        reembed: bool = False,
        wait: float = 0.0,
        progress: Progress | None = None,
        index_type: str | None = None,
    ) -> IndexReport:
        """Index ``paths`` (folders or files) incrementally; None re-scans every known root.

        New and changed files are embedded, renamed and duplicate files reuse stored vectors,
        and items of files that disappeared under the given paths are removed.
        ``reembed=True`` allows switching the index to a different model (everything is
        embedded again). ``index_type`` (``auto``, ``flat``, ``ivf-sq8``, ``ivf-pq``; None: keep
        the index's choice) is remembered; the vector index is rebuilt from the stored
        embeddings when it changes or when growth makes the current type a poor fit.
        """
        _check_index_type(index_type)
        if isinstance(paths, (str, Path)):
            paths = [paths]
        # The index folder itself is never indexed, even when it lies inside an indexed root.
        options = ScanOptions(include_hidden=include_hidden, exclude=(*exclude, glob.escape(str(self.folder))))
        with self._lock:
            if self._store is None:
                IndexStore.check_creatable(self.folder)
            with writer_lock(self.folder, wait):
                if self._store is None and IndexStore.is_index(self.folder):
                    self._store = IndexStore.open(self.folder)  # created meanwhile by another process
                if self._store is not None and not self._check_model():
                    if not reembed:
                        raise self._mismatch(
                            "pass --reembed to embed everything again with the new model, or use another --index"
                        )
                    self._switch_model()
                roots = self._roots(paths)
                if self._store is None:
                    encoder = self.encoder
                    self._store = IndexStore.create(self.folder, encoder.spec.identity(), encoder.dim)
                if onnx_text.export_needed(self._store.manifest):
                    # Before indexing, so queries during a long first run already start fast.
                    onnx_text.ensure_exported(self._store, self.encoder)
                report = self._index(roots, options, progress)
                if self._vectors is not None:
                    self._vectors = self._store.fit_vectors(self._vectors, index_type)
                return report

    def rebuild_vectors(self, index_type: str | None = None, *, wait: float = 0.0) -> dict[str, Any]:
        """Rebuild the vector index from the stored embeddings (no re-encoding) as ``index_type``
        (None: the index's choice, ``auto`` by default), remember the choice, and return the
        manifest's new ``vector_index`` entry."""
        _check_index_type(index_type)
        with self._lock, writer_lock(self.folder, wait):
            self._vectors = self.store.fit_vectors(None, index_type, force=True)
            return dict(self.store.manifest["vector_index"])

    def _roots(self, paths: Sequence[str | Path] | None) -> list[str]:
        if paths:
            return [os.path.abspath(os.path.expanduser(str(p))) for p in paths]
        roots: list[str] = []
        if self._store is not None:
            with self._store.session() as session:
                roots = list(session.scalars(select(Root.path).order_by(Root.path)))
        if not roots:
            raise QueryError("nothing to index: name a folder or file (the index has no known roots yet)")
        return roots

    def _index(self, roots: list[str], options: ScanOptions, progress: Progress | None) -> IndexReport:
        """Run the indexer (the caller holds the writer lock)."""
        store = self.store
        vectors = store.load_vectors()
        with store.session() as session:
            vectors = store.sync(session, vectors)
        indexer = Indexer(
            store,
            lambda: self.encoder,
            vectors,
            progress=progress,
            batch_size=self._batch_size or self._default_batch(),
            workers=self._workers,
        )
        try:
            return indexer.run(roots, options)
        finally:
            self._vectors = indexer.vectors

    def _switch_model(self) -> None:
        """Drop every item and vector so the index can be rebuilt with the requested model."""
        store = self.store
        encoder = self.encoder  # load (and so validate) the new model before deleting anything
        with store.session() as session, session.begin():
            gen = next_generation(session)
            ids = list(session.scalars(select(Item.id)))
            session.execute(delete(Item))
            session.execute(delete(Tombstone))
            session.add_all(Tombstone(item_id=i, gen=gen) for i in ids)
        # The database is empty now; only then does the manifest name the new model.
        store.update_manifest(model=encoder.spec.identity(), dim=encoder.dim)
        for _, path in saved_generations(store.folder):
            path.unlink(missing_ok=True)
        self._vectors = None
        self._requested = None

    def _default_batch(self) -> int:
        device = self._encoder.device if self._encoder else (self._device or "")
        return DEFAULT_BATCH_GPU if str(device).startswith("cuda") else DEFAULT_BATCH_CPU

    # -- searching ---------------------------------------------------------------------------
    def encode_query(self, terms: Sequence[QueryTerm]) -> np.ndarray:
        """The query vector for ``terms``."""
        vectors: list[np.ndarray] = []
        for term in terms:
            if term.kind == TEXT:
                vectors.append(self.encode_texts([term.value])[0])
            elif term.kind == IMAGE:
                path = os.path.expanduser(term.value)
                if not os.path.isfile(path):
                    raise QueryError(f"image not found: {term.value}")
                try:
                    # Same decoding as indexing (draft, reduce, caps), so an indexed image finds itself.
                    image = load_image(path, self.encoder.image_size)
                except BadInput as exc:
                    raise QueryError(f"cannot use image {term.value}: {exc}") from exc
                vectors.append(self.encoder.encode_images([image])[0])
            else:
                vectors.append(self._item_vector(term.value))
        return combine(np.stack(vectors), [t.weight for t in terms])

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Text vectors in the index's space: by its ONNX text encoder when it has a valid one
        (no torch import, see ``mmsearch.onnx_text``), else by the torch model."""
        onnx = self._onnx_text()
        if onnx is not None:
            try:
                return onnx.encode_texts(texts)
            except OnnxTextUnavailable as exc:
                log.warning("text queries use the torch model: %s", exc)
                with self._lock:
                    self._onnx = None
        return self.encoder.encode_texts(texts)

    def _onnx_text(self) -> onnx_text.OnnxTextEncoder | None:
        store = self._store
        record = onnx_text.usable_record(store.manifest) if store is not None else None
        if record is None or (self._requested is not None and not self._check_model()):
            return None
        key = (str(store.folder), record["file"], record.get("exported_at"))
        with self._lock:
            if self._onnx_key != key:  # first use, or the index was re-exported
                self._onnx_key, self._onnx = key, None
                try:
                    self._onnx = onnx_text.load(store.folder, record)
                except OnnxTextUnavailable as exc:
                    log.warning("text queries use the torch model: %s", exc)
            return self._onnx

    def _item_vector(self, value: str) -> np.ndarray:
        try:
            item_id = int(value)
        except ValueError as exc:
            raise QueryError(f"item id must be an integer, got {value!r}") from exc
        with self.store.session() as session:
            item = session.get(Item, item_id)
            if item is None or item.embedding is None:
                raise QueryError(f"no item with id {item_id} in {self.folder}")
            return np.frombuffer(item.embedding.vector, np.float32).copy()

    def search(
        self,
        query: QueryInput,
        *,
        k: int = 10,
        type: str = "all",
        min_score: float | None = None,
        under: str | Path | None = None,
        include_query: bool = False,
        force: str | None = None,
    ) -> list[Hit]:
        """Ranked hits for ``query``: a text, an image path, a ``QueryTerm``, or a list of them.

        Strings are parsed like the CLI (``"2:beach + ./dog.jpg - people"``). ``type``
        restricts hits to 'image' or 'text'; ``min_score`` drops weaker hits; ``under`` keeps
        hits below a folder. An image used as a query is left out of its own results unless
        ``include_query``.
        """
        if type not in TYPES:
            raise QueryError(f"unknown type {type!r}: choose one of {', '.join(TYPES)}")
        if k < 1:
            raise QueryError(f"k must be at least 1, got {k}")
        self.store  # a missing index is reported before the model is loaded
        if self._requested is not None and not self._check_model():
            raise self._mismatch("query it with the model it was built with")
        terms = _as_terms(query, force)
        vector = self.encode_query(terms)
        exclude = set() if include_query else query_image_paths(terms)
        for term in terms:
            if term.kind == ITEM and not include_query:
                exclude.add(int(term.value))
        return self.search_vector(vector, k=k, type=type, min_score=min_score, under=under, exclude=exclude)

    def search_vector(
        self,
        vector: np.ndarray,
        *,
        k: int = 10,
        type: str = "all",
        min_score: float | None = None,
        under: str | Path | None = None,
        exclude: set[Any] = frozenset(),
    ) -> list[Hit]:
        """Ranked hits for a query vector already in this index's space."""
        vector = np.asarray(vector, np.float32).reshape(-1)
        if vector.shape[0] != self.store.dim:
            raise QueryError(f"query vector has dimension {vector.shape[0]}, index has {self.store.dim}")
        prefix = os.path.abspath(os.path.expanduser(str(under))).rstrip(os.sep) + os.sep if under else None
        filtered = type != "all" or prefix is not None or bool(exclude)

        def keep(item: Item) -> bool:
            if type != "all" and item.modality != type:
                return False
            if prefix is not None and not item.path.startswith(prefix):
                return False
            return item.path not in exclude and item.id not in exclude

        with self._lock:
            store = self.store
            if self._vectors is None:
                self._vectors = store.load_vectors()
            with store.session() as session:
                # One read transaction: vectors are synced to this snapshot and rows are read
                # from it, so a concurrent index run can never show a half-written state.
                self._vectors = vectors = store.sync(session, self._vectors)
                total = vectors.ntotal
                # Over-fetch when filters may discard candidates; widen until k hits survive.
                fetch = min(total, k * 4 + len(exclude) if filtered else k)
                while True:
                    scores, ids = store.search(session, vectors, vector, fetch)  # exact cosines
                    rows = {item.id: item for item in session.scalars(select(Item).where(Item.id.in_(ids.tolist())))}
                    hits: list[Hit] = []
                    for score, item_id in zip(scores.tolist(), ids.tolist()):
                        if min_score is not None and score < min_score:
                            break
                        item = rows.get(item_id)
                        if item is None or not keep(item):
                            continue
                        hits.append(_hit(len(hits) + 1, score, item))
                        if len(hits) == k:
                            break
                    exhausted = fetch >= total or (min_score is not None and len(scores) and scores[-1] < min_score)
                    if len(hits) >= k or exhausted:
                        return hits
                    fetch = min(total, fetch * 4)

    def get(self, item_id: int) -> Hit | None:
        """The stored metadata of one item (as a Hit with rank 0 and score 1), or None."""
        with self.store.session() as session:
            item = session.get(Item, item_id)
            return _hit(0, 1.0, item) if item is not None else None

    def roots(self) -> list[LibraryRoot]:
        """The indexed folders and files with the options they are scanned with."""
        with self.store.session() as session:
            return [LibraryRoot.from_row(row.path, row.options)
                    for row in session.scalars(select(Root).order_by(Root.path))]

    # -- description -------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """What is in the index: counts, roots, model, vector index, sizes."""
        stats = self.store.stats()
        with self.store.session() as session:
            generation = get_int(session, GENERATION)
        stats["vectors_up_to_date"] = stats["vectors_saved_generation"] == generation
        return stats


def _check_index_type(index_type: str | None) -> None:
    if index_type is not None and index_type not in CHOICES:
        raise IndexTypeError(f"unknown vector index type {index_type!r}: choose one of {', '.join(CHOICES)}")


def _as_terms(query: QueryInput, force: str | None) -> list[QueryTerm]:
    if isinstance(query, QueryTerm):
        return [query]
    if isinstance(query, Path):
        return [QueryTerm(IMAGE, str(query))]
    if isinstance(query, str):
        return parse_query([query], force)
    items = list(query)
    if items and all(isinstance(q, QueryTerm) for q in items):
        return items  # type: ignore[return-value]
    if any(isinstance(q, QueryTerm) for q in items):
        raise QueryError("mix of QueryTerm objects and strings: pass one kind")
    return parse_query([str(q) for q in items], force)


def _hit(rank: int, score: float, item: Item) -> Hit:
    return Hit(
        rank=rank, score=float(score), id=item.id, modality=item.modality, path=item.path,
        locator=item.locator, text=item.text, width=item.width, height=item.height, meta=item.meta,
    )
