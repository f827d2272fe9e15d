"""Texts: ``.txt``/``.md`` files (one item each) and ``.jsonl`` files (one item per line with a
``text`` field, its other fields kept as metadata)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from .capabilities import TEXT
from .capabilities import capabilities as capabilities_of
from .documents import IMAGE_FIELD, document_parts
from .records import MAX_STORED_TEXT_CHARS, BadInput, FileEntry, Record, Skip, content_hash

TEXT_MEDIA_TYPE = "text/plain; charset=utf-8"  # shown as text in a browser, never run
# JSONL lines nested deeper than this are skipped: no record's metadata needs more, and every
# later step that walks the value (storing it as JSON, --json output, filters) recurses, so a
# line 100,000 deep would end the whole run with a RecursionError wherever it was first walked.
MAX_JSON_DEPTH = 64


def nesting_depth(value: object, limit: int = MAX_JSON_DEPTH) -> int:
    """How deeply ``value`` (parsed JSON) nests lists and objects, counted without recursion;
    stops counting once past ``limit``."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def decode_text(data: bytes) -> str:
    """Bytes of a text file as str: UTF-8 (BOM allowed), else Latin-1 where it is plainly text."""
    if b"\x00" in data[:8192]:
        raise BadInput("binary data, not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    # Not UTF-8: a legacy single-byte encoding (Windows-1252, else Latin-1) when that reads as
    # plain text, else UTF-8 with the few bad bytes replaced, else it is binary data.
    for encoding in ("cp1252", "latin-1"):
        try:
            legacy = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        printable = sum(ch.isprintable() or ch in "\n\r\t" for ch in legacy)
        if printable >= 0.95 * len(legacy):
            return legacy
    text = data.decode("utf-8", errors="replace")
    if text.count("\ufffd") > max(8, len(text) // 20):
        raise BadInput("binary data, not text")
    return text


class TextHandler:
    """Plain text and Markdown files: one item each."""

    kind = "text"
    modality = TEXT
    capabilities = capabilities_of(TEXT)
    decoded_in_workers = False
    multi_record = False
    reads_other_files = False
    extensions = frozenset({".txt", ".md"})

    @staticmethod
    def media_type(path: str) -> str:
        return TEXT_MEDIA_TYPE

    def records(self, entry: FileEntry, data: bytes, max_pixels: int = 0) -> tuple[list[Record], list[Skip]]:
        text = decode_text(data).strip()
        if not text:
            raise BadInput("empty text")
        record = Record(entry.path, "", TEXT, entry.size, entry.mtime_ns, content_hash(text),
                        text=text[:MAX_STORED_TEXT_CHARS])
        return [record], []


class JsonlHandler:
    """JSON Lines: one text item per line that has a non-empty ``text`` field. Its lines are
    written over several transactions, so a file is *sealed* once its last line is in."""

    kind = "jsonl"
    modality = TEXT
    capabilities = capabilities_of(TEXT)  # its lines; a line's image part is an image (``documents``)
    decoded_in_workers = False
    multi_record = True
    reads_other_files = True  # a record's image: read only inside the library (``roots``)
    extensions = frozenset({".jsonl"})

    @staticmethod
    def media_type(path: str) -> str:
        return TEXT_MEDIA_TYPE

    def records(self, entry: FileEntry, data: bytes, max_pixels: int = 0,
                roots: Sequence[Any] | None = None) -> tuple[list[Record], list[Skip]]:
        from .image import DEFAULT_MAX_PIXELS

        max_pixels = max_pixels or DEFAULT_MAX_PIXELS
        text = decode_text(data)
        records: list[Record] = []
        skipped: list[Skip] = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{entry.path}:{number}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                skipped.append(Skip(where, f"malformed JSON line ({exc.msg})", protects=False))
                continue
            except RecursionError:  # the parser itself recurses: too deep to read at all
                obj = too_deep = True
            else:
                too_deep = nesting_depth(obj) > MAX_JSON_DEPTH
            if too_deep:
                skipped.append(Skip(where, f"JSON nested more than {MAX_JSON_DEPTH} levels deep", protects=False))
                continue
            if not isinstance(obj, dict):
                skipped.append(Skip(where, "line is not a JSON object", protects=False))
                continue
            value = obj.get("text")
            has_text = isinstance(value, str) and bool(value.strip())
            if not has_text and IMAGE_FIELD not in obj:
                skipped.append(Skip(where, "no non-empty string 'text' field (nor an 'image')", protects=False))
                continue
            record = None
            if has_text:
                meta = {k: v for k, v in obj.items() if k != "text"} or None
                body = value.strip()
                record = Record(entry.path, str(number), TEXT, entry.size, entry.mtime_ns, content_hash(body),
                                text=body[:MAX_STORED_TEXT_CHARS], meta=meta)
            if IMAGE_FIELD in obj:  # a document: this text and the image it names
                parts, skips = document_parts(entry, str(number), obj, record, max_pixels, roots)
                records.extend(parts)
                skipped.extend(skips)
            else:
                records.append(record)
        if not records and not skipped:
            raise BadInput("no lines with text")
        return records, skipped
