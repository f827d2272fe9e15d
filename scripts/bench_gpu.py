"""The GPU run in one command: image tower throughput, FAISS search and the Ray runner, one table.

On a CUDA machine, each measurement runs on the GPU and, in the same run, on the CPU or against
the baseline it is compared with:

  image tower        the model alone on random pixels (fp16 on the GPU, float32 on the CPU),
                     batch --batch: the ceiling of the encode stage
  naive loop         one process: PIL decode, open_clip's own preprocess, batched encode (fp16
                     on the GPU), the obvious script
  mmsearch           Engine.add on a generated JPEG corpus (model loaded beforehand, fresh
                     index): decoding in --workers CPU worker processes, encoding fp16 on the GPU
                     (the torch encoder: ``Engine(device="cuda")``), writing the catalogue
  clip-retrieval     its published ~2,500 images/s per A100 for ViT-B/32 (a constant, not run
                     here: the reference the mmsearch row is compared with)
  FAISS 1M / 10M     exact inner-product search (``IndexFlatIP`` by default, ``--faiss-index``
                     takes any FAISS factory string) over normalised random 512-d vectors, one
                     query at a time and a batch of --faiss-batch, on the CPU and on the GPU
                     (``mmsearch.storage.vectors.to_gpu``, what searching uses), same vectors
  ray                Engine.add with ``runner="ray"`` on a local Ray this script starts with the
                     GPU: decoding on CPU tasks, encoding in a GPU actor; against the local run

Without CUDA the GPU rows say "no CUDA" and the CPU parts run at a small size (by default 64
images and 100k / 1M vectors; ``--quick``: a tiny open_clip config, 16 small images, 2k / 10k
vectors, in about half a minute). The model has random weights (``--pretrained none``: speed does not
depend on them; no download).

    python scripts/bench_gpu.py                          # on a CUDA machine: the full run
    python scripts/bench_gpu.py --quick                  # anywhere: a tiny check of every row
    python scripts/bench_gpu.py --json-out gpu.json      # the table's figures as JSON too
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchutil import machine, median  # noqa: E402

NO_CUDA = "no CUDA"
# clip-retrieval's README: ViT-B/32 inference at about 2,500 images/s on one A100 (resizing bound).
CLIP_RETRIEVAL_A100 = 2500.0
PART = 256  # images per generated corpus part
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def faiss_gpus() -> int:
    from mmsearch.storage.vectors import gpu_count

    return gpu_count()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


# -- the image tower alone -----------------------------------------------------------------------
def tower_images_per_s(model_name: str, pretrained: str | None, device: str, batch: int, repeats: int) -> float:
    """Images/s of the image tower on random pixels at ``batch`` (fp16 on CUDA, float32 on the CPU)."""
    import open_clip
    import torch

    model = open_clip.create_model(model_name, pretrained=pretrained).eval().to(device)
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    model = model.to(dtype)
    size = model.visual.image_size
    size = size if isinstance(size, tuple) else (size, size)
    pixels = torch.randn(batch, 3, *size, device=device, dtype=dtype)
    times = []
    with torch.inference_mode():
        model.encode_image(pixels)  # warm up: kernels chosen, memory allocated
        sync(device)
        for _ in range(repeats):
            start = time.perf_counter()
            model.encode_image(pixels)
            sync(device)
            times.append(time.perf_counter() - start)
    del model
    return batch / median(times)


# -- the naive loop ------------------------------------------------------------------------------
class Naive:
    """One process: PIL decode, open_clip's preprocess, batch encode (fp16 on CUDA)."""

    def __init__(self, model_name: str, pretrained: str | None, device: str, batch: int):
        import open_clip
        import torch

        self.model, _, self.preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained)
        self.device = device
        self.dtype = torch.float16 if device.startswith("cuda") else torch.float32
        self.model = self.model.eval().to(device).to(self.dtype)
        self.batch = batch

    def images_per_s(self, files: list[Path]) -> float:
        import torch
        from PIL import Image

        start = time.perf_counter()
        count = 0
        for first in range(0, len(files), self.batch):
            tensors = []
            for path in files[first:first + self.batch]:
                with Image.open(path) as img:
                    tensors.append(self.preprocess(img.convert("RGB")))
            with torch.inference_mode():
                features = self.model.encode_image(torch.stack(tensors).to(self.device, self.dtype))
                count += int(torch.nn.functional.normalize(features.float(), dim=-1).cpu().shape[0])
        return count / (time.perf_counter() - start)


