"""The fast image path's geometry, read from the model's preprocessing config.

open_clip describes a model's evaluation transform as data (``get_model_preprocess_cfg``:
size, resize mode, interpolation, mean, std). For the common case (square size, "shortest"
resize mode: resize the shorter side, centre crop) the decode workers run it in plain Pillow
(``media.image.PixelTransform``); anything else returns None and the model's own transform runs.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from ..media.image import PixelTransform

_FILTERS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
            "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}


def pixel_transform_for(cfg: dict[str, Any] | None) -> PixelTransform | None:
    """The pixel form of a preprocessing config, or None when it is not Resize -> CenterCrop
    of a square size."""
    if not cfg:
        return None
    size = cfg.get("size")
    if isinstance(size, (tuple, list)):
        if len(size) != 2 or size[0] != size[1]:
            return None
        size = size[0]
    resample = _FILTERS.get(str(cfg.get("interpolation", "bicubic")))
    if not isinstance(size, int) or resample is None or cfg.get("resize_mode", "shortest") != "shortest":
        return None
    if cfg.get("mode", "RGB") != "RGB" or not cfg.get("mean") or not cfg.get("std"):
        return None
    return PixelTransform(resize=size, crop=size, resample=resample,
                          mean=tuple(float(m) for m in cfg["mean"]), std=tuple(float(v) for v in cfg["std"]))
