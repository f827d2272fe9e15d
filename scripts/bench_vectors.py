"""Vector index benchmark: build time, single-query latency, recall@10 and size per index type.

    python scripts/bench_vectors.py            # n = 10k, 100k, 1M (several minutes, ~6 GB RAM at 1M)
    python scripts/bench_vectors.py --quick    # n = 10k, 100k (under a minute)

Vectors come from ``tests/support/synthetic.py`` (clustered, anisotropic, CLIP-like); queries are drawn
from the same distribution and are not in the set. Recall@10 is measured against exact search
over the same vectors, after the exact re-ranking the engine applies to lossy types (here the
float32 vectors are taken from memory; the engine reads the candidates' rows from SQLite, about
0.5-2 ms more for 50 rows). Prints a table, then one JSON line.

Importable (scripts/ is not a package)::

    sys.path.insert(0, "scripts"); from bench_vectors import run
    rows = run(sizes=(10_000,), types=("flat", "auto"))
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # support.*: test helpers shared with scripts

from support.synthetic import ClusteredDistribution  # noqa: E402
from mmsearch.storage.vectors import AUTO, FLAT, TRAIN_PER_LIST, VectorIndex, choose  # noqa: E402

TYPES = (FLAT, "ivf-sq8", "ivf-pq", AUTO)
_ADD_CHUNK = 50_000


def exact_top(data: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row positions of the exact top ``k`` of each query (chunked matrix products)."""
    best_scores = np.full((len(queries), 0), -np.inf, np.float32)
    best_ids = np.empty((len(queries), 0), np.int64)
    for start in range(0, len(data), 200_000):
        scores = queries @ data[start:start + 200_000].T
        top = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
        best_scores = np.concatenate([best_scores, np.take_along_axis(scores, top, 1)], axis=1)
        best_ids = np.concatenate([best_ids, top + start], axis=1)
    order = np.argsort(-best_scores, axis=1)[:, :k]
    return np.take_along_axis(best_ids, order, 1)


def build(kind: str, data: np.ndarray, seed: int = 0) -> tuple[VectorIndex, float]:
    n, dim = data.shape
    start = time.perf_counter()
    plan = choose(n, dim, kind)
    train = None
    if plan.type != FLAT:
        rng = np.random.default_rng(seed)
        train = data[np.sort(rng.choice(n, min(n, plan.nlist * TRAIN_PER_LIST), replace=False))]
    index = VectorIndex.create(dim, plan, train)
    for s in range(0, n, _ADD_CHUNK):
        index.add(np.arange(s, min(n, s + _ADD_CHUNK), dtype=np.int64), data[s:s + _ADD_CHUNK])
    return index, time.perf_counter() - start


def search_once(index: VectorIndex, data: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    """What ``IndexStore.search`` does: ANN candidates, then exact scores from float32 vectors."""
    if not index.lossy:
        return index.search(query, k)[1]
    _, ids = index.search(query, index.rerank_depth(k))
    exact = data[ids] @ query
    return ids[np.argsort(-exact)[:k]]


def cold_load(folder: Path, dim: int) -> dict:
    """Seconds and resident MB for a fresh process to open the index as a reader does
    (``vectorfiles.load_latest``: IVF cells memory-mapped) and answer one query; file in page cache."""
    # Current RSS from /proc (ru_maxrss would carry this big parent's high-water mark over fork).
    code = (
        "import time\nfrom pathlib import Path\nimport numpy as np\nfrom mmsearch.storage.vectorfiles import load_latest\n"
        "def rss():\n"
        "    return int([l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1])\n"
        "q=np.full(%d,%r,np.float32);before=rss();t=time.perf_counter()\n"
        "index=load_latest(Path(%r));index.search(q,50)\n"
        "print(time.perf_counter()-t, rss()-before)" % (dim, float(dim) ** -0.5, str(folder))
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return {"load_s": round(float(out[0]), 3), "load_rss_mb": round(int(out[1]) / 1024, 1)}


def measure(kind: str, data: np.ndarray, queries: np.ndarray, truth: np.ndarray, k: int = 10,
            timed_queries: int = 200, folder: Path | None = None) -> dict:
    n = len(data)
    index, build_s = build(kind, data)
    recall = float(np.mean([
        len(set(search_once(index, data, q, k).tolist()) & set(t.tolist())) / k for q, t in zip(queries, truth)
    ]))
    times = []
    for q in queries[:timed_queries]:
        t0 = time.perf_counter()
        search_once(index, data, q, k)
        times.append((time.perf_counter() - t0) * 1000)
    row = {
        "n": n, "type": index.kind, "build_s": round(build_s, 2),
        "p50_ms": round(float(np.percentile(times, 50)), 3), "p95_ms": round(float(np.percentile(times, 95)), 3),
        "recall@10": round(recall, 4), "nlist": index.nlist, "nprobe": index.nprobe,
        "rerank": index.rerank_depth(k) if index.lossy else 0,
        "mem_bytes_per_item": round(index.memory_bytes() / n, 1),
    }
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        path = index.save(Path(tmp), 1)
        row["file_bytes_per_item"] = round(path.stat().st_size / n, 1)
        row.update(cold_load(Path(tmp), data.shape[1]))
    return row


def run(sizes=(10_000, 100_000, 1_000_000), types=TYPES, *, dim: int = 512, n_queries: int = 200,
        k: int = 10, seed: int = 0, log=None) -> list[dict]:
    """One result row per (size, type); ``auto`` reuses the row of the type it picks."""
    dist = ClusteredDistribution(dim, seed)
    queries = dist.sample(n_queries, stream=2)
    rows: list[dict] = []
    for n in sizes:
        data = dist.sample(n, stream=1)
        truth = exact_top(data, queries, k)
        done: dict[str, dict] = {}
        # Exact flat search at 1M costs ~150 ms a query: time fewer of them there.
        timed = n_queries if n < 500_000 else 30
        for kind in types:
            concrete = choose(n, dim, kind).type if kind == AUTO else kind
            if concrete not in done:
                done[concrete] = measure(concrete, data, queries, truth, k, timed if concrete == FLAT else n_queries)
            row = dict(done[concrete], type=kind if kind != AUTO else f"auto ({concrete})")
            rows.append(row)
            if log:
                log(row)
        del data
    return rows


def table(rows: list[dict]) -> str:
    cols = ["n", "type", "build_s", "p50_ms", "p95_ms", "recall@10", "nlist", "nprobe", "rerank",
            "file_bytes_per_item", "mem_bytes_per_item", "load_s", "load_rss_mb"]
    lines = ["  ".join(f"{c:>12}" for c in cols)]
    for r in rows:
        lines.append("  ".join(f"{str(r.get(c, '')):>12}" for c in cols))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="n = 10k and 100k only")
    parser.add_argument("--sizes", type=lambda s: [int(float(x)) for x in s.split(",")], help="e.g. 10000,1e6")
    parser.add_argument("--types", type=lambda s: s.split(","), default=list(TYPES))
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    sizes = args.sizes or ((10_000, 100_000) if args.quick else (10_000, 100_000, 1_000_000))
    rows = run(sizes, args.types, n_queries=args.queries,
               log=lambda r: print(f"  {r['n']:>8} {r['type']:<16} recall {r['recall@10']:.3f} p50 {r['p50_ms']} ms",
                                   file=sys.stderr, flush=True))
    print(table(rows))
    print(json.dumps({"bench": "vectors", "threads": os.cpu_count(), "rows": rows}))


if __name__ == "__main__":
    main()
