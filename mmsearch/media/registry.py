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

from .image import IMAGE, ImageHandler, is_image_file
from .records import BadInput, FileEntry, Record, Skip, read_regular_file
from .text import JsonlHandler, TextHandler
from .video import VIDEO, VideoHandler, container_of


class MediaHandler(Protocol):
    kind: str  # the kind of file it takes (``FileEntry.kind``)
    modality: str  # what its records are ("image", "text", ...)
    decoded_in_workers: bool  # its records are decoded by worker processes before encoding

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

    def thumbnailer(self, modality: str) -> Callable[[bytes, int, int], bytes] | None:
        """How items of ``modality`` become a thumbnail (file bytes, size, pixel cap -> JPEG
        bytes), or None."""
        for handler in self.handlers.values():
            if handler.modality == modality and hasattr(handler, "thumbnail"):
                return handler.thumbnail
        return None

    def moment_thumbnailer(self, modality: str) -> Callable[[int, int, float, int, float], bytes] | None:
        """How items of ``modality`` that stand for a moment of a file become a thumbnail (open
        file descriptor, size, seconds, pixel cap, deadline in seconds -> JPEG bytes), or None."""
        for handler in self.handlers.values():
            if handler.modality == modality and hasattr(handler, "thumbnail_at"):
                return handler.thumbnail_at
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
        handler = self.handlers[entry.kind]
        try:
            if not getattr(handler, "reads_bytes", True):  # videos: the handler streams the file itself
                if IMAGE in self.handlers and is_image_file(entry.path):
                    # Content decides: an image under a video name is read as an image (FFmpeg
                    # would take it for a one-frame video).
                    handler = self.handlers[IMAGE]
                else:
                    return handler.records(entry)
            data = read_regular_file(entry.path)
            try:
                if getattr(handler, "reads_other_files", False):
                    return handler.records(entry, data, max_pixels or 0, roots=roots)
                if max_pixels is None:
                    return handler.records(entry, data)
                return handler.records(entry, data, max_pixels)
            except BadInput:
                # Content decides: a video under another media extension is read as a video.
                if entry.kind != VIDEO and not getattr(handler, "multi_record", False) and container_of(data[:256]):
                    return self.handlers[VIDEO].records(entry)
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
