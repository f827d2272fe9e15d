"""An IVF vector index larger than memory: product-quantised codes in FAISS ``OnDiskInvertedLists``.

Built as clip-retrieval / autofaiss build theirs (``ivf-ondisk``):

1. ``train``: the coarse quantizer (k-means cells; an HNSW graph over the centroids past
   ``HNSW_FROM`` cells, so assigning millions of vectors costs a graph walk, not a scan of every
   centroid) and the PQ codebooks are trained on a sample; the empty trained index is serialised.
2. ``build_shard``: a pure top-level function (trained index bytes, ids, vectors -> shard file),
   so shards can be encoded anywhere: in this process one after another, or as parallel Ray tasks
   (``ray_shard_mapper``).
3. ``merge_ondisk`` (``faiss.contrib.ondisk``) concatenates the shards' inverted lists into one
   data file; the small index file written beside it holds the centroids and where each list is.
4. Readers memory-map the data file read-only (``open_base``): only the cells a query probes are
   paged in, so the index needs the page cache, not the process's memory.

Codes: PQ, ``dim/4`` bytes a vector (128 at 512 dimensions, 1/16 of float32). A probed cell is
read from disk (or the page cache) whole, so bytes per code decide a cold query's I/O: 8-bit
(SQ8) codes would read four times as much for a recall the exact re-ranking makes up anyway.
Candidates are re-ranked with exact float32 cosines (the catalogue's embeddings, as for the
other lossy types, ``Snapshot.search``), ``DEFAULT_RERANK`` of them for a top 10.

Files: ``vectors.g<gen>.faiss`` (the index, recorded in the manifest like every vectors file) and
``vectors.g<gen>.<token>.ivfdata`` (the lists; its name is in the index file, resolved beside
it, so a moved index folder still opens). Both are written under temporary names, made durable,
and renamed (the data file first), so a reader or a crash never sees a half-written pair.

Changes after a build: ``OnDiskVectorIndex`` answers from the read-only base, minus a set of
removed ids, plus a small in-memory exact delta index. The base is never rewritten by a save:
its generation stays the build's, and whoever opens it replays the catalogue's changes since
(``IndexStore._synced``; the store keeps the tombstones that replay needs). Once the changes
exceed ``FOLD_SHARE`` of the base, the next ``fit_vectors`` folds them in by a rebuild.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import IndexTypeError, IndexWriteError
from ..fsutil import fsync_dir
from ..lazy import lazy_module
from .vectors import (ONDISK, ONDISK_RERANK, ONDISK_TRAIN_PER_LIST, IndexPlan, VectorIndex, data_path, id_selector,
                      pq_m, read_index_file)
from .vectors import ondisk_nlist, ondisk_nprobe  # noqa: F401 - an on-disk IVF's parameters, named here too

faiss = lazy_module("faiss")  # imported on first use: a run that changes nothing never loads it

log = logging.getLogger(__name__)

# Past this many cells the coarse quantizer is an HNSW graph over the centroids.
HNSW_FROM = 4096
HNSW_M = 32
HNSW_EF_SEARCH = 16  # at least nprobe is used per query; 16 finds the best cell for 99.4% of vectors
# Vectors per shard (float32 at 512-d: 200 MB to encode at once).
SHARD_SIZE = 100_000
# Changes since the base (added + removed) folded in by a rebuild past this share of the base...
FOLD_SHARE = 0.1
# ...and never below this many (a rebuild of a large base costs minutes).
FOLD_MIN = 50_000
TRAIN_PER_LIST = ONDISK_TRAIN_PER_LIST
# Candidates re-ranked exactly for a top 10.
DEFAULT_RERANK = ONDISK_RERANK


def factory_spec(dim: int, nlist: int, m: int, bits: int) -> str:
    quantizer = f"_HNSW{HNSW_M}" if nlist >= HNSW_FROM else ""
    return f"IVF{nlist}{quantizer},PQ{m}x{bits}"


def train(dim: int, sample: np.ndarray, nlist: int, nprobe: int, m: int | None = None, bits: int = 8) -> faiss.IndexIVF:
    """An empty IVF-PQ index (inner product) trained on ``sample``."""
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    if len(sample) == 0:
        raise IndexTypeError(f"an {ONDISK} index needs training vectors")
    nlist = max(1, min(nlist, len(sample)))
    bits = int(max(1, min(bits, math.floor(math.log2(max(2, len(sample)))))))
    index = faiss.index_factory(dim, factory_spec(dim, nlist, m or pq_m(dim), bits), faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    ivf.do_polysemous_training = False
    # 128 small k-means (4-d sub-vectors): sampled to 64 points a centroid, they train in
    # seconds instead of minutes, for codes re-ranking makes up for anyway.
    ivf.pq.cp.niter = 10
    ivf.pq.cp.min_points_per_centroid = 1
    ivf.pq.cp.max_points_per_centroid = 64
    ivf.cp.niter = 10
    ivf.cp.min_points_per_centroid = 1
    ivf.cp.max_points_per_centroid = 1 << 20
    index.train(sample)
    ivf.nprobe = max(1, min(nprobe, nlist))
    quantizer = faiss.downcast_index(ivf.quantizer)
    if isinstance(quantizer, faiss.IndexHNSW):
        quantizer.hnsw.efSearch = HNSW_EF_SEARCH
    return index  # the owner (``ivf`` is a view of it)


def serialize(index: faiss.Index) -> bytes:
    return faiss.serialize_index(index).tobytes()


# -- building ---------------------------------------------------------------------------------------
def build_shard(trained: bytes, ids: np.ndarray, vectors: np.ndarray, path: str) -> str:
    """Encode one shard: a copy of the trained empty index, ``vectors`` added under ``ids``,
    written to ``path`` (through a temporary name). Pure: runs in any process (a Ray task)."""
    index = faiss.deserialize_index(np.frombuffer(trained, dtype=np.uint8))
    index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64))
    tmp = f"{path}.part"
    faiss.write_index(index, tmp)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


ShardMapper = Callable[[bytes, Iterable[tuple[np.ndarray, np.ndarray, str]]], list[str]]


def local_shard_mapper(trained: bytes, shards: Iterable[tuple[np.ndarray, np.ndarray, str]]) -> list[str]:
    """Build the shards one after another in this process (FAISS uses every core for each)."""
    return [build_shard(trained, ids, vectors, path) for ids, vectors, path in shards]


def ray_shard_mapper(max_in_flight: int = 4) -> ShardMapper | None:
    """A mapper that builds shards as Ray tasks, when ``ray`` is importable and initialised
    (None otherwise). At most ``max_in_flight`` shards are in the object store at once."""
    try:
        import ray
    except ImportError:
        return None
    if not ray.is_initialized():
        return None

    def mapper(trained: bytes, shards: Iterable[tuple[np.ndarray, np.ndarray, str]]) -> list[str]:
        task = ray.remote(build_shard)
        trained_ref = ray.put(trained)
        pending, done = [], []
        for ids, vectors, path in shards:
            if len(pending) >= max_in_flight:
                ready, pending = ray.wait(pending, num_returns=1)
                done.extend(ray.get(ready))
            pending.append(task.remote(trained_ref, ids, vectors, path))
        done.extend(ray.get(pending))
        return done

    return mapper


def _shards(chunks: Iterable[tuple[np.ndarray, np.ndarray]], size: int, name: Callable[[int], str]
            ) -> Iterator[tuple[np.ndarray, np.ndarray, str]]:
    """Regroup (ids, vectors) chunks into shards of ``size`` vectors, each with its file name."""
    ids_parts: list[np.ndarray] = []
    vec_parts: list[np.ndarray] = []
    held = number = 0
    for ids, vectors in chunks:
        start = 0
        while start < len(ids):
            take = min(size - held, len(ids) - start)
            ids_parts.append(np.asarray(ids[start:start + take], np.int64))
            vec_parts.append(np.asarray(vectors[start:start + take], np.float32))
            held += take
            start += take
            if held == size:
                yield np.concatenate(ids_parts), np.concatenate(vec_parts), name(number)
                ids_parts, vec_parts, held, number = [], [], 0, number + 1
    if held:
        yield np.concatenate(ids_parts), np.concatenate(vec_parts), name(number)


@contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """FAISS prints "resizing <file>" on stdout while merging: keep stdout for the caller (--json)."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError):
        yield
        return
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def build(header: Path, trained: faiss.IndexIVF, chunks: Iterable[tuple[np.ndarray, np.ndarray]], *,
          shard_size: int = SHARD_SIZE, mapper: ShardMapper | None = None,
          before_replace: Callable[[Path, Path], None] | None = None) -> Path:
    """Write an on-disk IVF of every (ids, vectors) chunk as ``header`` (``vectors.g<gen>.faiss``)
    plus its data file, through temporary names; return the data file's path.

    ``mapper`` builds the shard files (default: here, one after another; ``ray_shard_mapper()``:
    as Ray tasks). ``before_replace(header_tmp, data)`` runs once both are durable, before the
    index file becomes visible (to record its checksum).
    """
    folder = header.parent
    token = secrets.token_hex(4)
    prefix = f".{header.name}.{token}"  # ".vectors.g<gen>.faiss.<token>...tmp": a stray temp to `check`
    trained_bytes = serialize(trained)
    shard_paths: list[str] = []
    data_tmp = folder / f"{prefix}.ivfdata.tmp"
    header_tmp = folder / f"{prefix}.index.tmp"
    final = data_path(header, token)
    visible = False
    try:
        shards = _shards(chunks, shard_size, lambda k: str(folder / f"{prefix}.shard{k:05d}.tmp"))
        names: list[str] = []

        def tracked() -> Iterator[tuple[np.ndarray, np.ndarray, str]]:
            for shard in shards:
                names.append(shard[2])
                yield shard

        try:
            shard_paths = (mapper or local_shard_mapper)(trained_bytes, tracked())
        finally:
            shard_paths = names
        base = faiss.deserialize_index(np.frombuffer(trained_bytes, dtype=np.uint8))
        if shard_paths:
            from faiss.contrib.ondisk import merge_ondisk

            with _stdout_to_stderr():
                merge_ondisk(base, shard_paths, str(data_tmp))
        else:  # nothing to add: an empty list file
            invlists = faiss.OnDiskInvertedLists(base.nlist, base.code_size, str(data_tmp))
            base.replace_invlists(invlists, True)
            invlists.this.disown()
            data_tmp.touch()
        ondisk = faiss.downcast_InvertedLists(base.invlists)
        ondisk.filename = str(final)  # resolved beside the index file when read (see open_base)
        faiss.write_index(base, str(header_tmp))
        del base, ondisk  # unmaps the data file
        for path in (data_tmp, header_tmp):
            with open(path, "rb+") as fh:
                os.fsync(fh.fileno())
        if before_replace is not None:
            before_replace(header_tmp, data_tmp)
        os.replace(data_tmp, final)
        os.replace(header_tmp, header)
        visible = True
        fsync_dir(folder)
    except BaseException:
        for path in (data_tmp, header_tmp) if visible else (data_tmp, header_tmp, final):
            path.unlink(missing_ok=True)
        raise
    finally:
        for path in shard_paths:
            Path(path).unlink(missing_ok=True)
            Path(f"{path}.part").unlink(missing_ok=True)
    return final


