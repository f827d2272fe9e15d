"""Walking the library's folders: which files there are to index, under each root's options
and the library rule for symlinks (``mmsearch.library``)."""

from __future__ import annotations

import errno
import fnmatch
import os
import stat as stat_mod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..library import LibraryRoot, under_any, within
from .extensions import HEIF_EXTENSIONS
from .records import FileEntry, Skip
from .registry import Registry, media_registry


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
# A HEIC/HEIF photo where pillow-heif is missing: skipped (earlier items of it kept), and said
# once per run with the way forward (``HEIF_HINT``) rather than once per file.
HEIF_MISSING = "HEIC/HEIF photo, not readable without pillow-heif"
HEIF_HINT = 'pip install "mmsearch[heif]" to index them'


def _heif_without_extra(path: str, kinds: Registry) -> bool:
    return os.path.splitext(path)[1].lower() in HEIF_EXTENSIONS and kinds.kind_of(path) is None


def scan(roots: Sequence[str | Path | LibraryRoot], options: ScanOptions | None = None,
         never: Sequence[str] = (), kinds: Registry | None = None) -> ScanResult:
    """Every indexable file under ``roots`` (files may be named directly), sorted by path.

    ``roots`` are ``LibraryRoot`` objects (each with its own options) or plain paths, walked
    with ``options``. ``never``: absolute paths left out silently (the index folder itself).
    Symlinks follow the library rule (``mmsearch.library``): one leading inside its root is
    read where it points (a file) or left alone (a folder: its contents are indexed under their
    real path); one leading outside is skipped with a reason unless the root follows links.
    """
    options = options or ScanOptions()
    kinds = kinds or media_registry()
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
            walker = _Walker(root, never, result.skipped, kinds)
            for entry in walker.walk(root_abs, frozenset()):
                keep(entry)
            result.link_targets[root_abs] = sorted(walker.link_targets)
        elif os.path.lexists(root_abs):
            entry = _file_entry(root_abs, result.skipped, kinds, named=True)
            if entry:
                keep(entry)
        else:
            result.skipped.append(Skip(root_abs, "no such file or folder"))
    result.files.sort(key=lambda e: e.path)
    return result


class _Walker:
    """One root's folder walk, applying its options and the library rule for symlinks."""

    def __init__(self, root: LibraryRoot, never: Sequence[str], skipped: list[Skip], kinds: Registry):
        self.root = root
        self.kinds = kinds
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
            elif self.kinds.kind_of(entry.name):
                found = _file_entry(entry.path, self.skipped, self.kinds)
                if found:
                    yield found
            elif _heif_without_extra(entry.name, self.kinds):
                self.skipped.append(Skip(entry.path, HEIF_MISSING))

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
        if not self.kinds.kind_of(path):
            return
        if st is not None and not inside:
            if not self.root.follow_links:
                self.skipped.append(Skip(path, f"symlink to a file outside the indexed folder, {NOT_FOLLOWED}", protects=False))
                return
            self.link_targets.add(target)
        found = _file_entry(path, self.skipped, self.kinds)
        if found:
            yield found


def _file_entry(path: str, skipped: list[Skip], kinds: Registry, named: bool = False) -> FileEntry | None:
    kind = kinds.kind_of(path)
    if kind is None:
        if named:
            skipped.append(Skip(path, HEIF_MISSING if _heif_without_extra(path, kinds)
                                else "not a supported image or text file type"))
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
