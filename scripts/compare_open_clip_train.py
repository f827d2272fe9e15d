#!/usr/bin/env python
"""Race `mmsearch train` against open_clip's own trainer (`open_clip_train`) at equal steps.

Both start from the same weights (a random-init checkpoint written here, one per seed), train the
same open_clip architecture on the train split of the synthetic shapes set with the same
hyper-parameters (AdamW betas 0.9/0.98, eps 1e-6, weight decay 0.1 except gains and biases,
linear warm-up then cosine, gradient clipping 1.0, fp32, no augmentation, the same batch size and
number of steps), and are evaluated by `mmsearch.evaluate` on the test split (500 images whose
colour+shape pairs never occur in training). Each seed also runs the options that chose
`mmsearch train`'s defaults:

* ``mmsearch``: every training image, last epoch kept (today's default);
* ``holdout``: 10% of the training images held out, evaluated both with the best epoch on that
  hold-out (``checkpoint.pt``, the old default) and with the last epoch (``last.pt``).

open_clip_train reads a CSV of (image, caption) rows, one row per caption, so one open_clip_train
epoch (every caption once) has as many steps as ``--captions`` mmsearch epochs (one random
caption per image each); `--train` must be a multiple of `--batch-size` for the counts to match.
Image paths in the CSV are absolute (open_clip_train opens them relative to its working
directory). Needs pandas (the `bench` extra).

    python scripts/compare_open_clip_train.py --work /tmp/race --seeds 0 1 2

Prints one JSON line per run and a summary (mean +- sd and median over seeds, ratios against
open_clip_train measured in the same run); everything is also written to WORK/results.jsonl.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The 7.65M-parameter architecture of BENCHMARKS.md's training section.
CONFIG = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 64, "layers": 3, "width": 128, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 3},
}
ARCH = "shapes-small"
OPEN_CLIP_MAIN = (
    "import sys, open_clip; open_clip.add_model_config(sys.argv[1]); "
    "from open_clip_train.main import main; main(sys.argv[2:])"
)


def _synthetic():
    spec = importlib.util.spec_from_file_location("make_synthetic_dataset", ROOT / "scripts" / "make_synthetic_dataset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _env(threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _run(cmd: list[str], env: dict, log: Path) -> float:
    started = time.monotonic()
    with open(log, "w") as fh:
        done = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=log.parent)
    if done.returncode:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}\n{log.read_text()[-3000:]}")
    return time.monotonic() - started


def prepare(args) -> tuple[Path, Path]:
    data = args.work / "data"
    if not (data / "metadata.json").is_file():
        _synthetic().generate(data, {"train": args.train, "test": args.test}, image_size=args.size,
                              captions=args.captions, seed=0)
    config = args.work / f"{ARCH}.json"
    config.write_text(json.dumps(CONFIG))
    with open(args.work / "train.csv", "w", newline="") as fh:  # one row per (image, caption)
        writer = csv.writer(fh)
        writer.writerow(["filepath", "title"])
        for line in (data / "train.jsonl").read_text().splitlines():
            row = json.loads(line)
            for caption in row["captions"]:
                writer.writerow([str((data / row["image"]).resolve()), caption])
    return data, config


def init_checkpoint(config: Path, seed: int, folder: Path) -> Path:
    import open_clip
    import torch

    path = folder / f"init-seed{seed}.pt"
    if not path.is_file():
        open_clip.add_model_config(config)
        torch.manual_seed(seed)
        torch.save({"state_dict": open_clip.create_model(ARCH).state_dict()}, path)
    return path


def test_recall(data: Path, config: Path, checkpoint: Path) -> dict:
    from mmsearch.training.datasets import load_dataset
    from mmsearch.training.evaluate import evaluate
    from mmsearch.encoders import ModelSpec, TorchEncoder as Encoder

    report = evaluate(Encoder(ModelSpec.resolve(str(config), str(checkpoint)), "cpu"), load_dataset(data).split("test"))
    return {"t2i": report.text_to_image, "i2t": report.image_to_text, "rsum": round(report.rsum, 2)}


def run_mmsearch(args, data: Path, config: Path, init: Path, seed: int, name: str, extra: list[str]) -> dict:
    out = args.work / f"{name}-seed{seed}"
    cmd = [sys.executable, "-m", "mmsearch", "train", str(data / "train.jsonl"), "--out", str(out), "--overwrite",
           "--model", str(config), "--pretrained", str(init), "--epochs", str(args.captions * args.passes),
           "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--warmup", str(args.warmup),
           "--weight-decay", "0.1", "--grad-clip", "1.0", "--seed", str(seed), "--json", *extra]
    out.parent.mkdir(parents=True, exist_ok=True)
    wall = _run(cmd, _env(args.threads), args.work / f"{name}-seed{seed}.log")
    log = json.loads((out / "train.json").read_text())
    train_seconds = sum(r["seconds"] for r in log["history"])
    return {"wall_s": round(wall, 1), "steps": log["steps"], "train_images": log["train_images"],
            "s_per_step": round(train_seconds / max(1, log["steps"]), 4), "out": out, "log": log}


def run_open_clip(args, config: Path, init: Path, seed: int) -> dict:
    logs = args.work / "open_clip_train"
    name = f"seed{seed}"
    if (logs / name).exists():
        import shutil

        shutil.rmtree(logs / name)
    cmd = [sys.executable, "-c", OPEN_CLIP_MAIN, str(config),
           "--train-data", str(args.work / "train.csv"), "--csv-separator", ",", "--csv-img-key", "filepath",
           "--csv-caption-key", "title", "--model", ARCH, "--pretrained", str(init),
           "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--wd", "0.1", "--beta1", "0.9",
           "--beta2", "0.98", "--eps", "1e-6", "--warmup", str(args.warmup), "--epochs", str(args.passes),
           "--grad-clip-norm", "1.0", "--workers", "1", "--device", "cpu", "--precision", "fp32",
           "--seed", str(seed), "--logs", str(logs), "--name", name, "--save-frequency", str(args.passes),
           "--aug-cfg", "scale=(1.0,1.0)", "--zeroshot-frequency", "0", "--val-frequency", "0",
           "--log-every-n-steps", "10", "--report-to", ""]
    logs.mkdir(parents=True, exist_ok=True)
    wall = _run(cmd, _env(args.threads), args.work / f"open_clip_train-seed{seed}.log")
    text = (logs / name / "out.log").read_text()
    batch_times = [float(t) for t in re.findall(r"Batch \(t\): ([0-9.]+)", text)]
    steps = [int(m) for m in re.findall(r"\[\s*(\d+)/\d+ \(100%\)\]", text)]
    return {"wall_s": round(wall, 1), "steps": args.passes * (args.train * args.captions // args.batch_size),
            "s_per_step": round(statistics.mean(batch_times[1:] or batch_times), 4) if batch_times else None,
            "checkpoint": logs / name / "checkpoints" / f"epoch_{args.passes}.pt", "samples_seen": steps[-1] if steps else None}


def _stats(values: list[float], digits: int = 1) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} +- {sd:.{digits}f} (median {statistics.median(values):.{digits}f})"


def summarize(results: list[dict]) -> None:
    """Mean +- sd and median per arm over seeds; per-seed differences against open_clip_train."""
    print("\nsummary over seeds", sorted({e["seed"] for e in results}))
    by_arm: dict[str, list[dict]] = {}
    for entry in results:
        by_arm.setdefault(entry["arm"], []).append(entry)
    for arm, entries in by_arm.items():
        steps = sorted({e["steps"] for e in entries})
        print(f"{arm:36s} steps {'-'.join(str(x) for x in (steps[0], steps[-1]) if len(steps) > 1) or steps[0]:>7}  test rsum {_stats([e['rsum'] for e in entries])}"
              f"  s/step {_stats([e['s_per_step'] for e in entries if e.get('s_per_step')], 3)}"
              f"  wall {_stats([e['wall_s'] for e in entries])}")
    base = {e["seed"]: e for e in by_arm.get("open_clip_train", [])}
    mine = {e["seed"]: e for e in by_arm.get("mmsearch (all images, last epoch)", [])}
    both = sorted(set(base) & set(mine))
    if both:
        print("mmsearch - open_clip_train test rsum per seed:", [round(mine[s]["rsum"] - base[s]["rsum"], 1) for s in both])
        ratios = [base[s]["s_per_step"] / mine[s]["s_per_step"] for s in both if base[s].get("s_per_step")]
        print("open_clip_train / mmsearch s per step per seed:", [round(r, 2) for r in ratios],
              f"median {statistics.median(ratios):.2f}" if ratios else "")
        print(f"mmsearch / open_clip_train mean test rsum: "
              f"{statistics.mean(mine[s]['rsum'] for s in both) / statistics.mean(base[s]['rsum'] for s in both):.2f}")
    holdout_best = {e["seed"]: e for e in by_arm.get("holdout 10%, best epoch", [])}
    holdout_last = {e["seed"]: e for e in by_arm.get("holdout 10%, last epoch", [])}
    seeds = sorted(set(holdout_best) & set(holdout_last))
    if seeds:
        print("best - last epoch (hold-out) test rsum per seed:", [round(holdout_best[s]["rsum"] - holdout_last[s]["rsum"], 1) for s in seeds])
    seeds = sorted(set(holdout_best) & set(mine))
    if seeds:
        print("all images, last - hold-out, best test rsum per seed:", [round(mine[s]["rsum"] - holdout_best[s]["rsum"], 1) for s in seeds])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="work folder (data, runs, results.jsonl)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train", type=int, default=3584, help="train images (a multiple of --batch-size)")
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--size", type=int, default=64, help="image side (the architecture takes 64)")
    parser.add_argument("--captions", type=int, default=5, help="captions per image")
    parser.add_argument("--passes", type=int, default=1, help="open_clip_train epochs (x captions = mmsearch epochs)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="OpenMP threads per trainer")
    parser.add_argument("--arms", nargs="+", default=["mmsearch", "open_clip_train", "holdout"],
                        choices=["mmsearch", "open_clip_train", "holdout"])
    parser.add_argument("--summarize", action="store_true", help="only summarize WORK/results.jsonl (every seed run so far)")
    args = parser.parse_args()
    if args.summarize:
        summarize([json.loads(line) for line in (args.work / "results.jsonl").read_text().splitlines() if line.strip()])
        return
    if args.train % args.batch_size:
        parser.error("--train must be a multiple of --batch-size, so that both trainers take the same steps")
    args.work.mkdir(parents=True, exist_ok=True)
    data, config = prepare(args)
    results = []
    with open(args.work / "results.jsonl", "a") as sink:
        def record(entry: dict) -> None:
            entry = {k: v for k, v in entry.items() if k not in ("out", "log", "checkpoint")}
            print(json.dumps(entry), flush=True)
            sink.write(json.dumps(entry) + "\n")
            sink.flush()
            results.append(entry)

        for seed in args.seeds:
            init = init_checkpoint(config, seed, args.work)
            if "mmsearch" in args.arms:
                run = run_mmsearch(args, data, config, init, seed, "mmsearch", [])
                record({"arm": "mmsearch (all images, last epoch)", "seed": seed, **run,
                        **test_recall(data, config, run["out"] / "checkpoint.pt")})
            if "open_clip_train" in args.arms:
                run = run_open_clip(args, config, init, seed)
                record({"arm": "open_clip_train", "seed": seed, **run, **test_recall(data, config, run["checkpoint"])})
            if "holdout" in args.arms:
                run = run_mmsearch(args, data, config, init, seed, "holdout", ["--val-fraction", "0.1", "--keep", "best"])
                best_epoch = run["log"]["kept_epoch"]
                record({"arm": "holdout 10%, best epoch", "seed": seed, "best_epoch": best_epoch, **run,
                        **test_recall(data, config, run["out"] / "checkpoint.pt")})
                record({"arm": "holdout 10%, last epoch", "seed": seed, **run,
                        **test_recall(data, config, run["out"] / "last.pt")})
    summarize(results)

if __name__ == "__main__":
    main()
