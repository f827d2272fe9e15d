"""Crash-safe file writes: temporary file, flush, fsync, rename, fsync the folder."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_via(target: Path, write: Callable[[Path], None]) -> None:
    """Let ``write`` fill a temporary file beside ``target``, then move it into place.

    Readers see either the old file or the complete new one; a crash leaves at most a stray
    ``.tmp`` file, never a truncated ``target``.
    """
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def atomic_write_json(target: Path, data: Any) -> None:
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    atomic_write_via(target, lambda tmp: tmp.write_text(text, encoding="utf-8"))


# -- file names in the database --------------------------------------------------------------------
# POSIX file names are bytes; Python decodes undecodable bytes to lone surrogates (U+DC80..U+DCFF,
# PEP 383), which SQLite's UTF-8 text cannot hold. Paths are stored with each such surrogate moved
# to a private-use code point of plane 16 (U+10FE80..U+10FEFF) and moved back when read. The map
# is character by character, so prefix searches (``--under``) still work on stored paths. This is
# the one place that encoding lives (used by the ``FsPath`` column type in ``mmsearch.db``).
_SURROGATE_BASE, _STORED_BASE = 0xDC00, 0x10FE00
_TO_DB = {cp: _STORED_BASE + (cp - _SURROGATE_BASE) for cp in range(0xDC80, 0xDD00)}
_FROM_DB = {v: k for k, v in _TO_DB.items()}


def path_to_db(path: str) -> str:
    """A file name as stored in SQLite (valid UTF-8 even for undecodable names)."""
    return path.translate(_TO_DB)


def path_from_db(stored: str) -> str:
    """The file name ``path_to_db`` stored, exactly as ``os`` functions want it."""
    return stored.translate(_FROM_DB)


def printable_path(path: str) -> str:
    """``path`` for display: undecodable bytes shown as U+FFFD, so it can be printed anywhere."""
    return os.fsencode(path).decode("utf-8", errors="replace")
