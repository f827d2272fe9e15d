"""Captioned image datasets for ``mmsearch eval`` and ``mmsearch train``.

One reader, ``load_dataset(path)``, for the formats people have:

* a JSONL file, one object per line: an image path (key ``image``, ``filepath``, ``file``, ``path``
  or ``filename``; relative paths are relative to the JSONL file) and one or more captions
  (``caption``/``text``: a string, ``captions``/``texts``/``sentences``: a list); optional ``split``;
* a CSV (or TSV) file with a header: an image column named like the JSONL keys and caption
  columns (``caption``, ``captions``, ``text``, or any column whose name starts with ``caption``);
  several rows naming the same image add captions to it; optional ``split`` column;
* a folder of images with same-named ``.txt`` files (``cat.jpg`` + ``cat.txt``), one caption per
  non-empty line;
* a folder holding a dataset file: ``dataset.jsonl`` (what ``scripts/make_synthetic_dataset.py
  --out DIR`` writes), ``dataset.csv``/``.tsv``/``.json`` or a Karpathy ``dataset_*.json``; or,
  when its images have no .txt captions, its only ``.jsonl``/``.csv``/``.tsv`` file;
* the Karpathy-split JSON used for COCO and Flickr30k (``dataset_coco.json``,
  ``dataset_flickr30k.json``): ``{"images": [{"filepath", "filename", "split", "sentences":
  [{"raw": ...}]}]}``; images are looked up under the JSON file's folder (or ``image_root``).

Rows that cannot be used (malformed, no caption, missing image file) are skipped and reported in
``Dataset.problems`` with their line number (entry number for Karpathy JSON).
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DatasetError
from ..media.extensions import EXTENSIONS, HEIF_EXTENSIONS

IMAGE_SUFFIXES = EXTENSIONS | HEIF_EXTENSIONS  # the image handler's own list
IMAGE_KEYS = ("image", "image_path", "filepath", "file", "path", "filename", "img")
TEXT_KEYS = ("caption", "text", "title", "sentence")
LIST_KEYS = ("captions", "texts", "sentences")
# Karpathy's files call the 5k images added back to COCO training "restval".
SPLIT_ALIASES = {"restval": "train", "valid": "val", "validation": "val", "dev": "val", "testing": "test", "training": "train"}


@dataclass(frozen=True)
class CaptionedImage:
    """One image and every caption that describes it."""

    image: Path
    captions: tuple[str, ...]
    split: str | None = None


@dataclass(frozen=True)
class BadRow:
    """A skipped row: where it was and why."""

    source: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.reason}"


@dataclass
class Dataset:
    """Captioned images read from ``source``; ``problems`` lists the rows that were skipped."""

    source: str
    items: list[CaptionedImage]
    problems: list[BadRow] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def captions(self) -> int:
        return sum(len(item.captions) for item in self.items)

    @property
    def splits(self) -> list[str]:
        return sorted({item.split for item in self.items if item.split})

    def split(self, name: str | None) -> Dataset:
        """The items of one split (``None`` or ``"all"``: every item)."""
        if name in (None, "all"):
            return self
        wanted = _split_name(name)
        if not self.splits:
            raise DatasetError(f"{self.source} has no split field; leave out --split to use every image")
        if wanted not in self.splits:
            raise DatasetError(f"{self.source} has no {name!r} split; it has {', '.join(self.splits)}")
        return Dataset(self.source, [item for item in self.items if item.split == wanted], self.problems)

    def holdout(self, fraction: float, salt: str = "") -> tuple[Dataset, Dataset]:
        """Split into (rest, held out) deterministically by image path hash; ``fraction`` held out."""
        if not 0 <= fraction < 1:
            raise DatasetError(f"hold-out fraction must be in [0, 1), not {fraction}")
        rest, held = [], []
        for item in self.items:
            digest = hashlib.sha1((salt + str(item.image)).encode("utf-8", "surrogateescape")).digest()
            (held if int.from_bytes(digest[:8], "big") / 2**64 < fraction else rest).append(item)
        return Dataset(self.source, rest, self.problems), Dataset(self.source, held, self.problems)

    def pairs(self) -> tuple[list[str], list[int]]:
        """Every caption with the index of its image (the evaluation protocol's ground truth)."""
        texts: list[str] = []
        owners: list[int] = []
        for i, item in enumerate(self.items):
            texts.extend(item.captions)
            owners.extend([i] * len(item.captions))
        return texts, owners


def _split_name(value: object) -> str | None:
    if value is None:
        return None
    name = str(value).strip().lower()
    return SPLIT_ALIASES.get(name, name) or None


def load_dataset(path: str | Path, image_root: str | Path | None = None, check_files: bool = True) -> Dataset:
    """Read a captioned dataset (format chosen from what ``path`` is; see the module docstring).

    ``image_root`` overrides the folder relative image paths are resolved against. With
    ``check_files``, rows whose image file does not exist are skipped and reported.
    """
    source = Path(path).expanduser()
    if not source.exists():
        raise DatasetError(f"dataset not found: {source}")
    root = Path(image_root).expanduser() if image_root is not None else None
    if source.is_dir():
        found = _dataset_file(source)
        if found is None:
            try:
                return _read_folder(source, root)
            except DatasetError:
                found = _only_table(source)
                if found is None:
                    raise
        source = found
    suffix = source.suffix.lower()
    base = root or source.parent
    if suffix == ".jsonl":
        rows = _jsonl_rows(source)
        reader = _records(str(source), rows, base, check_files)
    elif suffix == ".json":
        data = _read_json(source)
        if isinstance(data, dict) and isinstance(data.get("images"), list):
            reader = _karpathy(str(source), data["images"], base, check_files)
        elif isinstance(data, list):
            reader = _records(str(source), ((i + 1, row, None) for i, row in enumerate(data)), base, check_files, unit="entry")
        else:
            raise DatasetError(f"{source}: JSON dataset must be a list of rows or a Karpathy-split object with 'images'")
    elif suffix in (".csv", ".tsv"):
        reader = _records(str(source), _csv_rows(source, "\t" if suffix == ".tsv" else ","), base, check_files)
    else:
        raise DatasetError(f"{source}: unknown dataset format (expected .jsonl, .json, .csv, .tsv or a folder)")
    items, problems = reader
    if not items:
        detail = f"; first problem: {problems[0]}" if problems else ""
        raise DatasetError(f"{source} holds no usable captioned images{detail}")
    return Dataset(str(source), items, problems)


DATASET_FILE_SUFFIXES = (".jsonl", ".csv", ".tsv", ".json")


def _dataset_file(folder: Path) -> Path | None:
    """The dataset file a folder names: ``dataset.*``, else Karpathy's ``dataset_*.json``."""
    try:
        files = sorted(p for p in folder.iterdir() if p.is_file())
    except OSError as exc:
        raise DatasetError(f"cannot list {folder}: {exc}") from exc
    named = [p for p in files if p.stem.lower() == "dataset" and p.suffix.lower() in DATASET_FILE_SUFFIXES]
    if not named:
        named = [p for p in files if p.name.lower().startswith("dataset_") and p.suffix.lower() == ".json"]
    if len(named) > 1:
        raise DatasetError(f"{folder} holds several dataset files ({', '.join(p.name for p in named)}); name one")
    return named[0] if named else None


def _only_table(folder: Path) -> Path | None:
    """The folder's one JSONL/CSV/TSV file, if it has exactly one."""
    tables = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in (".jsonl", ".csv", ".tsv"))
    if len(tables) > 1:
        raise DatasetError(f"{folder} has no images with same-named .txt captions and several dataset files "
                           f"({', '.join(p.name for p in tables)}); name one")
    return tables[0] if tables else None