def build_index(folder: Path, gen: int, plan, sample: np.ndarray, chunks: Iterable[tuple[np.ndarray, np.ndarray]],
                settings, record: Callable[[Path], None] | None = None) -> OnDiskVectorIndex:
    """Train on ``sample``, encode ``chunks`` shard by shard (as Ray tasks when a Ray cluster is
    initialised in this process), merge, and open the result as generation ``gen``'s vectors
    file in ``folder``; ``record(index_tmp)`` before it is visible (the manifest's checksum)."""
    trained = train(int(sample.shape[1]), sample, plan.nlist, plan.nprobe, plan.pq_m or None, plan.pq_bits or 8)
    header = folder / f"vectors.g{gen:010d}.faiss"
    try:
        build(header, trained, chunks, mapper=ray_shard_mapper(),
              before_replace=None if record is None else lambda tmp, _data: record(tmp))
    except (OSError, RuntimeError) as exc:  # disk full, unwritable folder (faiss says RuntimeError)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).strip().splitlines()[-1]
        raise IndexWriteError(f"cannot build the on-disk vector index in {folder}: {reason} (the previous vectors "
                              f"file is kept; the database is complete)") from exc
    return OnDiskVectorIndex.open(header, gen, settings)


# -- the index a store serves -----------------------------------------------------------------------
class OnDiskVectorIndex:
    """A read-only memory-mapped on-disk IVF (the base, built at generation ``base_gen``) minus
    removed ids, plus an in-memory exact index of what was added since; the interface of
    ``VectorIndex`` (scores are approximate: the store re-ranks candidates exactly)."""

    kind = ONDISK
    lossy = True
    mapped = True

    def __init__(self, index: faiss.IndexIVF, gen: int, settings, rerank: int = DEFAULT_RERANK):
        self.index = index
        self.dim = int(index.d)
        self.gen = self.base_gen = gen
        self.settings = settings
        self.rerank = rerank
        self.delta = VectorIndex(self.dim, settings=settings)
        self.removed: set[int] = set()
        self._base_ids: np.ndarray | None = None  # sorted; read from the lists on first need
        self._where: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # ids, lists, offsets (checks)
        self._selector = None

    @classmethod
    def open(cls, path: Path, gen: int, settings) -> OnDiskVectorIndex:
        return cls(read_index_file(path), gen, settings)

    # -- description -------------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal) - len(self.removed) + self.delta.ntotal

    @property
    def nlist(self) -> int:
        return int(self.index.nlist)

    @property
    def nprobe(self) -> int:
        return int(self.index.nprobe)

    @property
    def pending(self) -> int:
        """Changes since the base was built (added plus removed vectors)."""
        return self.delta.ntotal + len(self.removed)

    @property
    def durable_gen(self) -> int:
        """The generation the files on disk hold (changes since are replayed from the catalogue)."""
        return self.base_gen

    def needs_fold(self) -> bool:
        return self.pending > max(FOLD_MIN, FOLD_SHARE * int(self.index.ntotal))

    def plan(self, trained_for: int | None = None):
        pq = self.index.pq
        return IndexPlan(ONDISK, self.nlist, self.nprobe, self.settings.rerank or self.rerank,
                         trained_for if trained_for else int(self.index.ntotal), int(pq.M), int(pq.nbits))

    def data_file(self) -> Path:
        return Path(faiss.downcast_InvertedLists(self.index.invlists).filename)

    def memory_bytes(self) -> int:
        """Bytes held in memory: centroids (and their graph), the delta, the removed ids (the
        codes are in the page cache, not counted)."""
        centroids = self.nlist * self.dim * 4 * (2 if self.nlist >= HNSW_FROM else 1)
        return centroids + self.delta.memory_bytes() + 64 * len(self.removed)

    def rerank_depth(self, fetch: int, rerank: int | None = None) -> int:
        if self.settings.rerank is not None:
            rerank = self.settings.rerank
        elif rerank is None:
            rerank = self.rerank
        return max(fetch, -(-fetch * rerank // 10))

    def describe(self) -> dict:
        return {"type": ONDISK, "ntotal": self.ntotal, "dim": self.dim, "nlist": self.nlist, "nprobe": self.nprobe,
                "code_bytes": int(self.index.code_size), "base_items": int(self.index.ntotal),
                "pending": self.pending, "data_file": self.data_file().name}

    # -- contents ----------------------------------------------------------------------------
    def _list_ids(self) -> Iterator[tuple[int, np.ndarray]]:
        lists = self.index.invlists
        for list_no in range(self.nlist):
            size = lists.list_size(list_no)
            if size:
                pointer = lists.get_ids(list_no)
                yield list_no, faiss.rev_swig_ptr(pointer, size).copy()
                lists.release_ids(list_no, pointer)

    def base_ids(self) -> np.ndarray:
        """Every id in the base, sorted (read from the lists once: 8 bytes an item)."""
        if self._base_ids is None:
            parts = [ids for _, ids in self._list_ids()]
            self._base_ids = np.sort(np.concatenate(parts)).astype(np.int64) if parts else np.empty(0, np.int64)
        return self._base_ids

    def _locations(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(sorted ids, their list, their offset in it): where each base vector's code is
        (16 bytes an item, built on the first check)."""
        if self._where is None:
            found = list(self._list_ids())
            if not found:
                empty = np.empty(0, np.int64)
                self._where = (empty, empty, empty)
            else:
                ids = np.concatenate([i for _, i in found]).astype(np.int64)
                list_nos = np.concatenate([np.full(len(i), n, np.int64) for n, i in found])
                offsets = np.concatenate([np.arange(len(i), dtype=np.int64) for _, i in found])
                order = np.argsort(ids, kind="stable")
                self._where = (ids[order], list_nos[order], offsets[order])
        return self._where

    def _in_base(self, ids: np.ndarray) -> np.ndarray:
        base = self.base_ids()
        if len(base) == 0:
            return np.zeros(len(ids), bool)
        pos = np.minimum(np.searchsorted(base, ids), len(base) - 1)
        return base[pos] == ids

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.delta.add(ids, vectors)

    def remove(self, ids: Iterable[int]) -> int:
        ids = np.asarray(ids if isinstance(ids, np.ndarray) else list(ids), dtype=np.int64)
        if len(ids) == 0:
            return 0
        removed = self.delta.remove(ids)
        fresh = [int(i) for i in ids[self._in_base(ids)] if int(i) not in self.removed]
        if fresh:
            self.removed.update(fresh)
            self._selector = None
        return removed + len(fresh)

    def ids(self) -> np.ndarray:
        base = self.base_ids()
        if self.removed:
            base = base[~np.isin(base, np.fromiter(self.removed, np.int64, len(self.removed)))]
        return np.concatenate([base, self.delta.ids()])

    def differing(self, ids: np.ndarray, vectors: np.ndarray) -> int:
        """How many of ``ids`` hold something other than ``vectors`` (for the base: whether the
        stored code is the one ``vectors`` encodes to)."""
        if len(ids) == 0:
            return 0
        ids = np.asarray(ids, np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        in_delta = np.isin(ids, self.delta.ids())
        differ = self.delta.differing(ids[in_delta], vectors[in_delta])
        ids, vectors = ids[~in_delta], vectors[~in_delta]
        if len(ids) == 0:
            return differ
        expected = self.index.sa_decode(self.index.sa_encode(vectors))
        where_ids, list_nos, offsets = self._locations()
        if len(where_ids) == 0:
            return differ + len(ids)
        pos = np.minimum(np.searchsorted(where_ids, ids), len(where_ids) - 1)
        held = (where_ids[pos] == ids) & ~np.isin(ids, np.fromiter(self.removed, np.int64, len(self.removed)))
        lists, code_size = self.index.invlists, int(self.index.code_size)
        for row in np.flatnonzero(held):
            list_no, offset = int(list_nos[pos[row]]), int(offsets[pos[row]])
            code = faiss.rev_swig_ptr(lists.get_single_code(list_no, offset), code_size).copy()
            stored = self.index.sa_decode(np.concatenate([_list_number(list_no, self.index), code])[None, :])
            differ += int(np.abs(stored[0] - expected[row]).max() > 1e-5)
        return differ + int((~held).sum())

    def save(self, folder: Path, gen: int, before_replace=None) -> Path | None:
        """Nothing to write: the base files are immutable, and the changes since are the
        catalogue's to replay (``durable_gen`` stays the base's)."""
        return None

    # -- searching ---------------------------------------------------------------------------
    def _params(self, nprobe: int, allowed: np.ndarray | None = None) -> tuple[faiss.SearchParametersIVF, tuple | None]:
        """Search parameters, and the selector objects they point to (hold them while searching:
        concurrent searches may replace ``_selector``). ``allowed``: only these ids (already
        without the removed ones)."""
        params = faiss.SearchParametersIVF()
        params.nprobe = nprobe
        selector = None
        if allowed is not None:
            selector = id_selector(allowed)
            params.sel = selector[0]
        elif self.removed:
            selector = self._selector
            if selector is None:
                batch = faiss.IDSelectorBatch(np.fromiter(self.removed, np.int64, len(self.removed)))
                selector = self._selector = (batch, faiss.IDSelectorNot(batch))
            params.sel = selector[1]
        return params, selector

    def search(self, query: np.ndarray, k: int, nprobe: int | None = None,
               allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` candidates (approximate scores, ids), best first: the base's (probing more
        cells until it has ``k``) merged with the delta's exact ones. ``allowed``: only these
        ids (a filter pushed into the scan, as ``VectorIndex.search``)."""
        if allowed is not None:
            allowed = np.asarray(allowed, np.int64)
            if self.removed:
                allowed = allowed[~np.isin(allowed, np.fromiter(self.removed, np.int64, len(self.removed)))]
        k = min(k, self.ntotal if allowed is None else len(allowed))
        if k <= 0:
            return np.empty(0, np.float32), np.empty(0, np.int64)
        q = np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32)
        probe = max(1, min(nprobe or self.settings.nprobe or self.nprobe, self.nlist))
        base_k = min(k, int(self.index.ntotal) - len(self.removed))
        scores, ids = np.empty((1, 0), np.float32), np.empty((1, 0), np.int64)
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)  # one query is memory-bound (see VectorIndex._search)
        try:
            while base_k > 0:
                params, _selector = self._params(probe, allowed)
                scores, ids = self.index.search(q, base_k, params=params)
                if probe >= self.nlist or int((ids[0] >= 0).sum()) >= base_k:
                    break
                probe = min(self.nlist, probe * 4)
        finally:
            faiss.omp_set_num_threads(threads)
        keep = ids[0] >= 0
        scores, ids = scores[0][keep], ids[0][keep]
        if self.delta.ntotal:
            d_scores, d_ids = self.delta.search(q[0], k, allowed=allowed)
            scores, ids = np.concatenate([scores, d_scores]), np.concatenate([ids, d_ids])
            order = np.argsort(-scores, kind="stable")[:k]
            scores, ids = scores[order], ids[order]
        return scores.astype(np.float32), ids.astype(np.int64)


def _list_number(list_no: int, index: faiss.IndexIVF) -> np.ndarray:
    """The IVF list number as ``sa_encode`` prefixes it to a code (little-endian, minimal bytes)."""
    size = int(index.coarse_code_size())
    return np.frombuffer(int(list_no).to_bytes(size, "little"), dtype=np.uint8)
