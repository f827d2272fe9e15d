"""Near-duplicate scan benchmark: time, and recall and precision of planted duplicate groups.

    python scripts/bench_dupes.py                       # 100k and 1M vectors, 3 repeats (about 10 minutes, 8 GB RAM)
    python scripts/bench_dupes.py --sizes 100000 --repeats 5
    python scripts/bench_dupes.py --sizes 100000 --store     # through an index: Engine.duplicates, as `mmsearch dupes`

Background vectors come from ``tests/support/synthetic.py`` (clustered, CLIP-like, 512-d). Into them are
planted, per 100 vectors, one group of near-copies of an existing vector (2-5 members; each copy
at cosine 0.975-0.995 to its original, as re-encoded, resized and slightly cropped photos are),
and one "burst" neighbour at cosine 0.88-0.93 (another photo of the scene, seconds later), which
must not join. The scan is ``mmsearch.search.dupes.similar_pairs`` + union-find at the default threshold,
as ``mmsearch dupes`` runs it after reading the vectors from the catalogue. ``--store`` writes the
vectors into a real index (SQLite catalogue, rows with sizes and file times) and times
``Engine.duplicates`` instead: reading the vectors and rows included.

Group recall: planted groups found with exactly their members. Group precision: found groups
that are exactly a planted group, among the found groups that hold a planted vector (a found
group made only of background vectors is a real near-duplicate of the synthetic data itself:
its similarities are exact and at or above the threshold; those are counted separately).
At 100k the partitioned scan is also compared with the exact all-pairs scan (pair recall).
Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # support.*: test helpers shared with scripts

from benchutil import machine  # noqa: E402
from mmsearch.search import dupes  # noqa: E402
from support.synthetic import clustered_vectors  # noqa: E402


def _near(v: np.ndarray, cos: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector at cosine ``cos`` from unit vector ``v`` (an orthogonal step of the right length)."""
    step = rng.standard_normal(v.shape[0]).astype(np.float32)
    step -= step.dot(v) * v
    step /= np.linalg.norm(step)
    out = v + step * np.sqrt(1.0 / cos**2 - 1.0)
    return (out / np.linalg.norm(out)).astype(np.float32)


def planted(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, list[frozenset[int]], int]:
    """``n`` vectors: background plus planted groups (see the module docstring); (vectors,
    planted groups as sets of rows, burst neighbours planted)."""
    rng = np.random.default_rng(seed)
    x = clustered_vectors(n, dim, seed=seed)
    groups: list[frozenset[int]] = []
    bursts = 0
    for block in range(0, n - 100 + 1, 100):
        original = block
        size = 2 + len(groups) % 4
        for j in range(1, size):
            x[block + j] = _near(x[original], rng.uniform(0.975, 0.995), rng)
        groups.append(frozenset(range(block, block + size)))
        burst_of = block + 10  # a background vector gets a neighbour just below the threshold
        x[block + 11] = _near(x[burst_of], rng.uniform(0.88, 0.93), rng)
        bursts += 1
    return x, groups, bursts


def score(found: list[list[int]], truth: list[frozenset[int]]) -> dict:
    planted_rows = set().union(*truth) if truth else set()
    found_sets = [frozenset(g) for g in found]
    touching = [g for g in found_sets if g & planted_rows]
    exact = set(found_sets) & set(truth)
    missed = [t for t in truth if t not in exact]
    # Why a planted group was not found exactly: joined with background vectors (which then lie
    # at or above the threshold of one of its members: a true near-duplicate of the data), or
    # split (a pair the partition did not compare), or both.
    merged = sum(1 for t in missed if any(t < g for g in touching))
    split = sum(1 for t in missed if any(g & t and not t <= g for g in touching) or not any(t & g for g in touching))
    return {
        "group_recall": len(exact) / len(truth) if truth else float("nan"),
        "group_precision": len(exact) / len(touching) if touching else float("nan"),
        "groups_found": len(found_sets),
        "background_groups": len(found_sets) - len(touching),
        "missed_merged_with_background": merged,
        "missed_split": split,
    }


