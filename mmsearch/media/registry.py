"""The media handlers mmsearch knows, built explicitly: one per kind of file.

A handler says which files it takes (``extensions``), what modality its records are, whether
its records need decoding in the worker processes before they are encoded, and how to read a
file's bytes into records. Adding a modality (video, audio) is one new module and one line in
``default_registry``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from .capabilities import Capabilities
from .image import IMAGE, ImageHandler, is_image_file
from .records import BadInput, FileEntry, Record, Skip, read_regular_file
from .text import JsonlHandler, TextHandler
from .video import VideoHandler


class MediaHandler(Protocol):
    kind: str  # the kind of file it takes (``FileEntry.kind``)
    modality: str  # what its records are ("image", "text", ...)
    capabilities: Capabilities  # what its modality's items can do (``capabilities(modality)``)
    decoded_in_workers: bool  # its records are decoded by worker processes before encoding
    multi_record: bool  # a file holds several records, written over several transactions and sealed
    reads_other_files: bool  # its records read other files (a JSONL record's image), inside ``roots``

    @property
    def extensions(self) -> frozenset[str]: ...

    def records(self, entry: FileEntry, data: bytes, max_pixels: int = ...) -> tuple[list[Record], list[Skip]]: ...

    def media_type(self, path: str) -> str: ...


class Registry:
    """The handlers, found by file kind or extension."""

    def __init__(self, handlers: Iterable[MediaHandler]):
        self.handlers = {handler.kind: handler for handler in handlers}

    def kind_of(self, path: str | Path) -> str | None:
        """The kind of file ``path`` is by its extension; None for files mmsearch does not index."""
        ext = os.path.splitext(str(path))[1].lower()
        for handler in self.handlers.values():
            if ext in handler.extensions:
                return handler.kind
        return None

    def handler(self, kind: str) -> MediaHandler:
        return self.handlers[kind]

    def modalities(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(h.modality for h in self.handlers.values()))

    def multi_record_kinds(self) -> list[str]:
        """The kinds of file holding several records (sealed once all are written)."""
        return [h.kind for h in self.handlers.values() if h.multi_record]

    def decoded_in_workers(self) -> set[str]:
        """The modalities whose records are decoded by worker processes before encoding."""
        return {h.modality for h in self.handlers.values() if h.decoded_in_workers}

    def thumbnailer(self, modality: str) -> Callable[[bytes, int, int], bytes] | None:
        """How items of ``modality`` become a thumbnail (file bytes, size, pixel cap -> JPEG
        bytes), or None."""
        for handler in self.handlers.values():
            c = handler.capabilities
            if handler.modality == modality and c.thumbnail and not c.moments:
                return handler.thumbnail
        return None

    def moment_thumbnailer(self, modality: str) -> Callable[[int, int, float, int, float], bytes] | None:
        """How items of ``modality`` that stand for a moment of a file become a thumbnail (open
        file descriptor, size, seconds, pixel cap, deadline in seconds -> JPEG bytes), or None."""
        for handler in self.handlers.values():
            c = handler.capabilities
            if handler.modality == modality and c.thumbnail and c.moments:
                return handler.thumbnail_at
        return None

    def capture_reader(self, modality: str) -> Callable[[str], Any] | None:
        """How the capture metadata of an item of ``modality`` is read from its file's header
        (path -> ``exif.Captured``; raises when the file cannot be read), or None."""
        for handler in self.handlers.values():
            if handler.modality == modality and handler.capabilities.captured:
                return handler.read_captured
        return None

    def _streamer_for(self, head: bytes) -> MediaHandler | None:
        """The handler that streams files by path (``reads_path``) and takes a file starting
        with ``head`` by its content (a video under an image's name), or None."""
        for handler in self.handlers.values():
            if handler.capabilities.reads_path and handler.recognises(head):
                return handler
        return None

    def media_type(self, path: str) -> str:
        """The media type a file is served with."""
        kind = self.kind_of(path)
        return self.handlers[kind].media_type(path) if kind else "application/octet-stream"

    def read_records(self, entry: FileEntry, max_pixels: int | None = None,
                     roots: Sequence[Any] | None = None) -> tuple[list[Record], list[Skip]]:
        """The records in one file plus the parts of it that had to be skipped. ``roots``: the
        library's (``LibraryRoot``), for handlers whose records read other files (a JSONL
        record's image), which then read only files inside it."""
        handler = named = self.handlers[entry.kind]
        try:
            if handler.capabilities.reads_path:  # videos: the handler streams the file itself
                if IMAGE in self.handlers and is_image_file(entry.path):
                    # Content decides: an image under a video name is read as an image (FFmpeg
                    # would take it for a one-frame video).
                    handler = self.handlers[IMAGE]
                else:
                    return handler.records(entry)
            data = read_regular_file(entry.path)
            try:
                if handler.reads_other_files:
                    return handler.records(entry, data, max_pixels or 0, roots=roots)
                if max_pixels is None:
                    return handler.records(entry, data)
                return handler.records(entry, data, max_pixels)
            except BadInput:
                # Content decides: a video under another media extension is read as a video.
                # (A file named as one it streams is not sent back to it: an image under a video's name.)
                streamer = None if handler.multi_record or named.capabilities.reads_path else self._streamer_for(data[:256])
                if streamer is not None:
                    return streamer.records(entry)
                raise
        except BadInput as exc:
            return [], [exc.skip(entry.path)]


def default_registry() -> Registry:
    """Images, plain texts, JSON Lines and videos."""
    return Registry([ImageHandler(), TextHandler(), JsonlHandler(), VideoHandler()])


_DEFAULT: Registry | None = None


def media_registry() -> Registry:
    """The default registry, built once."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = default_registry()
    return _DEFAULT
