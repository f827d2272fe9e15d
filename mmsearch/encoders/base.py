"""What an encoder does, for whoever uses one (the engine, the indexer, evaluation): the torch
encoder implements both protocols, the ONNX text encoder the text one."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from PIL import Image

    from ..media.image import PixelTransform


class TextEncoder(Protocol):
    kind: str  # "torch" or "onnx"
    dim: int

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """L2-normalised float32 vectors, one per text (long texts cut at the context length)."""


class ImageEncoder(Protocol):
    kind: str
    dim: int
    image_size: int  # the model's input side, pixels
    device: str
    pixel_transform: PixelTransform | None  # the decode workers' geometry; None: use ``preprocess``
    preprocess: Any  # the model's own transform (PIL image -> tensor)

    def encode_images(self, images: list[Image.Image]) -> np.ndarray:
        """Vectors for decoded, upright RGB images."""

    def encode_pixels(self, batch: np.ndarray) -> np.ndarray:
        """Vectors for uint8 (N, H, W, 3) batches made by ``pixel_transform``."""

    def encode_image_tensors(self, batch: Any) -> np.ndarray:
        """Vectors for tensors made by ``preprocess``."""
