"""Progress of long operations (an indexing run, a duplicates scan): what the library reports
and the CLI draws with rich. A base module: indexing and search both report through it."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # pragma: no cover
    from .media.records import Skip

log = logging.getLogger("mmsearch.indexing.report")  # the name these messages always had


class Progress(Protocol):
    """Receives progress from long operations; the CLI draws it with rich."""

    def start(self, phase: str, total: int | None) -> None: ...
    def advance(self, n: int = 1) -> None: ...
    def skip(self, skip: Skip) -> None: ...
    def note(self, message: str) -> None: ...


class NullProgress:
    """Progress nobody draws: skipped files and notes go to the log."""

    def start(self, phase: str, total: int | None) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass

    def skip(self, skip: Skip) -> None:
        log.warning("skipped %s: %s", skip.path, skip.reason)

    def note(self, message: str) -> None:
        log.warning("%s", message)
