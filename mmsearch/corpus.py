"""The corpus: walking folders, classifying files, reading them into records, decoding images.

Nothing here touches the index or the model: functions take paths and return dataclasses, and
report unusable inputs as ``Skip`` values (path + reason) rather than raising, so one bad file
never stops a run.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import io
import json
import os
import stat as stat_mod
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

from .library import LibraryRoot, under_any, within
from .config import (
    HEIF_EXTENSIONS,
    IMAGE_EXTENSIONS,
    JSONL_EXTENSIONS,
    MAX_STORED_TEXT_CHARS,
    TEXT_EXTENSIONS,
    heif_available,
)

IMAGE, TEXT = "image", "text"
MODALITIES = (IMAGE, TEXT)

_heif_registered = False


def _register_heif() -> bool:
    global _heif_registered
    if not _heif_registered and heif_available():
        from pillow_heif import register_heif_opener

        register_heif_opener()
        _heif_registered = True
    return _heif_registered


def file_kind(path: str | Path) -> str | None:
    """'image', 'text' or 'jsonl' by extension; None for files mmsearch does not index."""
    ext = os.path.splitext(str(path))[1].lower()
    if ext in IMAGE_EXTENSIONS or (ext in HEIF_EXTENSIONS and _register_heif()):
        return "image"
    if ext in TEXT_EXTENSIONS:
        return "text"
    if ext in JSONL_EXTENSIONS:
        return "jsonl"
    return None


def content_hash(data: bytes | str) -> str:
    """Identity of content, used to reuse vectors for renamed and duplicated files."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    return hashlib.blake2b(data, digest_size=16).hexdigest()


@dataclass(frozen=True)
class FileEntry:
    path: str  # absolute
    size: int
    mtime_ns: int
    kind: str  # image | text | jsonl


@dataclass(frozen=True)
class Skip:
    """An input that was not indexed, and why.

    ``protects``: whether items indexed earlier under ``path`` are kept. True when the path
    cannot be read *now* (permissions, an unmounted disk): that is no evidence it is gone. False
    when what is there is known not to belong in the index (a broken symlink, a link that is not
    followed, a file whose content can no longer be decoded): earlier items of it are removed.
    """

    path: str
    reason: str
    protects: bool = True


@dataclass
class Record:
    """One item to be indexed, read from a file but not yet embedded."""

    path: str
    locator: str
    modality: str
    size: int
    mtime_ns: int
    content_hash: str
    text: str | None = None
    width: int | None = None
    height: int | None = None
    meta: dict[str, Any] | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.path, self.locator)


@dataclass
class ScanOptions:
    """How plain paths given to ``scan`` are walked (a ``LibraryRoot`` carries its own)."""

    include_hidden: bool = False
    exclude: Sequence[str] = ()
    follow_symlinks: bool = False  # follow symlinks that lead outside the root


@dataclass
class ScanResult:
    files: list[FileEntry] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    # Root path -> real paths outside it reached through followed symlinks (``--follow-links``).
    link_targets: dict[str, list[str]] = field(default_factory=dict)


def _excluded(path: str, root: str, patterns: Sequence[str]) -> bool:
    if not patterns:
        return False
    rel = os.path.relpath(path, root)
    name = os.path.basename(path)
    return any(fnmatch.fnmatch(rel, pat) or fnmatch.fnmatch(name, pat) or fnmatch.fnmatch(path, pat) for pat in patterns)


NOT_FOLLOWED = "not followed (index with --follow-links to include it)"


