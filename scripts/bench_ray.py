"""The Ray runner's cost on one machine: the same corpus indexed locally and on a local Ray.

Each run is a new `mmsearch index` process over the same generated JPEG corpus into a fresh
index, with the same model (random weights: speed does not depend on them) and the torch image
encoder for both runners (``MMSEARCH_IMAGE_ENCODER=torch``). The model's ONNX export is made once
by an untimed first run into this script's own cache (``MMSEARCH_CACHE``), as on a machine that
has indexed with the model before: a new index then takes its dimension and decode geometry from
that cache, so a Ray run's indexing process loads no model (its actors do). Three contenders,
each the median of ``--repeats`` runs, in one session:

  local        --runner local (decode worker processes, encode in the indexing process)
  ray (start)  --runner ray: the process starts its own local Ray (all cores), then runs
  ray (warm)   --runner ray --ray-address ADDR: a Ray this script started beforehand
               (``num_cpus`` = the machine's cores), so the run pays no Ray start

and the ratios of their wall times to the local run's, plus the run's own seconds (the report's
``seconds``: after model load, scan to last commit) and images per second.

    python scripts/bench_ray.py --quick           # tiny model, 64 small images, 2 repeats
    python scripts/bench_ray.py                   # ViT-B-32, 160 640x480 JPEGs, 3 repeats

``--baseline DIR`` adds a fourth contender, *ray (warm) baseline*: the same warm Ray run with the
mmsearch package of another checkout (e.g. a ``git worktree`` of an earlier commit), measured in
the same session, interleaved, so a change to the Ray runner is compared on the same load.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchutil import REPO, machine, median, run_process  # noqa: E402

TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, 64 small images, 2 repeats")
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--size", default=None, help="WIDTHxHEIGHT of the generated JPEGs")
    parser.add_argument("--model", default=None, help="open_clip model (default ViT-B-32; --quick: a tiny config)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument("--baseline", type=Path, default=None,
                        help="another checkout whose mmsearch runs a fourth contender, ray (warm) baseline")
    args = parser.parse_args()
    images = args.images or (64 if args.quick else 160)
    width, height = (int(v) for v in (args.size or ("320x240" if args.quick else "640x480")).split("x"))
    repeats = args.repeats or (2 if args.quick else 3)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="mmsearch-bench-ray-"))
    work.mkdir(parents=True, exist_ok=True)

    from photo_corpus import make_photo_corpus

    corpus = work / f"corpus-{images}-{width}x{height}"
    make_photo_corpus(corpus, images, (width, height), seed=0)
    model = args.model
    if model is None and args.quick:
        model = str(work / "benchtiny.json")
        Path(model).write_text(json.dumps(TINY_CONFIG))
    model = model or "ViT-B-32"

    import ray

    cpus = os.cpu_count() or 2
    context = ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    address = context.address_info["address"]
    env = {"HF_HUB_OFFLINE": "1", "MMSEARCH_IMAGE_ENCODER": "torch", "MMSEARCH_CACHE": str(work / "cache"),
           "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    contenders = {"local": ["--runner", "local"], "ray (start)": ["--runner", "ray"],
                  "ray (warm)": ["--runner", "ray", "--ray-address", address]}
    envs = {name: env for name in contenders}
    cwds = {name: REPO for name in contenders}  # `python -m` puts the working folder first on sys.path
    if args.baseline:
        contenders["ray (warm) baseline"] = contenders["ray (warm)"]
        envs["ray (warm) baseline"] = dict(env, PYTHONPATH=str(args.baseline.resolve()))
        cwds["ray (warm) baseline"] = args.baseline.resolve()
    results: dict[str, dict] = {name: {"wall": [], "run": [], "rss": []} for name in contenders}

    def index_cmd(idx: Path, extra: list[str]) -> list[str]:
        return [sys.executable, "-m", "mmsearch", "index", str(corpus), "-i", str(idx), "--model", model,
                "--pretrained", "none", "--batch-size", str(args.batch_size), "--json", "-q", *extra]

    shutil.rmtree(work / "idx", ignore_errors=True)
    run_process(index_cmd(work / "idx", ["--runner", "local"]), env=env)  # untimed: the export, once
    try:
        for repeat in range(repeats):
            for name, extra in contenders.items():  # interleaved, so load drifts hit all alike
                idx = work / "idx"
                shutil.rmtree(idx, ignore_errors=True)
                run = run_process(index_cmd(idx, extra), env=envs[name], cwd=cwds[name])
                report = json.loads(run.stdout)
                assert report["added"] == images, report
                results[name]["wall"].append(run.seconds)
                results[name]["run"].append(report["seconds"])
                results[name]["rss"].append(run.max_rss_mb)
                if report.get("runner"):
                    results[name]["where"] = report["runner"]
                print(f"  repeat {repeat + 1} {name:<20} wall {run.seconds:6.1f}s  run {report['seconds']:6.1f}s",
                      file=sys.stderr)
    finally:
        ray.shutdown()

    base = median(results["local"]["wall"])
    base_run = median(results["local"]["run"])
    summary = {"machine": machine(), "images": images, "size": f"{width}x{height}", "model": Path(model).name,
               "repeats": repeats, "batch_size": args.batch_size, "contenders": {}}
    print(f"\n{images} JPEGs {width}x{height}, model {Path(model).name}, median of {repeats}")
    print(f"{'runner':<21}{'wall s':>8}{'x local':>9}{'run s':>8}{'x local':>9}{'img/s (run)':>13}{'driver MB':>11}")
    for name, r in results.items():
        wall, run_s = median(r["wall"]), median(r["run"])
        row = {"wall_s": round(wall, 2), "wall_vs_local": round(wall / base, 2), "run_s": round(run_s, 2),
               "run_vs_local": round(run_s / base_run, 2), "images_per_s_run": round(images / run_s, 2),
               "driver_peak_rss_mb": round(median(r["rss"]), 1), "all_wall_s": [round(v, 2) for v in r["wall"]]}
        if "where" in r:
            row["where"] = {k: r["where"][k] for k in ("nodes", "cpus", "gpus", "encode_actors", "encoder")}
        summary["contenders"][name] = row
        print(f"{name:<21}{wall:>8.1f}{wall / base:>9.2f}{run_s:>8.1f}{run_s / base_run:>9.2f}{images / run_s:>13.1f}"
              f"{median(r['rss']):>11.0f}")
    print(json.dumps(summary))
    if args.json_out:
        args.json_out.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
