"""The image tower as ONNX models (float32 and dynamic int8), so image queries, the server and
small indexing runs need neither torch nor open_clip, and CPUs without AMX index faster.

When an index is created (or its model changes) the indexing run (``indexing.exports``) has
this tower (``TOWER``) export the image tower, from uint8
pixels (N, H, W, 3) as the decode workers make them (``PixelTransform``) to L2-normalised
vectors, normalisation included, to ``image_encoder.<fingerprint>.onnx`` plus ``.onnx.data``.
The export must give torch's float32 vectors (cosine >= ``MIN_COSINE`` on a probe batch). A
dynamically quantised copy (``.int8-mm.onnx``: the matrix products' weights in int8, activations
quantised per batch, the patch convolution left in float32; see ``INT8_OPS``) is kept only when
it agrees with float32 on a probe corpus: every vector at cosine >= ``INT8_MIN_COSINE`` and,
searching the probe corpus with each probe image, the top-10 results overlap the float32 ones by
at least ``INT8_MIN_OVERLAP`` on average.

Which encoder indexes is then measured on this machine (images per second of the torch encoder,
in bfloat16 where its own AMX check chose it, of ONNX float32 and of ONNX int8) and recorded in
the manifest under ``image_onnx.measured``; ``MMSEARCH_IMAGE_ENCODER`` overrides it. Image
queries use ONNX whenever an export exists (the int8 one where it is the measured choice): one
image costs milliseconds, importing torch seconds. Exports are cached per model fingerprint like
the text tower's; an export that fails never fails indexing (the reason is recorded and logged
once, and torch encodes as before).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import OnnxImageUnavailable
from . import onnx_export
from .onnx_export import first_line, l2, now

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from ..media.image import PixelTransform
    from .torch_encoder import TorchEncoder

log = logging.getLogger(__name__)

MANIFEST_KEY = "image_onnx"
FILE_PREFIX = "image_encoder."
CACHE_SUFFIX = ".image"  # cache entry <fingerprint>.image, beside the text tower's <fingerprint>
_TEMP = (".image_onnx.", ".tmp")
# The float32 export must give torch's float32 vectors this closely.
MIN_COSINE = 0.9999
# int8 is accepted when no probe vector is further than this from its float32 vector...
INT8_MIN_COSINE = 0.99
# ...and image-to-image top-10 results on the probe corpus overlap float32's this much on average.
INT8_MIN_OVERLAP = 0.9
TOP = 10
PROBE_IMAGES = 32  # the probe corpus: deterministic photo-like images
BENCH_IMAGES = 4  # images per timed batch when choosing the encoder
# Images per session run: a ViT-B-32-256 int8 batch of 4 keeps a layer's activations (65 tokens
# x 3072 x 4 images) near the 2 MB L2 of an EPYC core. While other processes share the cores it
# ran 1.12-1.52x faster an image than 16; on a quieter machine it was as fast (1.00-1.02x)
# (BENCHMARKS.md, `bench_ceiling.py --sections settings,tower`).
BATCH = 4
# What the int8 graph quantises: the matrix products (the transformer's projections and MLPs,
# about 97% of a ViT's multiply-adds), weights in int8 per tensor, activations quantised per
# batch. The patch embedding's convolution stays float32: onnxruntime's ConvInteger was a
# quarter of ViT-B-32-256's int8 time on an AVX-512 VNNI CPU for 3% of its work (BENCHMARKS.md,
# "the CPU image tower against the CPU's ceiling"). An export whose int8 graph was made another
# way (``int8.method`` differs) is quantised again from its float32 graph on the next indexing
# run, without torch, and measured again.
INT8_OPS = ("MatMul", "Gemm")
# "/copied": quantised from a private copy of a hard-linked graph; before it, every export made from
# the shared cache failed ("multiple hard links") and that failure was kept for good, so the
# change of method has each such export quantised once more.
INT8_METHOD = "dynamic:MatMul,Gemm/copied"
CHOICES = ("auto", "torch", "onnx", "onnx-int8")


# -- the probe corpus --------------------------------------------------------------------------------
def probe_pixels(size: int, n: int = PROBE_IMAGES, seed: int = 0) -> np.ndarray:
    """``n`` deterministic uint8 (size, size, 3) images with photo-like structure: smooth colour
    gradients, blocks and a few shapes over noise (not white noise, which every model maps alike)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    images = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        base = rng.uniform(0, 255, 3) + rng.uniform(-120, 120, 3) * xx[..., None] + rng.uniform(-120, 120, 3) * yy[..., None]
        cells = int(rng.integers(2, 7))
        blocks = rng.uniform(-60, 60, (cells, cells, 3)).repeat(-(-size // cells), 0).repeat(-(-size // cells), 1)
        image = base + blocks[:size, :size]
        for _ in range(int(rng.integers(1, 4))):
            cy, cx, r = rng.uniform(0, 1, 2).tolist() + [float(rng.uniform(0.05, 0.3))]
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
            image[mask] = rng.uniform(0, 255, 3)
        image += rng.normal(0, 6, image.shape)
        images[i] = np.clip(image, 0, 255).astype(np.uint8)
    return images


def top_overlap(reference: np.ndarray, trial: np.ndarray, k: int = TOP) -> float:
    """Mean overlap of each vector's top-``k`` neighbours (itself excluded) among ``reference``
    and among ``trial``: how much of an image search's results the trial vectors keep."""
    k = min(k, len(reference) - 1)
    if k < 1:
        return 1.0

    def neighbours(vectors: np.ndarray) -> np.ndarray:
        scores = vectors @ vectors.T
        np.fill_diagonal(scores, -np.inf)
        return np.argsort(-scores, axis=1, kind="stable")[:, :k]

    ours, theirs = neighbours(reference), neighbours(trial)
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ours.tolist(), theirs.tolist())]))


