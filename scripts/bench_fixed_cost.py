"""The fixed cost of a new-process `mmsearch index` + `mmsearch query`, against another checkout.

What a user feels on a small folder is mostly start-up: importing, starting the decode workers,
building the ONNX sessions. This script runs both commands as new processes on a small photo
corpus into a fresh index, alternating this checkout with ``--baseline DIR`` (another checkout
of mmsearch, e.g. ``git worktree add --detach /tmp/base HEAD~1``), and prints the medians.

Each contender runs with its own checkout as the working folder and on ``PYTHONPATH``:
``python -m`` puts the working folder first on ``sys.path``, so a shared working folder would
silently run the same code twice.

    python scripts/bench_fixed_cost.py --baseline /tmp/base --photos 4 --repeats 8
    python scripts/bench_fixed_cost.py --baseline /tmp/base --photos 60 --size 4000x3000 --repeats 6

The model's ONNX exports must be in the machine's cache (the script makes one untimed run of
each contender first), as they are for a user after the first index of a model.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchutil import REPO, machine, median, run_process  # noqa: E402

QUERY = "a red pasta dish on a wooden table"


def one_run(tree: Path, corpus: Path, index: Path, model: str) -> tuple[float, float]:
    shutil.rmtree(index, ignore_errors=True)
    env = {"PYTHONPATH": str(tree)}
    built = run_process([sys.executable, "-m", "mmsearch", "index", str(corpus), "--index", str(index), "--model", model,
                         "--pretrained", "none", "--json", "-q"], env=env, cwd=tree)
    asked = run_process([sys.executable, "-m", "mmsearch", "query", QUERY, "--index", str(index), "--json", "-k", "2"],
                        env=env, cwd=tree)
    if len(json.loads(asked.stdout)["hits"]) != 2:
        raise RuntimeError(f"{tree}: the query did not return 2 hits")
    return built.seconds, asked.seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, required=True, help="another checkout of mmsearch")
    parser.add_argument("--photos", type=int, default=4, help="photos in the corpus")
    parser.add_argument("--size", default="640x480", help="photo size, e.g. 4000x3000 for 12 MP")
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--model", default="ViT-B-32-256")
    args = parser.parse_args(argv)
    from photo_corpus import make_photo_corpus

    contenders = {"this checkout": REPO, "baseline": args.baseline.resolve()}
    with tempfile.TemporaryDirectory(prefix="mmsearch-fixed-") as tmp:
        work = Path(tmp)
        corpus = work / "photos"
        width, height = (int(v) for v in args.size.lower().split("x"))
        make_photo_corpus(corpus, args.photos, (width, height), seed=0)
        for name, tree in contenders.items():  # untimed: exports into the cache, bytecode compiled
            one_run(tree, corpus, work / "warm", args.model)
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in contenders}
        for r in range(args.repeats):  # alternating, the order swapped each round
            order = list(contenders.items()) if r % 2 == 0 else list(reversed(contenders.items()))
            for name, tree in order:
                times[name].append(one_run(tree, corpus, work / "index", args.model))
    print(json.dumps(machine()))
    for name, runs in times.items():
        index_s, query_s = median([a for a, _ in runs]), median([b for _, b in runs])
        total = median([a + b for a, b in runs])
        print(f"{name:14s} index {index_s:.2f} s  query {query_s:.2f} s  total {total:.2f} s  "
              f"(index runs: {', '.join(f'{a:.2f}' for a, _ in runs)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
