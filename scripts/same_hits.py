#!/usr/bin/env python3
"""Does this checkout answer like another one on an index the other wrote?

Builds an index with the *other* checkout's code (a tiny open_clip model with weights made here,
the sample photos plus a text and a JSONL record), then runs the same queries through the
command line of both checkouts against that one index and compares ids, paths, locators and
scores (to 5 decimals). Used to check that a restructuring changed no result and no on-disk
format.

    git worktree add /tmp/base <commit>
    python scripts/same_hits.py --other /tmp/base

Exit status 0 when every query gives the same hits, 1 otherwise (the differences printed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
QUERIES = [
    ["a cat"],
    ["{lib}/chelsea.jpg"],
    ["rocket", "--fusion", "late"],
    ["astronaut", "--mode", "hybrid"],
    ["coffee", "--dedup", "--type", "image"],
    ["space", "--calibrated"],
    ["a dog", "--fusion", "early"],
    ["pasta", "--mode", "lexical"],
]


def mmsearch(tree: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "mmsearch", *args], cwd=tree, env=env, capture_output=True,
                          text=True, check=True)


def hits(tree: Path, index: Path, query: list[str], k: int) -> list[tuple]:
    done = mmsearch(tree, "query", *query, "-i", str(index), "-k", str(k), "--json")
    return [(h["id"], h["path"], h.get("locator"), round(h["score"], 5)) for h in json.loads(done.stdout)["hits"]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--other", type=Path, required=True, help="the checkout whose code writes the index")
    parser.add_argument("-k", type=int, default=6)
    args = parser.parse_args()
    sys.path.insert(0, str(HERE / "tests"))
    from conftest import write_tiny_model  # the tests' tiny model: real open_clip, weights made here

    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        model = write_tiny_model(work / "model")
        lib = work / "lib"
        shutil.copytree(HERE / "tests" / "data" / "photos", lib)
        (lib / "note.txt").write_text("a red pasta dish\n")
        (lib / "cap.jsonl").write_text(json.dumps({"text": "an astronaut in space", "image": "astronaut.jpg"}) + "\n")
        index = work / "idx"
        mmsearch(args.other.resolve(), "index", str(lib), "-i", str(index), *model.args, "-q")
        differ = 0
        for query in QUERIES:
            query = [part.format(lib=lib) for part in query]
            theirs, mine = hits(args.other.resolve(), index, query, args.k), hits(HERE, index, query, args.k)
            same = theirs == mine
            differ += not same
            print(f"{'same' if same else 'DIFFERENT'}: {' '.join(query)} ({len(mine)} hits)")
            if not same:
                print(f"  other: {theirs}\n  this:  {mine}")
        print(f"{len(QUERIES) - differ} of {len(QUERIES)} queries give the same hits")
        return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
