"""Build and query an on-disk IVF (``ivf-ondisk``) over N synthetic clustered vectors.

Never holds the N vectors in memory: they are drawn chunk by chunk from
``ClusteredDistribution`` (``tests/support/synthetic.py``) (CLIP-like: a shared direction, clusters of very
different sizes), streamed into the shard builder, written once as float16 to a re-ranking file,
and scored against the queries on the way (exact top 10 over float32, the ground truth).

Steps timed: training (coarse k-means + PQ codebooks on a sample of the same distribution),
encoding the shards (``build_shard``, the function Ray tasks run), merging them into
``OnDiskInvertedLists`` (``merge_ondisk``). Bytes per item count the index file and the lists'
data file (the float16 re-ranking file separately). Queries run in a fresh process that
memory-maps both files (``read_index_file``): p50/p95 per query (probe, then re-rank the
candidates exactly from the float16 file), recall@10 against the exact top 10 before and after
re-ranking, and that process's resident memory (VmRSS, VmHWM) against the files' sizes.

    python scripts/bench_ondisk.py --n 200000                      # a quick check
    python scripts/bench_ondisk.py --n 10000000 --nlist 2048      # the BENCHMARKS.md run

Files go to --folder (default /tmp/ondisk-bench) and are deleted at the end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # support.*: test helpers shared with scripts

from mmsearch.storage import ondisk
from support.synthetic import ClusteredDistribution

QUERY_CODE = r"""
import json, sys, time
import numpy as np
from pathlib import Path
from mmsearch.storage.ondisk import read_index_file

def status(key):
    return int([l for l in open('/proc/self/status') if l.startswith(key)][0].split()[1]) // 1024

args = json.loads(sys.argv[1])
start_rss = status('VmRSS')
t = time.perf_counter()
index = read_index_file(Path(args['header']))
open_s = time.perf_counter() - t
index.nprobe = args['nprobe']
rerank = np.load(args['rerank'], mmap_mode='r')
queries = np.load(args['queries'])
truth = np.load(args['truth'])
import faiss
faiss.omp_set_num_threads(1)
kinds = str(type(faiss.downcast_InvertedLists(index.invlists)).__name__)
passes = []
for p in range(args['passes']):
    times, hits, hits_raw = [], 0, 0
    for qi, q in enumerate(queries):
        t = time.perf_counter()
        _, ids = index.search(q[None, :], args['rerank_depth'])
        ids = ids[0][ids[0] >= 0]
        order = np.argsort(ids)  # sorted reads from the memory-mapped file
        exact = rerank[ids[order]].astype(np.float32) @ q
        top = ids[order][np.argsort(-exact)[:10]]
        times.append(time.perf_counter() - t)
        hits += len(set(top.tolist()) & set(truth[qi].tolist()))
        hits_raw += len(set(ids[:10].tolist()) & set(truth[qi].tolist()))
    times = np.array(times) * 1000
    passes.append({'p50_ms': round(float(np.percentile(times, 50)), 2), 'p95_ms': round(float(np.percentile(times, 95)), 2),
                   'recall10': round(hits / (10 * len(queries)), 4), 'recall10_before_rerank': round(hits_raw / (10 * len(queries)), 4)})
