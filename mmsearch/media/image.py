"""Images: which files, how they open (one routine for indexing, queries, uploads, thumbnails,
training), their records, their decoding for the model, and thumbnails."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

from . import exif
from .capabilities import IMAGE
from .capabilities import capabilities as capabilities_of
from .captions import CAPTION, embedded_caption
from .extensions import EXTENSIONS, HEIF_EXTENSIONS
from .records import BadInput, FileEntry, Record, Skip, content_hash, one_line, read_regular_file

# Pillow formats mmsearch decodes. Pillow can open dozens more (EPS hands the file to
# Ghostscript, others are rarely tested decoders); an image file or upload in any other format is
# refused, whatever its extension. MPO (multi-picture JPEGs from phone cameras) opens as JPEG.
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF")
# Largest number of pixels mmsearch decodes (after JPEG draft reduction): 64 MP is about 192 MB
# as RGB, enough for any camera photo; bigger (panoramas, scans, bombs) are skipped with a
# message. MMSEARCH_MAX_PIXELS overrides it.
DEFAULT_MAX_PIXELS = 64_000_000
THUMB_QUALITY = 85  # JPEG quality of thumbnails: small files, no visible blocking at grid sizes

_heif_registered: bool | None = None  # None: not looked for yet


def heif_available() -> bool:
    """True when pillow-heif is installed (and registered), so HEIC/HEIF photos can be decoded
    (looked for once: a failed import is not cheap enough to repeat for every file)."""
    global _heif_registered
    if _heif_registered is None:
        try:
            from pillow_heif import register_heif_opener
        except ImportError:
            _heif_registered = False
            return False
        register_heif_opener()
        _heif_registered = True
    return _heif_registered


def image_extensions() -> frozenset[str]:
    """The file extensions indexed as images here (HEIC/HEIF when pillow-heif is installed)."""
    return EXTENSIONS | (HEIF_EXTENSIONS if heif_available() else frozenset())


def image_formats() -> tuple[str, ...]:
    """The Pillow formats accepted here (HEIF too when pillow-heif is installed)."""
    return FORMATS + (("HEIF",) if heif_available() else ())


def is_image_file(path: str | Path) -> bool:
    """Whether the file holds an image in an accepted format (only its header is read)."""
    try:
        with open(path, "rb") as fh, Image.open(fh, formats=image_formats()):
            return True
    except Exception:  # noqa: BLE001 - Pillow raises many types for data that is not an image
        return False


# -- opening and decoding: the one routine ----------------------------------------------------------
def open_image(data: bytes) -> Image.Image:
    """``data`` opened (not decoded) by Pillow, restricted to ``image_formats()``.

    Raises BadInput for unrecognised data and for formats mmsearch does not accept.
    """
    try:
        return Image.open(io.BytesIO(data), formats=image_formats())
    except UnidentifiedImageError as exc:
        raise BadInput(_unsupported_reason(data)) from exc


def _unsupported_reason(data: bytes) -> str:
    """Why Pillow's restricted open failed: another image format, or no image at all."""
    try:
        with Image.open(io.BytesIO(data)) as other:
            return f"image format {other.format} is not supported"
    except Exception:  # noqa: BLE001 - any failure here means "not an image"
        return "not an image (unrecognised data)"


def _image_error(exc: Exception) -> str:
    if isinstance(exc, UnidentifiedImageError):
        return "not an image (unrecognised data)"
    return f"image too large ({exc})"


