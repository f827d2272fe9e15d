"""What a re-run over an unchanged library costs: `mmsearch index` with nothing to do, against
`mmsearch --version` (the floor of any command: Python, typer, rich), rclip 3.3's re-check of the
same folder (it walks the folder and looks every file up, then answers its query: it has no
check without a query), and optionally another checkout of mmsearch (``--baseline DIR``).

Every run is a new process; the contenders run in rotating order in each round, so load on a
shared machine hits all alike; the figures are medians. Each mmsearch contender runs from its
own checkout (``python -m`` puts the working folder first on ``sys.path``). The library and the
indexes are made first, untimed (the same photos for every contender; ViT-B-32-256 with random
weights, rclip's own architecture, as in ``scripts/peer_rclip.py``).

    python scripts/bench_recheck.py --photos 500 --repeats 7 --baseline /tmp/base
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchutil import REPO, machine, run_process  # noqa: E402

QUERY = "a red pasta dish on a wooden table"


def mmsearch(tree: Path, *args: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system) of one new process."""
    run = run_process([sys.executable, "-m", "mmsearch", *map(str, args)], env={"PYTHONPATH": str(tree)}, cwd=tree)
    return run.seconds, run.user_s + run.sys_s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=500)
    parser.add_argument("--size", default="1600x1200", help="photo size")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--model", default="ViT-B-32-256")
    parser.add_argument("--baseline", type=Path, help="another checkout of mmsearch, re-checking its own index")
    parser.add_argument("--no-rclip", action="store_true", help="leave rclip out (not installable here)")
    parser.add_argument("--workdir", type=Path, help="keep the library and indexes here (default: a temporary folder)")
    args = parser.parse_args(argv)
    from photo_corpus import make_photo_corpus

    trees = {"mmsearch": REPO}
    if args.baseline:
        trees["baseline"] = args.baseline.resolve()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="mmsearch-recheck-"))
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "photos"
    width, height = (int(v) for v in args.size.lower().split("x"))
    make_photo_corpus(corpus, args.photos, (width, height), seed=0)
    runs = {}
    for name, tree in trees.items():  # untimed: the index made, then one re-run (bytecode, caches)
        index = work / f"index-{name}"
        if not (index / "manifest.json").exists():
            shutil.rmtree(index, ignore_errors=True)
            if name == "mmsearch":
                mmsearch(tree, "index", corpus, "-i", index, "--model", args.model, "--pretrained", "none", "-q")
            else:  # the same index, copied: the baseline re-checks the same library and vectors
                shutil.copytree(work / "index-mmsearch", index)
        mmsearch(tree, "index", "-i", index, "-q")
        runs[f"{name} index (unchanged)"] = (lambda t=tree, i=index: mmsearch(t, "index", "-i", i, "-q"))
    runs["mmsearch --version"] = lambda: mmsearch(REPO, "--version")
    runs["mmsearch query"] = lambda: mmsearch(REPO, "query", QUERY, "-i", work / "index-mmsearch", "-k", "10")
    if not args.no_rclip:
        import peer_rclip

        peer_rclip.prepare_rclip_model()
        data = work / "rclip"
        data.mkdir(exist_ok=True)
        if peer_rclip.db_items(data) != args.photos:
            peer_rclip.rclip_index_and_query(corpus, data, QUERY)
        peer_rclip.rclip_cold_query(corpus, data, QUERY, no_indexing=False)
        def rclip() -> tuple[float, float]:
            run = peer_rclip.rclip_cold_query(corpus, data, QUERY, no_indexing=False)
            return run["wall_s"], run["user_s"] + run["sys_s"]

        runs["rclip re-check + query"] = rclip
    times: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    load = [Path("/proc/loadavg").read_text().split()[:3]]
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            wall, used = runs[name]()
            times[name].append(wall)
            cpu[name].append(used)
    load.append(Path("/proc/loadavg").read_text().split()[:3])
    result = {"machine": machine(), "load_start_end": load, "photos": args.photos, "size": args.size,
              "repeats": args.repeats}
    for what, data_ in (("wall", times), ("cpu", cpu)):  # CPU seconds: what a loaded machine distorts least
        med = {name: statistics.median(t) for name, t in data_.items()}
        recheck = med["mmsearch index (unchanged)"]
        out = {"median_s": {k: round(v, 3) for k, v in med.items()},
               "runs_s": {k: [round(x, 3) for x in v] for k, v in data_.items()},
               "recheck_over_version": round(recheck / med["mmsearch --version"], 2)}
        if "rclip re-check + query" in med:
            out["rclip_over_recheck"] = round(med["rclip re-check + query"] / recheck, 2)
            out["rclip_over_recheck_plus_query"] = round(
                med["rclip re-check + query"] / (recheck + med["mmsearch query"]), 2)
        if args.baseline:
            out["baseline_over_recheck"] = round(med["baseline index (unchanged)"] / recheck, 2)
        result[what] = out
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
