"""Documents: an image and a text that belong together, each with its own vector.

Three sources make them:

* a JSON Lines record naming an image (``{"image": "shoes/123.jpg", "text": "red running shoe"}``,
  the path relative to the ``.jsonl`` file): the line's text record (locator ``N``) and an image
  record (locator ``N:image``, ``meta["image"]`` the name as written) whose pixels are read from
  the named file (``source_path``);
* an image with a same-stem ``.txt``/``.md`` sidecar: two files, two ordinary items;
* an image with a caption embedded in it (``media.captions``): the image record and a text
  record (locator ``caption``) of the same file.

In the catalogue every part is an ordinary item row (its own id, vector and generation), so
incremental indexing, renames, deletions, ``check`` and the FAISS id mapping treat parts like
any item. Which rows form one document follows from their path and locator alone
(``mmsearch.documents.doc_key``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from ..library import outside_library, within
from .capabilities import capabilities, in_documents
from .records import BadInput, FileEntry, Record, Skip, content_hash, read_regular_file

IMAGE_PART = "image"  # suffix of a JSONL record's image locator: "12:image"
IMAGE_FIELD = "image"  # the JSONL field naming the image
# An image named by a JSONL record larger than this is refused (what an image file may be).
MAX_DOCUMENT_IMAGE_BYTES = 1 << 30


def image_locator(line: str) -> str:
    return f"{line}:{IMAGE_PART}"


def is_image_part(locator: str) -> bool:
    return locator.endswith(":" + IMAGE_PART)


def source_path(path: str, locator: str, meta: dict[str, Any] | None) -> str:
    """The file whose bytes an item stands for: its own path, or for a JSONL document's image
    part the image it names (relative to the JSONL file's folder)."""
    name = meta.get(IMAGE_FIELD) if is_image_part(locator) and isinstance(meta, dict) else None
    if isinstance(name, str) and name:
        return os.path.normpath(os.path.join(os.path.dirname(path), os.path.expanduser(name)))
    return path


def picture_of(row: Any) -> str | None:
    """The picture file an image item shows (a row with ``path``, ``locator``, ``meta`` and
    ``modality``): its own file, or the file its JSONL record names; None for other items (and a
    record's image part that names none). A
    record's image and the same file indexed under a folder are one picture: one result."""
    if row.modality != "image":
        return None
    source = source_path(row.path, row.locator, row.meta)
    return None if source == row.path and is_image_part(row.locator) else source  # (a part naming none)


def record_of(row: Any) -> dict[str, str] | None:
    """The JSONL record an image part belongs to, as ``{"path": the .jsonl file, "line": "N"}``;
    None for any other item."""
    if row.modality != "image" or not is_image_part(row.locator):
        return None
    return {"path": row.path, "line": row.locator.split(":", 1)[0]}


def record_source(record: Record) -> str:
    return source_path(record.path, record.locator, record.meta)


def image_part(entry: FileEntry, line: str, name: Any, max_pixels: int, roots: Sequence[Any] | None = None) -> Record:
    """The image record of JSONL line ``line`` naming ``name``; BadInput says why not.
    ``roots``: the library's (``LibraryRoot``): an image outside it is neither read nor looked at."""
    from .image import ImageHandler

    if not isinstance(name, str) or not name.strip():
        raise BadInput(f"'{IMAGE_FIELD}' must be a non-empty string (a path relative to the file)")
    source = source_path(entry.path, image_locator(line), {IMAGE_FIELD: name})
    if roots is not None and outside_library(source, roots):
        # Under a root by its name: a symlink leads out, which --follow-links would follow.
        link = any(within(source, root.path) for root in roots)
        raise BadInput(f"image {name} is outside the indexed folders, not read"
                       + (" (a symlink leads there; index with --follow-links to include it)" if link else ""))
    if not os.path.exists(source):
        raise BadInput(f"image {name} not found ({source})")
    data = read_regular_file(source, MAX_DOCUMENT_IMAGE_BYTES)
    [image], _ = ImageHandler().records(FileEntry(source, len(data), entry.mtime_ns, "image"), data, max_pixels)
    return Record(entry.path, image_locator(line), image.modality, entry.size, entry.mtime_ns,
                  content_hash(data), width=image.width, height=image.height, meta={IMAGE_FIELD: name})


def document_parts(entry: FileEntry, line: str, obj: dict[str, Any], text_record: Record | None,
                   max_pixels: int, roots: Sequence[Any] | None = None) -> tuple[list[Record], list[Skip]]:
    """The records of a JSONL line that names an image: its text (when it has one) and its
    image; an image that cannot be read (or lies outside the library of ``roots``) is skipped
    with the reason, the text is kept."""
    records = [text_record] if text_record is not None else []
    try:
        records.append(image_part(entry, line, obj.get(IMAGE_FIELD), max_pixels, roots))
    except BadInput as exc:
        return records, [Skip(f"{entry.path}:{line}", f"image part: {exc}", protects=exc.transient)]
    return records, []


# -- which rows form one document ----------------------------------------------------------------
def doc_key(path: str, locator: str, modality: str) -> tuple[str, str]:
    """The document an item belongs to, from its own path and locator only (no other row is
    needed, so adding or removing one part never rewrites another):

    * a JSONL line's parts: (the file, the line number);
    * whole files and embedded captions: (the path without its extension, ""), so ``x.jpg``,
      its caption and a sidecar ``x.txt`` or ``x.md`` share one key;
    * the items of a modality that joins no document (a video's frames): (the file, the
      modality), e.g. (the video file, "video"), one per file (``is_file_key``).
    """
    if not capabilities(modality).in_documents:
        return (path, modality)
    if locator and locator != "caption":
        return (path, locator.split(":", 1)[0])
    return (os.path.splitext(path)[0], "")


def is_file_key(key: tuple[str, str]) -> bool:
    """Whether a ``doc_key`` is a file's whose items join no document (a video's frames), not a
    document's: its second part is a modality, never a line number or ""."""
    return bool(key[1]) and not key[1][0].isdigit() and key[1] not in in_documents()
