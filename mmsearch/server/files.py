"""Serving indexed files and their thumbnails without a window between checking and opening.

An item's file is served only when ``library.inside_library`` (the one rule for what belongs
to the library) allows its real path; that real path is then opened once, without following
any symlink on the way (``fsutil.open_no_symlinks``), and everything served, the file or its
thumbnail, comes from that one descriptor. A folder swapped for a symlink after the check makes
the open fail (404) instead of leading outside; the response's length is the descriptor's.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import quote

from fastapi import HTTPException
from fastapi.responses import Response, StreamingResponse

from ..fsutil import open_no_symlinks
from ..library import LibraryRoot, inside_library

# Files up to this size are read whole before the answer starts, so its length always matches
# its body; larger ones are streamed from the open descriptor.
READ_WHOLE_BYTES = 16 * 1024 * 1024
CHUNK_BYTES = 256 * 1024
MAX_THUMBNAIL_SOURCE_BYTES = 512 * 1024 * 1024  # an image file larger than this gets no thumbnail

# Files from the index are shown, never run: no sniffing, and a sandbox should one be HTML-like.
FILE_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox"}


@dataclass
class OpenedFile:
    """An item's file, open for reading. Use as a context manager, or hand it to ``file_response``."""

    fd: int
    stat: os.stat_result
    real_path: str

    def read_all(self, limit: int) -> bytes:
        """The whole file (from offset 0), at most ``limit`` bytes (ValueError when larger)."""
        if self.stat.st_size > limit:
            raise ValueError(f"file larger than {limit} bytes")
        chunks, offset = [], 0
        while offset <= limit:
            chunk = os.pread(self.fd, CHUNK_BYTES, offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
        if offset > limit:
            raise ValueError(f"file larger than {limit} bytes")
        return b"".join(chunks)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> OpenedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_item_file(item_id: int, path: str, roots: Sequence[LibraryRoot]) -> OpenedFile:
    """The file of an item, opened; 404 when it does not belong to the library or is not a regular file."""
    unavailable = HTTPException(404, f"file of item {item_id} is not available")
    try:
        real = inside_library(path, roots)
    except OSError as exc:  # os.path.realpath loses a race with a symlink removed under it
        raise unavailable from exc
    if real is None:
        raise unavailable
    try:
        fd = open_no_symlinks(real)
    except (OSError, ValueError) as exc:  # gone, a symlink swapped in, not permitted...
        raise unavailable from exc
    try:
        st = os.fstat(fd)
    except OSError as exc:
        os.close(fd)
        raise unavailable from exc
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise unavailable
    return OpenedFile(fd, st, real)


def file_response(opened: OpenedFile, media_type: str, filename: str, range_header: str | None = None) -> Response:
    """The file's bytes from its descriptor, which the response closes.

    A ``Range: bytes=...`` request (one range: ``a-b``, ``a-`` or ``-n``) gets 206 and that part
    (what a video player needs to seek); an unsatisfiable one 416; several ranges, or a header
    that is not a byte range, the whole file, as RFC 9110 allows.
    """
    headers = {**FILE_HEADERS, "Content-Disposition": content_disposition("inline", filename),
               "Accept-Ranges": "bytes"}
    size = opened.stat.st_size
    wanted = parse_range(range_header, size) if range_header else None
    if wanted == "unsatisfiable":
        opened.close()
        return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{size}"})
    if isinstance(wanted, tuple):
        first, last = wanted
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        headers["Content-Length"] = str(last - first + 1)
        return StreamingResponse(_stream(opened, last + 1, first), status_code=206, media_type=media_type,
                                 headers=headers)
    if size <= READ_WHOLE_BYTES:
        try:
            with opened:
                body = opened.read_all(READ_WHOLE_BYTES)
        except (OSError, ValueError) as exc:
            raise HTTPException(404, "the file changed while it was read") from exc
        return Response(body, media_type=media_type, headers=headers)
    headers["Content-Length"] = str(size)
    return StreamingResponse(_stream(opened, size), media_type=media_type, headers=headers)


_DIGITS = re.compile(r"[0-9]*")  # str.isdigit() also takes superscripts and other scripts' digits


def parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    """(first, last) byte of a single ``bytes=`` range within ``size``; "unsatisfiable"; or None
    for a header to ignore (not bytes, several ranges, malformed)."""
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_text, dash, last_text = spec.strip().partition("-")
    if not dash:
        return None
    first_text, last_text = first_text.strip(), last_text.strip()
    if not _DIGITS.fullmatch(first_text) or not _DIGITS.fullmatch(last_text):  # ASCII digits only (RFC 9110)
        return None
    if first_text == "":
        if last_text == "":
            return None
        length = int(last_text)
        if length == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - length), size - 1
    first = int(first_text)
    last = int(last_text) if last_text else size - 1
    if first >= size:
        return "unsatisfiable"
    if last < first:
        return None
    return first, min(last, size - 1)


def _stream(opened: OpenedFile, size: int, offset: int = 0) -> Iterator[bytes]:
    """Bytes ``offset`` up to ``size`` (exclusive) of the open file."""
    try:
        while offset < size:
            chunk = os.pread(opened.fd, min(CHUNK_BYTES, size - offset), offset)
            if not chunk:  # the file shrank in place since it was opened: nothing honest to send
                break
            offset += len(chunk)
            yield chunk
    finally:
        opened.close()


def readable_name(name: str) -> str:
    """A file name as Unicode text for people: each byte that is not part of valid UTF-8 is read
    as Windows-1252 (the usual origin of such names: ``caf\xe9.jpg`` reads ``café.jpg``)."""
    text = os.fsencode(name).decode("utf-8", "surrogateescape")
    return "".join(_legacy_char(ord(ch) - 0xDC00) if 0xDC80 <= ord(ch) <= 0xDCFF else ch for ch in text)


def _legacy_char(byte: int) -> str:
    try:
        return bytes([byte]).decode("cp1252")
    except UnicodeDecodeError:  # the five bytes Windows-1252 leaves undefined
        return "\ufffd"


def content_disposition(kind: str, name: str) -> str:
    """An RFC 6266 Content-Disposition: an ASCII ``filename`` for old clients and the real name
    as RFC 5987 ``filename*`` (UTF-8, percent-encoded). Never holds a control character."""
    text = "".join(ch if ch.isprintable() else "_" for ch in readable_name(name))  # no controls, no RTL tricks
    fallback = "".join(ch if " " <= ch <= "~" and ch not in '"\\%' else "_" for ch in text) or "file"
    encoded = quote(text.encode("utf-8", "replace"), safe="")
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"
