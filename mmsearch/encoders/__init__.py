"""Encoders: which model (``ModelSpec``), the torch encoder, the ONNX text encoder and its
export, CLIP's tokenizer without torch, and the protocols they implement. Importing this
package does not import torch."""

from .base import ImageEncoder, TextEncoder
from .spec import DEFAULT_MODEL, DEFAULT_PRETRAINED, ModelSpec, random_weights_note
from .torch_encoder import TorchEncoder, pick_device

__all__ = ["DEFAULT_MODEL", "DEFAULT_PRETRAINED", "ImageEncoder", "ModelSpec", "TextEncoder", "TorchEncoder",
           "pick_device", "random_weights_note"]
