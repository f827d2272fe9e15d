"""mmsearch speed benchmark: indexing throughput, query latency by scale, index build, against baselines.

Everything is measured in one run on this machine, each figure the median of --repeats runs:

  index    images/s indexing generated 12-megapixel and 640-pixel JPEG corpora with ViT-B-32
           (random weights: speed does not depend on them), against a naive baseline in the same
           run (one process, full decode, open_clip's own transform, batched float32 encode), with
           mmsearch's default image tower (bfloat16 on CPUs with AMX) and forced float32; and, as new
           processes, `mmsearch index` + `mmsearch query` against rclip 3.3.0 with the same
           architecture (ViT-B-32-256) on the same files.
  vectors  FAISS build time, single-query search p50/p95, recall@10 against exact search and
           bytes per item, for each vector index type and the automatic choice, on clustered
           vectors (scripts/bench_vectors.py).
  query    at 10k / 100k / 1M items: vector search alone, warm end-to-end text query through the
           library API, and a cold `mmsearch query` in a new process (time and peak RSS), against
           a cold rclip query on the same number of vectors.

    python scripts/bench.py --quick       # under a minute: small corpora, 10k items only
    python scripts/bench.py               # full run (about 15 minutes on 2 CPUs)

Prints a table per section and one JSON line with every figure (`--json-out FILE` saves it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # support.*: test helpers shared with scripts

from benchutil import REPO, machine, median, percentile, run_process  # noqa: E402

QUERY_TEXT = "a red pasta dish on a wooden table"


# -- corpora --------------------------------------------------------------------------------------
def corpus(workdir: Path, name: str, count: int, size: tuple[int, int]) -> Path:
    """A generated JPEG photo corpus, made once and reused by every contender."""
    from photo_corpus import make_photo_corpus

    folder = workdir / "corpora" / f"{name}-{count}"
    stamp = folder / ".complete"
    if not stamp.exists():
        shutil.rmtree(folder, ignore_errors=True)
        make_photo_corpus(folder, count, size, seed=0)
        stamp.write_text("ok")
    return folder


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))


# -- indexing: mmsearch library vs naive baseline -----------------------------------------------
def mmsearch_index_seconds(folder: Path, arch: str, workdir: Path, cpu_bf16: str = "auto") -> float:
    """Seconds for Engine.add over ``folder`` into a fresh index (model already loaded, store created).

    ``cpu_bf16`` is MMSEARCH_CPU_BF16 for this run: "auto" is the default (a bfloat16 image tower
    where the CPU has AMX), "0" float32 as in the naive baseline, isolating the pipeline's gain.
    """
    from PIL import Image

    from mmsearch import Engine

    index = workdir / "mm-index"
    shutil.rmtree(index, ignore_errors=True)
    warm = workdir / "warm"
    shutil.rmtree(warm, ignore_errors=True)
    warm.mkdir(parents=True)
    Image.new("RGB", (64, 64), (200, 30, 30)).save(warm / "warm.jpg")
    before = os.environ.get("MMSEARCH_CPU_BF16")
    os.environ["MMSEARCH_CPU_BF16"] = cpu_bf16  # read when the engine loads its model
    try:
        with Engine(index, model=arch, pretrained="none") as engine:
            engine.add([warm])  # creates the store and loads the model: not part of the timing
            start = time.perf_counter()
            report = engine.add([folder])
            seconds = time.perf_counter() - start
    finally:
        if before is None:
            os.environ.pop("MMSEARCH_CPU_BF16", None)
        else:
            os.environ["MMSEARCH_CPU_BF16"] = before
    expected = len(image_files(folder))
    if report.added != expected:
        raise RuntimeError(f"mmsearch indexed {report.added} of {expected} images in {folder}")
    return seconds


class NaiveIndexer:
    """The obvious implementation: one process, full decode, open_clip's transform, batch encode."""

    def __init__(self, arch: str, batch: int = 32):
        import open_clip
        import torch

        torch.manual_seed(0)
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(arch, pretrained=None)
        self.model.eval()
        self.batch = batch

    def run(self, files: list[Path]) -> np.ndarray:
        import torch
        from PIL import Image

        out = []
        for start in range(0, len(files), self.batch):
            tensors = []
            for path in files[start:start + self.batch]:
                with Image.open(path) as img:
                    tensors.append(self.preprocess(img.convert("RGB")))
            with torch.no_grad():
                features = self.model.encode_image(torch.stack(tensors))
            out.append(torch.nn.functional.normalize(features, dim=-1).numpy())
        return np.concatenate(out)

    def seconds(self, folder: Path) -> float:
        files = image_files(folder)
        start = time.perf_counter()
        vectors = self.run(files)
        seconds = time.perf_counter() - start
        assert vectors.shape[0] == len(files)
        return seconds