def scan(roots: Sequence[str | Path | LibraryRoot], options: ScanOptions | None = None,
         never: Sequence[str] = ()) -> ScanResult:
    """Every indexable file under ``roots`` (files may be named directly), sorted by path.

    ``roots`` are ``LibraryRoot`` objects (each with its own options) or plain paths, walked
    with ``options``. ``never``: absolute paths left out silently (the index folder itself).
    Symlinks follow the library rule (``mmsearch.library``): one leading inside its root is
    read where it points (a file) or left alone (a folder: its contents are indexed under their
    real path); one leading outside is skipped with a reason unless the root follows links.
    """
    options = options or ScanOptions()
    result = ScanResult()
    seen: set[str] = set()

    def keep(entry: FileEntry) -> None:
        if entry.path not in seen:
            seen.add(entry.path)
            result.files.append(entry)

    for given in roots:
        root = given if isinstance(given, LibraryRoot) else LibraryRoot(
            os.path.abspath(os.path.expanduser(str(given))), tuple(options.exclude),
            options.include_hidden, options.follow_symlinks)
        root_abs = root.path
        if os.path.isdir(root_abs):
            walker = _Walker(root, never, result.skipped)
            for entry in walker.walk(root_abs, frozenset()):
                keep(entry)
            result.link_targets[root_abs] = sorted(walker.link_targets)
        elif os.path.lexists(root_abs):
            entry = _file_entry(root_abs, result.skipped, named=True)
            if entry:
                keep(entry)
        else:
            result.skipped.append(Skip(root_abs, "no such file or folder"))
    result.files.sort(key=lambda e: e.path)
    return result


class _Walker:
    """One root's folder walk, applying its options and the library rule for symlinks."""

    def __init__(self, root: LibraryRoot, never: Sequence[str], skipped: list[Skip]):
        self.root = root
        self.real_root = os.path.realpath(root.path)
        self.never = tuple(never)
        self.skipped = skipped
        self.link_targets: set[str] = set()
        self.walked: set[tuple[int, int]] = set()  # folders walked already (reached twice by links)

    def walk(self, folder: str, active: frozenset) -> Iterator[FileEntry]:
        """Files under ``folder``; ``active``: real paths of the folders being walked (a symlink
        leading to one of them, or above one, would walk in circles)."""
        try:
            folder_stat = os.stat(folder)
            key = (folder_stat.st_dev, folder_stat.st_ino)
            if key in self.walked:
                return
            self.walked.add(key)
            active = active | {os.path.realpath(folder)}
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            self.skipped.append(Skip(folder, f"cannot list folder: {exc.strerror or exc}"))
            return
        for entry in entries:
            if not self.root.hidden and entry.name.startswith("."):
                continue
            if _excluded(entry.path, self.root.path, self.root.exclude) or under_any(entry.path, self.never):
                continue
            try:
                is_link = entry.is_symlink()
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                is_link = is_dir = False
            if is_link:
                yield from self._link(entry.path, active)
            elif is_dir:
                yield from self.walk(entry.path, active)
            elif file_kind(entry.name):
                found = _file_entry(entry.path, self.skipped)
                if found:
                    yield found

    def _link(self, path: str, active: frozenset) -> Iterator[FileEntry]:
        target = os.path.realpath(path)
        inside = within(target, self.real_root)
        try:
            st = os.stat(path)
        except OSError:
            st = None  # broken or looping: reported below for files mmsearch would index
        if st is not None and stat_mod.S_ISDIR(st.st_mode):
            if inside:
                return  # its contents are indexed under their real path
            if any(within(folder, target) for folder in active):
                self.skipped.append(Skip(path, f"symlink loop: leads back to {target}", protects=False))
                return
            if not self.root.follow_links:
                self.skipped.append(Skip(path, f"symlinked folder outside the indexed folder, {NOT_FOLLOWED}", protects=False))
                return
            self.link_targets.add(target)
            yield from self.walk(path, active)
            return
        if not file_kind(path):
            return
        if st is not None and not inside:
            if not self.root.follow_links:
                self.skipped.append(Skip(path, f"symlink to a file outside the indexed folder, {NOT_FOLLOWED}", protects=False))
                return
            self.link_targets.add(target)
        found = _file_entry(path, self.skipped)
        if found:
            yield found


