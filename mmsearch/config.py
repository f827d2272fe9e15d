"""Named constants shared across the package."""

from __future__ import annotations

import os
from pathlib import Path

SCHEMA_VERSION = 1

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"

DEFAULT_INDEX_DIR = Path("indexes") / "default"
INDEX_ENV_VAR = "MMSEARCH_INDEX"

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".avif"})
HEIF_EXTENSIONS = frozenset({".heic", ".heif"})
TEXT_EXTENSIONS = frozenset({".txt", ".md"})
JSONL_EXTENSIONS = frozenset({".jsonl"})

# Text kept in the database for snippets and --json output. The encoder sees only its own
# context length (77 tokens for CLIP), so storing whole books would only bloat the database.
MAX_STORED_TEXT_CHARS = 20_000

# Items encoded per forward pass. Larger batches stop paying off on CPU beyond ~32;
# GPUs want a few hundred to stay busy.
DEFAULT_BATCH_CPU = 32
DEFAULT_BATCH_GPU = 256

# Rows written per database transaction when no encoding is needed (reuse, removal).
WRITE_CHUNK = 2_000

# While indexing, the FAISS file is re-saved at most this often, so queries from other
# processes need to catch up on fewer database rows.
CHECKPOINT_SECONDS = 120.0


def default_index_dir() -> Path:
    """The index folder used when none is given: $MMSEARCH_INDEX or ./indexes/default."""
    env = os.environ.get(INDEX_ENV_VAR)
    return Path(env) if env else DEFAULT_INDEX_DIR


def heif_available() -> bool:
    """True when pillow-heif is installed, so HEIC/HEIF photos can be decoded."""
    try:
        import pillow_heif  # noqa: F401
    except ImportError:
        return False
    return True
