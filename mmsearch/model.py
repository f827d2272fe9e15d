"""The open_clip dual encoder: which model to load (``ModelSpec``) and the loaded model (``Encoder``).

``ModelSpec`` is cheap: it resolves what the user named (an open_clip architecture, a JSON config
file, ``hf-hub:``/``local-dir:`` names, a folder written by ``mmsearch train``) and the weights
(a pretrained tag, a checkpoint file, or none) into an identity that is stored in the index
manifest. ``Encoder`` imports torch and loads the weights; nothing else in the package does.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .config import DEFAULT_MODEL, DEFAULT_PRETRAINED
from .corpus import PixelTransform
from .errors import ModelLoadError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL import Image

log = logging.getLogger(__name__)

NO_WEIGHTS = ("", "none", "random")
RANDOM_INIT_SEED = 0
MODEL_ENV_VAR = "MMSEARCH_MODEL"
PRETRAINED_ENV_VAR = "MMSEARCH_PRETRAINED"
# Names of the files `mmsearch train` writes into its output folder.
TRAINED_CONFIG = "config.json"
TRAINED_CHECKPOINT = "checkpoint.pt"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sha256_json(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class ModelSpec:
    """A model as the user named it, resolved to absolute paths where it names files.

    ``name`` is an open_clip architecture (``ViT-B-32``), a path to an open_clip JSON config,
    ``hf-hub:org/repo``, ``local-dir:/path`` or a folder written by ``mmsearch train``.
    ``pretrained`` is a tag, a checkpoint file, or None for random weights.
    """

    name: str
    pretrained: str | None

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def resolve(cls, name: str | None = None, pretrained: str | None = None, known: dict | None = None) -> ModelSpec:
        """Validate and normalise a user's ``--model``/``--pretrained`` without loading anything.

        With no name, ``$MMSEARCH_MODEL``/``$MMSEARCH_PRETRAINED`` (if set) or the default model apply.
        ``known``: the model an existing index records; an open_clip name and weights naming
        exactly that were checked when the index was made, so open_clip is not imported again
        (2-4 s) to check them.
        """
        if (known and name and pretrained is not None and name == known.get("name")
                and _weights(pretrained) == known.get("pretrained") and not name.endswith(".json")
                and not name.startswith(("hf-hub:", "local-dir:")) and not Path(name).expanduser().exists()):
            return cls(name, _weights(pretrained))
        if not name:
            # The environment names the model for new indexes; either variable may stand alone
            # (MMSEARCH_PRETRAINED=none gives the default architecture with random weights).
            name = os.environ.get(MODEL_ENV_VAR) or None
            if pretrained is None and os.environ.get(PRETRAINED_ENV_VAR):
                pretrained = os.environ[PRETRAINED_ENV_VAR]
        if not name:
            return cls(DEFAULT_MODEL, DEFAULT_PRETRAINED if pretrained is None else _weights(pretrained))
        if name.startswith(("hf-hub:", "local-dir:")):
            if name.startswith("local-dir:"):
                folder = Path(name[len("local-dir:"):]).expanduser()
                if not folder.is_dir():
                    raise ModelLoadError(f"model folder not found: {folder}")
                name = f"local-dir:{folder.resolve()}"
            return cls(name, None)
        path = Path(name).expanduser()
        if path.is_dir():
            config, checkpoint = path / TRAINED_CONFIG, path / TRAINED_CHECKPOINT
            if (path / "open_clip_config.json").is_file():
                return cls(f"local-dir:{path.resolve()}", None)
            if config.is_file():
                weights = pretrained if pretrained is not None else (str(checkpoint) if checkpoint.is_file() else None)
                return cls(str(config.resolve()), _weights(weights))
            raise ModelLoadError(
                f"{path} is a folder but holds neither {TRAINED_CONFIG} nor open_clip_config.json"
            )
        if name.endswith(".json"):
            if not path.is_file():
                raise ModelLoadError(f"model config file not found: {path}")
            _read_config(path)  # fail early on a malformed config
            return cls(str(path.resolve()), _weights(pretrained))
        import open_clip

        if name not in open_clip.list_models():
            close = difflib.get_close_matches(name, open_clip.list_models(), n=5)
            hint = f"; did you mean {', '.join(close)}?" if close else "; see open_clip.list_models()"
            raise ModelLoadError(f"unknown open_clip model {name!r}{hint}")
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained is None:
            # An explicit architecture with no weights named gets its first published weights,
            # not a silently useless random model.
            pretrained = DEFAULT_PRETRAINED if name == DEFAULT_MODEL else (tags[0] if tags else "none")
        weights = _weights(pretrained)
        if weights is not None and not Path(weights).is_file() and weights not in tags:
            raise ModelLoadError(
                f"pretrained {pretrained!r} is neither a checkpoint file nor a tag of {name}; "
                f"tags: {', '.join(tags) or 'none'}"
            )
        return cls(name, weights)

    @classmethod
    def from_manifest(cls, data: dict) -> ModelSpec:
        return cls(data["name"], data.get("pretrained"))

    # -- description -------------------------------------------------------------------------
    @property
    def config_path(self) -> Path | None:
        return Path(self.name) if self.name.endswith(".json") else None

    @property
    def arch(self) -> str:
        """The open_clip model name passed to ``create_model`` (config files register their stem)."""
        return self.config_path.stem if self.config_path else self.name

    @property
    def display(self) -> str:
        weights = self.pretrained or ("(bundled)" if self.name.startswith(("hf-hub:", "local-dir:")) else "random init")
        return f"{self.name} [{weights}]"

    def identity(self, known: dict | None = None) -> dict:
        """What the manifest records. ``fingerprint`` changes iff the embedding space may change.

        Hashing a checkpoint file is skipped when ``known`` (the manifest's previous identity)
        recorded the same path, size and mtime.
        """
        if self.config_path:
            arch_sig = _sha256_json(_read_config(self.config_path))
        elif self.name.startswith("local-dir:"):
            folder = Path(self.name[len("local-dir:"):])
            arch_sig = _sha256_file(folder / "open_clip_config.json") if (folder / "open_clip_config.json").is_file() else self.name
        else:
            arch_sig = self.name
        weights: dict[str, Any]
        if self.pretrained is None:
            weights = {"kind": "none" if not self.name.startswith(("hf-hub:", "local-dir:")) else "bundled"}
            if self.name.startswith("local-dir:"):
                weights.update(_file_identity(_local_dir_checkpoint(self.name), known))
        elif Path(self.pretrained).is_file():
            weights = {"kind": "file", **_file_identity(Path(self.pretrained), known)}
        else:
            weights = {"kind": "tag", "id": self.pretrained}
        fingerprint = _sha256_json({"arch": arch_sig, "weights": weights.get("sha256", weights.get("id", weights["kind"]))})
        return {"name": self.name, "pretrained": self.pretrained, "weights": weights, "fingerprint": fingerprint}


def _weights(pretrained: str | None) -> str | None:
    if pretrained is None or pretrained.strip().lower() in NO_WEIGHTS:
        return None
    path = Path(pretrained).expanduser()
    if path.is_file():
        return str(path.resolve())
    if os.path.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")):
        raise ModelLoadError(f"checkpoint file not found: {pretrained}")
    return pretrained


def _read_config(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read model config {path}: {exc}") from exc
    missing = [key for key in ("embed_dim", "vision_cfg", "text_cfg") if key not in data]
    if missing:
        raise ModelLoadError(f"model config {path} lacks {', '.join(missing)} (not an open_clip config)")
    return data


def _local_dir_checkpoint(name: str) -> Path | None:
    folder = Path(name[len("local-dir:"):])
    for pattern in ("*.safetensors", "*.bin", "*.pth", "*.pt"):
        found = sorted(folder.glob(pattern))
        if found:
            return found[0]
    return None


def _file_identity(path: Path | None, known: dict | None) -> dict:
    if path is None:
        return {}
    stat = path.stat()
    record = {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    prev = (known or {}).get("weights", {})
    if all(prev.get(key) == value for key, value in record.items()) and prev.get("sha256"):
        record["sha256"] = prev["sha256"]
    else:
        record["sha256"] = _sha256_file(path)
    return record


def pick_device(requested: str | None = None) -> str:
    """``requested`` if given, else CUDA, then Apple MPS, then CPU."""
    import torch

    if requested:
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise ModelLoadError(f"device {requested!r} requested but CUDA is not available")
        return requested
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


class Encoder:
    """A loaded open_clip model: images and texts in, L2-normalised float32 vectors out."""

    def __init__(self, spec: ModelSpec, device: str | None = None):
        import open_clip
        import torch

        self.spec = spec
        self.device = pick_device(device)
        # Half precision halves memory traffic on GPUs; CPUs have no fast fp16 matmul.
        self.precision = "fp16" if self.device.startswith("cuda") else "fp32"
        self.dtype = torch.float16 if self.precision == "fp16" else torch.float32
        self.image_dtype = self.dtype  # bfloat16 on CPUs with AMX, see _image_tower_bf16
        if spec.config_path:
            open_clip.add_model_config(spec.config_path)
        check_weights_reachable(spec)
        try:
            with torch.random.fork_rng(devices=[]), _quiet_random_init():
                # Without weights, a fixed seed makes "random init" the same model in every
                # process, so an index built with --pretrained none can be queried later.
                torch.manual_seed(RANDOM_INIT_SEED)
                model, _, preprocess = open_clip.create_model_and_transforms(
                    spec.arch, pretrained=spec.pretrained, precision=self.precision, device=self.device
                )
            self.tokenizer = open_clip.get_tokenizer(spec.arch)
        except Exception as exc:  # open_clip raises RuntimeError/ValueError/OSError/HF errors
            raise ModelLoadError(_explain_load_failure(spec, exc)) from exc
        model.eval()
        if self.device.startswith("cuda") and not _is_vit(model):
            # Convolutional towers run faster on NHWC tensors with cuDNN; ViTs gain nothing.
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.preprocess = preprocess
        self.image_size = _image_size(model)
        if self.device == "cpu" and cpu_bf16_wanted():
            self._image_tower_bf16()
        # The transform in plain Pillow, run by the decode workers; None: unfamiliar transform,
        # which then runs here as given.
        self.pixel_transform = pixel_transform_of(preprocess)
        self._pixel_stats: dict[str, Any] = {}
        self.context_length = int(getattr(model, "context_length", 77) or 77)
        with torch.inference_mode():
            probe = self.model.encode_text(self.tokenizer(["probe"]).to(self.device))
        self.dim = int(probe.shape[-1])

    def _image_tower_bf16(self) -> None:
        """Run the image tower in bfloat16 when it gives the same vectors.

        On CPUs that multiply bfloat16 matrices in hardware (Intel AMX) a ViT-B-32 image batch
        encodes about five times faster than in float32, with vectors at cosine 0.9999 to the
        float32 ones. The tower is converted on a copy and checked on a probe batch; any error,
        non-finite value or cosine below ``BF16_MIN_COSINE`` keeps float32. Text stays float32
        (and its ONNX export comes from float32 weights).
        """
        import torch

        visual = self.model.visual
        generator = torch.Generator().manual_seed(RANDOM_INIT_SEED)
        probe = torch.randn(2, 3, self.image_size, self.image_size, generator=generator)
        try:
            with torch.inference_mode():
                reference = self.model.encode_image(probe).float()
                self.model.visual = copy.deepcopy(visual).to(torch.bfloat16)
                trial = self.model.encode_image(probe.to(torch.bfloat16)).float()
            cosine = torch.nn.functional.cosine_similarity(reference, trial, dim=-1)
            good = bool(torch.isfinite(trial).all()) and float(cosine.min()) >= BF16_MIN_COSINE
            detail = f"cosine {float(cosine.min()):.5f}"
        except Exception as exc:  # an operator without a bfloat16 CPU kernel, for example
            good, detail = False, str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if good:
            self.image_dtype = torch.bfloat16
            log.debug("image tower in bfloat16 (%s against float32)", detail)
        else:
            self.model.visual = visual
            log.info("image tower stays float32: bfloat16 check failed (%s)", detail)

    # -- encoding ----------------------------------------------------------------------------
    def encode_image_tensors(self, batch: torch.Tensor) -> np.ndarray:
        import torch

        with torch.inference_mode():
            pixels = batch.to(self.device, dtype=self.image_dtype, non_blocking=True)
            features = self.model.encode_image(pixels)
        return _normalise(features)

    def encode_pixels(self, batch: np.ndarray) -> np.ndarray:
        """Vectors for uint8 (N, H, W, 3) pixels made by ``pixel_transform``.

        The uint8 batch crosses to the device (a quarter of the bytes of float pixels, through
        pinned memory on CUDA) and is normalised there.
        """
        import torch

        transform = self.pixel_transform
        if transform is None:
            raise ValueError("this model's transform has no pixel form; use encode_images")
        if self.device not in self._pixel_stats:
            shape = (1, 3, 1, 1)
            self._pixel_stats[self.device] = (
                torch.tensor(transform.mean, dtype=torch.float32, device=self.device).view(shape) * 255.0,
                torch.tensor(transform.std, dtype=torch.float32, device=self.device).view(shape) * 255.0,
            )
        mean, std = self._pixel_stats[self.device]
        with torch.inference_mode():
            pixels = torch.from_numpy(np.ascontiguousarray(batch))
            if self.device.startswith("cuda"):
                pixels = pixels.pin_memory()
            pixels = pixels.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
            # ToTensor then Normalize, as (x/255 - mean)/std = (x - 255 mean)/(255 std).
            pixels = ((pixels - mean) / std).to(self.image_dtype)
            if not self.device.startswith("cuda") or _is_vit(self.model):
                pixels = pixels.contiguous()
            features = self.model.encode_image(pixels)
        return _normalise(features)

    def encode_images(self, images: list[Image.Image]) -> np.ndarray:
        import torch

        if not images:
            return np.empty((0, self.dim), np.float32)
        if self.pixel_transform is not None:
            # The same code path as indexing, so an indexed image used as a query finds itself.
            return self.encode_pixels(np.stack([self.pixel_transform.apply(img) for img in images]))
        return self.encode_image_tensors(torch.stack([self.preprocess(img) for img in images]))

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        if not texts:
            return np.empty((0, self.dim), np.float32)
        # The tokenizer truncates to the model's context length, so long texts are cut, not rejected.
        tokens = self.tokenizer(texts)
        with torch.inference_mode():
            features = self.model.encode_text(tokens.to(self.device))
        return _normalise(features)


BF16_MIN_COSINE = 0.999


def cpu_bf16_wanted() -> bool:
    """Whether a CPU encoder runs its image tower in bfloat16: ``MMSEARCH_CPU_BF16`` = 1 or 0
    forces it on or off; by default (``auto``) it is on where the CPU has AMX bfloat16 units.
    Without them bfloat16 is emulated and slower than float32."""
    setting = os.environ.get("MMSEARCH_CPU_BF16", "auto").strip().lower()
    if setting in ("1", "on", "true", "yes"):
        return True
    if setting in ("0", "off", "false", "no"):
        return False
    return cpu_has_amx_bf16()


def cpu_has_amx_bf16() -> bool:
    import torch

    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    try:
        return bool(amx and bf16 and amx() and bf16())
    except Exception:  # a private torch API: absent or changed means no
        return False


def _normalise(features: torch.Tensor) -> np.ndarray:
    array = features.float().cpu().numpy()
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return (array / np.maximum(norms, 1e-12)).astype(np.float32)


def _is_vit(model: Any) -> bool:
    return type(getattr(model, "visual", None)).__name__ == "VisionTransformer"


def pixel_transform_of(preprocess: Any) -> PixelTransform | None:
    """``preprocess`` (an open_clip eval transform) as a PixelTransform, or None if it is not the
    familiar Resize(int) -> CenterCrop -> to RGB -> ToTensor -> Normalize chain."""
    from PIL import Image

    steps = list(getattr(preprocess, "transforms", []))
    names = [getattr(step, "__name__", type(step).__name__) for step in steps]
    if len(steps) != 5 or names[0] != "Resize" or names[1] != "CenterCrop" or names[4] != "Normalize":
        return None
    if names[2] not in ("MaybeConvertMode", "_convert_to_rgb") or names[3] not in ("MaybeToTensor", "ToTensor"):
        return None
    resize, crop, normalize = steps[0], steps[1], steps[4]
    size = resize.size[0] if isinstance(resize.size, (list, tuple)) and len(resize.size) == 1 else resize.size
    crop_size = tuple(crop.size) if isinstance(crop.size, (list, tuple)) else (crop.size, crop.size)
    filters = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
               "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}
    resample = filters.get(getattr(resize.interpolation, "value", str(resize.interpolation)))
    if not isinstance(size, int) or getattr(resize, "max_size", None) is not None or resample is None:
        return None
    if crop_size[0] != crop_size[1] or crop_size[0] > size or getattr(normalize, "inplace", False):
        return None
    if getattr(steps[2], "mode", "RGB") != "RGB":
        return None
    return PixelTransform(
        resize=size, crop=int(crop_size[0]), resample=resample,
        mean=tuple(float(m) for m in normalize.mean), std=tuple(float(v) for v in normalize.std),
    )


def _image_size(model: Any) -> int:
    size = getattr(getattr(model, "visual", None), "image_size", 224)
    return int(size[0] if isinstance(size, (tuple, list)) else size)


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


@contextmanager
def _quiet_random_init() -> Iterator[None]:
    """open_clip warns "Model initialized randomly" on every load of a model without weights;
    mmsearch says it once, when an index is created with such a model (``random_weights_note``)."""
    drop = _DropRandomInitWarning()
    root = logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def random_weights_note(spec: ModelSpec) -> str | None:
    """A warning for an index created with random weights (None for real weights)."""
    if spec.pretrained is not None or spec.name.startswith(("hf-hub:", "local-dir:")):
        return None
    return (f"{spec.display} has random weights (--pretrained none): the index works, but its "
            f"rankings mean nothing; name real weights to search by meaning")


OFFLINE_HINT = (
    "Without network access: point at local weights (--pretrained /path/to/checkpoint.pt, "
    "--model local-dir:/path/to/folder, or --model config.json --pretrained checkpoint.pt); set "
    "HF_HUB_OFFLINE=1 to use weights already in the Hugging Face cache without asking the network; "
    "or try mmsearch without weights with --pretrained none (random weights, meaningless ranking)"
)
# Seconds to wait for the Hugging Face hub before concluding it cannot be reached. Its own
# client retries for about a minute, printing a warning per try.
HUB_PROBE_TIMEOUT = 5.0


def check_weights_reachable(spec: ModelSpec) -> None:
    """Fail at once, with the ways forward, when a model's weights must be downloaded and the
    Hugging Face hub cannot be reached (or ``HF_HUB_OFFLINE`` is set): no minute of retries."""
    source = _hub_source(spec)
    if source is None:
        return  # local files, random weights, or already cached
    repo, files = source
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise ModelLoadError(f"weights for {spec.display} ({repo}) are not in the Hugging Face cache and "
                             f"HF_HUB_OFFLINE is set. {OFFLINE_HINT}")
    import httpx
    from huggingface_hub import constants

    endpoint = constants.ENDPOINT
    try:
        httpx.head(endpoint, timeout=HUB_PROBE_TIMEOUT, follow_redirects=False)
    except httpx.HTTPError as exc:
        raise ModelLoadError(
            f"cannot download weights for {spec.display}: {endpoint} cannot be reached "
            f"({_first_line(exc) or type(exc).__name__}). {OFFLINE_HINT}"
        ) from exc


def _hub_source(spec: ModelSpec) -> tuple[str, list[str]] | None:
    """(hub repo, candidate files) of weights that would be downloaded now, or None."""
    from huggingface_hub import try_to_load_from_cache

    if spec.name.startswith("hf-hub:"):
        repo, files = spec.name[len("hf-hub:"):], ["open_clip_config.json"]
    elif spec.pretrained and not Path(spec.pretrained).is_file() and not spec.config_path:
        import open_clip

        cfg = open_clip.get_pretrained_cfg(spec.arch, spec.pretrained) or {}
        if cfg.get("file") or not cfg.get("hf_hub"):
            return None  # a local file, or a plain URL download (rare): leave it to open_clip
        # 'org/repo/file.bin', or 'org/repo/' for open_clip's default file name
        repo, filename = os.path.split(cfg["hf_hub"])
        filename = filename or "open_clip_pytorch_model.bin"
        files = [filename, filename.replace("open_clip_pytorch_model", "open_clip_model").replace(".bin", ".safetensors")]
    else:
        return None
    for name in files:
        try:
            if isinstance(try_to_load_from_cache(repo, name), str):
                return None
        except Exception:  # noqa: BLE001 - a malformed repo id: let open_clip report it
            return None
    return repo, files


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else ""


def _explain_load_failure(spec: ModelSpec, exc: Exception) -> str:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if spec.pretrained and not Path(spec.pretrained).is_file() or spec.name.startswith("hf-hub:"):
        return (
            f"cannot load weights for {spec.display}: {reason}. They are downloaded from the "
            f"Hugging Face hub on first use and cached. {OFFLINE_HINT}"
        )
    return f"cannot load model {spec.display}: {reason}"
