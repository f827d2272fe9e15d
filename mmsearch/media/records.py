"""What reading files gives: entries, records, skips, and the one safe way to read a file.

Nothing here touches the index or the model: functions take paths and return dataclasses, and
report unusable inputs as ``Skip`` values (path + reason) rather than raising, so one bad file
never stops a run.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat as stat_mod
from dataclasses import dataclass
from typing import Any

from .capabilities import has_moments

# Text kept in the database for snippets and --json output. The encoder sees only its own
# context length (77 tokens for CLIP), so storing whole books would only bloat the database.
MAX_STORED_TEXT_CHARS = 20_000


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
    kind: str  # the media handler's kind: image | text | jsonl | ...


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
    # When, where and with what it was taken (``media.exif.Captured``), for photos and videos.
    captured: Any = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.path, self.locator)


def is_placeholder(record: Record) -> bool:
    """True for a file of moments (a video) read but not yet sampled: its one record, with no
    locator, stands for the moments to come."""
    return has_moments(record.modality) and record.locator == ""


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


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


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