# -- mmsearch ------------------------------------------------------------------------------------
def mmsearch_images_per_s(folder: Path, work: Path, model_name: str, pretrained: str, device: str | None,
                          batch: int, workers: int, runner: str = "local") -> tuple[float, dict]:
    """Images/s of Engine.add over ``folder`` into a fresh index (model loaded and the store made
    by a first, untimed run over one image)."""
    from PIL import Image

    from mmsearch import Engine

    index = work / f"mm-index-{runner}"
    shutil.rmtree(index, ignore_errors=True)
    warm = work / "mm-warm"
    shutil.rmtree(warm, ignore_errors=True)
    warm.mkdir(parents=True)
    Image.new("RGB", (64, 64), (200, 30, 30)).save(warm / "warm.jpg")
    with Engine(index, model=model_name, pretrained=pretrained, device=device, batch_size=batch,
                workers=workers) as engine:
        engine.add([warm], runner=runner)
        start = time.perf_counter()
        report = engine.add([folder], runner=runner)
        seconds = time.perf_counter() - start
    expected = len(image_files(folder))
    if report.added != expected:
        raise RuntimeError(f"mmsearch indexed {report.added} of {expected} images: {report.summary()}")
    return expected / seconds, {"stages": {k: round(v, 2) for k, v in report.stages.items()}}


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.jpg"))


def corpus(work: Path, count: int, size: tuple[int, int], workers: int) -> Path:
    """A generated JPEG photo corpus (made once), in parts of ``PART`` images generated by
    ``workers`` processes at once (a photo takes about 35 ms to make at 640x480)."""
    from concurrent.futures import ProcessPoolExecutor

    from photo_corpus import make_photo_corpus

    folder = work / f"corpus-{count}-{size[0]}x{size[1]}"
    stamp = folder / ".complete"
    if not stamp.exists():
        shutil.rmtree(folder, ignore_errors=True)
        parts = [(folder / f"part-{k:03d}", min(PART, count - first), size, k) for k, first in
                 enumerate(range(0, count, PART))]
        with ProcessPoolExecutor(max_workers=max(1, min(workers, len(parts)))) as pool:
            list(pool.map(make_photo_corpus, *zip(*parts)))
        stamp.write_text("ok")
    return folder


def subset(folder: Path, count: int) -> Path:
    """A folder of the first ``count`` images of ``folder`` (hard links): the CPU's share when
    a GPU run measures both (a rate does not depend on how many images, the CPU is slower)."""
    files = image_files(folder)
    if count >= len(files):
        return folder
    target = folder.with_name(f"{folder.name}-first{count}")
    if not (target / ".complete").exists():
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        for i, path in enumerate(files[:count]):
            dest = target / f"{i:05d}.jpg"
            try:
                os.link(path, dest)
            except OSError:
                shutil.copy2(path, dest)
        (target / ".complete").write_text("ok")
    return target


# -- FAISS ---------------------------------------------------------------------------------------
def random_vectors(n: int, dim: int, seed: int, chunk: int = 1 << 20):
    """Normalised random float32 vectors in chunks (10M x 512 is 20 GB: never made twice)."""
    rng = np.random.default_rng(seed)
    for first in range(0, n, chunk):
        block = rng.standard_normal((min(chunk, n - first), dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        yield block


def faiss_search(n: int, dim: int, factory: str, queries: int, batch: int, gpu: bool) -> dict:
    """Milliseconds a query (one at a time) and queries/s (batches of ``batch``), k=10, on the CPU
    and, with ``gpu``, on a GPU copy of the same index."""
    import faiss

    from mmsearch.storage.vectors import to_gpu

    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        sample = next(random_vectors(min(n, 256 * 1024), dim, seed=1))
        index.train(sample)
    for block in random_vectors(n, dim, seed=0):
        index.add(block)
    probe = next(random_vectors(max(queries, batch), dim, seed=2, chunk=max(queries, batch)))
    result = {"n": n, "index": factory, "cpu": measure_search(index, probe, queries, batch)}
    if gpu:
        device_index = to_gpu(index)
        result["gpu"] = measure_search(device_index, probe, queries, batch)
        # the same answers (exact search; an IVF's may differ where scores tie)
        _, cpu_ids = index.search(probe[:queries], 10)
        _, gpu_ids = device_index.search(probe[:queries], 10)
        result["gpu_top10_agreement"] = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(cpu_ids, gpu_ids)]))
        del device_index
    del index
    return result


