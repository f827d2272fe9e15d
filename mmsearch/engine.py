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

The Engine is a façade over its parts: the index's store (``indexing.handle.IndexHandle``), the
model choice and query encoders (``encoders.queries.QueryEncoders``), the searcher
(``search.searcher.IndexSearcher``, with the index's other embedding spaces) and, for ``add``
and ``rebuild_vectors``, an indexing run (``indexing.run.IndexingRun``) with all its phases.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .encoders import ModelSpec, TorchEncoder
from .encoders import onnx_image, onnx_text
from .encoders.queries import QueryEncoders
from .indexing import Indexer, IndexReport, Progress
from .progress import NullProgress
from .indexing.handle import IndexHandle
from .indexing.run import IndexingRun
from .library import LibraryRoot
from .search import calibration, spaces
from .search.dupes import DuplicateGroup
from .search.query import IMAGE, ITEM, KINDS, TEXT, Hits, Item, QueryTerm, combine, item_of
from .search.request import Ranking, SearchRequest, Searcher
from .search.searcher import IndexSearcher
from .settings import Settings
from .storage import IndexStore

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
        default = index is None and self.settings.index is None and self.settings.db is None
        self.db = self.settings.db  # a PostgreSQL catalogue shared with other machines (None: the folder's SQLite)
        self._handle = IndexHandle(self.folder, self.settings, default)
        self.encoders = QueryEncoders(lambda: self._handle.current, lambda: self._handle.store, self.folder,
                                      self.settings, model=model, pretrained=pretrained, device=device,
                                      text_preload=text_encoder, image_preload=image_encoder)
        self._batch_size = batch_size
        self._workers = workers
        self._spaces: dict[str, Engine] = {}  # the index's other embedding spaces, opened on first use
        self._searcher = IndexSearcher(lambda: self.store, self.encoders.refresh, self._encode_for_search, self.roots)

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for other in self._spaces.values():
            other.close()
        self._handle.close()
        self.encoders.close()

    @property
    def store(self) -> IndexStore:
        """The index's store, opened on first use (raises the precise reason when there is none)."""
        return self._handle.store

    # -- the model and its encoders (``QueryEncoders``) -----------------------------------------
    @property
    def spec(self) -> ModelSpec:
        """The model this engine embeds with."""
        return self.encoders.spec

    @property
    def encoder(self) -> TorchEncoder:
        """The torch encoder (loaded on first use)."""
        return self.encoders.torch

    @property
    def model_loaded(self) -> bool:
        """True once the torch model has been loaded (image queries and indexing load it)."""
        return self.encoders.torch_loaded

    @property
    def text_encoder(self) -> Any:
        """The text encoder text queries use (a ``TextEncoder``): the index's ONNX export when it
        has a valid one (``kind`` "onnx", no torch), else the torch encoder (``kind`` "torch")."""
        return self.encoders.text

    @property
    def image_encoder(self) -> Any:
        """The image encoder image queries use (an ``ImageEncoder``): the index's ONNX export
        when it has a valid one (``kind`` "onnx" or "onnx-int8", no torch), else the torch encoder."""
        return self.encoders.image

    def warm(self) -> None:
        """Load the encoders queries use (ONNX where the index has exports, else torch), so the
        first query is as fast as the next (the server calls this at start)."""
        self.encoders.warm()

    @property
    def warmed(self) -> bool:
        """``warm()`` loaded what queries need."""
        return self.encoders.warmed

    def encoders_now(self) -> dict[str, str]:
        """What an indexing run here would encode with now: images (``torch``, ``onnx`` or
        ``onnx-int8``, as ``MMSEARCH_IMAGE_ENCODER`` and the measurement choose) and texts."""
        return self.encoders.encoders_now()

    def encode_query(self, terms: Sequence[QueryTerm]) -> np.ndarray:
        """The query vector for ``terms``: the normalised weighted sum of their vectors."""
        encoders, vectors = self.encoders, []
        for term in terms:
            if term.kind == TEXT:
                vectors.append(encoders.encode_texts([term.value])[0])
            elif term.kind == IMAGE:
                ahead = encoders.image_encoded_ahead(term.value)
                vectors.append(ahead if ahead is not None else encoders.encode_images([encoders.query_image(term.value)])[0])
            else:
                vectors.append(encoders.item_vector(term.value))
        return combine(np.stack(vectors), [t.weight for t in terms])

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Text vectors in the index's space (its ONNX text encoder when valid, else torch)."""
        return self.encoders.encode_texts(texts)

    def encode_images(self, images: list[Any]) -> np.ndarray:
        """Image vectors in the index's space (its ONNX image encoder when valid, else torch)."""
        return self.encoders.encode_images(images)

    # -- indexing (``IndexingRun``) --------------------------------------------------------------
    def _run(self) -> IndexingRun:
        return IndexingRun(self._handle, self.encoders, self.settings, calibration, self._batch_size, self._workers)

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
        report = self._run().add(paths, exclude=exclude, include_hidden=include_hidden, follow_links=follow_links,
                                 reembed=reembed, wait=wait, progress=progress, index_type=index_type,
                                 refresh_metadata=refresh_metadata, runner=runner, ray_address=ray_address,
                                 vectors=vectors)
        roots = [root.path for root in self.roots()] if paths is None else paths
        for space in self.spaces[1:]:  # the other embedding spaces follow the library, each with its model
            other = self._spaces[space.name]
            done = other.add(roots, exclude=exclude, include_hidden=include_hidden, follow_links=follow_links,
                             wait=wait, progress=progress, refresh_metadata=refresh_metadata, runner=runner,
                             ray_address=ray_address)
            (progress or NullProgress()).note(f"space {space.name}: {done.summary()}")
        return report

    def indexer(self, progress: Progress | None = None, executor: Any = None) -> Indexer:
        """An indexer over this engine's store and encoder (the caller holds the writer lock);
        ``executor``: where images are decoded (default: local worker processes)."""
        return self._run().indexer(progress, executor)

    def rebuild_vectors(self, index_type: str | None = None, *, wait: float = 0.0) -> dict[str, Any]:
        """Rebuild the vector index from the stored embeddings (no re-encoding) as ``index_type``
        (None: the index's choice, ``auto`` by default), remember the choice, and return the
        manifest's new ``vector_index`` entry."""
        return self._run().rebuild_vectors(index_type, wait=wait)

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
        self.encoders.refresh()
        stats = self.store.stats()
        manifest = self.store.manifest
        stats["encoders"] = {
            "text": "onnx" if onnx_text.usable_record(manifest, self.settings.onnx) else "torch",
            "image": onnx_image.describe(manifest, self.settings.image_encoder, self.settings.onnx),
        }
        # What built the vectors (each encoder used by an indexing run; None: not recorded by the
        # mmsearch that built them), beside what a run would use now (``encoders``).
        stats["encoded_with"] = manifest.get("encoded_with")
        others = self.spaces[1:]
        if others:  # the index's other embedding spaces: their model and what they hold
            stats["spaces"] = {space.name: {"model": self._spaces[space.name].spec.display,
                                            "items": self._spaces[space.name].count(),
                                            "modalities": list(space.modalities)} for space in others}
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
                           self._searcher, primary=True, locate=self._locate)
        found = [own]
        with self.encoders.lock:
            for name in names:
                if name not in self._spaces:
                    self._spaces[name] = Engine(folder / name, settings=self.settings.but(db=None))
                other = self._spaces[name]
                found.append(spaces.Space(name, other.modalities(), frozenset(KINDS) - {ITEM}, other._searcher))
        return found

    def _locate(self, parts: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
        with self.store.read() as r:
            return r.ids_of_parts(parts)

    def modalities(self) -> tuple[str, ...]:
        """The modalities this index's vectors embed (what its catalogue holds)."""
        store = self._handle.current
        if store is None:
            return ()
        with store.read() as r:
            return tuple(sorted(r.modality_counts()))

    def _encode_for_search(self, terms: Sequence[QueryTerm]) -> np.ndarray:
        """The query vector, once the index exists and the model asked for is the index's."""
        self.store.raise_if_never_indexed()  # before the model is loaded
        self.encoders.refresh()
        if self.encoders.requested is not None and not self.encoders.matches_index():
            raise self.encoders.mismatch("query it with the model it was built with")
        return self.encode_query(terms)
