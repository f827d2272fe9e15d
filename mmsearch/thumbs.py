"""Thumbnails of indexed images, made on demand and cached on disk under ``<index>/.thumbs/``.

A cached file is named after the item id, its content hash and the size, so a changed file gets
a new thumbnail and a client-supplied string never becomes part of a path. Files are written to
a temporary name and renamed, so concurrent requests for the same thumbnail are harmless.
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from .corpus import _register_heif, to_rgb

# Hidden, so that an index kept inside an indexed folder does not index its own thumbnails.
THUMBS_DIR = ".thumbs"
THUMB_QUALITY = 85  # JPEG quality: small files, no visible blocking at grid sizes
MIN_SIZE, MAX_SIZE, DEFAULT_SIZE = 32, 1024, 256


class ThumbnailError(Exception):
    """The source image cannot be decoded into a thumbnail."""


def thumb_path(index_folder: Path, item_id: int, content_hash: str, size: int) -> Path:
    safe_hash = "".join(ch for ch in content_hash if ch.isalnum())[:32]
    return Path(index_folder) / THUMBS_DIR / f"{int(item_id)}_{safe_hash}_{int(size)}.jpg"


def make_thumbnail(source: str | os.PathLike, size: int) -> bytes:
    """JPEG bytes of ``source`` upright (EXIF orientation applied), fitting in ``size``x``size``."""
    _register_heif()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                img.seek(0)
                # JPEG draft mode decodes at 1/2..1/8 scale, never below the requested size.
                img.draft("RGB", (size, size))
                img.load()
                upright = ImageOps.exif_transpose(img)
                upright.thumbnail((size, size), Image.Resampling.LANCZOS)
                rgb = to_rgb(upright)
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning,
            OSError, ValueError, SyntaxError) as exc:
        raise ThumbnailError(f"cannot make a thumbnail: {exc}") from exc
    out = io.BytesIO()
    rgb.save(out, "JPEG", quality=THUMB_QUALITY, optimize=True)
    return out.getvalue()


def cached_thumbnail(index_folder: Path, item_id: int, content_hash: str, source: str, size: int) -> Path:
    """The cached thumbnail file of an item, generated first when missing."""
    target = thumb_path(index_folder, item_id, content_hash, size)
    if target.is_file():
        return target
    data = make_thumbnail(source, size)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".jpg")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