def measure_search(index, probe: np.ndarray, queries: int, batch: int) -> dict:
    index.search(probe[:1], 10)  # warm up
    single = []
    for i in range(queries):
        start = time.perf_counter()
        index.search(probe[i:i + 1], 10)
        single.append(time.perf_counter() - start)
    batched = []
    for _ in range(3):
        start = time.perf_counter()
        index.search(probe[:batch], 10)
        batched.append(time.perf_counter() - start)
    return {"ms_per_query": round(median(single) * 1000, 3), "batch_queries_per_s": round(batch / median(batched), 1)}


# -- the table -----------------------------------------------------------------------------------
def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return NO_CUDA
    return f"{value:,.1f} {unit}" if value >= 10 else f"{value:.3g} {unit}"


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def table(rows: list[dict]) -> str:
    lines = ["| measurement | CPU | GPU | GPU / CPU | against | ratio |", "|---|---:|---:|---:|---|---:|"]
    for row in rows:
        lines.append(f"| {row['what']} | {row['cpu_text']} | {row['gpu_text']} | {row['gpu_over_cpu']} "
                     f"| {row.get('against', '-')} | {row.get('ratio', '-')} |")
    return "\n".join(lines)


def row(what: str, cpu: float | None, gpu: float | None, unit: str, higher_is_better: bool = True, **extra) -> dict:
    if higher_is_better:
        speedup = ratio(gpu, cpu)
    else:
        speedup = ratio(cpu, gpu)
    return {"what": what, "unit": unit, "cpu": cpu, "gpu": gpu, "cpu_text": fmt(cpu, unit) if cpu is not None else "-",
            "gpu_text": fmt(gpu, unit), "gpu_over_cpu": speedup, **extra}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny open_clip config and small sizes (a check)")
    parser.add_argument("--model", default=None, help="open_clip model (default ViT-B-32; --quick: a tiny config)")
    parser.add_argument("--pretrained", default="none", help="'none': random weights (no download)")
    parser.add_argument("--images", type=int, default=None, help="JPEGs in the corpus (CUDA 2048, CPU 64, quick 16)")
    parser.add_argument("--cpu-images", type=int, default=256, help="of those, how many the CPU contenders index "
                        "when a GPU is measured too")
    parser.add_argument("--size", default="640x480", help="WIDTHxHEIGHT of the generated JPEGs")
    parser.add_argument("--batch", type=int, default=None, help="encode batch (CUDA 256, CPU 32)")
    parser.add_argument("--workers", type=int, default=None, help="decode worker processes (default: all cores)")
    parser.add_argument("--faiss-sizes", default=None, help="comma-separated (CUDA 1000000,10000000; CPU 100000,1000000)")
    parser.add_argument("--faiss-index", default="Flat", help="FAISS factory string (default Flat: exact)")
    parser.add_argument("--faiss-batch", type=int, default=256)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=None, help="single queries timed per index (20; quick 5)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray row")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cuda = cuda_available()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="mmsearch-bench-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    model = args.model
    if model is None and args.quick:
        model = str(work / "benchtiny.json")
        Path(model).write_text(json.dumps(TINY_CONFIG))
    model = model or "ViT-B-32"
    if model.endswith(".json"):
        import open_clip

        open_clip.add_model_config(model)  # the script's own model loads; the engine registers it too
    arch = Path(model).stem if model.endswith(".json") else model
    pretrained = None if args.pretrained in ("none", "") else args.pretrained
    images = args.images or (16 if args.quick else 2048 if cuda else 64)
    batch = args.batch or (256 if cuda else 32)
    workers = args.workers or os.cpu_count() or 2
    sizes = [int(s) for s in (args.faiss_sizes or ("2000,10000" if args.quick else "1000000,10000000" if cuda
                                                   else "100000,1000000")).split(",")]
    width, height = (int(v) for v in args.size.split("x"))
    if args.quick:
        width, height = 160, 120
    repeats = 1 if args.quick else args.repeats
    queries = args.queries or (5 if args.quick else 20)

    import torch

    facts = {"machine": machine(), "cuda": cuda, "gpu": torch.cuda.get_device_name(0) if cuda else None,
             "torch": torch.__version__, "faiss_gpus": faiss_gpus(), "model": f"{arch} ({args.pretrained})",
             "images": images, "cpu_images": min(images, args.cpu_images) if cuda else images,
             "size": f"{width}x{height}", "batch": batch, "workers": workers,
             "load_before": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    rows: list[dict] = []

    # image tower alone
    cpu_tower = tower_images_per_s(arch, pretrained, "cpu", min(batch, 32), repeats)
    gpu_tower = tower_images_per_s(arch, pretrained, "cuda", batch, max(repeats, 5)) if cuda else None
    rows.append(row(f"image tower alone, random pixels (GPU fp16 batch {batch}, CPU fp32)", cpu_tower, gpu_tower,
                    "img/s"))

    # naive loop and mmsearch, on the same corpus
    folder = corpus(work, images, (width, height), workers)
    naive = {}
    ours = {}
    details = {}
    for where in (["cpu", "cuda"] if cuda else ["cpu"]):
        contender = Naive(arch, pretrained, where, batch if where == "cuda" else 32)
        part = folder if where == "cuda" or not cuda else subset(folder, args.cpu_images)
        files = image_files(part)
        naive_runs, our_runs = [], []
        for _ in range(repeats):  # alternate, so load from other work hits both alike
            naive_runs.append(contender.images_per_s(files))
            rate, info = mmsearch_images_per_s(part, work, model, args.pretrained, where,
                                               batch if where == "cuda" else 32, workers)
            our_runs.append(rate)
            details[where] = info
        naive[where], ours[where] = median(naive_runs), median(our_runs)
        del contender
    rows.append(row("naive loop: PIL decode + open_clip preprocess + encode, one process", naive["cpu"],
                    naive.get("cuda"), "img/s"))
    rows.append(row(f"mmsearch Engine.add ({workers} decode workers, encode on the device)", ours["cpu"],
                    ours.get("cuda"), "img/s", against="naive loop, same device",
                    ratio=ratio(ours.get("cuda") or ours["cpu"], naive.get("cuda") or naive["cpu"])))
    rows.append(row("clip-retrieval, published (ViT-B/32, one A100; not run here)", None, CLIP_RETRIEVAL_A100, "img/s",
                    against="mmsearch on this GPU", ratio=ratio(ours.get("cuda"), CLIP_RETRIEVAL_A100)))
    rows[-1]["cpu_text"], rows[-1]["gpu_over_cpu"] = "-", "-"

    # FAISS
    gpu_faiss = cuda and faiss_gpus() > 0
    faiss_results = []
    for n in sizes:
        found = faiss_search(n, args.dim, args.faiss_index, queries, args.faiss_batch, gpu_faiss)
        faiss_results.append(found)
        label = f"{n / 1e6:g}M" if n >= 1_000_000 else f"{n / 1e3:g}k"
        gpu = found.get("gpu", {})
        rows.append(row(f"FAISS {args.faiss_index} {label} x {args.dim}: one query, k=10", found["cpu"]["ms_per_query"],
                        gpu.get("ms_per_query"), "ms", higher_is_better=False,
                        against="top-10 agreement GPU/CPU", ratio=(f"{found['gpu_top10_agreement']:.3f}"
                                                                    if "gpu_top10_agreement" in found else "-")))
        rows.append(row(f"FAISS {args.faiss_index} {label}: batches of {args.faiss_batch} queries",
                        found["cpu"]["batch_queries_per_s"], gpu.get("batch_queries_per_s"), "q/s"))

    # Ray with a GPU actor
    ray_rate = None
    if cuda and not args.no_ray:
        import ray

        ray.init(num_cpus=workers, num_gpus=torch.cuda.device_count(), include_dashboard=False,
                 object_store_memory=4 * 2**30, logging_level=logging.ERROR, log_to_driver=False)
        try:
            runs = []
            for _ in range(repeats):
                rate, info = mmsearch_images_per_s(folder, work, model, args.pretrained, None, batch, workers,
                                                   runner="ray")
                runs.append(rate)
                details["ray"] = info
            ray_rate = median(runs)
        finally:
            ray.shutdown()
    rows.append(row("mmsearch --runner ray (local Ray, decoding on CPU tasks, one GPU actor)", None, ray_rate,
                    "img/s", against="local runner on this GPU", ratio=ratio(ray_rate, ours.get("cuda"))))
    rows[-1]["cpu_text"], rows[-1]["gpu_over_cpu"] = "-", "-"

    facts["load_after"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(f"# mmsearch GPU run: {facts['gpu'] or NO_CUDA}; CPU {facts['machine']['cpu']} x{facts['machine']['cpus']}; "
          f"{facts['model']}, {images} JPEGs {width}x{height}; load {facts['load_before']} -> {facts['load_after']}")
    print(table(rows))
    if args.json_out:
        args.json_out.write_text(json.dumps({**facts, "rows": rows, "faiss": faiss_results, "stages": details},
                                            indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
