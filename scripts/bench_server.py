"""Load test of `mmsearch serve`: many simultaneous clients on loopback, every answer checked.

Builds (once, cached in --workdir) an index of generated photos and captions, starts
`python -m mmsearch serve` as a subprocess, then fires a bounded mix of requests from
--concurrency client threads:

  text     GET  /api/search?q=<an indexed caption>   -> that caption ranks first with cosine ~1
  similar  GET  /api/items/<id>/similar              -> exactly the library's ranking
  thumb    GET  /api/items/<id>/thumbnail            -> the same JPEG bytes as the warm-up fetch
  upload   POST /api/search (an indexed image file)  -> that image ranks first with cosine ~1

and reports p50/p99 latency per kind and overall, and throughput; medians over --repeats runs.
Exits non-zero if any answer is wrong.

    python scripts/bench_server.py --model ViT-B-32 --pretrained none --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

MIX = {"text": 0.4, "similar": 0.3, "thumb": 0.2, "upload": 0.1}
WORDS = ("red blue green old new small large quiet busy sunny rainy dog cat car boat house tree river "
         "mountain beach city street garden kitchen table window bridge forest market night morning").split()


def make_corpus(root: Path, images: int, texts: int) -> None:
    rng = np.random.default_rng(0)
    (root / "photos").mkdir(parents=True, exist_ok=True)
    for i in range(images):
        blocks = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
        Image.fromarray(blocks, "RGB").resize((640, 480), Image.BILINEAR).save(root / "photos" / f"p{i:04d}.jpg", quality=90)
    words = np.array(WORDS)
    lines = [" ".join(rng.choice(words, size=8)) + f" number {i}" for i in range(texts)]
    (root / "captions.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in lines))


def random_checkpoint(model: str, folder: Path) -> Path:
    """Seeded random weights written once: '--pretrained none' would draw new ones in each process."""
    path = folder / f"{model}-random-seed0.pt"
    if not path.exists():
        import open_clip
        import torch

        folder.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        torch.save({"state_dict": open_clip.create_model(model).state_dict()}, path)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default="random",
                        help="weights: a tag or checkpoint file; 'random' = seeded random weights saved to a checkpoint "
                             "in --workdir (same compute as trained ones; the server process loads the same file)")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--texts", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, default=300, help="requests per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mmsearch-bench-server"))
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    from mmsearch import Engine, QueryTerm

    corpus, index = args.workdir / "corpus", args.workdir / f"index-{args.model}-{args.images}-{args.texts}"
    if args.pretrained == "random":
        args.pretrained = str(random_checkpoint(args.model, args.workdir))
    if not corpus.exists():
        make_corpus(corpus, args.images, args.texts)
    engine = Engine(index, model=args.model, pretrained=args.pretrained)
    report = engine.add([corpus])
    print(f"index: {engine.info()['items']} items ({report.added} newly embedded)", file=sys.stderr)

    hits = engine.search("anything", k=10_000)
    texts = {h.id: h.text for h in hits if h.modality == "text"}
    images = {h.id: h.path for h in hits if h.modality == "image"}
    image_ids = sorted(images)
    expected_similar = {i: [h.id for h in engine.search(QueryTerm("item", str(i)), k=args.k)] for i in image_ids[:40]}
    engine.close()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (args.workdir / "server.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "mmsearch", "serve", "--index", str(index), "--port", str(port),
                               "--log-level", "warning"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                print((args.workdir / "server.log").read_text(), file=sys.stderr)
                return 1
            time.sleep(0.2)

        with httpx.Client(base_url=url, timeout=120) as http:
            thumbs = {i: http.get(f"/api/items/{i}/thumbnail").content for i in image_ids[:40]}  # warm cache
            for text in list(texts.values())[:3]:
                http.get("/api/search", params={"q": text})
        uploads = {i: Path(images[i]).read_bytes() for i in image_ids[:20]}

        local = threading.local()

        def client() -> httpx.Client:
            if not hasattr(local, "http"):
                local.http = httpx.Client(base_url=url, timeout=120)
            return local.http

        def one(kind: str, target: int) -> tuple[str, float, str | None]:
            http = client()
            start = time.perf_counter()
            if kind == "text":
                r = http.get("/api/search", params={"q": texts[target], "k": args.k})
            elif kind == "similar":
                r = http.get(f"/api/items/{target}/similar", params={"k": args.k})
            elif kind == "thumb":
                r = http.get(f"/api/items/{target}/thumbnail")
            else:
                r = http.post("/api/search", files={"images": ("q.jpg", uploads[target], "image/jpeg")},
                              data={"k": str(args.k), "include_query": "true"})
            elapsed = time.perf_counter() - start
            if r.status_code != 200:
                return kind, elapsed, f"{kind} {target}: HTTP {r.status_code} {r.text[:200]}"
            if kind == "thumb":
                ok = r.content == thumbs[target]
            else:
                got = r.json()["hits"]
                if kind == "similar":
                    ok = [h["id"] for h in got] == expected_similar[target]
                else:
                    ok = bool(got) and got[0]["id"] == target and got[0]["score"] > 0.999
            return kind, elapsed, None if ok else f"{kind} {target}: wrong answer"

        rng = random.Random(1)
        runs = []
        for repeat in range(args.repeats):
            jobs = []
            for _ in range(args.requests):
                kind = rng.choices(list(MIX), weights=list(MIX.values()))[0]
                pool = {"text": list(texts), "similar": list(expected_similar), "thumb": list(thumbs),
                        "upload": list(uploads)}[kind]
                jobs.append((kind, rng.choice(pool)))
            start = time.perf_counter()
            with ThreadPoolExecutor(max_workers=args.concurrency) as executor:
                results = list(executor.map(lambda job: one(*job), jobs))
            wall = time.perf_counter() - start
            failures = [f for _, _, f in results if f]
            if failures:
                print("\n".join(failures[:20]), file=sys.stderr)
                print(f"{len(failures)} wrong answers out of {len(results)}", file=sys.stderr)
                return 2
            by_kind = {k: [t * 1000 for kind, t, _ in results if kind == k] for k in MIX}
            by_kind["all"] = [t * 1000 for _, t, _ in results]
            run = {k: {"n": len(v), "p50_ms": percentile(v, 50), "p99_ms": percentile(v, 99)} for k, v in by_kind.items()}
            run["throughput_rps"] = len(results) / wall
            runs.append(run)
            print(f"run {repeat + 1}: all p50 {run['all']['p50_ms']:.1f} ms, p99 {run['all']['p99_ms']:.1f} ms, "
                  f"{run['throughput_rps']:.1f} req/s, {len(results)} answers checked", file=sys.stderr)
    finally:
        server.terminate()
        server.wait(timeout=20)
        log.close()

    summary = {
        k: {m: statistics.median(r[k][m] for r in runs) for m in ("p50_ms", "p99_ms")} | {"n": runs[0][k]["n"]}
        for k in (*MIX, "all")
    }
    summary["throughput_rps"] = statistics.median(r["throughput_rps"] for r in runs)
    meta = {"model": args.model, "pretrained": args.pretrained, "items": len(texts) + len(images),
            "concurrency": args.concurrency, "requests_per_run": args.requests, "repeats": args.repeats,
            "cpus": os.cpu_count(), "python": platform.python_version()}
    if args.json:
        print(json.dumps({"meta": meta, "median": summary, "runs": runs}, indent=2))
    else:
        print("| request | p50 ms | p99 ms |\n|---|---:|---:|")
        for k in (*MIX, "all"):
            print(f"| {k} | {summary[k]['p50_ms']:.1f} | {summary[k]['p99_ms']:.1f} |")
        print(f"\nthroughput: {summary['throughput_rps']:.1f} requests/s (median of {args.repeats} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
