"""Cold text-query benchmark: `mmsearch query TEXT --index X --json` in a new process, N times.

    python scripts/bench_cold_query.py INDEX "a dog" --runs 5            # ONNX path if exported
    python scripts/bench_cold_query.py INDEX "a dog" --runs 5 --torch    # MMSEARCH_ONNX=0

Each run is a fresh interpreter (what a shell user pays), timed by wall clock; peak RSS comes
from GNU time (see benchutil.run_process). ``cold_query`` is importable by other benchmarks.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchutil import run_process  # noqa: E402


def _one(cmd: list[str], env: dict[str, str]) -> tuple[float, float, dict]:
    """(wall seconds, peak RSS MB, parsed JSON output) of one run."""
    run = run_process(cmd, env, replace_env=True)
    return run.seconds, run.max_rss_mb, json.loads(run.stdout)


def cold_query(
    index_dir: str | Path, text: str, runs: int = 5, *, onnx: bool = True, top: int = 10,
    python: str = sys.executable, warmup: int = 1,
) -> dict:
    """Run ``mmsearch query`` cold ``runs`` times; wall-time percentiles and peak RSS.

    ``onnx=False`` sets MMSEARCH_ONNX=0 (the torch text path). ``warmup`` runs first, untimed,
    so the page cache holds the index and the libraries (what a second query in a shell sees).
    """
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MMSEARCH_ONNX": "1" if onnx else "0"}
    cmd = [python, "-m", "mmsearch", "query", text, "--index", str(index_dir), "--json", "--top", str(top)]
    for _ in range(warmup):
        _one(cmd, env)
    walls, rss, hits = [], [], None
    for _ in range(runs):
        wall, peak, output = _one(cmd, env)
        walls.append(wall)
        rss.append(peak)
        hits = output["hits"]
    walls.sort()
    return {
        "path": "onnx" if onnx else "torch",
        "runs": runs,
        "p50_s": round(statistics.median(walls), 3),
        "min_s": round(walls[0], 3),
        "max_s": round(walls[-1], 3),
        "max_rss_mb": round(max(rss), 1),
        "hits": len(hits or []),
        "top_ids": [h["id"] for h in (hits or [])[:5]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("index")
    parser.add_argument("text")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--torch", action="store_true", help="MMSEARCH_ONNX=0: the torch text path")
    parser.add_argument("--both", action="store_true", help="ONNX path, then torch path")
    args = parser.parse_args()
    paths = [True, False] if args.both else [not args.torch]
    for onnx in paths:
        print(json.dumps(cold_query(args.index, args.text, args.runs, onnx=onnx)))


if __name__ == "__main__":
    main()