def _file_entry(path: str, skipped: list[Skip], named: bool = False) -> FileEntry | None:
    kind = file_kind(path)
    if kind is None:
        if named:
            skipped.append(Skip(path, "not a supported image or text file type"))
        return None
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            skipped.append(Skip(path, "symlink loop", protects=False))
        elif os.path.islink(path) and isinstance(exc, FileNotFoundError):
            skipped.append(Skip(path, "broken symlink", protects=False))
        else:
            skipped.append(Skip(path, exc.strerror or str(exc)))
        return None
    if not stat_mod.S_ISREG(st.st_mode):
        skipped.append(Skip(path, "not a regular file", protects=False))
        return None
    return FileEntry(path, st.st_size, st.st_mtime_ns, kind)


# -- reading files into records ------------------------------------------------------------------

class BadInput(Exception):
    """A file that cannot be indexed; the message is the reason shown to the user.

    ``transient``: the file could not be *read* now (permissions, an I/O error), which says
    nothing about its content, so what was indexed from it before is kept. Otherwise its content
    is unusable (or it is gone) and earlier items of it are removed.
    """

    def __init__(self, reason: str, transient: bool = False):
        super().__init__(reason)
        self.transient = transient

    def skip(self, path: str) -> Skip:
        return Skip(path, str(self), protects=self.transient)