# -- the writer side -----------------------------------------------------------------------------------
def export_needed(manifest: dict[str, Any], enabled: bool = True) -> bool:
    """True when the index has no export record for its model, or one to try again."""
    return onnx_export.export_needed(manifest, TOWER, enabled)


def _outdated(record: dict[str, Any]) -> bool:
    """A usable export to make again: its int8 graph by an older method, or measured on another machine."""
    if int8_outdated(record):
        return True
    return (record.get("measured") or {}).get("cpu") != cpu_name()  # moved to another machine: measure again


def int8_outdated(record: dict[str, Any]) -> bool:
    """True when the export's int8 graph (or its refusal) was made by an older method."""
    return (record.get("int8") or {}).get("method") != INT8_METHOD


def produce(folder: Path, fingerprint: str, old: dict[str, Any] | None, load: Callable[[], TorchEncoder],
            entry: Path) -> dict[str, Any]:
    """The image tower of the model ``fingerprint`` exported (or taken from the cache ``entry``)
    into ``folder``, with which encoder indexes fastest here measured; ``load()`` gives its torch
    encoder, called only when neither the export nor this CPU's measurement is cached. ``old``:
    the folder's record, kept when only its measurement is for another machine."""
    if isinstance(old, dict) and old.get("status") == "ok" and old.get("fingerprint") == fingerprint \
            and not export_mismatch(folder, old):
        record = dict(old)  # the export is there; only the measurement is for another machine
    else:
        record = onnx_export.from_cache(folder, entry, fingerprint, _parts, _TEMP)
        if record is None:
            record = export_image_encoder(load(), folder, fingerprint)
            onnx_export.to_cache(folder, record, entry, list(_parts(record).values()), _TEMP, log)
    if int8_outdated(record):
        record = requantise(folder, record)
        onnx_export.to_cache(folder, record, entry, list(_parts(record).values()), _TEMP, log)
    if (record.get("measured") or {}).get("cpu") != cpu_name():
        record["measured"] = measure(load(), folder, record)
        # The next new index of this model on this machine takes the choice from the cache
        # instead of loading torch to time the encoders again.
        onnx_export.update_cached_record(entry, {"measured": record["measured"]}, log)
    return record


def cached_dim(fingerprint: str, cache: Path | None = None, enabled: bool = True) -> int | None:
    """The vector dimension of the model ``fingerprint`` when this machine's cache holds all a
    new index of it needs without torch: both towers' exports and the image encoders' timing on
    this CPU. None otherwise (the model must be loaded to export or measure).

    A cached export was checked against the loaded model when it was made, so a new index of the
    same fingerprint (architecture and weights hashed) can skip loading the model at all: a new
    process then pays ONNX Runtime's start, not torch's."""
    if not enabled:
        return None
    base = onnx_export.cache_dir(cache)
    text = onnx_export.cached_record(base / fingerprint, fingerprint)
    image = onnx_export.cached_record(base / f"{fingerprint}{CACHE_SUFFIX}", fingerprint)
    if text is None or image is None or (image.get("measured") or {}).get("cpu") != cpu_name():
        return None
    dims = {text.get("dim"), image.get("dim")}
    return int(dims.pop()) if len(dims) == 1 and isinstance(text.get("dim"), int) else None