# RssFile: pages of the mapped files this process touched (page cache, shared, reclaimable);
# RssAnon: its own memory (centroids, Python, numpy).
print(json.dumps({'open_s': round(open_s, 3), 'invlists': kinds, 'passes': passes, 'rss_start_mb': start_rss,
                  'rss_mb': status('VmRSS'), 'hwm_mb': status('VmHWM'), 'rss_anon_mb': status('RssAnon'),
                  'rss_file_mb': status('RssFile')}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--nlist", type=int, default=0, help="default: ondisk_nlist(n)")
    ap.add_argument("--nprobe", type=int, default=0, help="default: ondisk_nprobe(nlist)")
    ap.add_argument("--rerank", type=int, default=ondisk.DEFAULT_RERANK)
    ap.add_argument("--chunk", type=int, default=100_000)
    ap.add_argument("--train", type=int, default=0, help="training sample (default nlist*40, at most 400k)")
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--folder", default="/tmp/ondisk-bench")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()

    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    n, dim = args.n, args.dim
    nlist = args.nlist or ondisk.ondisk_nlist(n)
    nprobe = args.nprobe or ondisk.ondisk_nprobe(nlist)
    dist = ClusteredDistribution(dim, 0)
    queries = dist.sample(args.queries, stream=2)
    result = {"n": n, "dim": dim, "nlist": nlist, "nprobe": nprobe, "rerank_depth": args.rerank,
              "pq_m": ondisk.pq_m(dim), "cpu": platform.processor() or platform.machine(),
              "load": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}

    t = time.perf_counter()
    sample = dist.sample(args.train or min(400_000, nlist * ondisk.TRAIN_PER_LIST), stream=3)
    trained = ondisk.train(dim, sample, nlist, nprobe)
    result["train_s"] = round(time.perf_counter() - t, 1)
    del sample

    rerank_path = folder / "rerank.f16.npy"
    rerank = np.lib.format.open_memmap(rerank_path, mode="w+", dtype=np.float16, shape=(n, dim))
    truth_scores = np.full((len(queries), 10), -np.inf, np.float32)
    truth_ids = np.zeros((len(queries), 10), np.int64)
    side = {"generate_s": 0.0}

    def chunks():
        for number, start in enumerate(range(0, n, args.chunk)):
            t0 = time.perf_counter()
            m = min(args.chunk, n - start)
            block = dist.sample(m, stream=1000 + number)
            ids = np.arange(start, start + m, dtype=np.int64)
            rerank[start:start + m] = block.astype(np.float16)
            scores = queries @ block.T
            both_s = np.concatenate([truth_scores, scores], axis=1)
            both_i = np.concatenate([truth_ids, np.broadcast_to(ids, scores.shape)], axis=1)
            top = np.argsort(-both_s, axis=1)[:, :10]
            truth_scores[:] = np.take_along_axis(both_s, top, 1)
            truth_ids[:] = np.take_along_axis(both_i, top, 1)
            side["generate_s"] += time.perf_counter() - t0
            if number % 10 == 0:
                print(f"  chunk {number}: {start + m}/{n} ({time.strftime('%H:%M:%S')})", file=sys.stderr, flush=True)
            yield ids, block

    header = folder / "vectors.g0000000001.faiss"
    t = time.perf_counter()
    data = ondisk.build(header, trained, chunks(), shard_size=args.chunk)
    total = time.perf_counter() - t
    rerank.flush()
    result["generate_and_truth_s"] = round(side["generate_s"], 1)
    result["build_s"] = round(total - side["generate_s"], 1)  # encode shards + merge, without drawing vectors
    result["build_items_per_s"] = round(n / max(1e-9, result["build_s"] + result["train_s"]))
    index_bytes = header.stat().st_size + data.stat().st_size
    result["index_bytes"] = index_bytes
    result["bytes_per_item"] = round(index_bytes / n, 1)
    result["rerank_file_bytes_per_item"] = round(rerank_path.stat().st_size / n, 1)

    np.save(folder / "queries.npy", queries)
    np.save(folder / "truth.npy", truth_ids)
    query_args = {"header": str(header), "nprobe": nprobe, "rerank": str(rerank_path), "rerank_depth": args.rerank,
                  "queries": str(folder / "queries.npy"), "truth": str(folder / "truth.npy"), "passes": args.passes}
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    out = subprocess.run([sys.executable, "-c", QUERY_CODE, json.dumps(query_args)], capture_output=True, text=True,
                         env=env, check=True).stdout
    result["query"] = json.loads(out.strip().splitlines()[-1])
    print(json.dumps(result, indent=1))
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