def read_regular_file(path: str, limit: int | None = None) -> bytes:
    """The bytes of a regular file, or BadInput with a reason a user understands.

    Opened non-blocking and checked with fstat after opening, so a file replaced by a FIFO or a
    device after the scan cannot hang the run, and a file deleted since the scan is named as such.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError as exc:
        reason = "broken symlink" if os.path.islink(path) else "file disappeared after it was listed"
        raise BadInput(reason) from exc
    except PermissionError as exc:
        raise BadInput("permission denied", transient=True) from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise BadInput("symlink loop") from exc
        raise BadInput(exc.strerror or str(exc), transient=True) from exc
    try:
        st = os.fstat(fd)
        if not stat_mod.S_ISREG(st.st_mode):
            raise BadInput("not a regular file")
        if limit is not None and st.st_size > limit:
            raise BadInput(f"file too large ({st.st_size} bytes, limit {limit})")
        chunks = []
        with os.fdopen(fd, "rb", closefd=True) as fh:
            fd = -1
            while True:
                chunk = fh.read(1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise BadInput(f"read error: {exc.strerror or exc}", transient=True) from exc
    finally:
        if fd >= 0:
            os.close(fd)


def read_records(entry: FileEntry) -> tuple[list[Record], list[Skip]]:
    """The records in one file plus the parts of it that had to be skipped."""
    try:
        data = read_regular_file(entry.path)
        if entry.kind == "image":
            return [_image_record(entry, data)], []
        if entry.kind == "text":
            return [_text_record(entry, data)], []
        return _jsonl_records(entry, data)
    except BadInput as exc:
        return [], [exc.skip(entry.path)]


def _image_record(entry: FileEntry, data: bytes) -> Record:
    if not data:
        raise BadInput("empty file")
    _register_heif()
    try:
        with warnings.catch_warnings():
            # Pillow's own limit (2x MAX_IMAGE_PIXELS) still refuses absurd headers; below it,
            # mmsearch's cap on *decoded* pixels decides (JPEGs decode reduced, so may pass).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with open_image(data) as img:
                width, height = img.size
                check_decode_size(img, max_pixels())
                orientation = img.getexif().get(0x0112, 1) if hasattr(img, "getexif") else 1
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise BadInput(_image_error(exc)) from exc
    except BadInput:
        raise
    except Exception as exc:  # Pillow plugins raise many types for malformed headers
        raise BadInput(f"unreadable image: {_one_line(exc)}") from exc
    if orientation in (5, 6, 7, 8):  # rotated by 90 degrees: report upright dimensions
        width, height = height, width
    return Record(entry.path, "", IMAGE, entry.size, entry.mtime_ns, content_hash(data), width=width, height=height)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _image_error(exc: Exception) -> str:
    if isinstance(exc, UnidentifiedImageError):
        return "not an image (unrecognised data)"
    return f"image too large ({exc})"


# Largest number of pixels mmsearch decodes (after JPEG draft reduction): 64 MP is about 192 MB
# as RGB, enough for any camera photo; bigger (panoramas, scans, bombs) are skipped with a
# message. MMSEARCH_MAX_PIXELS overrides it.
DEFAULT_MAX_PIXELS = 64_000_000
MAX_PIXELS_ENV = "MMSEARCH_MAX_PIXELS"


def max_pixels() -> int:
    value = os.environ.get(MAX_PIXELS_ENV)
    try:
        return int(value) if value else DEFAULT_MAX_PIXELS
    except ValueError:
        return DEFAULT_MAX_PIXELS


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
            f"(set {MAX_PIXELS_ENV} to raise it)"
        )


def decode_text(data: bytes) -> str:
    """Bytes of a text file as str: UTF-8 (BOM allowed), else Latin-1 where it is plainly text."""
    if b"\x00" in data[:8192]:
        raise BadInput("binary data, not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    # Not UTF-8: a legacy single-byte encoding (Windows-1252, else Latin-1) when that reads as
    # plain text, else UTF-8 with the few bad bytes replaced, else it is binary data.
    for encoding in ("cp1252", "latin-1"):
        try:
            legacy = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        printable = sum(ch.isprintable() or ch in "\n\r\t" for ch in legacy)
        if printable >= 0.95 * len(legacy):
            return legacy
    text = data.decode("utf-8", errors="replace")
    if text.count("\ufffd") > max(8, len(text) // 20):
        raise BadInput("binary data, not text")
    return text


def _text_record(entry: FileEntry, data: bytes) -> Record:
    text = decode_text(data).strip()
    if not text:
        raise BadInput("empty text")
    return Record(
        entry.path, "", TEXT, entry.size, entry.mtime_ns, content_hash(text), text=text[:MAX_STORED_TEXT_CHARS]
    )


def _jsonl_records(entry: FileEntry, data: bytes) -> tuple[list[Record], list[Skip]]:
    text = decode_text(data)
    records: list[Record] = []
    skipped: list[Skip] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{entry.path}:{number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            skipped.append(Skip(where, f"malformed JSON line ({exc.msg})", protects=False))
            continue
        if not isinstance(obj, dict):
            skipped.append(Skip(where, "line is not a JSON object", protects=False))
            continue
        value = obj.get("text")
        if not isinstance(value, str) or not value.strip():
            skipped.append(Skip(where, "no non-empty string 'text' field", protects=False))
            continue
        meta = {k: v for k, v in obj.items() if k != "text"} or None
        body = value.strip()
        records.append(
            Record(entry.path, str(number), TEXT, entry.size, entry.mtime_ns, content_hash(body),
                   text=body[:MAX_STORED_TEXT_CHARS], meta=meta)
        )
    if not records and not skipped:
        raise BadInput("no lines with text")
    return records, skipped


# -- decoding images for the encoder -------------------------------------------------------------

# Pillow formats mmsearch decodes. Pillow can open dozens more (EPS hands the file to
# Ghostscript, others are rarely tested decoders); an image file or upload in any other format is
# refused, whatever its extension. MPO (multi-picture JPEGs from phone cameras) opens as JPEG.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF")


def image_formats() -> tuple[str, ...]:
    """The Pillow formats accepted here (HEIF too when pillow-heif is installed)."""
    return IMAGE_FORMATS + (("HEIF",) if _register_heif() else ())


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
    Images whose decoded size would exceed ``limit`` pixels (default: ``max_pixels()``), formats
    outside ``image_formats()`` and undecodable data raise BadInput.
    """
    limit = max_pixels() if limit is None else limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
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
        raise BadInput(f"cannot decode image: {_one_line(exc)}") from exc


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

    With ``pixels``, the array is already resized and cropped for the model (see PixelTransform).
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
