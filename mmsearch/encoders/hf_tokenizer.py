"""The Hugging Face tokenizers of open_clip's multilingual models (XLM-RoBERTa, NLLB, ...)
without torch or transformers: texts in, int64 token-id arrays out.

open_clip's ``HFTokenizer`` wraps ``transformers.AutoTokenizer``: it cleans each text
(``clean='whitespace'`` by default: ftfy repair, HTML unescaping twice, whitespace collapsed,
case kept), then calls the tokenizer with ``truncation=True``, ``padding='max_length'`` and
``max_length=context_length`` (77 unless the config says otherwise), and optionally zeroes the
separator token (``strip_sep_token``). A fast transformers tokenizer runs all of that in its
Rust backend (a ``tokenizers.Tokenizer``), whose whole pipeline (normaliser, pre-tokeniser,
model, post-processor with the special tokens, language code of NLLB) serialises to one JSON
document. The export saves that document beside the ONNX graph (``describe``); a query loads it
with the ``tokenizers`` library and sets the same truncation and padding (``HFTextTokenizer``).
Only the document transformers actually runs is saved, not the repository's tokenizer.json:
transformers may rebuild parts of the pipeline from its tokenizer class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .tokenizer import clean_whitespace

KIND = "hf_tokenizers"
# open_clip's cleaning functions (by ``__name__``) that have a torch-free twin here.
CLEANERS = {"_clean_whitespace": "whitespace", "_clean_lower": "lower"}


class HFTextTokenizer:
    """A ``tokenizers`` pipeline with open_clip's ``HFTokenizer`` cleaning, truncation and padding."""

    def __init__(self, path: str | Path, context_length: int, pad_id: int, pad_token: str,
                 clean: str = "whitespace", padding_side: str = "right", truncation_side: str = "right",
                 strip_sep_id: int | None = None):
        from tokenizers import Tokenizer

        if clean not in CLEANERS.values():
            raise ValueError(f"unknown cleaning {clean!r}")
        self._tokenizer = Tokenizer.from_file(str(path))
        self.context_length = int(context_length)
        self.settings = {"context_length": self.context_length, "pad_id": int(pad_id), "pad_token": str(pad_token),
                         "clean": clean, "padding_side": padding_side, "truncation_side": truncation_side,
                         "strip_sep_id": None if strip_sep_id is None else int(strip_sep_id)}
        # What transformers sets on its backend for truncation=True, padding='max_length'.
        self._tokenizer.enable_truncation(max_length=self.context_length, stride=0, strategy="longest_first",
                                          direction=truncation_side)
        self._tokenizer.enable_padding(direction=padding_side, pad_id=int(pad_id), pad_type_id=0,
                                       pad_token=str(pad_token), length=self.context_length)

    @classmethod
    def from_record(cls, path: Path, record: dict[str, Any]) -> HFTextTokenizer:
        """The tokenizer an export record describes (``record['tokenizer']``, file at ``path``)."""
        keys = ("pad_id", "pad_token", "clean", "padding_side", "truncation_side", "strip_sep_id")
        return cls(path, int(record["context_length"]), **{key: record["tokenizer"][key] for key in keys})

    def clean(self, text: str) -> str:
        text = clean_whitespace(text)
        return text.lower() if self.settings["clean"] == "lower" else text

    def __call__(self, texts: str | list[str]) -> np.ndarray:
        """An int64 (len(texts), context_length) array, as open_clip's ``HFTokenizer`` gives."""
        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            return np.zeros((0, self.context_length), np.int64)
        encodings = self._tokenizer.encode_batch([self.clean(text) for text in texts], add_special_tokens=True)
        ids = np.array([encoding.ids for encoding in encodings], np.int64)
        sep = self.settings["strip_sep_id"]
        if sep is not None:
            ids[ids == sep] = 0
        return ids


def describe(theirs: Any) -> tuple[str, dict[str, Any]]:
    """(the backend tokenizer as JSON, the settings of ``HFTextTokenizer``) of open_clip's
    ``HFTokenizer`` ``theirs``; ValueError when it has no torch-free twin here."""
    if getattr(theirs, "tokenizer_mode", ""):
        raise ValueError(f"tokenizer mode {theirs.tokenizer_mode!r} is not supported")
    clean = CLEANERS.get(getattr(getattr(theirs, "clean_fn", None), "__name__", ""))
    if clean is None:
        raise ValueError("the tokenizer cleans texts other than by whitespace or lower case")
    hf = theirs.tokenizer
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None or not getattr(hf, "is_fast", True):
        raise ValueError(f"{type(hf).__name__} is a Python tokenizer, not one of the tokenizers library")
    if hf.pad_token_id is None or hf.pad_token is None:
        raise ValueError(f"{type(hf).__name__} has no padding token")
    strip_sep = None
    if getattr(theirs, "strip_sep_token", False):
        if hf.sep_token_id is None:
            raise ValueError("strip_sep_token is set but the tokenizer has no separator token")
        strip_sep = int(hf.sep_token_id)
    settings = {
        "context_length": int(theirs.context_length), "pad_id": int(hf.pad_token_id), "pad_token": str(hf.pad_token),
        "clean": clean, "padding_side": str(hf.padding_side), "truncation_side": str(hf.truncation_side),
        "strip_sep_id": strip_sep,
    }
    return backend.to_str(), settings
