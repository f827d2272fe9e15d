#!/usr/bin/env python
"""Warm query latency of late fusion and hybrid (vector + BM25) search against vector-only search,
on one synthetic index of documents, measured in the same run; early fusion both from the item
index (``early``) and from the document index (``early-docindex``, ``storage.docindex``), whose
build time and agreement with the item path are reported too.

Each document is a JSON Lines record: a text part (eight words drawn from a Zipf vocabulary and
a unique product code) and an image part, with CLIP-shaped vectors (``tests/support/synthetic.py``; the
text vector is the image vector plus noise). Rows go straight into the catalogue (the full-text
index fills itself through its triggers) and the vector index is built from them, as an index
run would leave it. Queries are vectors near a document's and three of its words. For each
query every configuration runs once, in rotating order, so load on a shared machine hits all
alike; the figures are medians.

    python scripts/bench_fusion.py --docs 1000000 --queries 200 --workdir /tmp/bench-fusion

``--update-repeats N`` also times bringing the document index forward after one file is added
(a JSON Lines file of one record: a text and an image part), N times: the incremental update an
index run makes (``docindex.refresh``) against a whole build of the same snapshot
(``refresh(force=True)``), in the same run, and compares their early-fusion answers with each
other and with the brute-force top 10 (``--queries 0`` skips the latency part):

    python scripts/bench_fusion.py --docs 200000 --queries 0 --update-repeats 5 --workdir /tmp/bench-fusion
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # support.*: test helpers shared with scripts

WORDS = 5_000


def vocabulary(rng: np.random.Generator) -> list[str]:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    return ["".join(rng.choice(letters, size=int(rng.integers(4, 9)))) for _ in range(WORDS)]


def build(folder: Path, docs: int, dim: int, seed: int = 0) -> dict:
    from mmsearch.storage import IndexStore, writer_lock
    from support.synthetic import clustered_vectors

    stamp = folder / "bench-stamp.json"
    if stamp.exists():
        return json.loads(stamp.read_text())
    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(seed)
    vocab = vocabulary(rng)
    zipf = 1.0 / np.arange(1, WORDS + 1)
    zipf /= zipf.sum()
    store = IndexStore.create(folder, {"name": "synthetic", "pretrained": None, "fingerprint": "synthetic"}, dim)
    # Rows first, words after: the full-text index is dropped and refilled in one statement
    # (the path an index from before it takes on open), much faster than a trigger per row.
    import sqlite3

    with sqlite3.connect(folder / "mmsearch.db") as conn:
        for name in ("items_fts_ai", "items_fts_ad", "items_fts_au"):
            conn.execute(f"DROP TRIGGER {name}")
        conn.execute("DROP TABLE items_fts")
    started = time.perf_counter()
    chunk = 50_000
    with writer_lock(folder):
        for start in range(0, docs, chunk):
            stop = min(docs, start + chunk)
            n = stop - start
            images = clustered_vectors(n, dim, seed=1 + start)
            noise = rng.standard_normal((n, dim)).astype(np.float32) * (0.6 / np.sqrt(dim))
            texts = images + noise
            texts /= np.linalg.norm(texts, axis=1, keepdims=True)
            words = rng.choice(WORDS, size=(n, 8), p=zipf)
            rows, vectors = [], []
            for j in range(n):
                i = start + j
                path, line = f"/synthetic/shop{i // 100_000:03d}/products.jsonl", str(i % 100_000 + 1)
                common = {"path": path, "size": 1, "mtime_ns": 1_700_000_000_000_000_000, "width": None,
                          "height": None}
                rows.append(dict(common, id=2 * i + 1, locator=line, modality="text", content_hash=f"t{i:063x}",
                                 text=" ".join(vocab[w] for w in words[j]), meta={"code": f"INV-{i:07d}"}))
                rows.append(dict(common, id=2 * i + 2, locator=f"{line}:image", modality="image",
                                 content_hash=f"i{i:063x}", text=None, meta={"image": f"img/{i}.jpg"}))
                vectors += [texts[j], images[j]]
            with store.catalogue.write() as w:
                w.bulk_insert(rows, np.stack(vectors))
            print(f"  {stop} documents written ({time.perf_counter() - started:.0f} s)", flush=True)
    rows_s = time.perf_counter() - started
    started = time.perf_counter()
    store.catalogue.lexical.ensure()
    words_s = time.perf_counter() - started
    print(f"  full-text index filled ({words_s:.0f} s)", flush=True)
    started = time.perf_counter()
    store.fit_vectors("auto", force=True)
    facts = {"docs": docs, "items": 2 * docs, "dim": dim, "insert_rows_s": round(rows_s, 1),
             "fill_fulltext_s": round(words_s, 1),
             "vector_build_s": round(time.perf_counter() - started, 1), "vector_index": store.manifest["vector_index"]}
    store.close()
    stamp.write_text(json.dumps(facts))
    return facts


def build_documents(folder: Path) -> dict:
    """The document index (``storage.docindex``) of the index, built as an index run builds it
    (whole, by the writer); its build time is measured when it is built here."""
    from mmsearch.storage import IndexStore, docindex, writer_lock

    store = IndexStore.open(folder)
    try:
        with store.read() as r:
            current = docindex.current(store, r.generation())
        if not current:
            started = time.perf_counter()
            with writer_lock(folder):
                docindex.refresh(store)
            store.update_manifest(**{docindex.RECORD: dict(store.manifest[docindex.RECORD],
                                                           refresh_s=round(time.perf_counter() - started, 1))})
        record = dict(store.manifest[docindex.RECORD])
        record.pop("digest", None)
        record["file_bytes"] = (folder / record["file"]).stat().st_size if record.get("file") else 0
        return record
    finally:
        store.close()


def queries(folder: Path, n: int, dim: int, seed: int = 7) -> list[tuple[np.ndarray, str, str]]:
    """(vector near a document's image, three of its words, its product code)."""
    from mmsearch.storage import IndexStore

    rng = np.random.default_rng(seed)
    store = IndexStore.open(folder)
    out = []
    with store.read() as r:
        total = r.item_count() // 2
        picks = rng.choice(total, size=n, replace=False)
        rows = r.items([2 * int(i) + 1 for i in picks])
        blobs = dict(r.embeddings([2 * int(i) + 2 for i in picks]))
    for i in picks:
        v = np.frombuffer(blobs[2 * int(i) + 2], np.float32) + rng.standard_normal(dim).astype(np.float32) * (0.5 / np.sqrt(dim))
        words = rows[2 * int(i) + 1].text.split()
        out.append((v / np.linalg.norm(v), " ".join(rng.choice(words, 3, replace=False)), f"INV-{int(i):07d}"))
    store.close()
    return out


def exact_early(folder: Path, qs: list, k: int = 10) -> list[list[int]]:
    """The true early-fusion top ``k`` of each query, by brute force over every document's
    stored vectors (this benchmark's layout: document i is text 2i+1 and image 2i+2, shown by
    its image), independent of both search paths."""
    from mmsearch.storage import IndexStore

    query = np.stack([v for v, _, _ in qs]).astype(np.float32)
    best_s = np.full((len(qs), k), -np.inf, np.float32)
    best_i = np.zeros((len(qs), k), np.int64)
    store = IndexStore.open(folder)
    with store.read() as r:
        for rows in r.embedding_chunks():
            ids = np.array([row[0] for row in rows], np.int64)
            matrix = np.frombuffer(b"".join(row[1] for row in rows), np.float32).reshape(len(rows), -1)
            text = ids % 2 == 1
            assert np.array_equal(ids[text] + 1, ids[~text]), "a document's parts split across chunks"
            fused = 0.5 * matrix[~text] + 0.5 * matrix[text]
            fused /= np.linalg.norm(fused, axis=1, keepdims=True)
            scores = np.concatenate([best_s, query @ fused.T], axis=1)
            every = np.concatenate([best_i, np.broadcast_to(ids[~text], (len(qs), len(fused)))], axis=1)
            top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
            best_s, best_i = np.take_along_axis(scores, top, 1), np.take_along_axis(every, top, 1)
    store.close()
    return best_i.tolist()


def measure(folder: Path, qs: list, k: int = 10, truth: int = 0) -> dict:
    """Warm p50/p90 of every configuration, each query running all of them in rotating order.
    ``early`` takes the item path (the document index switched off for it), ``early-docindex``
    the document index; ``recall`` compares their top-k: the share of queries whose ids are the
    same in the same order, and the mean overlap of the sets."""
    from mmsearch import Engine
    from mmsearch.search.request import Ranking
    from mmsearch.storage import docindex

    def item_path(run):
        def wrapped(e, v, w):
            docindex.USE_DOCUMENT_INDEX = False
            try:
                return run(e, v, w)
            finally:
                docindex.USE_DOCUMENT_INDEX = True
        return wrapped

    configs = {
        "vector": lambda e, v, w: e.search_vector(v, k=k),
        "late": lambda e, v, w: e.search_fused(v, w, Ranking("late"), k=k),
        "rrf": lambda e, v, w: e.search_fused(v, w, Ranking("rrf"), k=k),
        "early": item_path(lambda e, v, w: e.search_fused(v, w, Ranking("early"), k=k)),
        "early-docindex": lambda e, v, w: e.search_fused(v, w, Ranking("early"), k=k),
        "hybrid": lambda e, v, w: e.search_fused(v, w, Ranking("none", "hybrid"), k=k),
        "hybrid+late": lambda e, v, w: e.search_fused(v, w, Ranking("late", "hybrid"), k=k),
        "hybrid+early-docindex": lambda e, v, w: e.search_fused(v, w, Ranking("early", "hybrid"), k=k),
    }
    times: dict[str, list[float]] = {name: [] for name in configs}
    token_first = 0
    same_order = overlap = 0.0
    tops: dict[str, list[list[int]]] = {"early": [], "early-docindex": []}
    with Engine(folder) as engine:
        with engine.store.snapshot() as snap:
            assert docindex.for_query(snap, docindex.DEFAULT_WEIGHTS) is not None, "no current document index"
        for v, words, _ in qs[:5]:  # load the vector index, warm caches
            for run in configs.values():
                run(engine, v, words)
        names = list(configs)
        for n, (v, words, code) in enumerate(qs):
            top: dict[str, list[int]] = {}
            for name in names[n % len(names):] + names[:n % len(names)]:
                started = time.perf_counter()
                hits = configs[name](engine, v, words)
                times[name].append((time.perf_counter() - started) * 1000)
                assert hits, name
                top[name] = [h.id for h in hits]
            same_order += top["early"] == top["early-docindex"]
            for name in tops:
                tops[name].append(top[name])
            overlap += len(set(top["early"]) & set(top["early-docindex"])) / max(1, len(top["early"]))
            hit = engine.search_fused(v, code, Ranking("late", "hybrid"), k=1)[0]
            token_first += hit.matched.get("words") == [code.split("-")[0].lower(), code.split("-")[1]]
    p50 = {name: statistics.median(t) for name, t in times.items()}
    recall = {}
    if truth:
        exact = exact_early(folder, qs[:truth], k)
        for name, found in tops.items():
            recall[name] = {"recall_at_k": round(float(np.mean([len(set(f) & set(e)) / k for f, e in zip(found, exact)])), 4),
                            "same_top_k": f"{sum(f == e for f, e in zip(found, exact))}/{len(exact)}"}
    return {"recall_against_brute_force": recall,"p50_ms": {k: round(v, 2) for k, v in p50.items()},
            "p90_ms": {k: round(float(np.percentile(t, 90)), 2) for k, t in times.items()},
            "ratio_to_vector": {k: round(v / p50["vector"], 2) for k, v in p50.items()},
            "early_docindex_vs_item_path": {"same_top_k": f"{int(same_order)}/{len(qs)}",
                                            "mean_overlap": round(overlap / len(qs), 3)},
            "token_queries_first": f"{token_first}/{len(qs)}"}


def update_timing(folder: Path, repeats: int, dim: int, checks: int = 20) -> dict:
    """Seconds to bring the document index forward after adding one file: incremental
    (``refresh``) against whole (``refresh(force=True)``), on the same snapshot each time, with
    the early-fusion top 10 of ``checks`` queries compared after each."""
    from mmsearch import Engine
    from mmsearch.search.request import Ranking
    from mmsearch.storage import IndexStore, docindex, writer_lock
    from support.synthetic import clustered_vectors

    asked = queries(folder, checks, dim, seed=11)
    qs = [v for v, _, _ in asked]
    incremental, whole, same, found = [], [], 0, {"incremental": 0.0, "whole": 0.0}
    store = IndexStore.open(folder)
    try:
        with store.read() as r:
            next_id = max(r.item_ids()) + 1
        for n in range(repeats):
            image = clustered_vectors(1, dim, seed=10_000 + n)[0]
            text = image + np.random.default_rng(n).standard_normal(dim).astype(np.float32) * (0.6 / np.sqrt(dim))
            path = f"/synthetic/added/new{next_id}.jsonl"
            common = {"path": path, "size": 1, "mtime_ns": 1_700_000_000_000_000_000, "width": None, "height": None}
            rows = [dict(common, id=next_id, locator="1", modality="text", content_hash=f"nt{next_id:062x}", text="added words",
                         meta=None),
                    dict(common, id=next_id + 1, locator="1:image", modality="image", content_hash=f"ni{next_id:062x}",
                         text=None, meta={"image": "new.jpg"})]
            next_id += 2
            with writer_lock(folder):
                with store.write() as w:
                    w.bulk_insert(rows, np.stack([text / np.linalg.norm(text), image]))
                started = time.perf_counter()
                record = docindex.refresh(store)
                incremental.append(time.perf_counter() - started)
                assert record["update"] == "incremental", record
            with Engine(folder) as engine:
                updated = [[h.id for h in engine.search_fused(q, None, Ranking("early"), k=10)] for q in qs]
            with writer_lock(folder):
                started = time.perf_counter()
                record = docindex.refresh(store, force=True)
                whole.append(time.perf_counter() - started)
                assert record["update"] == "build", record
            with Engine(folder) as engine:
                rebuilt = [[h.id for h in engine.search_fused(q, None, Ranking("early"), k=10)] for q in qs]
            same += sum(a == b for a, b in zip(updated, rebuilt))
            truth = exact_early(folder, asked)  # (the added documents keep the layout: text 2i+1, image 2i+2)
            for name, got in (("incremental", updated), ("whole", rebuilt)):
                found[name] += sum(len(set(g) & set(t)) / 10 for g, t in zip(got, truth))
            print(f"  one file added: incremental {incremental[-1]:.2f} s, whole {whole[-1]:.2f} s", flush=True)
        return {"entries": record["vectors"], "type": record.get("type"), "repeats": repeats,
                "incremental_s": [round(t, 2) for t in incremental], "whole_s": [round(t, 2) for t in whole],
                "incremental_median_s": round(statistics.median(incremental), 2),
                "whole_median_s": round(statistics.median(whole), 2),
                "speedup": round(statistics.median(whole) / statistics.median(incremental), 1),
                "same_early_top10": f"{same}/{repeats * len(qs)}",
                "recall_at_10_against_brute_force": {k: round(v / (repeats * len(qs)), 4) for k, v in found.items()}}
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-fusion"))
    parser.add_argument("--truth", type=int, default=50,
                        help="queries whose true early-fusion top 10 is computed by brute force (recall of both paths)")
    parser.add_argument("--update-repeats", type=int, default=0,
                        help="time the document index's update after one file is added, incremental against whole")
    args = parser.parse_args()
    folder = args.workdir / f"docs-{args.docs}-{args.dim}"
    load_start = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    facts = build(folder, args.docs, args.dim)
    facts["document_index"] = build_documents(folder)
    result = measure(folder, queries(folder, args.queries, args.dim), truth=args.truth) if args.queries else {}
    if args.update_repeats:
        result["one_file_added"] = update_timing(folder, args.update_repeats, args.dim)
    cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True, check=False).stdout.strip()
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    print(json.dumps({"machine": cpu or platform.processor(), "load_start": load_start, "load": load, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                      "index": facts, **result}, indent=1))


if __name__ == "__main__":
    main()
