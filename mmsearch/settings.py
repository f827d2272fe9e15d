"""Every ``MMSEARCH_*`` environment variable, parsed once into one typed ``Settings`` object.

The table ``VARIABLES`` is the single description of each variable: its name, the field it
fills, how its value is read, its default and what it does. ``Settings.from_env()`` reads them
all at once (the CLI at start, an ``Engine`` when it is made), so a bad value fails at once with
a message naming the variable, never in the middle of a query. The README's table of variables
is checked against this one by a test.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import SettingsError

# -- parsers: text of the variable -> value, or ValueError with what is expected -------------------
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _flag(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError("expected 1/0, true/false, yes/no or on/off")


def _auto_flag(text: str) -> str:
    value = text.strip().lower()
    if value == "auto":
        return "auto"
    return "on" if _flag(value) else "off"


IMAGE_ENCODERS = ("auto", "torch", "onnx", "onnx-int8")


def _image_encoder(text: str) -> str:
    value = text.strip().lower()
    if value not in IMAGE_ENCODERS:
        raise ValueError(f"expected one of {', '.join(IMAGE_ENCODERS)}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError("expected a whole number") from None
    if value < 1:
        raise ValueError("expected a whole number of at least 1")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError("expected a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError("expected a positive number of seconds")
    return value


def _text(text: str) -> str:
    value = text.strip()
    if not value:
        raise ValueError("expected a non-empty value")
    return value


def _path(text: str) -> Path:
    return Path(_text(text)).expanduser()


def _words(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _db_url(text: str) -> str:
    value = _text(text)
    if not value.startswith(("postgresql://", "postgresql+psycopg://")):
        raise ValueError("expected a PostgreSQL URL, postgresql+psycopg://USER@HOST/DB")
    return value


@dataclass(frozen=True)
class Variable:
    name: str
    field: str
    parse: Callable[[str], Any]
    help: str


VARIABLES: tuple[Variable, ...] = (
    Variable("MMSEARCH_INDEX", "index", _path, "index folder used when none is given (default: ./indexes/default where it exists, else the user's default index)"),
    Variable("MMSEARCH_MODEL", "model", _text, "model of new indexes (an open_clip name, config, hf-hub:, local-dir: or training folder)"),
    Variable("MMSEARCH_PRETRAINED", "pretrained", _text, "weights of new indexes (a tag, a checkpoint file, or none)"),
    Variable("MMSEARCH_CACHE", "cache", _path, "where ONNX exports are cached for reuse (default: the user cache folder)"),
    Variable("MMSEARCH_ONNX", "onnx", _flag, "0 turns off the ONNX text and image encoders (export and use): queries load torch"),
    Variable("MMSEARCH_IMAGE_ENCODER", "image_encoder", _image_encoder, "what encodes images: auto (measured fastest for indexing, ONNX for queries), torch, onnx or onnx-int8"),
    Variable("MMSEARCH_CPU_BF16", "cpu_bf16", _auto_flag, "torch image tower in bfloat16 on the CPU: auto (where AMX units exist), 1 or 0"),
    Variable("MMSEARCH_FAISS_GPU", "faiss_gpu", _flag, "0 keeps vector search on the CPU even where FAISS sees a GPU"),
    Variable("MMSEARCH_FLAT_MAX", "flat_max", _positive_int, "item count from which the automatic vector index is an IVF (50000)"),
    Variable("MMSEARCH_NLIST", "nlist", _positive_int, "IVF cells of indexes built from now on (default about sqrt(items))"),
    Variable("MMSEARCH_NPROBE", "nprobe", _positive_int, "IVF cells probed per query (default: the index's own)"),
    Variable("MMSEARCH_RERANK", "rerank", _positive_int, "candidates re-ranked exactly for a top-10 query on an IVF (50 or 400)"),
    Variable("MMSEARCH_MAX_PIXELS", "max_pixels", _positive_int, "largest image decoded, in pixels after reduced JPEG decoding (64000000)"),
    Variable("MMSEARCH_DECODE_TIMEOUT", "decode_timeout", _seconds, "seconds one file may take to decode before it is abandoned (60)"),
    Variable("MMSEARCH_VIDEO_INTERVAL", "video_interval", _seconds, "seconds between the frames sampled from videos (2; scene cuts are added)"),
    Variable("MMSEARCH_VIDEO_MAX_FRAMES", "video_max_frames", _positive_int, "most frames kept per video, spread over its length (600)"),
    Variable("MMSEARCH_CHECKPOINT_SECONDS", "checkpoint_seconds", _seconds, "seconds between saves of the vector index during a long run (120)"),
    Variable("MMSEARCH_TOKEN", "token", _text, "bearer token the server requires and the client sends"),
    Variable("MMSEARCH_ALLOWED_HOSTS", "allowed_hosts", _words, "comma-separated host names the server accepts besides its own addresses"),
    Variable("MMSEARCH_URL", "url", _text, "server the Python client talks to (default http://127.0.0.1:8000)"),
    Variable("MMSEARCH_DB", "db", _db_url, "PostgreSQL catalogue shared by several machines (postgresql+psycopg://USER@HOST/DB), as --db"),
)


@dataclass(frozen=True)
class Settings:
    """What the environment says, typed. Fields left None mean "choose by the situation"."""

    index: Path | None = None
    model: str | None = None
    pretrained: str | None = None
    cache: Path | None = None
    onnx: bool = True
    image_encoder: str = "auto"  # auto | torch | onnx | onnx-int8
    cpu_bf16: str = "auto"  # auto | on | off
    faiss_gpu: bool = True
    flat_max: int = 50_000
    nlist: int | None = None
    nprobe: int | None = None
    rerank: int | None = None
    max_pixels: int = 64_000_000
    decode_timeout: float = 60.0
    video_interval: float = 2.0
    video_max_frames: int = 600
    checkpoint_seconds: float = 120.0
    token: str | None = None
    allowed_hosts: tuple[str, ...] = field(default=())
    url: str | None = None
    db: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Every variable of ``VARIABLES`` read from ``environ`` (default ``os.environ``); a bad
        value raises ``SettingsError`` naming the variable and what it expects. Empty values
        count as unset."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for variable in VARIABLES:
            raw = environ.get(variable.name)
            if raw is None or not raw.strip():
                continue
            try:
                values[variable.field] = variable.parse(raw)
            except ValueError as exc:
                raise SettingsError(f"{variable.name}={raw!r}: {exc} ({variable.help})") from None
        return cls(**values)

    def but(self, **changes: Any) -> Settings:
        """A copy with some fields changed."""
        return replace(self, **changes)

    def default_index(self) -> Path:
        """``index``; else, with a database, this machine's cache folder of it; else
        ./indexes/default where that folder exists (an index kept with a project); else the
        user's own default index in the platform's data folder (``user_default_index``), the same
        from every folder."""
        if self.index is not None:
            return self.index
        if self.db is not None:
            return database_cache_folder(self.db)
        local = Path("indexes") / "default"
        return local if local.is_dir() else user_default_index()

    def default_index_rule(self) -> str:
        """Where the default index is looked for, and how to name another (for error messages)."""
        return (f"the default index is ./indexes/default where that folder exists, else {user_default_index()}; "
                f"name another with --index DIR or MMSEARCH_INDEX")


def user_default_index() -> Path:
    """The user's default index: ``indexes/default`` in the platform's user data folder
    (``~/.local/share/mmsearch`` on Linux, ``~/Library/Application Support/mmsearch`` on macOS,
    ``%LOCALAPPDATA%\\mmsearch`` on Windows), so one library answers from any folder."""
    import platformdirs

    return Path(platformdirs.user_data_path("mmsearch")) / "indexes" / "default"


def database_cache_folder(url: str) -> Path:
    """The index folder this machine keeps for the database at ``url`` when no --index is given:
    one per database (user, host, port and name; never the password), in the user cache folder."""
    import hashlib
    import re

    import platformdirs

    bare = re.sub(r"^postgresql(\+psycopg)?://", "", url.strip())
    bare = re.sub(r"^([^:@/]*):[^@/]*@", r"\1@", bare)  # no password in a folder name or its hash
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", bare.split("?")[0].split("@")[-1]).strip("-")[:48] or "db"
    digest = hashlib.sha256(bare.encode()).hexdigest()[:12]
    return Path(platformdirs.user_cache_path("mmsearch")) / "databases" / f"{name}-{digest}"


def documented_fields() -> set[str]:
    return {f.name for f in fields(Settings)}
