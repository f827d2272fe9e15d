"""CLIP's byte-level BPE tokenizer without torch: texts in, int64 token-id arrays out.

open_clip's ``SimpleTokenizer`` imports torch, which takes seconds to load; a text query on an
index with an ONNX text encoder (``mmsearch.onnx_text``) needs only this module, numpy, ftfy
and regex. It reproduces open_clip's ``clean='lower'`` tokenizer exactly (the tests compare ids
on many strings): ftfy repair, HTML unescaping (twice), whitespace collapsing, lower case, the
CLIP pre-tokenizer regex, byte-to-unicode mapping, BPE merges by rank, start/end tokens, and
truncation to the context length that keeps the end token last.
"""

from __future__ import annotations

import gzip
import html
import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np

# The vocabulary file open_clip ships (merge rules, one "a b" pair per line after a header).
VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
# CLIP uses the first 49152 - 256 - 2 merge rules: 256 byte symbols, 256 byte symbols with the
# end-of-word marker, the merges, and two special tokens make the 49408-entry vocabulary.
N_MERGES = 49152 - 256 - 2
START, END = "<start_of_text>", "<end_of_text>"
WORD_END = "</w>"
DEFAULT_CONTEXT_LENGTH = 77


def bundled_vocab() -> Path | None:
    """The vocabulary file inside the installed open_clip package (found without importing it)."""
    spec = importlib.util.find_spec("open_clip")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / VOCAB_FILE
        if path.is_file():
            return path
    return None