# -- indexing: new processes, mmsearch CLI vs rclip ---------------------------------------------
def mmsearch_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "mmsearch", *args]


def mmsearch_cli_index_and_query(folder: Path, arch: str, workdir: Path) -> dict:
    """`mmsearch index` then `mmsearch query`, each a new process, into a fresh index."""
    index = workdir / "mm-cli-index"
    shutil.rmtree(index, ignore_errors=True)
    built = run_process(mmsearch_cli("index", str(folder), "--index", str(index), "--model", arch,
                                     "--pretrained", "none", "--json"))
    asked = run_process(mmsearch_cli("query", QUERY_TEXT, "--index", str(index), "--json", "-k", "5"))
    hits = json.loads(asked.stdout)["hits"]
    if len(hits) != 5:
        raise RuntimeError(f"mmsearch query returned {len(hits)} hits")
    cold = run_process(mmsearch_cli("query", QUERY_TEXT, "--index", str(index), "--json", "-k", "5"))
    return {"index_s": built.seconds, "query_s": asked.seconds, "total_s": built.seconds + asked.seconds,
            "index_rss_mb": built.max_rss_mb, "cold_query_s": cold.seconds, "cold_query_rss_mb": cold.max_rss_mb}


def subset(folder: Path, count: int) -> Path:
    """The first ``count`` images of ``folder`` copied into a folder of their own."""
    target = folder.parent / f"{folder.name}-first{count}"
    if not (target / ".complete").exists():
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        for path in image_files(folder)[:count]:
            shutil.copy2(path, target / path.name)
        (target / ".complete").write_text("ok")
    return target


def load_rclip(args, workdir: Path):
    """The peer_rclip module with rclip installed and its model exported (untimed, once)."""
    import peer_rclip

    peer_rclip.ensure_rclip(args.rclip_venv)
    peer_rclip.prepare_rclip_model(venv_dir=args.rclip_venv)
    return peer_rclip


