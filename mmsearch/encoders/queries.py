"""``QueryEncoders``: which model an Engine embeds with and the encoders its queries use.

The model is the one asked for (``model``/``pretrained``, see ``ModelSpec.resolve``), else the
one the index records, else the settings' default. The search side combines a query's terms
(``Engine.encode_query``) from the vectors these encoders give. Text queries use the index's ONNX text
encoder when it has a valid one (no torch import), image queries its ONNX image encoder
likewise; either falls back to the torch model, loaded on first need, when the export is
missing, damaged or fails. A long-lived holder (a server) follows another process's change of
the index's model (``refresh``) and reloads an export made again (its record changed).

The store is reached through two callables, since the index may not exist yet and may be
created, replaced or removed by an indexing run meanwhile: ``current()`` (the open store or
None) and ``opened()`` (opened now, or the precise reason there is none).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DamagedIndexError, ModelMismatchError, OnnxImageUnavailable, OnnxTextUnavailable, QueryError
from ..media import BadInput
from ..settings import Settings
from . import onnx_image, onnx_text
from .spec import ModelSpec
from .torch_encoder import TorchEncoder

if TYPE_CHECKING:  # pragma: no cover
    from ..storage import IndexStore

log = logging.getLogger(__name__)

DEFAULT_BATCH_CPU = 32  # larger batches stop paying off on CPU beyond ~32
DEFAULT_BATCH_GPU = 256  # GPUs want a few hundred to stay busy


class QueryEncoders:
    """The model choice and the encoders of one index (see the module's docstring).

    ``device``: 'cuda', 'mps', 'cpu' or None for automatic. ``text_preload``: an ONNX text
    encoder already loading (``onnx_text.preload``), used when it is this index's;
    ``image_preload`` likewise (``onnx_image.preload``). ``lock`` guards loading the encoders
    and switching models (an indexing run holds it too)."""

    def __init__(self, current: Callable[[], IndexStore | None], opened: Callable[[], IndexStore], folder: Path,
                 settings: Settings, *, model: str | None = None, pretrained: str | None = None,
                 device: str | None = None, text_preload: onnx_text.Preload | None = None,
                 image_preload: onnx_image.Preload | None = None):
        self._current = current
        self._opened = opened
        self.folder = folder
        self.settings = settings
        self.device = device
        store = current()
        known = store.manifest.get("model") if store is not None else None
        self.requested: ModelSpec | None = (
            ModelSpec.resolve(model, pretrained, known, defaults=(settings.model, settings.pretrained),
                              exported=self.exported) if (model or pretrained) else None)
        self._torch: TorchEncoder | None = None
        self._onnx: onnx_text.OnnxTextEncoder | None = None  # the index's torch-free text encoder
        self._onnx_key: tuple | None = None  # the export record _onnx was loaded for
        self._text_preload = text_preload
        self._onnx_image: onnx_image.OnnxImageEncoder | None = None  # the torch-free image encoder
        self._onnx_image_key: tuple | None = None
        self._image_preload = image_preload
        self.warmed = False  # `warm()` loaded what queries need
        self.lock = threading.RLock()

    # -- the model ------------------------------------------------------------------------------
    @property
    def spec(self) -> ModelSpec:
        """The model embedded with: the one asked for, else the index's, else the default."""
        if self.requested is not None:
            return self.requested
        store = self._current()
        if store is not None:
            return ModelSpec.from_manifest(store.manifest["model"])
        return ModelSpec.resolve(defaults=(self.settings.model, self.settings.pretrained))

    def exported(self, spec: ModelSpec) -> bool:
        """True when this machine's export cache holds all a new index of ``spec`` needs."""
        return onnx_image.cached_dim(spec.identity()["fingerprint"], self.settings.cache, self.settings.onnx) is not None

    def matches_index(self) -> bool:
        """True when the requested model is the index's (or none was requested); False when it differs."""
        store = self._current()
        if self.requested is None or store is None:
            return True
        recorded = store.manifest["model"]
        return self.requested.identity(known=recorded)["fingerprint"] == recorded.get("fingerprint")

    def mismatch(self, action: str) -> ModelMismatchError:
        recorded = ModelSpec.from_manifest(self._opened().manifest["model"])
        return ModelMismatchError(
            f"{self.folder} was built with {recorded.display}, not {self.requested.display}; {action}"
        )

    def switched(self) -> None:
        """The index now records the requested model: it is the index's from here on, and the
        old model's exports are no longer to be used."""
        self._drop_onnx()
        self.requested = None

    def refresh(self) -> None:
        """Follow another process's change of the index's model (``--reembed``).

        A long-lived holder (a server) must never encode queries with a model the index no
        longer uses: one stat per call notices a rewritten manifest, and a new model identity
        drops the loaded encoders, which reload for the new model on next use.
        """
        store = self._current()
        if store is None or not store.manifest_changed():
            return
        with self.lock:
            before = (store.manifest.get("model", {}).get("fingerprint"), store.manifest.get("dim"))
            store.reload_manifest()
            if (store.manifest["model"].get("fingerprint"), store.manifest["dim"]) != before:
                log.info("the index's model changed to %s: reloading", store.manifest["model"].get("name"))
                self._torch = None
                self._drop_onnx()

    def close(self) -> None:
        self._torch = None
        self._drop_onnx()

    def _drop_onnx(self) -> None:
        self._onnx = self._onnx_key = None
        self._onnx_image = self._onnx_image_key = None

    # -- the encoders -----------------------------------------------------------------------------
    @property
    def torch(self) -> TorchEncoder:
        """The torch encoder (loaded on first use)."""
        with self.lock:
            if self._torch is None:
                self._torch = TorchEncoder(self.spec, self.device, self.settings.cpu_bf16)
            return self._torch

    @property
    def torch_loaded(self) -> bool:
        return self._torch is not None

    @property
    def text(self) -> Any:
        """The encoder text queries use: the index's ONNX export when it has a valid one, else torch."""
        return self.onnx_text() or self.torch

    @property
    def image(self) -> Any:
        """The encoder image queries use: the index's ONNX export when it has a valid one, else torch."""
        return self.onnx_image() or self.torch

    @property
    def onnx_text_loaded(self) -> onnx_text.OnnxTextEncoder | None:
        return self._onnx

    @property
    def onnx_image_loaded(self) -> onnx_image.OnnxImageEncoder | None:
        return self._onnx_image

    def warm(self) -> None:
        """Load the encoders queries use (ONNX where the index has exports, else torch), so the
        first query is as fast as the next."""
        if self._current() is None or self.text.kind == "torch" or self.image.kind == "torch":
            self.torch  # noqa: B018 - no index yet, or an encoder without export: the torch model
        self.warmed = True

    def default_batch(self) -> int:
        """Images per encoder batch when none was asked for: a few hundred on a GPU, 32 on a CPU."""
        device = self._torch.device if self._torch else (self.device or "")
        return DEFAULT_BATCH_GPU if str(device).startswith("cuda") else DEFAULT_BATCH_CPU

    def on_gpu(self) -> bool:
        return self.device not in (None, "cpu")

    def encoders_now(self) -> dict[str, str]:
        """What an indexing run here would encode with now: images (``torch``, ``onnx`` or
        ``onnx-int8``, as ``MMSEARCH_IMAGE_ENCODER`` and the measurement choose) and texts."""
        manifest = self._opened().manifest
        gpu = self.on_gpu()
        return {
            "images": "torch" if gpu else onnx_image.indexing_choice(manifest, self.settings.image_encoder, self.settings.onnx),
            "texts": "torch" if gpu or not onnx_text.usable_record(manifest, self.settings.onnx) else "onnx",
        }

    def onnx_text(self) -> onnx_text.OnnxTextEncoder | None:
        """The index's ONNX text encoder (loaded now, or again when the index was re-exported), or None."""
        store = self._current()
        record = onnx_text.usable_record(store.manifest, self.settings.onnx) if store is not None else None
        if record is None or (self.requested is not None and not self.matches_index()):
            return None
        key = (str(store.folder), record["file"], record.get("exported_at"))
        with self.lock:
            if self._onnx_key != key:  # first use, or the index was re-exported
                self._onnx_key, self._onnx = key, None
                try:
                    self._onnx = onnx_text.load(store.folder, record, self._text_preload)
                except OnnxTextUnavailable as exc:
                    log.warning("text queries use the torch model: %s", exc)
            return self._onnx

    def onnx_image(self) -> onnx_image.OnnxImageEncoder | None:
        """The index's ONNX image encoder (the variant queries use), or None."""
        store = self._current()
        if store is None or (self.requested is not None and not self.matches_index()):
            return None
        variant = onnx_image.query_variant(store.manifest, self.settings.image_encoder, self.settings.onnx)
        if variant is None:
            return None
        record = store.manifest[onnx_image.MANIFEST_KEY]
        key = (str(store.folder), record["file"], record.get("exported_at"), variant)
        with self.lock:
            if self._onnx_image_key != key:  # first use, or the index was re-exported
                self._onnx_image_key, self._onnx_image = key, None
                try:
                    preloaded = self._image_preload
                    if preloaded is not None and preloaded.matches(store.folder, record, variant):
                        self._onnx_image = preloaded.result()
                    else:
                        self._onnx_image = onnx_image.OnnxImageEncoder(store.folder, record, variant)
                except OnnxImageUnavailable as exc:
                    log.warning("image queries use the torch model: %s", exc)
            return self._onnx_image

    # -- encoding -----------------------------------------------------------------------------------
    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Text vectors in the index's space: by its ONNX text encoder when it has a valid one
        (no torch import), else by the torch model."""
        onnx = self.onnx_text()
        if onnx is not None:
            try:
                return onnx.encode_texts(texts)
            except OnnxTextUnavailable as exc:
                log.warning("text queries use the torch model: %s", exc)
                with self.lock:
                    self._onnx = None
        return self.torch.encode_texts(texts)

    def encode_images(self, images: list[Any]) -> np.ndarray:
        """Image vectors in the index's space: by its ONNX image encoder when it has a valid one
        (no torch import), else by the torch model."""
        onnx = self.onnx_image()
        if onnx is not None:
            try:
                return onnx.encode_images(images)
            except OnnxImageUnavailable as exc:
                log.warning("image queries use the torch model: %s", exc)
                with self.lock:
                    self._onnx_image = None
        return self.torch.encode_images(images)

    def query_image(self, value: Any) -> Any:
        """A query image (a path, bytes or an image) decoded as indexing decodes (draft, reduce,
        caps), so an indexed image finds itself; in-memory images as given (bytes are decoded the
        same way)."""
        from PIL import Image

        from ..media.image import decode_image, load_image, to_rgb

        size, limit = self.image.image_size, self.settings.max_pixels
        try:
            if isinstance(value, Image.Image):
                return to_rgb(value)
            if isinstance(value, (bytes, bytearray, memoryview)):
                return decode_image(bytes(value), size, limit)
            path = os.path.expanduser(os.fspath(value))
            if not os.path.isfile(path):
                raise QueryError(f"image not found: {value}")
            return load_image(path, size, limit)
        except BadInput as exc:
            raise QueryError(f"cannot use image {value if isinstance(value, (str, os.PathLike)) else 'given'}: {exc}") from exc

    def image_encoded_ahead(self, value: Any) -> np.ndarray | None:
        """The vector the preload encoded for the query image path ``value``, when its encoder is
        the one in use."""
        preloaded = self._image_preload
        if preloaded is None or not isinstance(value, str) or self.onnx_image() is not preloaded._encoder:
            return None
        return preloaded.take(os.path.expanduser(value))

    def item_vector(self, value: Any) -> np.ndarray:
        """The stored vector of the item whose id is ``value``."""
        try:
            item_id = int(value)
        except (TypeError, ValueError) as exc:
            raise QueryError(f"item id must be an integer, got {value!r}") from exc
        store = self._opened()
        with store.read() as r:
            blob = r.vector_of(item_id)
        if blob is None:
            raise QueryError(f"no item with id {item_id} in {self.folder}")
        if len(blob) != store.dim * 4:
            raise DamagedIndexError(f"the stored vector of item {item_id} is damaged (wrong size); "
                                    f"run `mmsearch check --repair`")
        return np.frombuffer(blob, np.float32).copy()