@lru_cache(maxsize=1)
def _byte_symbols() -> list[tuple[int, str]]:
    """(byte, printable unicode character) for every byte value, in vocabulary order.

    Printable Latin-1 bytes stand for themselves and come first; the others (controls, space, a
    few more) follow in byte order, mapped to code points from 256 upwards.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    pairs = [(b, chr(b)) for b in printable]
    others = [b for b in range(256) if b not in set(printable)]
    pairs += [(b, chr(256 + n)) for n, b in enumerate(others)]
    return pairs


def _read_merges(path: Path) -> list[str]:
    """The first ``N_MERGES`` merge rules ("a b" lines after the header line).

    The file holds far more rules than CLIP uses; only the needed head is decompressed.
    """
    chunks: list[bytes] = []
    newlines = 0
    with gzip.open(path) as fh:
        while newlines <= N_MERGES:
            chunk = fh.read(1 << 18)
            if not chunk:
                break
            chunks.append(chunk)
            newlines += chunk.count(b"\n")
    # A multi-byte character cut at the end of the last chunk lies past the lines kept.
    lines = b"".join(chunks).decode("utf-8", errors="replace").split("\n", N_MERGES + 1)
    return lines[1:N_MERGES + 1]


# Characters for which ftfy.fix_text changes nothing that survives whitespace cleaning: printable
# ASCII without '&' (HTML entities), plus tab and line breaks ('\r' becomes '\n' either way).
_PLAIN = frozenset(chr(c) for c in range(0x20, 0x7F)) - {"&"} | {"\t", "\n", "\r"}


def clean_whitespace(text: str) -> str:
    """open_clip's ``clean='whitespace'`` (``_clean_whitespace``): ftfy repair, HTML unescaping
    twice, whitespace collapsed; case kept. The Hugging Face tokenizers' cleaning, and CLIP's
    before lower-casing."""
    if not _PLAIN.issuperset(text):
        import ftfy  # 40 ms to import: plain ASCII queries skip it (it would change nothing)

        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split())


class ClipTokenizer:
    """open_clip's default CLIP tokenizer (``SimpleTokenizer`` with ``clean='lower'``), torch-free."""

    def __init__(self, vocab_path: str | Path | None = None, context_length: int = DEFAULT_CONTEXT_LENGTH):
        path = Path(vocab_path) if vocab_path is not None else bundled_vocab()
        if path is None:
            raise FileNotFoundError(f"{VOCAB_FILE} not found (is open_clip_torch installed?)")
        import regex

        merges = [tuple(line.split()) for line in _read_merges(path)]
        if len(merges) != N_MERGES or any(len(m) != 2 for m in merges):
            raise ValueError(f"{path} is not a CLIP BPE vocabulary ({len(merges)} merge rules)")
        # Vocabulary: the 256 byte symbols, the same with the end-of-word marker, one token per
        # merge rule (its joined pair, id 512 + rank), then the two special tokens.
        symbols = [symbol for _, symbol in _byte_symbols()]
        self._symbol_ids = {s: i for i, s in enumerate([*symbols, *(s + WORD_END for s in symbols)])}
        self._merge_base = len(self._symbol_ids)
        self.ranks: dict[tuple[str, str], int] = {pair: i for i, pair in enumerate(merges)}
        self.start_id = self._merge_base + N_MERGES
        self.end_id = self.start_id + 1
        self.vocab_size = self.end_id + 1
        self.context_length = int(context_length)
        self._byte_table = dict(_byte_symbols())  # byte -> symbol, for str.translate
        self._cache: dict[str, list[int]] = {START: [self.start_id], END: [self.end_id]}
        # The special tokens first, then English contractions, letter runs, single digits, and
        # runs of anything else that is not whitespace. Case-insensitive like CLIP's.
        self._pattern = regex.compile(
            rf"{START}|{END}|'s|'t|'re|'ve|'m|'ll|'d|[\p{{L}}]+|[\p{{N}}]|[^\s\p{{L}}\p{{N}}]+",
            regex.IGNORECASE,
        )

    # -- cleaning ----------------------------------------------------------------------------
    @staticmethod
    def clean(text: str) -> str:
        """ftfy repair, HTML unescaping twice, whitespace collapsed, lower case."""
        return clean_whitespace(text).lower()

    # -- BPE ---------------------------------------------------------------------------------
    def _word_ids(self, word: str) -> list[int]:
        """Token ids of one pre-tokenized word (already mapped to byte symbols)."""
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        parts = [*word[:-1], word[-1] + WORD_END]
        ids = [self._symbol_ids[p] for p in parts]
        ranks = self.ranks
        while len(parts) > 1:
            # The adjacent pair with the lowest merge rank is merged everywhere it occurs.
            best, best_rank = None, None
            for pair in zip(parts, parts[1:]):
                rank = ranks.get(pair)
                if rank is not None and (best_rank is None or rank < best_rank):
                    best, best_rank = pair, rank
            if best is None:
                break
            first, second = best
            merged: list[str] = []
            merged_ids: list[int] = []
            i = 0
            while i < len(parts):
                if i + 1 < len(parts) and parts[i] == first and parts[i + 1] == second:
                    merged.append(first + second)
                    merged_ids.append(self._merge_base + best_rank)
                    i += 2
                else:
                    merged.append(parts[i])
                    merged_ids.append(ids[i])
                    i += 1
            parts, ids = merged, merged_ids
        if len(self._cache) < 100_000:
            self._cache[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without start/end tokens or truncation."""
        ids: list[int] = []
        for piece in self._pattern.findall(self.clean(text)):
            word = piece.encode("utf-8").decode("latin-1").translate(self._byte_table)
            ids.extend(self._word_ids(word))
        return ids

    def __call__(self, texts: str | list[str], context_length: int | None = None) -> np.ndarray:
        """An int64 (len(texts), context_length) array: start, tokens, end, zero padding.

        Texts too long for the context are cut; the last position then holds the end token.
        """
        if isinstance(texts, str):
            texts = [texts]
        length = int(context_length or self.context_length)
        out = np.zeros((len(texts), length), np.int64)
        for row, text in enumerate(texts):
            ids = [self.start_id, *self.encode(text), self.end_id]
            if len(ids) > length:
                ids = ids[:length]
                ids[-1] = self.end_id
            out[row, :len(ids)] = ids
        return out