def decoded_size(img: Image.Image, target: int | None) -> tuple[int, int]:
    """The size ``decode_image`` decodes ``img`` at for ``target`` (JPEG draft mode reduces it)."""
    width, height = img.size
    if img.format != "JPEG" or not target:
        return width, height
    scale, want = 1, 2 * target
    while scale < 8 and width // (scale * 2) >= want and height // (scale * 2) >= want:
        scale *= 2
    return -(-width // scale), -(-height // scale)


def check_decode_size(img: Image.Image, limit: int, target: int | None = 224) -> None:
    """BadInput if decoding ``img`` (reduced by JPEG draft mode where possible) exceeds ``limit`` pixels."""
    width, height = decoded_size(img, target)
    if width * height > limit:
        raise BadInput(
            f"image too large: {img.size[0]}x{img.size[1]} pixels, over the {limit}-pixel decode cap "
            f"(set MMSEARCH_MAX_PIXELS to raise it)"
        )


def load_image(path: str | Path, target: int | None = None, limit: int | None = None) -> Image.Image:
    """An image file decoded upright (EXIF orientation applied) as RGB; first frame if animated.

    See ``decode_image``; the file is read with ``read_regular_file`` (no FIFOs, no devices).
    """
    return decode_image(read_regular_file(str(path)), target, limit)


def decode_image(data: bytes, target: int | None = None, limit: int | None = None) -> Image.Image:
    """Image bytes decoded upright (EXIF orientation applied) as RGB; first frame if animated.

    With ``target`` (the model's input size), JPEGs decode in draft mode and large images are
    box-reduced, never below twice ``target`` on either side: memory and time stay small and
    the model sees the same pixels whether the image is indexed, used as a query or uploaded.
    Images whose decoded size would exceed ``limit`` pixels (default ``DEFAULT_MAX_PIXELS``),
    formats outside ``image_formats()`` and undecodable data raise BadInput.
    """
    limit = DEFAULT_MAX_PIXELS if limit is None else limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")  # corrupt EXIF entries skipped
            if not data:
                raise BadInput("empty file")
            with open_image(data) as img:
                img.seek(0)
                check_decode_size(img, limit, target)
                if target and img.format == "JPEG":
                    img.draft(img.mode, (2 * target, 2 * target))
                img.load()
                upright = ImageOps.exif_transpose(img)
                rgb = to_rgb(upright)
                if target:
                    factor = min(rgb.size) // (2 * target)
                    if factor >= 2:
                        rgb = rgb.reduce(factor)
                return rgb
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise BadInput(_image_error(exc)) from exc
    except BadInput:
        raise
    except MemoryError as exc:
        raise BadInput("out of memory decoding image") from exc
    except Exception as exc:  # truncated data, corrupt chunks, plugin bugs: one bad file, one skip
        raise BadInput(f"cannot decode image: {one_line(exc)}") from exc


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB conversion that handles 16-bit, transparency and CMYK without garbling colours."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        return Image.fromarray((arr / peak * 255.0).clip(0, 255).astype("uint8"), "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


# -- for the model --------------------------------------------------------------------------------
@dataclass(frozen=True)
class PixelTransform:
    """A model's evaluation transform up to the float conversion, in plain Pillow.

    open_clip's eval transform is Resize(shorter side, filter) -> CenterCrop -> RGB -> ToTensor
    -> Normalize. The first three run here, in the decode workers, on the draft-decoded image,
    giving uint8 pixels (150 KB at 224 px, cheap to pass between processes); the encoder does
    ToTensor and Normalize on the whole batch (on the GPU when there is one). The geometry
    follows torchvision's rules exactly, so the result equals the transform's own output.
    """

    resize: int  # shorter side after resizing
    crop: int  # side of the centre crop (at most ``resize``)
    resample: int  # Pillow filter, e.g. Image.Resampling.BICUBIC
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def apply(self, img: Image.Image) -> Any:
        import numpy as np

        width, height = img.size
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.resize, int(self.resize * long / short)
        size = (new_short, new_long) if width <= height else (new_long, new_short)
        if size != img.size:
            img = img.resize(size, self.resample)
        top = int(round((size[1] - self.crop) / 2.0))
        left = int(round((size[0] - self.crop) / 2.0))
        img = img.crop((left, top, left + self.crop, top + self.crop))
        return np.asarray(to_rgb(img), dtype=np.uint8)


def decode_for_model(path: str, target: int | None, limit: int, pixels: PixelTransform | None = None) -> Any:
    """``load_image`` as a uint8 HxWx3 array (cheap to pass between processes); BadInput -> Skip.

    Runs in the decode workers. With ``pixels``, the array is already resized and cropped for
    the model (see PixelTransform).
    """
    import numpy as np

    try:
        image = load_image(path, target, limit)
        return pixels.apply(image) if pixels is not None else np.asarray(image, dtype=np.uint8)
    except BadInput as exc:
        return exc.skip(path)


def decode_worker_init() -> None:
    """Decode workers leave Ctrl-C to the parent, which stops them."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


# -- thumbnails -------------------------------------------------------------------------------------
def make_thumbnail(data: bytes, size: int, limit: int | None = None) -> bytes:
    """JPEG bytes of the image ``data`` upright (EXIF orientation applied), fitting in
    ``size``x``size``, decoded by ``decode_image`` (the formats and pixel cap of indexing)."""
    img = decode_image(data, target=size, limit=limit)
    img.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=THUMB_QUALITY, optimize=True)
    return out.getvalue()


def caption_record(entry: FileEntry, caption: str) -> Record:
    """The text record of an image file's embedded caption (see ``media.captions``)."""
    return Record(entry.path, CAPTION, "text", entry.size, entry.mtime_ns, content_hash(caption), text=caption)


# -- the handler ------------------------------------------------------------------------------------
class ImageHandler:
    """Image files: one record each, decoded in worker processes for the model."""

    kind = IMAGE
    modality = IMAGE
    capabilities = capabilities_of(IMAGE)
    decoded_in_workers = True
    multi_record = False
    reads_other_files = False

    @property
    def extensions(self) -> frozenset[str]:
        return image_extensions()

    @staticmethod
    def media_type(path: str) -> str:
        import mimetypes

        return mimetypes.guess_type(path)[0] or "application/octet-stream"

    @staticmethod
    def read_captured(path: str) -> exif.Captured:
        """The capture metadata in the image's header (opened, not decoded); raises when the
        file cannot be read."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")  # corrupt EXIF entries
            with open(path, "rb") as fh, Image.open(fh, formats=image_formats()) as img:
                return exif.from_image(img)

    @staticmethod
    def thumbnail(data: bytes, size: int, max_pixels: int | None = None) -> bytes:
        """JPEG bytes of a thumbnail of the image file ``data`` (BadInput if it cannot be made;
        ``max_pixels``: indexing's decode cap, by default ``DEFAULT_MAX_PIXELS``)."""
        return make_thumbnail(data, size, max_pixels)

    def records(self, entry: FileEntry, data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[list[Record], list[Skip]]:
        """The image's record from its header (size, orientation); the pixels are decoded later."""
        if not data:
            raise BadInput("empty file")
        try:
            with warnings.catch_warnings():
                # Pillow's own limit (2x MAX_IMAGE_PIXELS) still refuses absurd headers; below it,
                # mmsearch's cap on *decoded* pixels decides (JPEGs decode reduced, so may pass).
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")  # corrupt EXIF entries
                with open_image(data) as img:
                    width, height = img.size
                    check_decode_size(img, max_pixels)
                    # The header's EXIF, parsed once: orientation and capture metadata (a broken
                    # EXIF block loses the metadata, never the image).
                    captured = exif.from_image(img)
                    orientation = _orientation(img)  # (Pillow keeps the EXIF parsed just above)
                    caption = embedded_caption(img)
        except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
            raise BadInput(_image_error(exc)) from exc
        except BadInput:
            raise
        except Exception as exc:  # Pillow plugins raise many types for malformed headers
            raise BadInput(f"unreadable image: {one_line(exc)}") from exc
        if orientation in (5, 6, 7, 8):  # rotated by 90 degrees: report upright dimensions
            width, height = height, width
        record = Record(entry.path, "", IMAGE, entry.size, entry.mtime_ns, content_hash(data), width=width, height=height,
                        captured=captured)
        if caption:  # the image and its embedded caption: one document, two vectors
            return [record, caption_record(entry, caption)], []
        return [record], []


def _orientation(img: Image.Image) -> int:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # corrupt EXIF entries: Pillow skips them with a warning
            value = img.getexif().get(0x0112, 1)
        return value if isinstance(value, int) else 1
    except Exception:  # noqa: BLE001 - unreadable EXIF: the image as stored
        return 1
