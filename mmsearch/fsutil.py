"""Crash-safe file writes: temporary file, flush, fsync, rename, fsync the folder."""

from __future__ import annotations

import base64
import json
import os
import re
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


def atomic_write_via(target: Path, write: Callable[[Path], None],
                     before_replace: Callable[[Path], None] | None = None) -> None:
    """Let ``write`` fill a temporary file beside ``target``, then move it into place.

    Readers see either the old file or the complete new one; a crash leaves at most a stray
    ``.tmp`` file, never a truncated ``target``. ``before_replace(tmp)`` runs once the file is
    complete and durable, before it becomes visible (to record its checksum, say).
    """
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        if before_replace is not None:
            before_replace(tmp)
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
    return path if path.isascii() else path.translate(_TO_DB)  # ASCII: nothing to map, 10x faster


def path_from_db(stored: str) -> str:
    """The file name ``path_to_db`` stored, exactly as ``os`` functions want it."""
    return stored if stored.isascii() else stored.translate(_FROM_DB)


def printable_path(path: str) -> str:
    """``path`` for display: bytes that are not UTF-8 written as ``\\xNN`` escapes (readable,
    valid UTF-8, and distinct for distinct names)."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


# Control characters (C0, DEL, C1) and the Unicode line/paragraph separators: a file name holding
# them could move the cursor, clear the screen or forge output lines when printed raw.
_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def terminal_safe(text: str) -> str:
    """``text`` with control characters escaped (``\\n``, ``\\x1b``...), for human-readable output."""
    def escape(match: re.Match) -> str:
        ch = match.group(0)
        return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(ch) or (
            f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
    return _CONTROL_RE.sub(escape, text)


def display_path(path: str) -> str:
    """``path`` as shown in tables and messages: undecodable bytes and control characters escaped."""
    return terminal_safe(printable_path(path))


def text_safe(text: str) -> str:
    """``text`` as valid Unicode: undecodable file-name bytes as ``\\xNN``, other lone surrogates as U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return printable_path(text)
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def json_safe(value: Any) -> Any:
    """``value`` (JSON-ready data) with every string made valid Unicode by ``text_safe``: the last
    guard of every JSON output; file names themselves go through ``path_fields``."""
    if isinstance(value, str):
        return text_safe(value)
    if isinstance(value, dict):
        return {text_safe(str(k)): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def path_is_exact_text(path: str) -> bool:
    """True when ``path`` is valid Unicode text (no undecodable bytes), so JSON can hold it as is."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def path_fields(path: str, key: str = "path") -> dict[str, str]:
    """JSON fields naming a file: ``key`` holds a readable, valid UTF-8 form of the name; when the
    name is not valid UTF-8 (it held bytes that are not), ``<key>_bytes`` holds the exact name as
    base64, so a program can recover it: ``os.fsdecode(base64.b64decode(value))``."""
    if path_is_exact_text(path):
        return {key: path}
    return {key: printable_path(path), f"{key}_bytes": base64.b64encode(os.fsencode(path)).decode("ascii")}


def path_from_fields(data: dict, key: str = "path") -> str:
    """The exact file name that ``path_fields`` described (the inverse, for clients)."""
    raw = data.get(f"{key}_bytes")
    if raw:
        return os.fsdecode(base64.b64decode(raw))
    return data[key]


# -- checksums of derived files --------------------------------------------------------------------
# Derived files (the vector index, the ONNX text encoder) are recorded in the manifest with their
# size and two digests: ``head_tail`` (the first and last 64 KiB, cheap enough to check on every
# open) and ``blake2b`` (the whole file, checked by `mmsearch check`). Small files are hashed
# whole on open too.
_EDGE = 64 * 1024
_WHOLE_ON_OPEN = 32 * 1024 * 1024


def file_digest(path: Path) -> dict[str, Any]:
    """Size and digests of ``path`` for a manifest record."""
    import hashlib

    whole = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            whole.update(block)
    return {"bytes": os.path.getsize(path), "head_tail": _head_tail(path), "blake2b": whole.hexdigest()}


def _head_tail(path: Path) -> str:
    import hashlib

    size = os.path.getsize(path)
    digest = hashlib.blake2b(str(size).encode(), digest_size=16)
    with open(path, "rb") as fh:
        digest.update(fh.read(_EDGE))
        if size > _EDGE:
            fh.seek(max(_EDGE, size - _EDGE))
            digest.update(fh.read(_EDGE))
    return digest.hexdigest()


def digest_mismatch(path: Path, record: dict[str, Any], full: bool = False) -> str | None:
    """Why ``path`` is not the file ``record`` describes, or None when it is.

    Cheap by default (size, first and last 64 KiB; whole files under 32 MiB); ``full`` hashes
    the whole file whatever its size.
    """
    try:
        size = os.path.getsize(path)
        if size != record.get("bytes"):
            return f"{path.name} has {size} bytes, the manifest records {record.get('bytes')}"
        if _head_tail(path) != record.get("head_tail"):
            return f"{path.name} is not the file the manifest records (checksum differs)"
        if (full or size <= _WHOLE_ON_OPEN) and record.get("blake2b") and file_digest(path)["blake2b"] != record["blake2b"]:
            return f"{path.name} is damaged (checksum differs from the manifest's)"
    except OSError as exc:
        return f"{path.name} cannot be read: {exc.strerror or exc}"
    return None


# -- opening a checked path without following symlinks ---------------------------------------------
def open_no_symlinks(path: str) -> int:
    """A read-only descriptor of the file at ``path``, opened without following any symlink.

    ``path`` must be absolute and free of ``.`` and ``..`` (a real path, as ``os.path.realpath``
    gives). Each folder is opened relative to the one before it with ``O_NOFOLLOW | O_DIRECTORY``
    and the last component with ``O_NOFOLLOW``, so a symlink anywhere on the way (one swapped in
    after the path was checked, say) fails with OSError (ELOOP or ENOTDIR) instead of being
    followed: the descriptor refers to the file whose location is exactly ``path``. The last
    component may be any kind of file (opened non-blocking, so a FIFO cannot hang): ``fstat``
    the descriptor before using it. The caller closes it.
    """
    if not os.path.isabs(path):
        raise ValueError(f"not an absolute path: {path!r}")
    parts = [part for part in path.split(os.sep) if part]
    if not parts or any(part in (".", "..") for part in parts):
        raise ValueError(f"not a normalised file path: {path!r}")
    if os.open not in os.supports_dir_fd:
        import errno

        raise OSError(errno.ENOTSUP, "opening relative to a folder descriptor is not supported here", path)
    cloexec = getattr(os, "O_CLOEXEC", 0)
    # O_PATH (Linux) opens folders for lookups only: folders with search but no read permission work.
    folder_flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | cloexec | getattr(os, "O_PATH", 0)
    file_flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | cloexec
    folder = os.open(os.sep, folder_flags)
    try:
        for part in parts[:-1]:
            inner = os.open(part, folder_flags, dir_fd=folder)
            os.close(folder)
            folder = inner
        return os.open(parts[-1], file_flags, dir_fd=folder)
    finally:
        os.close(folder)
