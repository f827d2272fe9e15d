"""Captions that travel with an image: embedded in the file (EXIF ImageDescription, XMP
dc:description, IPTC caption/abstract) or beside it in a same-stem ``.txt``/``.md`` sidecar.

An embedded caption becomes a second record of the image file (locator ``CAPTION``, modality
text): the image and its words are then one *document* with an image vector and a text vector
(see ``mmsearch.documents``). A sidecar needs nothing here: it is indexed as the text file it is,
and joins its image's document by its stem at query time.

Dates, camera and GPS are not read here (``media.exif``).
"""

from __future__ import annotations

import html
import re
from typing import Any

CAPTION = "caption"  # the locator of an image file's embedded-caption record
# Longest caption kept (characters): descriptions longer than this are documents, not captions.
MAX_CAPTION_CHARS = 2_000

EXIF_IMAGE_DESCRIPTION = 0x010E
IPTC_CAPTION = (2, 120)  # IPTC-IIM dataset 2:120, "Caption/Abstract"

# XMP is small XML; a regular expression reads dc:description's first alternative (or its
# attribute form) without an XML parser meeting untrusted entity declarations.
_XMP_ALT = re.compile(rb"<dc:description\b[^>]*>.*?<rdf:li\b[^>]*>(.*?)</rdf:li>", re.DOTALL)
_XMP_ATTR = re.compile(rb"\bdc:description\s*=\s*\"([^\"]*)\"", re.DOTALL)
# Placeholders cameras and editors write where no caption was given.
_PLACEHOLDERS = {"", "default", "image", "picture", "photo", "olympus digital camera", "sony dsc",
                 "digital camera", "untitled", "no description", "description", "samsung", "lg", "camera"}


def _clean(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.rstrip(b"\x00")
        for encoding in ("utf-8", "latin-1"):
            try:
                value = value.decode(encoding)
                break
            except UnicodeDecodeError:
                continue
    if not isinstance(value, str):
        return None
    text = " ".join(value.replace("\x00", " ").split())
    if text.lower().strip(" .") in _PLACEHOLDERS:
        return None
    return text[:MAX_CAPTION_CHARS]


def exif_caption(img: Any) -> str | None:
    try:
        return _clean(img.getexif().get(EXIF_IMAGE_DESCRIPTION))
    except Exception:  # noqa: BLE001 - a malformed EXIF block is no caption, not a bad image
        return None


def xmp_packet(img: Any) -> bytes | None:
    """The raw XMP packet Pillow found (JPEG APP1, PNG iTXt, WebP/TIFF chunks), or None."""
    info = getattr(img, "info", {}) or {}
    for key in ("xmp", "XML:com.adobe.xmp"):
        value = info.get(key)
        if isinstance(value, str):
            return value.encode("utf-8", "replace")
        if isinstance(value, bytes):
            return value
    tag = getattr(img, "tag_v2", None)  # TIFF keeps XMP in tag 700
    if tag is not None and 700 in tag:
        value = tag[700]
        return value if isinstance(value, bytes) else str(value).encode("utf-8", "replace")
    return None


def xmp_caption(img: Any) -> str | None:
    packet = xmp_packet(img)
    if not packet:
        return None
    match = _XMP_ALT.search(packet) or _XMP_ATTR.search(packet)
    if not match:
        return None
    return _clean(html.unescape(match.group(1).decode("utf-8", "replace")))


def iptc_caption(img: Any) -> str | None:
    if getattr(img, "format", None) not in ("JPEG", "TIFF"):
        return None
    try:
        from PIL import IptcImagePlugin

        info = IptcImagePlugin.getiptcinfo(img) or {}
    except Exception:  # noqa: BLE001 - a malformed IPTC block is no caption
        return None
    value = info.get(IPTC_CAPTION)
    if isinstance(value, list):
        value = value[0] if value else None
    return _clean(value)


def embedded_caption(img: Any) -> str | None:
    """The caption stored in an opened (not necessarily decoded) Pillow image, or None.

    The first of EXIF ImageDescription, XMP dc:description and IPTC caption that holds real
    words (camera placeholders such as "OLYMPUS DIGITAL CAMERA" are not captions).
    """
    for read in (exif_caption, xmp_caption, iptc_caption):
        caption = read(img)
        if caption:
            return caption
    return None


def iptc_segment(caption: str) -> bytes:
    """A JPEG APP13 segment holding ``caption`` as IPTC 2:120 (for tests and tools writing
    captions; Pillow reads IPTC but does not write it)."""
    data = caption.encode("utf-8")
    record = b"\x1c\x02\x78" + len(data).to_bytes(2, "big") + data
    if len(record) % 2:
        record += b"\x00"
    block = b"8BIM" + (0x0404).to_bytes(2, "big") + b"\x00\x00" + len(record).to_bytes(4, "big") + record
    payload = b"Photoshop 3.0\x00" + block
    return b"\xff\xed" + (len(payload) + 2).to_bytes(2, "big") + payload