def bench_index(args, workdir: Path, results: dict) -> None:
    n12, n640 = (6, 16) if args.quick else (60, 200)
    corpora = {
        "12MP": corpus(workdir, "12mp", n12, (4000, 3000)),
        "640px": corpus(workdir, "640px", n640, (640, 480)),
    }
    naive = NaiveIndexer("ViT-B-32")
    compare = not args.quick  # the peer and new-process runs take minutes: full mode only
    rclip = load_rclip(args, workdir) if compare and not args.no_rclip else None
    section = results.setdefault("index", {})
    for name, folder in corpora.items():
        count = len(image_files(folder))
        ours, fp32, base, ours256, fp32_256 = [], [], [], [], []
        for _ in range(args.repeats):  # interleaved, so drift in machine load hits all alike
            ours.append(mmsearch_index_seconds(folder, "ViT-B-32", workdir))
            fp32.append(mmsearch_index_seconds(folder, "ViT-B-32", workdir, cpu_bf16="0"))
            base.append(naive.seconds(folder))
            if compare:
                ours256.append(mmsearch_index_seconds(folder, "ViT-B-32-256", workdir))
                fp32_256.append(mmsearch_index_seconds(folder, "ViT-B-32-256", workdir, cpu_bf16="0"))
        row = {
            "images": count,
            "image_tower": image_tower_dtype(),
            "mmsearch_images_per_s": count / median(ours),
            "mmsearch_fp32_images_per_s": count / median(fp32),
            "naive_images_per_s": count / median(base),
        }
        row["speedup_vs_naive"] = row["mmsearch_images_per_s"] / row["naive_images_per_s"]
        row["fp32_speedup_vs_naive"] = row["mmsearch_fp32_images_per_s"] / row["naive_images_per_s"]
        if compare:
            row.update(versus_rclip(folder, count / median(ours256), workdir, rclip, args.repeats))
            row["mmsearch_256_fp32_images_per_s"] = count / median(fp32_256)
            if "rclip_images_per_s" in row:
                row["fp32_throughput_vs_rclip"] = row["mmsearch_256_fp32_images_per_s"] / row["rclip_images_per_s"]
        section[name] = row
        print_row(f"index {name}", row)


def image_tower_dtype() -> str:
    """What the default CPU encoder runs its image tower in on this machine."""
    from mmsearch.encoders.torch_encoder import cpu_bf16_wanted

    return "bfloat16 (AMX)" if cpu_bf16_wanted() else "float32"