def _read_json(source: Path) -> object:
    try:
        with open(source, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read {source}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{source}:{exc.lineno}: not valid JSON: {exc.msg}") from exc


def _jsonl_rows(source: Path) -> Iterable[tuple[int, object, str | None]]:
    try:
        with open(source, encoding="utf-8", errors="surrogateescape") as fh:
            lines = fh.readlines()
    except OSError as exc:
        raise DatasetError(f"cannot read {source}: {exc}") from exc
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line), None
        except json.JSONDecodeError as exc:
            yield number, None, f"not valid JSON: {exc.msg}"


def _csv_rows(source: Path, delimiter: str) -> Iterable[tuple[int, object, str | None]]:
    try:
        with open(source, encoding="utf-8-sig", errors="surrogateescape", newline="") as fh:
            text = fh.read()
    except OSError as exc:
        raise DatasetError(f"cannot read {source}: {exc}") from exc
    reader = csv.reader(text.splitlines(keepends=True), delimiter=delimiter)
    try:
        header = [name.strip().lower() for name in next(reader)]
    except StopIteration:
        return
    except csv.Error as exc:
        raise DatasetError(f"{source}:1: cannot parse the CSV header: {exc}") from exc
    if not any(key in header for key in IMAGE_KEYS):
        raise DatasetError(f"{source}:1: no image column (one of {', '.join(IMAGE_KEYS)}) in the header")
    caption_columns = [i for i, name in enumerate(header) if name in TEXT_KEYS + LIST_KEYS or name.startswith("caption")]
    if not caption_columns:
        raise DatasetError(f"{source}:1: no caption column (caption, captions, text, caption_1...) in the header")
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield reader.line_num, None, f"cannot parse the row: {exc}"
            continue
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) != len(header):
            yield reader.line_num, None, f"{len(cells)} columns, the header has {len(header)}"
            continue
        row = dict(zip(header, cells))
        row["captions"] = [cells[i] for i in caption_columns]
        for i in caption_columns:
            if header[i] != "captions":
                row.pop(header[i], None)
        yield reader.line_num, row, None


