"""FAISS vector index keyed by item id, persisted atomically with its generation.

The vector ids stored in FAISS are the items' primary keys, never row positions, so a deletion
or a reordering can never shift which vector belongs to which row.

Index types (``TYPES``), chosen by ``choose`` from the item count and the memory available:

- ``flat``: ``IndexIDMap2(IndexFlatIP)``, exact; the default below ``FLAT_MAX`` items.
- ``ivf-sq8``: an inverted file (``nlist`` k-means cells, ``nprobe`` of them scanned per query)
  holding 8-bit scalar-quantised vectors (a quarter of float32). Scores are approximate, so the
  caller re-ranks the candidates exactly with the stored float32 embeddings
  (``IndexStore.search``): returned scores are exact cosines.
- ``ivf-pq``: the same inverted file with product-quantised codes (``dim/4`` bytes a vector),
  for collections whose 8-bit codes would not fit comfortably in memory; re-ranked deeper.
- ``ivf-ondisk``: PQ codes in FAISS ``OnDiskInvertedLists``, built shard by shard and memory-mapped
  read-only, for collections whose codes no longer fit in memory (``mmsearch.storage.ondisk``).

Both IVF types support additions and deletions (``remove_ids``), and every parameter a reader
needs (type, nlist, nprobe, codes) is inside the FAISS file itself, so a reader never depends on
the manifest (which only records them for ``mmsearch info`` and for the rebuild policy).

Files are named ``vectors.g<generation>.faiss``. A save writes a temporary file, fsyncs it and
renames it into place, then removes older generations, so a reader (or a process killed
mid-save) always finds a complete file. Which generation a file holds is in its name, so the
database can tell how far behind it is (see ``mmsearch.store``).

Searching uses a GPU copy of the index when FAISS sees a GPU (unless ``VectorSettings.gpu`` is
off: ``MMSEARCH_FAISS_GPU=0``); the CPU index stays the master for additions, deletions and saves,
and any GPU failure falls back to the CPU with a logged warning.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import IndexTypeError
from ..fsutil import atomic_write_via, fsync_dir
from ..lazy import lazy_module

faiss = lazy_module("faiss")  # imported on first use: a run that changes nothing never loads it

log = logging.getLogger(__name__)

_FILE_RE = re.compile(r"^vectors\.g(\d+)\.faiss$")
# The lists of an on-disk IVF (``ondisk``), beside its index file.
_DATA_RE = re.compile(r"^vectors\.g(\d+)\.([0-9a-f]+)\.ivfdata$")

FLAT = "flat"
IVF_SQ8 = "ivf-sq8"
IVF_PQ = "ivf-pq"
AUTO = "auto"
# PQ codes in memory-mapped on-disk lists (``ondisk``).
ONDISK = "ivf-ondisk"
TYPES = (FLAT, IVF_SQ8, IVF_PQ, ONDISK)
CHOICES = (AUTO, *TYPES)

# Exact search costs about 0.15 us per vector here (18 ms at 100k, 150 ms at 1M on 2 cores):
# below this many items it stays under about 8 ms and needs no training.
FLAT_MAX = 50_000
# An IVF is rebuilt once the collection has grown this many times past what it was trained for
# (its cells get too full, so each probe costs more), or falls back to flat below FLAT_MAX / 2.
REGROW = 4.0
# The auto choice keeps 8-bit codes while they would take less than this share of free memory.
SQ8_MEMORY_SHARE = 0.25
# ... and PQ codes while they would take less than this share (else on-disk lists).
PQ_MEMORY_SHARE = 0.25
# Training sample: this many vectors per IVF cell (faiss warns below 39).
TRAIN_PER_LIST = 48
# An on-disk IVF's training vectors per cell, and its candidates re-ranked exactly for a top 10.
ONDISK_TRAIN_PER_LIST = 40
ONDISK_RERANK = 400


def _file_name(gen: int) -> str:
    return f"vectors.g{gen:010d}.faiss"


def saved_generations(folder: Path) -> list[tuple[int, Path]]:
    """(generation, path) of every complete FAISS file in ``folder``, newest first."""
    found = []
    for entry in os.scandir(folder):
        match = _FILE_RE.match(entry.name)
        if match:
            found.append((int(match.group(1)), Path(entry.path)))
    return sorted(found, reverse=True)


def remove_older(folder: Path, gen: int) -> None:
    """Delete the vectors files of generations before ``gen``, and on-disk lists no file names."""
    for old_gen, path in saved_generations(folder):
        if old_gen < gen:
            path.unlink(missing_ok=True)
    if data_files(folder):  # (reading the index files only when there is something to match)
        for path in unreferenced_data(folder, [p for _, p in saved_generations(folder)]):
            path.unlink(missing_ok=True)
    fsync_dir(folder)


# -- vectors files of either kind: reading, and on-disk IVFs' data files ----------------------------------------------------------------------------------------
def _read_flags() -> int:
    """Memory-mapped, read-only."""
    return faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY


def read_index_file(path: Path) -> faiss.Index:
    """Any vectors file: in-memory types with their cells memory-mapped, an on-disk IVF with its
    data file (named in it) memory-mapped read-only from beside ``path``."""
    # SKIP_PRECOMPUTE_TABLE also keeps FAISS from mapping the data file under the name it was
    # written with: it is mapped below, from this folder. (Inner-product IVF-PQ has no table.)
    index = faiss.read_index(str(path), _read_flags() | faiss.IO_FLAG_SKIP_PRECOMPUTE_TABLE)
    if is_ondisk(index):
        _map_data(index, path)
    return index


def is_ondisk(index: faiss.Index) -> bool:
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return False
    return isinstance(faiss.downcast_InvertedLists(ivf.invlists), faiss.OnDiskInvertedLists) and \
        _DATA_RE.match(os.path.basename(faiss.downcast_InvertedLists(ivf.invlists).filename)) is not None


def referenced(header: Path) -> Path | None:
    """The data file ``header`` names (beside it), or None when it is not an on-disk IVF."""
    try:
        index = faiss.read_index(str(header), _read_flags() | faiss.IO_FLAG_SKIP_PRECOMPUTE_TABLE)
    except RuntimeError:
        return None
    if not is_ondisk(index):
        return None
    return header.with_name(os.path.basename(faiss.downcast_InvertedLists(index.invlists).filename))


def _map_data(index: faiss.IndexIVF, header: Path) -> None:
    lists = faiss.downcast_InvertedLists(index.invlists)
    data = header.with_name(os.path.basename(lists.filename))
    try:
        size = os.path.getsize(data)
    except OSError as exc:
        raise RuntimeError(f"{data.name}, the cells of {header.name}, cannot be read: {exc.strerror or exc}") from exc
    if size < lists.totsize:  # mapping past the end would crash the process (SIGBUS) on a probe
        raise RuntimeError(f"{data.name} has {size} bytes, {header.name} needs {lists.totsize}")
    lists.filename = str(data)
    lists.read_only = True
    if lists.totsize:
        lists.do_mmap()


def data_files(folder: Path) -> list[tuple[int, Path]]:
    """(generation, path) of every on-disk IVF data file in ``folder``."""
    found = []
    for entry in os.scandir(folder):
        match = _DATA_RE.match(entry.name)
        if match:
            found.append((int(match.group(1)), Path(entry.path)))
    return found


def unreferenced_data(folder: Path, headers: Iterable[Path]) -> list[Path]:
    """Data files no index file in ``headers`` names (left by a crash or an older build)."""
    found = data_files(folder)
    if not found:
        return []
    keep = {referenced(h) for h in headers}
    return [path for _, path in found if path not in keep]


def data_path(header: Path, token: str) -> Path:
    """The data file of an on-disk IVF whose index file is ``header`` (``token``: its build's)."""
    return header.with_name(f"{header.name.removesuffix('.faiss')}.{token}.ivfdata")


# -- choosing a type --------------------------------------------------------------------------------
@dataclass(frozen=True)
class VectorSettings:
    """The tuning a user may set (``MMSEARCH_FLAT_MAX``, ``_NLIST``, ``_NPROBE``, ``_RERANK``,
    ``_FAISS_GPU``; see ``mmsearch.settings``); None: the default for the situation."""

    flat_max: int = FLAT_MAX
    nlist: int | None = None
    nprobe: int | None = None
    rerank: int | None = None
    gpu: bool = True


DEFAULT_SETTINGS = VectorSettings()


def available_memory() -> int | None:
    """Bytes of memory available to this process (Linux MemAvailable, else free pages), or None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def default_nlist(n: int) -> int:
    """IVF cells for ``n`` vectors: the power of two nearest sqrt(n), at most n / TRAIN_PER_LIST."""
    if n <= 0:
        return 1
    nlist = 2 ** round(math.log2(max(1.0, math.sqrt(n))))
    return int(max(1, min(nlist, n // TRAIN_PER_LIST, 16_384)))


def default_nprobe(nlist: int) -> int:
    """Cells scanned per query: about 1/32 of them, at least 16 (all of them for a tiny IVF)."""
    return int(min(nlist, max(16, nlist // 32)))


def _pq_m(dim: int) -> int:
    """Sub-quantizers for PQ codes: about dim/4 (one byte per 4 dimensions), dividing dim.

    Measured at 1M clustered 512-d vectors, re-ranking 400 candidates: 64 bytes reach recall@10
    0.93, 128 bytes 0.975 (build 20 s, p50 2 ms)."""
    target = max(1, dim // 4)
    for m in range(target, 0, -1):
        if dim % m == 0:
            return m
    return 1


# -- an on-disk IVF's parameters (``ondisk``) -------------------------------------------------------------------------------------
def ondisk_nlist(n: int) -> int:
    """Cells for ``n`` vectors: the power of two nearest 2*sqrt(n) (smaller cells than the
    in-memory types: each probed cell is read from disk), at most n / ONDISK_TRAIN_PER_LIST."""
    if n <= 0:
        return 1
    nlist = 2 ** round(math.log2(max(1.0, 2 * math.sqrt(n))))
    return int(max(1, min(nlist, n // ONDISK_TRAIN_PER_LIST, 65_536)))


def ondisk_nprobe(nlist: int) -> int:
    """Cells scanned per query: 1/128 of them, at least 16."""
    return int(min(nlist, max(16, nlist // 128)))


def pq_m(dim: int, bytes_per_dim: float = 0.25) -> int:
    """Sub-quantizers (one byte each): about ``dim * bytes_per_dim``, dividing ``dim``."""
    target = max(1, int(dim * bytes_per_dim))
    for m in range(target, 0, -1):
        if dim % m == 0:
            return m
    return 1


@dataclass
class IndexPlan:
    """What kind of FAISS index to build, and with which parameters."""

    type: str = FLAT
    nlist: int = 0
    nprobe: int = 0
    rerank: int = 0  # candidates re-ranked exactly for a top-10 query (deeper for larger k)
    trained_for: int = 0  # items the IVF was trained for (drives the growth rebuild)
    pq_m: int = 0
    pq_bits: int = 0

    def manifest(self, requested: str, items: int) -> dict:
        entry = {key: value for key, value in asdict(self).items() if value}
        entry["type"] = self.type
        entry["requested"] = requested
        entry["items"] = items
        if self.type != FLAT:
            entry["code"] = "sq8" if self.type == IVF_SQ8 else f"pq{self.pq_m}x{self.pq_bits}"
        if self.type == ONDISK:
            entry["storage"] = "on disk, memory-mapped"
        return entry


def choose(
    n: int,
    dim: int,
    requested: str = AUTO,
    *,
    memory: int | None = None,
    nlist: int | None = None,
    nprobe: int | None = None,
    settings: VectorSettings = DEFAULT_SETTINGS,
) -> IndexPlan:
    """The index for ``n`` items: ``requested`` (``auto`` or one of ``TYPES``) made concrete.

    ``auto``: flat below ``settings.flat_max`` items; above, an IVF with ``default_nlist(n)``
    cells and 8-bit codes, or PQ codes when 8-bit codes would take more than a quarter of
    ``memory`` (default: what the machine has available), or PQ codes in memory-mapped on-disk
    lists (``ivf-ondisk``) when even PQ codes would take more than a quarter. An IVF asked for
    with too few items to train (none) is flat until items arrive.
    """
    if requested not in CHOICES:
        raise IndexTypeError(f"unknown vector index type {requested!r}: choose one of {', '.join(CHOICES)}")
    kind = requested
    if kind == AUTO:
        if n < settings.flat_max:
            kind = FLAT
        else:
            memory = available_memory() if memory is None else memory
            sq8_bytes = n * (dim + 16)
            pq_bytes = n * (_pq_m(dim) + 16)
            kind = IVF_PQ if memory is not None and sq8_bytes > SQ8_MEMORY_SHARE * memory else IVF_SQ8
            if memory is not None and pq_bytes > PQ_MEMORY_SHARE * memory:
                kind = ONDISK
    if kind == FLAT or n < 2:  # nothing to train on yet: exact until items arrive
        return IndexPlan(FLAT)
    if kind == ONDISK:
        nlist = max(1, min(int(nlist or settings.nlist or ondisk_nlist(n)), n))
        nprobe = min(int(nprobe or ondisk_nprobe(nlist)), nlist)
        bits = int(max(1, min(8, math.floor(math.log2(n)))))
        return IndexPlan(ONDISK, nlist, nprobe, rerank=default_rerank(ONDISK, settings), trained_for=n,
                         pq_m=pq_m(dim), pq_bits=bits)
    nlist = int(nlist or settings.nlist or default_nlist(n))
    nlist = max(1, min(nlist, n))
    nprobe = int(nprobe or default_nprobe(nlist))
    if kind == IVF_SQ8:
        return IndexPlan(IVF_SQ8, nlist, min(nprobe, nlist), rerank=default_rerank(IVF_SQ8, settings), trained_for=n)
    bits = int(max(1, min(8, math.floor(math.log2(n)))))  # PQ k-means needs 2**bits training points
    return IndexPlan(IVF_PQ, nlist, min(nprobe, nlist), rerank=default_rerank(IVF_PQ, settings), trained_for=n,
                     pq_m=_pq_m(dim), pq_bits=bits)


def default_rerank(kind: str, settings: VectorSettings = DEFAULT_SETTINGS) -> int:
    """Candidates re-ranked exactly for a top-10 query (``settings.rerank`` overrides)."""
    if settings.rerank is not None:
        return settings.rerank
    return {FLAT: 0, IVF_SQ8: 50, IVF_PQ: 400, ONDISK: ONDISK_RERANK}[kind]


def needs_rebuild(current: IndexPlan, n: int, dim: int, requested: str = AUTO,
                  settings: VectorSettings = DEFAULT_SETTINGS) -> IndexPlan | None:
    """The plan to rebuild to when ``current`` has become a poor fit for ``n`` items, else None.

    Hysteresis keeps an index from flapping: an auto IVF turns flat only below half the flat
    threshold, and an IVF is retrained only once ``n`` is ``REGROW`` times what it was trained
    for (or a quarter of it).
    """
    if requested not in CHOICES:
        requested = AUTO
    wanted = choose(n, dim, requested, settings=settings)
    if requested == AUTO and current.type != FLAT and wanted.type == FLAT and n >= settings.flat_max / 2:
        return None  # hysteresis: stay IVF until well below the threshold
    if wanted.type != current.type:
        return wanted
    if current.type == FLAT:
        return None
    trained = max(1, current.trained_for)
    if n > REGROW * trained or n * REGROW < trained:
        return wanted
    return None


# -- the index --------------------------------------------------------------------------------------
# Probe more cells the fewer items an ID selector lets through (``selective_nprobe``); off only to
# measure the difference (scripts/bench_filters.py, strategy "selector-unscaled").
SCALE_NPROBE_BY_SHARE = True
# Passing items the probed cells of a filtered search should hold (``selective_nprobe``).
SELECTED_MEET = 500


def selective_nprobe(nprobe: int, nlist: int, passing: int) -> int:
    """Cells to probe when only ``passing`` items may be returned (an ID selector): enough for
    the probed cells to hold about ``SELECTED_MEET`` of them, never fewer than ``nprobe``. The
    usual ``nprobe`` meets ``passing * nprobe / nlist`` of them: 62 for a 1% filter at 100k items
    (16 of 256 cells), where recall@10 fell to 0.78, but 312 at 1M (32 of 1024 cells, recall
    0.98). FAISS skips ids outside the selector before computing a distance, so an extra cell
    costs little more than its id list."""
    return max(nprobe, int(math.ceil(nlist * SELECTED_MEET / max(1, passing))))


def id_selector(allowed: np.ndarray) -> tuple[faiss.IDSelector, np.ndarray | None]:
    """A FAISS ID selector for ``allowed`` ids: a bitmap over the id range (a few ms to build and
    one bit test a candidate), or a hash set when the ids are too sparse for one."""
    allowed = np.ascontiguousarray(allowed, dtype=np.int64)
    top = int(allowed.max()) + 1 if len(allowed) else 1
    if (len(allowed) and allowed.min() < 0) or top > 64 * len(allowed):  # sparse: a hash set is cheaper to build
        return faiss.IDSelectorBatch(allowed), None
    member = np.zeros(top, bool)
    member[allowed] = True
    bits = np.packbits(member, bitorder="little")
    return faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits)), bits


_GPU_RESOURCES = None
_GPU_MAX_K = 2048


def gpu_count() -> int:
    """GPUs FAISS can use here (0 without a GPU build of faiss)."""
    try:
        return int(faiss.get_num_gpus())
    except Exception:  # noqa: BLE001 - faiss-cpu builds may lack it
        return 0


def to_gpu(index: faiss.Index) -> faiss.Index:
    """A copy of ``index`` on GPU 0 (raises when that is impossible)."""
    global _GPU_RESOURCES
    if _GPU_RESOURCES is None:
        _GPU_RESOURCES = faiss.StandardGpuResources()
    return faiss.index_cpu_to_gpu(_GPU_RESOURCES, 0, index)  # float32 storage: flat scores stay exact


def _kind_of(index: faiss.Index) -> str:
    if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        inner = faiss.downcast_index(index.index)
        if isinstance(inner, faiss.IndexFlat):
            return FLAT
    if isinstance(index, faiss.IndexIVFScalarQuantizer):
        return IVF_SQ8
    if isinstance(index, faiss.IndexIVFPQ):
        return IVF_PQ
    raise IndexTypeError(f"unsupported FAISS index {type(index).__name__}")


class VectorIndex:
    """In-memory FAISS index of L2-normalised vectors; inner product = cosine similarity."""

    def __init__(self, dim: int, index: faiss.Index | None = None, gen: int = 0,
                 settings: VectorSettings = DEFAULT_SETTINGS):
        self.dim = dim
        # faiss.read_index and index_factory already return the concrete class (and own it)
        self.index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self.kind = _kind_of(self.index)
        self.gen = gen
        self.settings = settings
        self._gpu: faiss.Index | None = None
        self._gpu_failed = not settings.gpu
        self._gpu_lock = threading.Lock()  # one search at a time on the GPU copy (CPU searches run in parallel)

    @classmethod
    def create(cls, dim: int, plan: IndexPlan, train: np.ndarray | None = None, gen: int = 0,
               settings: VectorSettings = DEFAULT_SETTINGS) -> VectorIndex:
        """An empty index of ``plan``'s type; IVF types are trained on ``train`` (a sample of the data)."""
        if plan.type == FLAT:
            return cls(dim, gen=gen, settings=settings)
        if train is None or len(train) == 0:
            raise IndexTypeError(f"a {plan.type} index needs training vectors")
        train = np.ascontiguousarray(train, dtype=np.float32)
        nlist = max(1, min(plan.nlist, len(train)))
        if plan.type == IVF_SQ8:
            spec = f"IVF{nlist},SQ8"
        elif plan.type == IVF_PQ:
            bits = max(1, min(plan.pq_bits or 8, int(math.floor(math.log2(len(train))))))
            spec = f"IVF{nlist},PQ{plan.pq_m or _pq_m(dim)}x{bits}"
        else:
            raise IndexTypeError(f"unknown vector index type {plan.type!r}")
        index = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
        if plan.type == IVF_PQ:
            index.do_polysemous_training = False  # 10x the training time, for Hamming filtering we never use
            index.pq.cp.niter = 15
            index.pq.cp.min_points_per_centroid = 1
        index.cp.niter = 12  # coarse k-means: enough for cells, and twice as fast as the default 25
        index.cp.min_points_per_centroid = 1  # we choose the sample size; silence faiss's warning
        index.cp.max_points_per_centroid = 1 << 20
        index.train(train)
        index.nprobe = max(1, min(plan.nprobe or default_nprobe(nlist), nlist))
        return cls(dim, index, gen, settings)

    # -- persistence (``vectorfiles.load_latest`` reads the newest file) ------------------------
    def save(self, folder: Path, gen: int, before_replace: Callable[[Path], None] | None = None) -> Path:
        """Write this index as generation ``gen`` and delete older files (``before_replace``:
        see ``atomic_write_via``)."""
        target = folder / _file_name(gen)
        self._writable()  # a mapped index would be written as a reference to its old file
        atomic_write_via(target, lambda tmp: faiss.write_index(self.index, str(tmp)), before_replace)
        self.gen = gen
        remove_older(folder, gen)
        return target

    @property
    def durable_gen(self) -> int:
        """The generation the saved file holds once saved (the store forgets tombstones up to it)."""
        return self.gen

    # -- description -------------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def lossy(self) -> bool:
        """True when search scores are approximate and candidates must be re-ranked exactly."""
        return self.kind != FLAT

    @property
    def nlist(self) -> int:
        return int(self.index.nlist) if self.kind != FLAT else 0

    @property
    def nprobe(self) -> int:
        return int(self.index.nprobe) if self.kind != FLAT else 0

    def plan(self, trained_for: int | None = None) -> IndexPlan:
        """This index's parameters, as read from the FAISS file (``trained_for`` from the caller)."""
        if self.kind == FLAT:
            return IndexPlan(FLAT)
        plan = IndexPlan(self.kind, self.nlist, self.nprobe, default_rerank(self.kind, self.settings),
                         trained_for if trained_for else self.ntotal)
        if self.kind == IVF_PQ:
            plan.pq_m, plan.pq_bits = int(self.index.pq.M), int(self.index.pq.nbits)
        return plan

    def memory_bytes(self) -> int:
        """Approximate bytes the index holds in memory (codes, ids, centroids)."""
        if self.kind == FLAT:
            return self.ntotal * (self.dim * 4 + 8 + 48)  # vectors, id map and its reverse hash map
        codes = self.ntotal * (int(self.index.code_size) + 8)
        return codes + self.nlist * self.dim * 4

    def rerank_depth(self, fetch: int, rerank: int | None = None) -> int:
        """Candidates to re-rank exactly to return the best ``fetch``: ``rerank`` for a top 10, scaled with ``fetch``."""
        if not self.lossy:
            return fetch
        if self.settings.rerank is not None:
            rerank = self.settings.rerank
        elif rerank is None:
            rerank = default_rerank(self.kind)
        return max(fetch, -(-fetch * rerank // 10))

    def describe(self) -> dict:
        if self.kind == FLAT:
            return {"type": FLAT, "ntotal": self.ntotal, "dim": self.dim}
        return {"type": self.kind, "ntotal": self.ntotal, "dim": self.dim, "nlist": self.nlist,
                "nprobe": self.nprobe, "code_bytes": int(self.index.code_size)}

    # -- contents ----------------------------------------------------------------------------
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape[1] != self.dim:
            raise ValueError(f"vector dimension {vectors.shape[1]} != index dimension {self.dim}")
        self._writable()
        self.index.add_with_ids(vectors, np.ascontiguousarray(ids, dtype=np.int64))
        self._gpu = None

    def remove(self, ids: Iterable[int]) -> int:
        ids = np.asarray(ids if isinstance(ids, np.ndarray) else list(ids), dtype=np.int64)
        if len(ids) == 0:
            return 0
        self._writable()
        removed = int(self.index.remove_ids(faiss.IDSelectorBatch(ids)))
        if removed:
            self._gpu = None
        return removed

    def ids(self) -> np.ndarray:
        """Every item id held (for integrity checks)."""
        if self.kind == FLAT:
            return faiss.vector_to_array(self.index.id_map).astype(np.int64)
        invlists = self.index.invlists
        parts = []
        for list_no in range(self.index.nlist):
            size = invlists.list_size(list_no)
            if size:
                pointer = invlists.get_ids(list_no)
                parts.append(faiss.rev_swig_ptr(pointer, size).copy())
                invlists.release_ids(list_no, pointer)
        return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, np.int64)

    def differing(self, ids: np.ndarray, vectors: np.ndarray) -> int:
        """How many of ``ids`` hold something other than ``vectors`` (exact for flat; for lossy
        codes, whether the stored code is the one ``vectors`` encodes to)."""
        if len(ids) == 0:
            return 0
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.kind == FLAT:
            stored = self.index.reconstruct_batch(np.ascontiguousarray(ids, dtype=np.int64))
            return int((np.abs(stored - vectors).max(axis=1) > 1e-6).sum())
        self._writable()
        index = self.index
        index.set_direct_map_type(faiss.DirectMap.Hashtable)
        try:
            stored = index.reconstruct_batch(np.ascontiguousarray(ids, dtype=np.int64))
        finally:
            index.set_direct_map_type(faiss.DirectMap.NoMap)  # never saved with the map
        expected = index.sa_decode(index.sa_encode(vectors))
        return int((np.abs(stored - expected).max(axis=1) > 1e-5).sum())

    @property
    def mapped(self) -> bool:
        """True while the IVF cells are read from a memory-mapped file (read-only)."""
        return self.kind != FLAT and isinstance(faiss.downcast_InvertedLists(self.index.invlists), faiss.OnDiskInvertedLists)

    def _writable(self) -> None:
        """Copy memory-mapped IVF cells into memory (FAISS aborts the process on a write to them)."""
        if not self.mapped:
            return
        source = self.index.invlists
        copy = faiss.ArrayInvertedLists(self.index.nlist, self.index.code_size)
        for list_no in range(self.index.nlist):
            size = source.list_size(list_no)
            if size:
                copy.add_entries(list_no, size, source.get_ids(list_no), source.get_codes(list_no))
        self.index.replace_invlists(copy, True)
        copy.this.disown()  # owned by the index now
        self._gpu = None

    # -- searching ---------------------------------------------------------------------------
    def search(self, query: np.ndarray, k: int, nprobe: int | None = None,
               allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` (scores, ids) for one query vector, best first.

        Exact for flat; for IVF types the scores are approximate (re-rank with
        ``IndexStore.search``). An IVF probes ``nprobe`` cells (default: the file's, or
        ``$MMSEARCH_NPROBE``) and probes more until it has ``k`` candidates, so fewer than ``k``
        results always means the index holds fewer than ``k`` vectors. ``allowed``: only these
        ids (a filter pushed into the scan; the same guarantee holds for them).
        """
        k = min(k, self.ntotal if allowed is None else len(allowed))
        if k <= 0:
            return np.empty(0, np.float32), np.empty(0, np.int64)
        q = np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32)
        selector, _bitmap = id_selector(allowed) if allowed is not None else (None, None)  # (keeps the bits alive)
        if self.kind == FLAT:
            scores, ids = self._search(q, k, None, selector)
        else:
            probe = nprobe or self.settings.nprobe or self.nprobe
            if allowed is not None and not nprobe and SCALE_NPROBE_BY_SHARE:
                probe = selective_nprobe(probe, self.nlist, len(allowed))
            probe = max(1, min(probe, self.nlist))
            while True:
                scores, ids = self._search(q, k, probe, selector)
                if probe >= self.nlist or int((ids[0] >= 0).sum()) >= k:
                    break
                probe = min(self.nlist, probe * 4)
        keep = ids[0] >= 0
        return scores[0][keep], ids[0][keep]

    def _search(self, q: np.ndarray, k: int, nprobe: int | None,
                selector: faiss.IDSelector | None = None) -> tuple[np.ndarray, np.ndarray]:
        # FAISS GPU indexes answer at most 2048 neighbours: deeper (filtered) searches use the
        # CPU, as do searches restricted to some ids (an ID selector is a CPU feature).
        searcher = self._gpu_index() if k <= _GPU_MAX_K and selector is None else None
        if searcher is not None:
            try:
                with self._gpu_lock:
                    if nprobe is not None:
                        faiss.GpuParameterSpace().set_index_parameter(searcher, "nprobe", nprobe)
                    return searcher.search(q, k)
            except Exception as exc:  # noqa: BLE001 - any GPU trouble: answer on the CPU
                log.warning("GPU search failed (%s); searching on the CPU from now on", exc)
                self._gpu, self._gpu_failed = None, True
        params = None
        if nprobe is not None:
            params = faiss.SearchParametersIVF()
            params.nprobe = nprobe
        elif selector is not None:
            params = faiss.SearchParameters()
        if selector is not None:
            params.sel = selector
        # One query is memory-bound: OpenMP threads only add synchronisation (measured: flat at
        # 100k, 15 ms on one thread vs 17 ms on two, and 7x slower on two when the CPU is busy).
        # The setting is per calling thread, so concurrent searches and builds keep theirs.
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            return self.index.search(q, k, params=params)
        finally:
            faiss.omp_set_num_threads(threads)

    def _gpu_index(self) -> faiss.Index | None:
        if self._gpu_failed or self.ntotal == 0 or gpu_count() <= 0:
            return None
        if self._gpu is None:
            try:
                self._gpu = to_gpu(self.index)
            except Exception as exc:  # noqa: BLE001 - unsupported type, out of GPU memory, no driver...
                log.warning("cannot copy the vector index to the GPU (%s); searching on the CPU", exc)
                self._gpu_failed = True
                return None
        return self._gpu
