"""Thumbnails of indexed images, made on demand and cached on disk under ``<index>/.thumbs/``.

Only a few fixed sizes are made (a requested size is rounded up to the next one), and the cache
is bounded in bytes: the least recently used thumbnails are deleted first. A thumbnail is made
from the bytes of an already opened file (see ``mmsearch.server``) by the image handler (the
formats and pixel cap of indexing), and cached under a key naming the item and that file's
identity (device, inode, size, modification time), so a file swapped for another one never
finds the other's thumbnail. A client-supplied string never
becomes part of a file name. Files are written to a temporary name and renamed, so concurrent
requests for the same thumbnail are harmless.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path



# Hidden, so that an index kept inside an indexed folder does not index its own thumbnails.
THUMBS_DIR = ".thumbs"
# The sizes made (longest side, pixels). A request for any size in MIN_SIZE..MAX_SIZE gets the
# next one up: 150 distinct requested sizes make at most five files per image.
THUMB_SIZES = (64, 128, 256, 512, 1024)
MIN_SIZE, MAX_SIZE, DEFAULT_SIZE = 32, THUMB_SIZES[-1], 256
# Cache bound: at about 15 KB per 256-px thumbnail, some 17,000 grid thumbnails.
DEFAULT_CACHE_BYTES = 256 * 1024 * 1024


def fit_size(requested: int) -> int:
    """The thumbnail size made for a requested size: the smallest fixed size not below it."""
    for size in THUMB_SIZES:
        if size >= requested:
            return size
    return THUMB_SIZES[-1]


@dataclass(frozen=True)
class SourceKey:
    """What a cached thumbnail was made from: an item and the identity of the file opened for it."""

    item_id: int
    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, item_id: int, st: os.stat_result) -> SourceKey:
        return cls(int(item_id), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def file_name(self, size: int) -> str:
        ident = f"{self.device}:{self.inode}:{self.size}:{self.mtime_ns}"
        digest = hashlib.blake2b(ident.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
        return f"{self.item_id}_{digest}_{int(size)}.jpg"


class ThumbnailCache:
    """Cached thumbnail files in ``folder``, at most ``max_bytes`` in all (least recently used go first).

    Thread-safe. Recency is kept in memory and in the files' modification times, so a restarted
    server evicts in the same order. Files written or deleted by another process sharing the
    folder are picked up or forgotten as they are met.
    """

    def __init__(self, folder: Path, max_bytes: int = DEFAULT_CACHE_BYTES):
        if max_bytes < 0:
            raise ValueError("max_bytes must not be negative")
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._sizes: OrderedDict[str, int] | None = None  # file name -> bytes, oldest use first
        self._total = 0
        self._making = [threading.Lock() for _ in range(32)]  # one maker per thumbnail at a time

    @property
    def total_bytes(self) -> int:
        with self._lock:
            self._load()
            return self._total

    def _load(self) -> None:
        if self._sizes is not None:
            return
        found: list[tuple[int, str, int]] = []
        try:
            with os.scandir(self.folder) as entries:
                for entry in entries:
                    if entry.name.endswith(".jpg") and not entry.name.startswith("."):
                        try:
                            st = entry.stat(follow_symlinks=False)
                        except OSError:
                            continue
                        found.append((st.st_mtime_ns, entry.name, st.st_size))
        except FileNotFoundError:
            pass
        self._sizes = OrderedDict((name, size) for _, name, size in sorted(found))
        self._total = sum(self._sizes.values())

    def get(self, key: SourceKey, size: int) -> bytes | None:
        """The cached thumbnail, or None."""
        name = key.file_name(size)
        path = self.folder / name
        try:
            data = path.read_bytes()
        except OSError:
            with self._lock:
                self._load()
                self._forget(name)
            return None
        try:
            os.utime(path)  # the modification time is the last use, for the next start
        except OSError:
            pass
        with self._lock:
            self._load()
            self._note(name, len(data))
        return data

    def get_or_make(self, key: SourceKey, size: int, make: Callable[[], bytes]) -> bytes:
        """The cached thumbnail, else the one ``make()`` returns (the media handler's thumbnail), cached."""
        data = self.get(key, size)
        if data is not None:
            return data
        name = key.file_name(size)
        with self._making[hash(name) % len(self._making)]:
            data = self.get(key, size)  # made meanwhile by another request
            if data is None:
                data = make()
                self.put(key, size, data)
        return data

    def put(self, key: SourceKey, size: int, data: bytes) -> None:
        name = key.file_name(size)
        if len(data) > self.max_bytes:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".tmp-", suffix=".jpg")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, self.folder / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        with self._lock:
            self._load()
            self._note(name, len(data))
            self._evict()

    def _note(self, name: str, size: int) -> None:
        self._total += size - self._sizes.pop(name, 0)
        self._sizes[name] = size

    def _forget(self, name: str) -> None:
        self._total -= self._sizes.pop(name, 0)

    def _evict(self) -> None:
        while self._total > self.max_bytes and self._sizes:
            name, size = self._sizes.popitem(last=False)
            self._total -= size
            try:
                (self.folder / name).unlink()
            except FileNotFoundError:
                pass
            except OSError:
                break  # a read-only cache folder: stop trying, serve on


__all__ = ["THUMBS_DIR", "THUMB_SIZES", "MIN_SIZE", "MAX_SIZE", "DEFAULT_SIZE", "DEFAULT_CACHE_BYTES",
           "ThumbnailCache", "SourceKey", "fit_size"]