def versus_rclip(folder: Path, ours_rate: float, workdir: Path, rclip, repeats: int) -> dict:
    """mmsearch against rclip, both ViT-B-32-256.

    Throughput: ours from the library run (``ours_rate``, model loaded); rclip's from new
    processes on the corpus and on its first sixth, whose difference removes its fixed costs
    (start, model load, query). Totals: one new process (rclip) against `mmsearch index` plus
    `mmsearch query` (fresh index; the model's ONNX text export comes from the cache, as
    rclip's model files come from its download folder).
    """
    count = len(image_files(folder))
    small = subset(folder, count // 6)
    mmsearch_cli_index_and_query(small, "ViT-B-32-256", workdir)  # fills the export cache, untimed
    cli = [mmsearch_cli_index_and_query(folder, "ViT-B-32-256", workdir) for _ in range(repeats)]
    row = {
        "mmsearch_256_images_per_s": ours_rate,
        "cli_index_query_s": median([r["total_s"] for r in cli]),
        "cli_index_rss_mb": median([r["index_rss_mb"] for r in cli]),
        "cli_cold_query_s": median([r["cold_query_s"] for r in cli]),
        "cli_cold_query_rss_mb": median([r["cold_query_rss_mb"] for r in cli]),
    }
    if rclip is None:
        return row
    data_dir = workdir / "rclip-data" / folder.name
    many, few, cold = [], [], []
    for _ in range(repeats):
        many.append(rclip.rclip_index_and_query(folder, data_dir, QUERY_TEXT))
        cold.append(rclip.rclip_cold_query(folder, data_dir, QUERY_TEXT))
        few.append(rclip.rclip_index_and_query(small, data_dir, QUERY_TEXT))
    t_many, t_few = median([r["wall_s"] for r in many]), median([r["wall_s"] for r in few])
    rclip_rate = (count - len(image_files(small))) / (t_many - t_few)
    row.update({
        "rclip_images_per_s": rclip_rate,
        "throughput_vs_rclip": ours_rate / rclip_rate,
        "rclip_fixed_s": t_few - len(image_files(small)) / rclip_rate,
        "rclip_index_query_s": t_many,
        "rclip_index_rss_mb": median([r["peak_rss_mb"] for r in many]),
        "total_time_vs_rclip": t_many / row["cli_index_query_s"],
        "rclip_cold_query_s": median([r["wall_s"] for r in cold]),
        "rclip_cold_query_rss_mb": median([r["peak_rss_mb"] for r in cold]),
    })
    return row


# -- query latency by scale --------------------------------------------------------------------
def synthetic_store(workdir: Path, n: int, arch: str = "ViT-B-32") -> tuple[Path, dict]:
    """An index of ``n`` synthetic image items with clustered vectors, built once and reused.

    The store is made the normal way (a real ``Engine.add`` of one text file with ``arch`` and
    random weights: manifest, database, ONNX text export), then the rows and embeddings are
    bulk-inserted under the writer lock in one generation, and the vector index is built by
    ``Engine.rebuild_vectors`` (automatic type). Returns the folder and the build facts.
    """
    from mmsearch import Engine
    from mmsearch.storage import writer_lock
    from support.synthetic import clustered_vectors

    folder = workdir / f"store-{arch}-{n}"
    stamp = folder / "bench-stamp.json"
    if stamp.exists():
        return folder, json.loads(stamp.read_text())
    shutil.rmtree(folder, ignore_errors=True)
    seed_dir = workdir / "seed-text"
    seed_dir.mkdir(parents=True, exist_ok=True)
    (seed_dir / "note.txt").write_text("a seed note so the index has a model, a manifest and a text export")
    index = folder / "index"
    with Engine(index, model=arch, pretrained="none") as engine:
        engine.add([seed_dir])
        vectors = clustered_vectors(n, engine.store.dim, seed=1)
        started = time.perf_counter()
        # Straight into the catalogue, in one transaction and generation; the vector index is
        # built from it below (rebuild_vectors), so nothing is mirrored item by item.
        with writer_lock(index), engine.store.catalogue.write() as w:
            for start in range(0, n, 50_000):
                stop = min(n, start + 50_000)
                w.bulk_insert([
                    {"id": i, "path": f"/synthetic/{i // 1000:05d}/IMG_{i}.jpg", "locator": "", "modality": "image",
                     "size": 2_500_000, "mtime_ns": 1_700_000_000_000_000_000 + i, "content_hash": f"{i:064x}",
                     "width": 4000, "height": 3000}
                    for i in range(10_000_000 + start, 10_000_000 + stop)
                ], vectors[start:stop])
        rows_s = time.perf_counter() - started
        started = time.perf_counter()
        chosen = engine.rebuild_vectors("auto")
        build_s = time.perf_counter() - started
    # Per-item disk cost: database and vectors; the ONNX text export is a fixed ~255 MB per index.
    per_item = [p for p in index.iterdir() if p.name.startswith(("mmsearch.db", "vectors."))]
    facts = {"items": n + 1, "insert_rows_s": rows_s, "vector_build_s": build_s, "vector_index": chosen,
             "disk_bytes": sum(p.stat().st_size for p in per_item)}
    stamp.write_text(json.dumps(facts))
    return folder, facts


def warm_latencies(index: Path, queries: np.ndarray, texts: list[str]) -> dict:
    """Per-query ms through the library: search_vector (vector search + row join), search (text)."""
    from mmsearch import Engine

    with Engine(index) as engine:
        for q in queries[:5]:
            engine.search_vector(q, k=10)  # load and warm
        engine.search(texts[0], k=10)
        vector_ms, text_ms = [], []
        for q in queries:
            start = time.perf_counter()
            hits = engine.search_vector(q, k=10)
            vector_ms.append((time.perf_counter() - start) * 1000)
            assert len(hits) == 10
        for text in texts:
            start = time.perf_counter()
            hits = engine.search(text, k=10)
            text_ms.append((time.perf_counter() - start) * 1000)
            assert len(hits) == 10
        onnx_used = not engine.model_loaded
    return {
        "vector_search_p50_ms": percentile(vector_ms, 50), "vector_search_p95_ms": percentile(vector_ms, 95),
        "text_query_p50_ms": percentile(text_ms, 50), "text_query_p95_ms": percentile(text_ms, 95),
        "text_encoder": "onnx" if onnx_used else "torch",
    }


def bench_query(args, workdir: Path, results: dict) -> None:
    from bench_cold_query import cold_query

    from support.synthetic import clustered_queries, clustered_vectors

    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else ([10_000] if args.quick else [10_000, 100_000, 1_000_000])
    rclip = None if args.no_rclip or args.quick else load_rclip(args, workdir)
    section = results.setdefault("query", {})
    words = "red blue green old small large dog cat car boat house tree river beach city street garden table".split()
    rng = np.random.default_rng(3)
    texts = [" ".join(rng.choice(words, size=5)) for _ in range(50 if args.quick else 200)]
    for n in sizes:
        folder, facts = synthetic_store(workdir, n)
        queries = clustered_queries(50 if args.quick else 300, 512, seed=1)
        row = {"items": facts["items"], "vector_index": facts["vector_index"].get("type"),
               "vector_build_s": facts["vector_build_s"], "disk_bytes_per_item": facts["disk_bytes"] / facts["items"]}
        row.update(warm_latencies(folder / "index", queries, texts))
        cold = cold_query(folder / "index", QUERY_TEXT, runs=max(3, args.repeats), warmup=1)
        row["cold_cli_query_p50_s"] = cold["p50_s"]
        row["cold_cli_query_rss_mb"] = cold["max_rss_mb"]
        if rclip is not None:
            data_dir = workdir / f"rclip-{n}"
            filled = rclip.rclip_fill_synthetic(data_dir, n, clustered_vectors(n, 512, seed=1))
            runs = [rclip.rclip_cold_query(filled["root"], data_dir, QUERY_TEXT)
                    for _ in range(1 if n >= 1_000_000 else args.repeats)]
            row["rclip_cold_query_s"] = median([r["wall_s"] for r in runs])
            row["rclip_cold_query_rss_mb"] = median([r["peak_rss_mb"] for r in runs])
            row["cold_speedup_vs_rclip"] = row["rclip_cold_query_s"] / row["cold_cli_query_p50_s"]
        section[str(n)] = row
        print_row(f"query n={n}", row)


def bench_vectors_section(args, results: dict) -> None:
    import bench_vectors

    sizes = (10_000,) if args.quick else (10_000, 100_000, 1_000_000)
    # IVF-PQ trains its codebooks for ~10 s even at 10k: left out of the quick run.
    types = tuple(t for t in bench_vectors.TYPES if t != "ivf-pq") if args.quick else bench_vectors.TYPES
    rows = bench_vectors.run(sizes, types, n_queries=100 if args.quick else 200)
    print(bench_vectors.table(rows), flush=True)
    results["vectors"] = rows


def print_row(title: str, row: dict) -> None:
    parts = []
    for key, value in row.items():
        parts.append(f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}")
    print(f"{title}: " + "  ".join(parts), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument("--sections", default="index,vectors,query", help="comma-separated: index,vectors,query")
    parser.add_argument("--repeats", type=int, default=None, help="runs per figure (median); default 3, quick 1")
    parser.add_argument("--workdir", type=Path, default=REPO / ".bench" / "work")
    parser.add_argument("--no-rclip", action="store_true", help="skip the rclip comparison")
    parser.add_argument("--rclip-venv", type=Path, default=REPO / ".bench" / "rclip-venv")
    parser.add_argument("--sizes", default=None, help="item counts for the query section, e.g. 10000,100000,1000000")
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results: dict = {"machine": machine(), "mode": "quick" if args.quick else "full", "repeats": args.repeats}
    started = time.perf_counter()
    sections = args.sections.split(",")
    if "index" in sections:
        bench_index(args, args.workdir, results)
    if "vectors" in sections:
        bench_vectors_section(args, results)
    if "query" in sections:
        bench_query(args, args.workdir, results)
    results["elapsed_s"] = time.perf_counter() - started
    line = json.dumps(results)
    print(line)
    if args.json_out:
        args.json_out.write_text(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