def _parts(record: dict[str, Any]) -> dict[str, str]:
    """The export's files by digest key, the float32 graph last (it names the weights file)."""
    parts = {"data": record["data"]}
    if (record.get("int8") or {}).get("file"):
        parts["int8"] = record["int8"]["file"]
    parts["graph"] = record["file"]
    return parts


def export_image_encoder(encoder: TorchEncoder, folder: Path, fingerprint: str) -> dict[str, Any]:
    """Write the float32 (and, when it agrees, int8) ONNX image encoders into ``folder``; returns
    the manifest record. Raises ``OnnxImageUnavailable`` when the model cannot be exported."""
    started = time.perf_counter()
    try:
        import onnx  # noqa: F401 - needed by the export
        import onnxruntime
        import torch
    except ImportError as exc:
        raise OnnxImageUnavailable(f"{exc.name or exc} is not installed") from exc
    transform = encoder.pixel_transform
    if transform is None:
        raise OnnxImageUnavailable("the model's image transform has no pixel form")
    model = _cpu_fp32_model(encoder, torch)
    wrapper = _image_tower(model, transform, torch).eval()
    probe = probe_pixels(transform.crop)
    name = f"{FILE_PREFIX}{fingerprint[:16]}.onnx"
    int8_name = _int8_name(fingerprint)
    tmp = Path(tempfile.mkdtemp(prefix=_TEMP[0], suffix=_TEMP[1], dir=folder))
    try:
        raw = tmp / "raw.onnx"
        exporter = onnx_export.export_module(wrapper, torch.from_numpy(probe[:2]), raw, "pixels", torch,
                                             OnnxImageUnavailable, grad=True)
        onnx_export.save_external(raw, tmp / name)
        raw.unlink()
        with torch.no_grad():
            want = np.concatenate([wrapper(torch.from_numpy(probe[i:i + BATCH])).numpy()
                                   for i in range(0, len(probe), BATCH)])
        got = _run_checked(tmp / name, probe, "export")
        one = _run_checked(tmp / name, probe[:1], "export")  # another batch size than the example's
        cosine = float(min((l2(got) * l2(want)).sum(axis=1).min(), (l2(one) * l2(want[:1])).sum(axis=1).min()))
        if got.shape != want.shape or not cosine >= MIN_COSINE:
            raise OnnxImageUnavailable(f"the export disagrees with torch (cosine {cosine:.6f})")
        int8 = _quantise(tmp / name, tmp / int8_name, got, probe)
        names = [f"{name}.data"] + ([int8_name] if int8.get("file") else []) + [name]
        digests = {"data": onnx_export.file_digest(tmp / f"{name}.data"), "graph": onnx_export.file_digest(tmp / name)}
        if int8.get("file"):
            digests["int8"] = onnx_export.file_digest(tmp / int8_name)
        onnx_export.publish(tmp, folder, names)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "status": "ok",
        "file": name,
        "data": f"{name}.data",
        "int8": int8,
        "fingerprint": fingerprint,
        "dim": int(encoder.dim),
        "pixels": {"resize": transform.resize, "crop": transform.crop, "resample": int(transform.resample),
                   "mean": list(transform.mean), "std": list(transform.std)},
        "opset": onnx_export.OPSET,
        "exporter": exporter,
        "min_cosine": round(cosine, 6),
        "exported_at": now(),
        "digests": digests,
        "export_seconds": round(time.perf_counter() - started, 2),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def requantise(folder: Path, record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with its int8 graph made again from its float32 graph in ``folder`` by today's
    method (``INT8_METHOD``), judged against the float32 graph's own vectors (no torch); the
    measurement is dropped, since the candidates changed."""
    probe = probe_pixels(int(record["pixels"]["crop"]))
    int8_name = _int8_name(record["fingerprint"])
    tmp = Path(tempfile.mkdtemp(prefix=_TEMP[0], suffix=_TEMP[1], dir=folder))
    try:
        reference = _run_checked(folder / record["file"], probe, "export")
        int8 = _quantise(folder / record["file"], tmp / int8_name, reference, probe)
        digests = {k: v for k, v in (record.get("digests") or {}).items() if k != "int8"}
        if int8.get("file"):
            digests["int8"] = onnx_export.file_digest(tmp / int8_name)
            onnx_export.publish(tmp, folder, [int8_name])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = {k: v for k, v in record.items() if k not in ("measured", "from_cache")}
    return dict(out, int8=int8, digests=digests, requantised_at=now())


def _cpu_fp32_model(encoder: TorchEncoder, torch: Any) -> Any:
    """The encoder's model when its image tower is float32 on the CPU; else the model loaded
    again in float32 on the CPU (an encoder in bfloat16 or on a GPU no longer holds the
    float32 weights, and the export must give the float32 model's vectors)."""
    visual = encoder.model.visual
    if all(p.device.type == "cpu" and p.dtype == torch.float32 for p in visual.parameters()):
        return encoder.model
    from .spec import RANDOM_INIT_SEED
    from .torch_encoder import load_open_clip

    model = load_open_clip(encoder.spec, "cpu", "fp32", RANDOM_INIT_SEED)[0]
    return model.eval()


def _image_tower(model: Any, transform: PixelTransform, torch: Any) -> Any:
    """A module from uint8 (N, H, W, 3) pixels to L2-normalised ``model.encode_image``, with
    ToTensor and Normalize inside, exactly as ``TorchEncoder.encode_pixels`` computes them."""
    mean = torch.tensor(transform.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(transform.std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0

    class ImageTower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.register_buffer("mean", mean)
            self.register_buffer("std", std)

        def forward(self, pixels):  # noqa: ANN001
            x = (pixels.permute(0, 3, 1, 2).float() - self.mean) / self.std
            features = self.model.encode_image(x)
            return features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    return ImageTower()


def _run_checked(path: Path, pixels: np.ndarray, what: str) -> np.ndarray:
    try:
        session = onnx_export.session(path, onnx_export.available_cpus())
        return np.concatenate([session.run(None, {"pixels": pixels[i:i + BATCH]})[0]
                               for i in range(0, len(pixels), BATCH)])
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own exception types
        raise OnnxImageUnavailable(f"the {what} does not run in onnxruntime: {first_line(exc)}") from exc


@contextmanager
def _root_logger_silenced() -> Iterator[None]:
    """onnxruntime's quantiser logs advice and a protobuf dump per input through the root
    logger (``logging.warning``), which would also install a handler on it: drop its records
    while it runs (named loggers, ours among them, are untouched)."""
    root = logging.getLogger()
    guard = logging.NullHandler()  # so logging.warning() does not call basicConfig()

    def drop(record: logging.LogRecord) -> bool:
        return False

    root.addHandler(guard)
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)
        root.removeHandler(guard)


def _int8_name(fingerprint: str) -> str:
    # Named by method: a graph quantised again never replaces the file a reader may be loading.
    return f"{FILE_PREFIX}{fingerprint[:16]}.int8-mm.onnx"


def _single_linked(source: Path, tmp: Path) -> Path:
    """``source`` (a graph and its external data files, ``NAME.onnx*``), copied into ``tmp`` when
    any of them has other hard links: onnx (1.20 and later) refuses to load external data with
    several links ("potential hardlink attack"), and an index's exports are hard links of the
    export cache's, so re-quantising an index's float32 graph in place always failed."""
    parts = [p for p in source.parent.glob(source.name + "*") if p.is_file()]
    if all(p.stat().st_nlink == 1 for p in parts):
        return source
    private = tmp / "float32"
    private.mkdir(exist_ok=True)
    for part in parts:
        shutil.copyfile(part, private / part.name)
    return private / source.name


def _quantise(source: Path, target: Path, reference: np.ndarray, probe: np.ndarray) -> dict[str, Any]:
    """Dynamic int8 quantisation of ``source``'s matrix products (``INT8_OPS``) into ``target``,
    kept only if it agrees with the float32 vectors ``reference`` of ``probe``; the record says
    what was measured either way."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        source = _single_linked(source, target.parent)
        with _root_logger_silenced():
            quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, op_types_to_quantize=list(INT8_OPS))
        trial = _run_checked(target, probe, "int8 model")
    except Exception as exc:  # noqa: BLE001 - quantiser failures of any kind
        target.unlink(missing_ok=True)
        return {"accepted": False, "method": INT8_METHOD, "reason": f"quantisation failed: {first_line(exc)}"}
    cosine = float((l2(trial) * l2(reference)).sum(axis=1).min())
    overlap = top_overlap(l2(reference), l2(trial))
    record = {"method": INT8_METHOD, "min_cosine": round(cosine, 5), "top10_overlap": round(overlap, 4),
              "thresholds": {"min_cosine": INT8_MIN_COSINE, "top10_overlap": INT8_MIN_OVERLAP},
              "probe_images": int(len(probe))}
    if cosine >= INT8_MIN_COSINE and overlap >= INT8_MIN_OVERLAP:
        return {"accepted": True, "file": target.name, **record}
    target.unlink(missing_ok=True)
    return {"accepted": False, "reason": f"disagrees with float32 (cosine {cosine:.4f}, top-10 overlap {overlap:.2f})",
            **record}


# -- choosing the encoder by measurement -----------------------------------------------------------------
def cpu_name() -> str:
    """This machine's CPU, to tell whether a measurement was made here (no torch needed)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} x{onnx_export.available_cpus()}"
    except OSError:
        pass
    import platform

    return f"{platform.machine()} {platform.processor()} x{onnx_export.available_cpus()}".strip()


def measure(encoder: TorchEncoder, folder: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Milliseconds per image of each candidate on this machine and the fastest: the torch
    encoder (bfloat16 where it chose it), ONNX float32 and ONNX int8 (when accepted). Runs are
    interleaved and the best of two taken, so a burst of load elsewhere hits every one alike."""
    pixels = probe_pixels(int(record["pixels"]["crop"]), BENCH_IMAGES, seed=1)
    torch_kind = "torch-bf16" if "bfloat16" in str(getattr(encoder, "image_dtype", "")) else "torch-fp32"
    if str(getattr(encoder, "device", "cpu")).startswith("cuda"):
        torch_kind = "torch-cuda"
    runners: dict[str, Any] = {torch_kind: encoder.encode_pixels}
    for variant in ("onnx", "onnx-int8"):
        try:
            onnx = OnnxImageEncoder(folder, record, variant)
        except OnnxImageUnavailable:
            continue
        runners[variant] = onnx.encode_pixels
    timings: dict[str, list[float]] = {name: [] for name in runners}
    for run in runners.values():
        run(pixels)  # warm up: first runs allocate and pick kernels
    for _ in range(2):
        for name, run in runners.items():
            started = time.perf_counter()
            run(pixels)
            timings[name].append((time.perf_counter() - started) * 1000 / len(pixels))
    ms = {name: round(min(values), 2) for name, values in timings.items()}
    choice = min(ms, key=ms.get)
    return {"cpu": cpu_name(), "ms_per_image": ms, "batch": BENCH_IMAGES, "choice": choice, "at": now()}


def indexing_choice(manifest: dict[str, Any], setting: str = "auto", enabled: bool = True) -> str:
    """Which encoder indexes images: 'torch', 'onnx' or 'onnx-int8'.

    ``setting`` (``MMSEARCH_IMAGE_ENCODER``) forces one where its export exists; ``auto`` takes
    the measured fastest on this CPU, and ONNX (int8 when accepted) where none was measured here
    and the CPU has no AMX (where torch's bfloat16 tower may be fastest)."""
    record = usable_record(manifest, enabled)
    if record is None or setting == "torch":
        return "torch"
    int8 = bool((record.get("int8") or {}).get("accepted"))
    if setting == "onnx":
        return "onnx"
    if setting == "onnx-int8":
        return "onnx-int8" if int8 else "onnx"
    measured = record.get("measured") or {}
    if measured.get("cpu") == cpu_name() and measured.get("choice"):
        choice = measured["choice"]
        return choice if choice in ("onnx", "onnx-int8") else "torch"
    if cpu_has_amx_flag():
        return "torch"
    return "onnx-int8" if int8 else "onnx"


def query_variant(manifest: dict[str, Any], setting: str = "auto", enabled: bool = True) -> str | None:
    """The ONNX encoder image queries use ('onnx' or 'onnx-int8'), None for torch. Queries use
    ONNX even where torch indexes fastest: for one image, importing torch costs far more."""
    if usable_record(manifest, enabled) is None or setting == "torch":
        return None
    choice = indexing_choice(manifest, setting, enabled)
    return "onnx-int8" if choice == "onnx-int8" else "onnx"


def cpu_has_amx_flag() -> bool:
    """AMX bfloat16 units, from /proc/cpuinfo (torch-free; False where it cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return "amx_bf16" in line.split()
    except OSError:
        pass
    return False


def describe(manifest: dict[str, Any], setting: str = "auto", enabled: bool = True) -> dict[str, Any]:
    """What ``info`` shows: the export's state, int8's verdict, the measurement and the choice."""
    record = manifest.get(MANIFEST_KEY)
    if not isinstance(record, dict):
        return {"status": "none", "indexing": "torch", "queries": "torch"}
    out: dict[str, Any] = {"status": record.get("status")}
    if record.get("status") == "ok":
        int8 = record.get("int8") or {}
        out["int8"] = "accepted" if int8.get("accepted") else f"not used: {int8.get('reason', 'absent')}"
        if record.get("measured"):
            out["measured"] = record["measured"]
    else:
        out["reason"] = record.get("reason")
    out["indexing"] = indexing_choice(manifest, setting, enabled)
    out["queries"] = query_variant(manifest, setting, enabled) or "torch"
    out["setting"] = setting
    return out


# -- the reader side ---------------------------------------------------------------------------------------
def usable_record(manifest: dict[str, Any], enabled: bool = True) -> dict[str, Any] | None:
    """The manifest's export record when it is complete and belongs to the index's model."""
    return onnx_export.usable_record(manifest, TOWER, enabled)


def export_files(folder: Path, record: dict[str, Any]) -> dict[str, Path]:
    return {key: folder / name for key, name in _parts(record).items()}


def export_mismatch(folder: Path, record: dict[str, Any], full: bool = False) -> str | None:
    """Why the export files are not the ones the record describes (None: they are). Cheap unless ``full``."""
    return onnx_export.mismatch(export_files(folder, record), record.get("digests"), full)


class OnnxImageEncoder:
    """Images in, L2-normalised float32 vectors out, with onnxruntime and no torch (an
    ``ImageEncoder``). ``variant``: 'onnx' (float32) or 'onnx-int8'. One instance serves every
    thread (onnxruntime's ``run`` is thread-safe)."""

    device = "cpu"
    preprocess = None  # the pixel path always applies: an export needs a pixel transform

    def __init__(self, folder: Path, record: dict[str, Any], variant: str = "onnx"):
        from ..media.image import PixelTransform

        if variant == "onnx-int8":
            int8 = record.get("int8") or {}
            if not int8.get("accepted") or not int8.get("file"):
                raise OnnxImageUnavailable("the index has no accepted int8 image encoder")
            graph, files = folder / int8["file"], {"int8": folder / int8["file"]}
        else:
            graph = folder / record["file"]
            files = {"graph": graph, "data": folder / record["data"]}
        if not all(p.is_file() for p in files.values()):
            raise OnnxImageUnavailable(f"{graph.name} or its weights file is missing")
        problem = onnx_export.mismatch(files, record.get("digests"))
        if problem:
            raise OnnxImageUnavailable(problem)
        try:
            self.session = onnx_export.session(graph, onnx_export.available_cpus())
            p = record["pixels"]
            self.pixel_transform = PixelTransform(int(p["resize"]), int(p["crop"]), int(p["resample"]),
                                                  tuple(p["mean"]), tuple(p["std"]))
        except Exception as exc:  # noqa: BLE001 - a corrupt file, onnxruntime's own errors, a bad record
            raise OnnxImageUnavailable(f"cannot load {graph.name}: {type(exc).__name__}: {first_line(exc)}") from exc
        self.kind = variant
        self.folder = Path(folder)  # where its files are (another process can load the same encoder)
        self.record = record
        self.dim = int(record["dim"])
        self.image_size = int(self.pixel_transform.crop)

    def encode_pixels(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.uint8)
        if len(batch) == 0:
            return np.empty((0, self.dim), np.float32)
        parts = []
        for start in range(0, len(batch), BATCH):
            try:
                parts.append(self.session.run(None, {"pixels": batch[start:start + BATCH]})[0])
            except Exception as exc:  # noqa: BLE001 - onnxruntime's own exception types
                raise OnnxImageUnavailable(f"the ONNX image encoder failed: {first_line(exc)}") from exc
        return l2(np.concatenate(parts))

    def encode_images(self, images: list[Image.Image]) -> np.ndarray:
        if not images:
            return np.empty((0, self.dim), np.float32)
        return self.encode_pixels(np.stack([self.pixel_transform.apply(img) for img in images]))

    def encode_image_tensors(self, batch: Any) -> np.ndarray:
        raise OnnxImageUnavailable("the ONNX image encoder takes pixels, not tensors")


class Preload:
    """The ONNX image encoder loading in a background thread, encoding the query images ahead
    (see ``preload``). onnxruntime builds its session and runs the model, and Pillow decodes,
    without holding the GIL, so a one-shot image query overlaps both with importing the
    database and FAISS layers."""

    def __init__(self, folder: Path, record: dict[str, Any], variant: str, paths: list[str], max_pixels: int):
        self.folder, self.record, self.variant = folder, record, variant
        self._done = threading.Event()
        self._encoder: OnnxImageEncoder | None = None
        self._error: BaseException | None = None
        self._vectors: dict[str, np.ndarray] = {}
        # Not a daemon: onnxruntime aborts a process whose interpreter exits under a session
        # still being built (see onnx_text.Preload).
        threading.Thread(target=self._work, args=(paths, max_pixels), name="mmsearch-onnx-image-preload",
                         daemon=False).start()

    def _work(self, paths: list[str], max_pixels: int) -> None:
        try:
            encoder = OnnxImageEncoder(self.folder, self.record, self.variant)
            self._encoder = encoder
            from ..media.image import load_image

            for path in paths:
                try:
                    image = load_image(path, encoder.image_size, max_pixels)
                except Exception:  # noqa: BLE001 - the query itself reports an unusable image
                    continue
                self._vectors[path] = encoder.encode_images([image])[0]
        except BaseException as exc:  # noqa: BLE001 - handed to whoever collects it
            self._error = exc
        finally:
            self._done.set()

    def matches(self, folder: Path, record: dict[str, Any], variant: str) -> bool:
        return Path(folder).absolute() == self.folder and variant == self.variant \
            and record.get("file") == self.record.get("file") and record.get("exported_at") == self.record.get("exported_at")

    def result(self) -> OnnxImageEncoder:
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._encoder

    def take(self, path: str) -> np.ndarray | None:
        """The vector encoded ahead for ``path`` (once), or None."""
        self._done.wait()
        return self._vectors.pop(path, None)


def preload(folder: str | Path, paths: list[str], settings: Any) -> Preload | None:
    """Start loading ``folder``'s ONNX image encoder in a background thread, if image queries
    will use it, and encode the images at ``paths`` (as the query will decode them); hand the
    result to the Engine (``Engine(image_encoder=...)``)."""
    import os

    folder = Path(folder).expanduser().absolute()
    manifest = onnx_export.read_manifest(folder)
    try:
        variant = query_variant(manifest, settings.image_encoder, settings.onnx) if manifest is not None else None
    except (AttributeError, TypeError):
        return None  # not an index (yet), or not one this mmsearch reads: the normal path reports that
    if variant is None:
        return None
    wanted = [os.path.expanduser(p) for p in paths]
    return Preload(folder, manifest[MANIFEST_KEY], variant, [p for p in wanted if os.path.isfile(p)], settings.max_pixels)


class IndexingEncoder:
    """What an indexing run encodes with when ONNX indexes images (``indexing.run.indexing_encoder``):
    the ONNX image encoder, and the texts by ``texts()`` (the ONNX text encoder, or torch when the
    index has none)."""

    def __init__(self, image: OnnxImageEncoder, texts: Any):
        self.image = image
        self._texts = texts
        self.kind, self.dim, self.device = image.kind, image.dim, image.device
        self.image_size, self.pixel_transform, self.preprocess = image.image_size, image.pixel_transform, None

    def encode_pixels(self, batch: np.ndarray) -> np.ndarray:
        return self.image.encode_pixels(batch)

    def encode_images(self, images: list[Image.Image]) -> np.ndarray:
        return self.image.encode_images(images)

    def encode_image_tensors(self, batch: Any) -> np.ndarray:
        return self.image.encode_image_tensors(batch)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return self._texts().encode_texts(texts)


def once_per_process(factory: Any) -> Any:
    made: list[Any] = []

    def get() -> Any:
        if not made:
            made.append(factory())
        return made[0]

    return get


TOWER = onnx_export.Tower(
    name="image", key=MANIFEST_KEY, file_prefix=FILE_PREFIX, temp=_TEMP, cache_suffix=CACHE_SUFFIX,
    unavailable=OnnxImageUnavailable, parts=_parts, produce=produce, outdated=_outdated, usable=lambda record: True,
    log=log,
)
