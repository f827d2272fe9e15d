"""What belongs to the library: the one rule for symlinks, used when indexing and when serving.

A library is the set of folders and files the user indexed (its *roots*). A file belongs to it
when its real path (every symlink resolved) lies inside the real path of one of its roots, or,
for a root indexed with ``--follow-links``, inside one of the places its symlinks led to when it
was last scanned (``link_targets``). Indexing skips symlinks that lead elsewhere (naming
``--follow-links``), and the server serves a file only when this rule holds for it at the moment
it opens it, so whatever a search returns the page can show, and nothing else.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class LibraryRoot:
    """An indexed folder or file and the options it is scanned with."""

    path: str  # absolute, as the user named it (not resolved)
    exclude: tuple[str, ...] = ()
    hidden: bool = False
    follow_links: bool = False
    link_targets: tuple[str, ...] = field(default=())  # real paths reached through symlinks

    @classmethod
    def from_row(cls, path: str, options: dict[str, Any] | None) -> LibraryRoot:
        options = options if isinstance(options, dict) else {}
        return cls(
            path=path,
            exclude=tuple(str(p) for p in options.get("exclude") or ()),
            hidden=bool(options.get("hidden", False)),
            follow_links=bool(options.get("follow_links", False)),
            link_targets=tuple(str(p) for p in options.get("link_targets") or ()),
        )

    def options(self) -> dict[str, Any]:
        """The JSON stored with the root."""
        return {"exclude": list(self.exclude), "hidden": self.hidden, "follow_links": self.follow_links,
                "link_targets": list(self.link_targets)}

    def real_zones(self) -> list[str]:
        """Real paths whose contents belong to this root."""
        zones = [os.path.realpath(self.path)]
        if self.follow_links:
            zones.extend(self.link_targets)
        return zones


def within(path: str, base: str) -> bool:
    """True when ``path`` is ``base`` or lies below it (both absolute, compared as strings)."""
    return path == base or path.startswith(base.rstrip(os.sep) + os.sep)


def under_any(path: str, prefixes: Iterable[str]) -> bool:
    return any(within(path, p) for p in prefixes)


def outside_library(path: str, roots: Sequence[LibraryRoot]) -> bool:
    """True when ``path`` is known not to belong to the library of ``roots`` without reading it:
    it lies under no root, or it exists and resolves outside (a symlink leading elsewhere).
    A path under a root that does not exist is not called outside (it is simply not there)."""
    if not any(within(path, root.path) for root in roots):
        return True
    return os.path.lexists(path) and inside_library(path, roots) is None


def inside_library(path: str, roots: Sequence[LibraryRoot]) -> str | None:
    """The real path of ``path`` when it belongs to the library of ``roots`` (see the module
    docstring), else None. ``path`` is an indexed item's path as stored."""
    owners = [root for root in roots if within(path, root.path)]
    if not owners:
        return None
    try:
        real = os.path.realpath(path, strict=True)
    except (OSError, RuntimeError):  # gone, a loop, or a symlink changing under us
        return None
    for root in owners:
        if under_any(real, root.real_zones()):
            return real
    return None