def _records(
    source: str, rows: Iterable[tuple[int, object, str | None]], base: Path, check_files: bool, unit: str = "line"
) -> tuple[list[CaptionedImage], list[BadRow]]:
    """JSONL/CSV/JSON-list rows; rows naming the same image merge their captions (first split wins)."""
    merged: dict[Path, tuple[list[str], str | None]] = {}
    problems: list[BadRow] = []
    where = "" if unit == "line" else "entry "
    for number, row, error in rows:
        def bad(reason: str) -> None:
            problems.append(BadRow(source, number, where + reason if where else reason))

        if error:
            bad(error)
            continue
        if not isinstance(row, dict):
            bad(f"expected an object, got {type(row).__name__}")
            continue
        lowered = {str(k).lower(): v for k, v in row.items()}
        image = next((lowered[k] for k in IMAGE_KEYS if isinstance(lowered.get(k), str) and lowered[k].strip()), None)
        if image is None:
            bad(f"no image path (one of {', '.join(IMAGE_KEYS)})")
            continue
        captions = _captions(lowered)
        if not captions:
            bad("no caption")
            continue
        path = _resolve(base, image)
        if check_files and not path.is_file():
            bad(f"image not found: {path}")
            continue
        entry = merged.setdefault(path, ([], _split_name(lowered.get("split"))))
        entry[0].extend(c for c in captions if c not in entry[0])
    items = [CaptionedImage(path, tuple(caps), split) for path, (caps, split) in merged.items()]
    return items, problems


def _captions(row: dict) -> list[str]:
    found: list[str] = []
    for key in TEXT_KEYS + LIST_KEYS:
        value = row.get(key)
        values = value if isinstance(value, list) else [value]
        for caption in values:
            if isinstance(caption, dict):  # Karpathy-style {"raw": ...}
                caption = caption.get("raw") or caption.get("caption") or caption.get("text")
            if isinstance(caption, str) and caption.strip():
                found.append(" ".join(caption.split()))
    return found


def _resolve(base: Path, image: str) -> Path:
    path = Path(image.strip()).expanduser()
    return path if path.is_absolute() else base / path


def _karpathy(source: str, images: Sequence[object], base: Path, check_files: bool) -> tuple[list[CaptionedImage], list[BadRow]]:
    items: list[CaptionedImage] = []
    problems: list[BadRow] = []
    for number, entry in enumerate(images, 1):
        if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str):
            problems.append(BadRow(source, number, "entry has no 'filename'"))
            continue
        captions = _captions({"sentences": entry.get("sentences") or []})
        if not captions:
            problems.append(BadRow(source, number, f"entry {entry['filename']} has no sentences"))
            continue
        folder = entry.get("filepath") if isinstance(entry.get("filepath"), str) else ""
        path = _karpathy_path(base, folder, entry["filename"])
        if check_files and not path.is_file():
            problems.append(BadRow(source, number, f"entry image not found: {path}"))
            continue
        items.append(CaptionedImage(path, tuple(captions), _split_name(entry.get("split"))))
    return items, problems


def _karpathy_path(base: Path, folder: str, filename: str) -> Path:
    """COCO entries name ``filepath`` (train2014/val2014); Flickr30k entries do not."""
    direct = base / folder / filename
    if direct.is_file():
        return direct
    for candidate in (base / filename, base / "images" / folder / filename, base / "images" / filename,
                      base / "flickr30k-images" / filename):
        if candidate.is_file():
            return candidate
    return direct


def _read_folder(folder: Path, root: Path | None) -> Dataset:
    items: list[CaptionedImage] = []
    problems: list[BadRow] = []
    images = sorted(p for p in (root or folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    for image in images:
        rel = image.relative_to(root or folder)
        caption_file = folder / rel.with_suffix(".txt")
        if not caption_file.is_file():
            problems.append(BadRow(str(image), 0, f"no caption file {caption_file.name}"))
            continue
        try:
            lines = caption_file.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError as exc:
            problems.append(BadRow(str(caption_file), 0, f"cannot read: {exc}"))
            continue
        captions = tuple(dict.fromkeys(" ".join(line.split()) for line in lines if line.strip()))
        if not captions:
            problems.append(BadRow(str(caption_file), 1, "empty caption file"))
            continue
        split = rel.parts[0] if len(rel.parts) > 1 and _split_name(rel.parts[0]) in ("train", "val", "test") else None
        items.append(CaptionedImage(image, captions, _split_name(split)))
    if not items:
        detail = f"; first problem: {problems[0]}" if problems else ""
        raise DatasetError(f"{folder} holds no images with same-named .txt captions{detail}")
    return Dataset(str(folder), items, problems)
