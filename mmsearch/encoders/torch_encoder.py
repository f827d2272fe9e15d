"""The torch encoder: an open_clip model loaded with torch, texts and images in, L2-normalised
float32 vectors out. Only this module (and the ONNX exporter, from it) imports torch."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ModelLoadError
from .pixels import pixel_transform_for
from .spec import RANDOM_INIT_SEED, ModelSpec, explain_load_failure, check_weights_reachable, register_config

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL import Image

log = logging.getLogger(__name__)


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


def load_open_clip(spec: ModelSpec, device: str, precision: str = "fp32", seed: int = RANDOM_INIT_SEED):
    """(model, train transform, eval transform, tokenizer) of ``spec``: the one way mmsearch
    loads an open_clip model (the encoder and the trainer alike). Configs are registered once;
    weights that would have to be downloaded from an unreachable hub fail at once; random
    initialisation is seeded and said once (at index creation), not at every load."""
    import open_clip
    import torch

    if spec.config_path:
        register_config(spec.config_path)
    _check_text_tower_installable(spec, open_clip)
    check_weights_reachable(spec)
    try:
        with torch.random.fork_rng(devices=[]), _quiet_random_init():
            torch.manual_seed(seed)
            # Without weights (--pretrained none) a Hugging Face text tower (the multilingual
            # models) is random too, as the fingerprint says, not fetched from the hub.
            random_init = spec.pretrained is None and not spec.name.startswith(("hf-hub:", "local-dir:"))
            model, preprocess_train, preprocess = open_clip.create_model_and_transforms(
                spec.arch, pretrained=spec.pretrained, precision=precision, device=device,
                pretrained_text=not random_init,
            )
        tokenizer = open_clip.get_tokenizer(spec.arch)
    except Exception as exc:  # open_clip raises RuntimeError/ValueError/OSError/HF errors
        raise ModelLoadError(explain_load_failure(spec, exc)) from exc
    return model, preprocess_train, preprocess, tokenizer


def _check_text_tower_installable(spec: ModelSpec, open_clip: Any) -> None:
    """A multilingual model (a Hugging Face text tower) without transformers installed: say how
    to get it, not open_clip's generic message dressed as a weights problem."""
    import importlib.util

    config = open_clip.get_model_config(spec.arch) if not spec.name.startswith(("hf-hub:", "local-dir:")) else None
    text_cfg = (config or {}).get("text_cfg", {})
    if (text_cfg.get("hf_model_name") or text_cfg.get("hf_tokenizer_name")) and importlib.util.find_spec("transformers") is None:
        raise ModelLoadError(f"{spec.display} has a Hugging Face text tower, which needs transformers: "
                             f"pip install 'mmsearch[multilingual]'")


class TorchEncoder:
    """A loaded open_clip model: images and texts in, L2-normalised float32 vectors out.

    Implements both ``TextEncoder`` and ``ImageEncoder``. ``cpu_bf16``: ``auto`` (the image
    tower in bfloat16 where the CPU has AMX units), ``on`` or ``off`` (``MMSEARCH_CPU_BF16``).
    """

    kind = "torch"

    def __init__(self, spec: ModelSpec, device: str | None = None, cpu_bf16: str = "auto"):
        import open_clip
        import torch

        self.spec = spec
        self.device = pick_device(device)
        # Half precision halves memory traffic on GPUs; CPUs have no fast fp16 matmul.
        self.precision = "fp16" if self.device.startswith("cuda") else "fp32"
        self.dtype = torch.float16 if self.precision == "fp16" else torch.float32
        self.image_dtype = self.dtype  # bfloat16 on CPUs with AMX, see _image_tower_bf16
        # Without weights, a fixed seed makes "random init" the same model in every process, so
        # an index built with --pretrained none can be queried later.
        model, _, preprocess, self.tokenizer = load_open_clip(spec, self.device, self.precision, RANDOM_INIT_SEED)
        model.eval()
        if self.device.startswith("cuda") and not _is_vit(model):
            # Convolutional towers run faster on NHWC tensors with cuDNN; ViTs gain nothing.
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.preprocess = preprocess
        self.image_size = _image_size(model)
        if self.device == "cpu" and cpu_bf16_wanted(cpu_bf16):
            self._image_tower_bf16()
        # The transform in plain Pillow, run by the decode workers; None: an unfamiliar
        # transform, which then runs here as given.
        self.pixel_transform = pixel_transform_for(open_clip.get_model_preprocess_cfg(model))
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


def cpu_bf16_wanted(setting: str = "auto") -> bool:
    """Whether a CPU encoder runs its image tower in bfloat16: ``on`` or ``off`` forces it; by
    default (``auto``) it is on where the CPU has AMX bfloat16 units. Without them bfloat16 is
    emulated and slower than float32."""
    if setting == "on":
        return True
    if setting == "off":
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


