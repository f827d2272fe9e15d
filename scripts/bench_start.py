"""Start-up and CPU-encoder benchmark: what a user feels first, before (torch image path) and after
(ONNX image path), in new processes, interleaved, medians of repeats, ratios from the same run.

    python scripts/bench_start.py --repeats 5 --json-out start.json          # ~6 min on 2 cores
    python scripts/bench_start.py --repeats 3 --photos-12mp 60               # + 60 x 12 MP index runs
    python scripts/bench_start.py --sections 12mp --photos-12mp 60 --repeats 3  # those alone

Model: ViT-B-32 with seeded random weights (speed does not depend on the weights; none can be
downloaded here). "before" sets MMSEARCH_IMAGE_ENCODER=torch, which is the base behaviour of the
image path (the torch model for image queries, at server start and for indexing); "after" is the
default (auto). Sections:

- first index run: `mmsearch index` of the 640 px corpus into a new index with an empty export
  cache, so it pays for both exports, the int8 check and the measurement (once per model);
- cold image query: `mmsearch query PHOTO.jpg --json`, wall time and peak RSS (GNU time);
- serve: `mmsearch serve` until /api/health answers (the encoders are loaded by then);
- incremental index: `mmsearch index NEW_FOLDER` of new 640 px photos into an existing index
  (with --photos-12mp, also 12 MP photos, against the naive open_clip script as a new process);
- encoder: images/s of the image tower alone on 224 px pixels cut from 640 px photos, batch 16:
  torch float32, ONNX float32 and ONNX int8, with cosines and top-10 overlap against torch float32.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchutil import REPO, machine, median, run_process  # noqa: E402

ARCH = "ViT-B-32"


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "mmsearch", *map(str, args)]


def env_for(mode: str, cache: Path) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MMSEARCH_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    env["MMSEARCH_IMAGE_ENCODER"] = "torch" if mode == "before" else "auto"
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as a user's installation: see benchutil.run_process
    return env


def corpus(workdir: Path, name: str, count: int, size: tuple[int, int], seed: int = 0) -> Path:
    from photo_corpus import make_photo_corpus

    folder = workdir / "corpora" / f"{name}-{count}"
    make_photo_corpus(folder, count, size, seed=seed)
    return folder


def first_index(workdir: Path, photos: Path, cache: Path) -> tuple[Path, dict]:
    index = workdir / "index"
    shutil.rmtree(index, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    run = run_process(cli("index", photos, "--index", index, "--model", ARCH, "--pretrained", "none", "--json"),
                      env_for("after", cache), replace_env=True)
    manifest = json.loads((index / "manifest.json").read_text())
    image = manifest.get("image_onnx", {})
    return index, {"seconds": round(run.seconds, 2), "max_rss_mb": round(run.max_rss_mb), "items": json.loads(run.stdout)["added"],
                   "image_export_seconds": image.get("export_seconds"), "text_export_seconds": manifest.get("text_onnx", {}).get("export_seconds"),
                   "int8": image.get("int8"), "measured": image.get("measured")}


def cold_queries(index: Path, photo: Path, cache: Path, repeats: int) -> dict:
    out: dict[str, dict[str, list[float]]] = {m: {"s": [], "rss": []} for m in ("before", "after")}
    tops: dict[str, list[int]] = {}
    for mode in ("before", "after"):  # warm the page cache, untimed
        run_process(cli("query", photo, "--index", index, "--json"), env_for(mode, cache), replace_env=True)
    for _ in range(repeats):
        for mode in ("before", "after"):
            run = run_process(cli("query", photo, "--index", index, "--json"), env_for(mode, cache), replace_env=True)
            out[mode]["s"].append(run.seconds)
            out[mode]["rss"].append(run.max_rss_mb)
            tops[mode] = [h["id"] for h in json.loads(run.stdout)["hits"]]
    result = {m: {"median_s": round(median(v["s"]), 3), "median_rss_mb": round(median(v["rss"]))} for m, v in out.items()}
    result["speedup"] = round(result["before"]["median_s"] / result["after"]["median_s"], 2)
    result["rss_ratio"] = round(result["before"]["median_rss_mb"] / result["after"]["median_rss_mb"], 2)
    result["top10_overlap"] = len(set(tops["before"]) & set(tops["after"])) / max(1, len(tops["before"]))
    return result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_ready(index: Path, cache: Path, repeats: int) -> dict:
    times: dict[str, list[float]] = {"before": [], "after": []}
    for _ in range(repeats):
        for mode in ("before", "after"):
            port = free_port()
            started = time.perf_counter()
            proc = subprocess.Popen(cli("serve", "--index", index, "--port", port, "--log-level", "warning"),
                                    env=env_for(mode, cache), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                while True:
                    try:
                        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=5) as response:
                            if response.status == 200 and json.loads(response.read())["model_loaded"]:
                                break
                    except OSError:
                        pass
                    if proc.poll() is not None or time.perf_counter() - started > 120:
                        raise RuntimeError(f"mmsearch serve ({mode}) did not start")
                    time.sleep(0.02)
                times[mode].append(time.perf_counter() - started)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    result = {m: {"median_s": round(median(v), 3)} for m, v in times.items()}
    result["speedup"] = round(result["before"]["median_s"] / result["after"]["median_s"], 2)
    return result


NAIVE = (
    "import sys, time\n"
    "sys.path.insert(0, {scripts!r})\n"
    "from pathlib import Path\n"
    "from bench import NaiveIndexer, image_files\n"
    "files = image_files(Path({folder!r}))\n"
    "vectors = NaiveIndexer({arch!r}).run(files)\n"
    "assert len(vectors) == len(files)\n"
)


def incremental_index(index: Path, new: Path, cache: Path, workdir: Path, repeats: int, naive: bool = False) -> dict:
    """`mmsearch index NEW` into a copy of ``index`` (which already has its exports); with
    ``naive``, also the naive open_clip script (bench.NaiveIndexer) as a new process."""
    times: dict[str, list[float]] = {"before": [], "after": [], **({"naive": []} if naive else {})}
    count = 0
    for _ in range(repeats):
        if naive:
            code = NAIVE.format(scripts=str(REPO / "scripts"), folder=str(new), arch=ARCH)
            times["naive"].append(run_process([sys.executable, "-c", code], env_for("before", cache), replace_env=True).seconds)
        for mode in ("before", "after"):
            target = workdir / f"inc-{mode}"
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(index, target)
            run = run_process(cli("index", new, "--index", target, "--json"), env_for(mode, cache), replace_env=True)
            count = json.loads(run.stdout)["added"]
            times[mode].append(run.seconds)
    result = {m: {"median_s": round(median(v), 2), "images_per_s": round(count / median(v), 2)} for m, v in times.items()}
    result["images"] = count
    result["speedup"] = round(result["before"]["median_s"] / result["after"]["median_s"], 2)
    if naive:
        result["after_vs_naive"] = round(result["naive"]["median_s"] / result["after"]["median_s"], 2)
        result["before_vs_naive"] = round(result["naive"]["median_s"] / result["before"]["median_s"], 2)
    return result


def encoder_throughput(index: Path, photos: Path, repeats: int, batch: int = 16) -> dict:
    from mmsearch.encoders import ModelSpec, TorchEncoder, onnx_image
    from mmsearch.media.image import load_image

    manifest = json.loads((index / "manifest.json").read_text())
    record = manifest["image_onnx"]
    torch_fp32 = TorchEncoder(ModelSpec.from_manifest(manifest["model"]), "cpu", cpu_bf16="off")
    transform = torch_fp32.pixel_transform
    files = sorted(photos.glob("*.jpg"))
    pixels = np.stack([transform.apply(load_image(p, transform.crop)) for p in files])
    probe = np.concatenate([pixels, onnx_image.probe_pixels(transform.crop, 64, seed=7)])
    runners = {"torch_fp32": torch_fp32.encode_pixels,
               "onnx_fp32": onnx_image.OnnxImageEncoder(index, record, "onnx").encode_pixels}
    if (record.get("int8") or {}).get("accepted"):
        runners["onnx_int8"] = onnx_image.OnnxImageEncoder(index, record, "onnx-int8").encode_pixels
    chunk = pixels[:batch] if len(pixels) >= batch else np.concatenate([pixels] * (-(-batch // len(pixels))))[:batch]
    for run in runners.values():
        run(chunk)  # warm up
    rates: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            started = time.perf_counter()
            run(chunk)
            rates[name].append(batch / (time.perf_counter() - started))
    reference = runners["torch_fp32"](probe)
    result: dict[str, dict] = {}
    for name, run in runners.items():
        vectors = reference if name == "torch_fp32" else run(probe)
        cosine = (vectors * reference).sum(axis=1)
        result[name] = {"images_per_s": round(median(rates[name]), 2), "min_cosine": round(float(cosine.min()), 5),
                        "mean_cosine": round(float(cosine.mean()), 5),
                        "top10_overlap": round(onnx_image.top_overlap(reference, vectors), 3)}
    base = result["torch_fp32"]["images_per_s"]
    for row in result.values():
        row["vs_torch_fp32"] = round(row["images_per_s"] / base, 2)
    result["batch"] = batch
    result["probe_images"] = int(len(probe))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--photos-640", type=int, default=60, help="new 640 px photos of the incremental run")
    parser.add_argument("--photos-12mp", type=int, default=0, help="also an incremental run of this many 12 MP photos")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mmsearch-bench-start"))
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--sections", default="first,query,serve,incremental,encoder")
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    args.workdir.mkdir(parents=True, exist_ok=True)
    cache = args.workdir / "cache"
    base = corpus(args.workdir, "base640", 24, (640, 480), seed=1)
    results: dict = {"machine": machine(), "arch": ARCH, "repeats": args.repeats, "command": " ".join(sys.argv)}

    def show(name: str, value: dict) -> None:
        results[name] = value
        print(name, json.dumps(value), flush=True)

    index = args.workdir / "index"
    if "first" in sections or not (index / "manifest.json").is_file():
        index, first = first_index(args.workdir, base, cache)
        show("first_index_run", first)
    if "query" in sections:
        show("cold_image_query", cold_queries(index, sorted(base.glob("*.jpg"))[3], cache, args.repeats))
    if "serve" in sections:
        show("serve_ready", serve_ready(index, cache, args.repeats))
    if "incremental" in sections:
        new = corpus(args.workdir, "new640", args.photos_640, (640, 480), seed=2)
        show("index_new_640", incremental_index(index, new, cache, args.workdir, args.repeats))
    if args.photos_12mp and ("incremental" in sections or "12mp" in sections):
        big = corpus(args.workdir, "new12mp", args.photos_12mp, (4000, 3000), seed=3)
        show("index_new_12mp", incremental_index(index, big, cache, args.workdir, args.repeats, naive=True))
    if "encoder" in sections:
        show("encoder_640", encoder_throughput(index, base, max(args.repeats, 5)))
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