def synthetic_index(folder: Path, x: np.ndarray) -> None:
    """An index in ``folder`` holding ``x`` as image items 0..n-1 (ids = rows + 1)."""
    from mmsearch.storage import IndexStore, writer_lock

    store = IndexStore.create(folder, {"name": "synthetic", "pretrained": None, "fingerprint": "synthetic"},
                              x.shape[1])
    rng = np.random.default_rng(1)
    with writer_lock(folder), store.catalogue.write() as w:
        for start in range(0, len(x), 50_000):
            stop = min(len(x), start + 50_000)
            w.bulk_insert([{"id": i + 1, "path": f"/synthetic/{i // 1000:05d}/IMG_{i}.jpg", "locator": "",
                            "modality": "image", "size": 2_500_000, "mtime_ns": int(rng.integers(1, 10**18)),
                            "content_hash": f"{i:064x}", "width": 4000, "height": 3000}
                           for i in range(start, stop)], x[start:stop])
    store.close()


def run(sizes: list[int], repeats: int, dim: int, threshold: float, probes: int = dupes.PROBES,
        store: bool = False) -> list[dict]:
    import tempfile

    from mmsearch import Engine

    rows = []
    for n in sizes:
        x, truth, bursts = planted(n, dim)
        times, result = [], None
        workdir = tempfile.TemporaryDirectory(prefix="bench-dupes-") if store else None
        if workdir is not None:
            synthetic_index(Path(workdir.name) / "index", x)
        for _ in range(repeats):
            started = time.perf_counter()
            if workdir is not None:
                with Engine(Path(workdir.name) / "index") as engine:
                    groups = engine.duplicates(threshold=threshold)
                found = [[item.id - 1 for item in g.items] for g in groups]
            else:
                pairs = dupes.similar_pairs(x, threshold, probes=probes)
                found = dupes.groups_of(n, pairs)
            times.append(time.perf_counter() - started)
            result = score(found, truth)
        if workdir is not None:
            workdir.cleanup()
        row = {"n": n, "dim": dim, "threshold": threshold, "probes": probes, "through": "index" if store else "vectors", "planted_groups": len(truth), "planted_bursts": bursts,
               "seconds_median": statistics.median(times), "seconds_all": [round(t, 2) for t in times], **result}
        if n <= 100_000 and not store:  # the exact all-pairs scan as the reference for the partition's pair recall
            started = time.perf_counter()
            exact = dupes.similar_pairs(x, threshold, exact_max=n)
            row["exact_seconds"] = time.perf_counter() - started
            mine = set(map(tuple, pairs.tolist()))
            row["pair_recall_vs_exact"] = len(mine & set(map(tuple, exact.tolist()))) / max(1, len(exact))
        rows.append(row)
        print(f"{n:>9} vectors: {row['seconds_median']:.1f} s (runs {row['seconds_all']}), group recall "
              f"{row['group_recall']:.4f}, precision {row['group_precision']:.4f}, background groups "
              f"{row['background_groups']}, missed: {row['missed_merged_with_background']} merged with background, "
              f"{row['missed_split']} split" + (f", pair recall vs exact {row['pair_recall_vs_exact']:.4f} "
                                               f"(exact scan {row['exact_seconds']:.1f} s)" if "exact_seconds" in row else ""),
              flush=True)
        del x
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--threshold", type=float, default=dupes.DEFAULT_THRESHOLD)
    parser.add_argument("--probes", type=int, default=dupes.PROBES, help="k-means cells each vector is compared with")
    parser.add_argument("--store", action="store_true", help="time Engine.duplicates over a real index")
    args = parser.parse_args()
    rows = run(args.sizes, args.repeats, args.dim, args.threshold, args.probes, args.store)
    print(json.dumps({"machine": machine(), "rows": rows}))


if __name__ == "__main__":
    main()
