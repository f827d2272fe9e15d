"""The text tower as an ONNX model, so text queries need neither torch nor open_clip.

Importing torch and open_clip takes seconds; a text query only needs the text tower. When an
index is created (or its model changes) the indexing run (``indexing.exports``) has this tower
(``TOWER``) export ``model.encode_text`` followed by L2 normalisation to
``text_encoder.<fingerprint>.onnx`` (graph) plus ``.onnx.data`` (weights, which onnxruntime maps
into memory instead of parsing them), copy the BPE vocabulary beside it, and records both in the
manifest under ``text_onnx``. A query process then runs
``mmsearch.tokenizer.ClipTokenizer`` and an onnxruntime session: about a tenth of a second
instead of several. The multilingual models (XLM-RoBERTa, NLLB text towers) tokenize with
Hugging Face tokenizers: their pipeline is saved as ``text_encoder.<fingerprint>.tokenizer.json``
and run by ``hf_tokenizer.HFTextTokenizer`` (the ``tokenizers`` library, no transformers); the
Hugging Face text encoder makes its attention mask from the padding id, so the graph still takes
token ids alone.

The export is checked against the torch model before it is published, and skipped (with a
logged warning, never an indexing failure) when the model cannot be exported: onnx or
onnxruntime missing, a tokenizer with no torch-free twin (SigLIP's, a Python-only Hugging Face
tokenizer), an operator the exporter does not support. Queries then use the torch model as before.
``MMSEARCH_ONNX=0`` turns the export and its use off (``Settings.onnx``, passed in as
``enabled``). An unexpected error during an export (a bug, not a model that cannot be
exported) is logged as an error and the export is tried again by the next run: it never marks
the index as "torch only" for good.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import OnnxTextUnavailable
from ..fsutil import file_digest, fsync_dir
from . import onnx_export
from .hf_tokenizer import KIND as HF_TOKENIZER_KIND
from .hf_tokenizer import HFTextTokenizer, describe
from .onnx_export import CACHE_RECORD, OPSET, cache_dir  # noqa: F401 - part of this module's interface
from .onnx_export import first_line as _first_line
from .onnx_export import l2 as _l2
from .onnx_export import now as _now
from .tokenizer import ClipTokenizer, bundled_vocab

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable

    from .torch_encoder import TorchEncoder as Encoder

log = logging.getLogger(__name__)

MANIFEST_KEY = "text_onnx"
TOKENIZER_KIND = "clip_bpe"
# CLIP's BPE (``tokenizer.ClipTokenizer``) and the multilingual models' Hugging Face tokenizers
# (``hf_tokenizer.HFTextTokenizer``, whose pipeline is saved beside the graph).
TOKENIZER_KINDS = (TOKENIZER_KIND, HF_TOKENIZER_KIND)
VOCAB_COPY = "clip_bpe_vocab.txt.gz"
FILE_PREFIX = "text_encoder."
_TEMP_PREFIX, _TEMP_SUFFIX = ".text_onnx.", ".tmp"
# Texts per session run: CLIP's 77 tokens make one text cheap, a batch bounds the memory.
BATCH = 64
# Embeddings of the exported model must match torch's this closely before it is published.
MIN_COSINE = 0.9999
# Texts that exercise the tokenizer and the model in the export checks.
PROBE_TEXTS = [
    "a photo of a dog",
    "",
    "Crème brûlée &amp; café au lait, 2 cups ☕",
    "東京の夜景 🌃 night skyline",
    "it's a LONG text: " + "many words repeated again and again " * 12,
    # For the multilingual models' tokenizers: case, scripts, special-token look-alikes, spacing.
    "Ein Hund läuft über die Wiese", "Привет, мир! مرحبا بالعالم", "<s> </s> <pad> <mask> <unk>", "  tab\tand  spaces  ",
]


# What a Hugging Face tokenizer's normaliser and pre-tokeniser may treat apart (Unicode forms,
# widths, ligatures, invisible and control characters, scripts without spaces, right to left),
# checked against transformers before its pipeline stands in for it.
HF_PROBE_TEXTS = [
    "e\u0301 é Å Å ﬁ ｆｕｌｌｗｉｄｔｈ ① ½ ㈱", "zero\u200bwidth\u200djoin no\u00a0break\u2028line\u3000ideo",
    "a\x0bb\x07c\x1b[31m d\x00e", "ภาษาไทย हिन्दी भाषा עברית ελληνικά 中文字符 가", "İstanbul ǅ ß ẞ ΣΊΣΥΦΟΣ",
    "&amp;lt;b&amp;gt; &quot;hi&quot; &#39;x&#39;", "👨‍👩‍👧 👍🏽 🇫🇷 ☕️", "東京" * 60, "mid</s>dle<s>x<pad>y",
]


def _threads() -> int:
    # A 77-token text tower stops scaling beyond a handful of cores.
    return max(1, min(onnx_export.available_cpus(), 8))


# -- the writer side -------------------------------------------------------------------------------
def export_needed(manifest: dict[str, Any], enabled: bool = True) -> bool:
    """True when the index has no usable export for its model and none was found impossible."""
    return onnx_export.export_needed(manifest, TOWER, enabled)


def produce(folder: Path, fingerprint: str, old: dict[str, Any] | None, load: Callable[[], Encoder],
            entry: Path) -> dict[str, Any]:
    """The text tower of the model ``fingerprint`` exported into ``folder``: taken from the cache
    ``entry`` when there, else exported from ``load()``'s torch encoder and kept in the cache."""
    record = _from_cache(folder, fingerprint, entry)
    if record is None:
        record = export_text_encoder(load(), folder, fingerprint)
        _to_cache(folder, record, entry)
    return record


def _parts(record: dict[str, Any]) -> dict[str, str]:
    """The files of an export by digest key, the graph last (it names the weights). A Hugging
    Face tokenizer's pipeline belongs to its export (CLIP's vocabulary is one shared file)."""
    tokenizer = record.get("tokenizer") or {}
    if tokenizer.get("kind") == HF_TOKENIZER_KIND:
        return {"data": record["data"], "vocab": tokenizer["vocab"], "graph": record["file"]}
    return {"data": record["data"], "graph": record["file"]}


def _from_cache(folder: Path, fingerprint: str, entry: Path) -> dict[str, Any] | None:
    """The cached export of this model (``entry``) linked (or copied) into ``folder``, or None."""
    record = onnx_export.from_cache(folder, entry, fingerprint, _parts, (_TEMP_PREFIX, _TEMP_SUFFIX))
    if record is None:
        return None
    if "vocab" in _parts(record):
        return record  # the tokenizer came with the export, digest-checked
    _copy_vocab(folder)
    fsync_dir(folder)
    return dict(record, digests=dict(record["digests"], vocab=file_digest(folder / VOCAB_COPY)))


def _to_cache(folder: Path, record: dict[str, Any], entry: Path) -> None:
    """Keep a fresh export for later indexes of the same model (best effort: never fails indexing)."""
    if record.get("status") == "ok":
        onnx_export.to_cache(folder, record, entry, list(_parts(record).values()), (_TEMP_PREFIX, _TEMP_SUFFIX), log)


def export_text_encoder(encoder: Encoder, folder: Path, fingerprint: str) -> dict[str, Any]:
    """Write the ONNX text encoder and vocabulary into ``folder``; returns the manifest record.

    Raises ``OnnxTextUnavailable`` when the model or this installation cannot do it.
    """
    started = time.perf_counter()
    try:
        import onnx  # noqa: F401 - needed by the export
        import onnxruntime
        import torch
    except ImportError as exc:
        raise OnnxTextUnavailable(f"{exc.name or exc} is not installed") from exc
    name = f"{FILE_PREFIX}{fingerprint[:16]}.onnx"
    tmp = Path(tempfile.mkdtemp(prefix=_TEMP_PREFIX, suffix=_TEMP_SUFFIX, dir=folder))
    try:
        tokenizer, tokenizer_record = _check_tokenizer(encoder, tmp, f"{FILE_PREFIX}{fingerprint[:16]}.tokenizer.json")
        model = _cpu_fp32(encoder.model, torch)
        wrapper = _text_tower(model, torch).eval()
        raw = tmp / "raw.onnx"
        example = torch.from_numpy(tokenizer(PROBE_TEXTS[:2]))
        exporter = onnx_export.export_module(wrapper, example, raw, "tokens", torch, OnnxTextUnavailable)
        onnx_export.save_external(raw, tmp / name)
        diff = _verify(wrapper, tokenizer, tmp / name, torch)
        digests = {"graph": file_digest(tmp / name), "data": file_digest(tmp / f"{name}.data")}
        own_vocab = tokenizer_record["kind"] == HF_TOKENIZER_KIND  # saved with the export, not shared
        if own_vocab:
            digests["vocab"] = file_digest(tmp / tokenizer_record["vocab"])
        # The graph last: it names the weights file.
        onnx_export.publish(tmp, folder, [f"{name}.data", *([tokenizer_record["vocab"]] if own_vocab else []), name])
        if not own_vocab:
            _copy_vocab(folder)
            digests["vocab"] = file_digest(folder / VOCAB_COPY)
        fsync_dir(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "status": "ok",
        "file": name,
        "data": f"{name}.data",
        "fingerprint": fingerprint,
        "dim": int(encoder.dim),
        "context_length": int(tokenizer.context_length),
        "tokenizer": tokenizer_record,
        "opset": OPSET,
        "exporter": exporter,
        "max_abs_diff": diff,
        "exported_at": _now(),
        # Checked cheaply whenever the encoder is loaded, fully by `mmsearch check`: a file
        # swapped for another model's export of the same size must never answer queries.
        "digests": digests,
        "export_seconds": round(time.perf_counter() - started, 2),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def _check_tokenizer(encoder: Encoder, tmp: Path, hf_file: str) -> tuple[ClipTokenizer | HFTextTokenizer, dict]:
    """Our tokenizer for the encoder's and its manifest record, or the reason it cannot stand in
    for it. A Hugging Face tokenizer's pipeline is written to ``tmp / hf_file``."""
    theirs = encoder.tokenizer
    kind = type(theirs).__name__
    if kind == "HFTokenizer":
        return _check_hf_tokenizer(theirs, tmp, hf_file)
    if kind != "SimpleTokenizer":
        raise OnnxTextUnavailable(f"the model uses {kind}, not CLIP's BPE tokenizer nor a Hugging Face one")
    clean = getattr(getattr(theirs, "clean_fn", None), "__name__", "")
    if getattr(theirs, "reduction_fn", None) is not None or clean != "_clean_lower":
        raise OnnxTextUnavailable("the model's tokenizer has non-default cleaning or token reduction")
    vocab = bundled_vocab()
    if vocab is None:
        raise OnnxTextUnavailable("open_clip's BPE vocabulary file was not found")
    ours = ClipTokenizer(vocab, context_length=int(theirs.context_length))
    if ours.vocab_size != getattr(theirs, "vocab_size", None):
        raise OnnxTextUnavailable("the model's tokenizer has extra special tokens")
    if not np.array_equal(ours(PROBE_TEXTS), theirs(PROBE_TEXTS).numpy()):
        raise OnnxTextUnavailable("the model's tokenizer gives other token ids than CLIP's BPE")
    return ours, {"kind": TOKENIZER_KIND, "clean": "lower", "vocab": VOCAB_COPY}


def _check_hf_tokenizer(theirs: Any, tmp: Path, file: str) -> tuple[HFTextTokenizer, dict]:
    """The torch-free twin of open_clip's ``HFTokenizer`` (multilingual models), its pipeline
    saved as ``tmp / file``, after checking that it gives the same ids on the probe texts."""
    try:
        document, settings = describe(theirs)
        (tmp / file).write_text(document, encoding="utf-8")
        ours = HFTextTokenizer(tmp / file, **settings)
    except ImportError as exc:
        raise OnnxTextUnavailable(f"{exc.name or exc} is not installed") from exc
    except ValueError as exc:  # no torch-free twin (a Python tokenizer, other cleaning) or a bad file
        raise OnnxTextUnavailable(f"the model's Hugging Face tokenizer cannot run without transformers: {exc}") from exc
    probes = PROBE_TEXTS + HF_PROBE_TEXTS
    if not np.array_equal(ours(probes), theirs(probes).numpy()):
        raise OnnxTextUnavailable("the tokenizers library gives other token ids than the model's Hugging Face tokenizer")
    made_by = getattr(sys.modules.get("transformers"), "__version__", None)  # for diagnosis only
    return ours, {"kind": HF_TOKENIZER_KIND, "vocab": file, "transformers": made_by,
                  **{k: v for k, v in settings.items() if k != "context_length"}}


def _cpu_fp32(model: Any, torch: Any) -> Any:
    """``model`` itself when its text side is on the CPU in float32, else a float32 CPU copy.

    The image tower does not matter here (it may run in bfloat16 on CPUs with AMX, see
    ``Encoder``); a CUDA float16 model is copied, from weights already rounded to float16.
    """
    text_side = (p for name, p in model.named_parameters() if not name.startswith("visual."))
    if all(p.device.type == "cpu" and p.dtype == torch.float32 for p in text_side):
        return model
    return copy.deepcopy(model).to(device="cpu", dtype=torch.float32)


def _text_tower(model: Any, torch: Any) -> Any:
    """A module computing L2-normalised ``model.encode_text(tokens)``."""

    class TextTower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, tokens):  # noqa: ANN001
            features = self.model.encode_text(tokens)
            return features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    return TextTower()


def _verify(wrapper: Any, tokenizer: ClipTokenizer, path: Path, torch: Any) -> float:
    """Max abs difference between ONNX and torch on the probe texts; raises if too far apart."""
    try:
        session = _session(path)
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own exception types
        raise OnnxTextUnavailable(f"onnxruntime cannot load the export: {_first_line(exc)}") from exc
    tokens = tokenizer(PROBE_TEXTS)
    worst = 0.0
    for batch in (tokens, tokens[:1]):  # batch sizes other than the example's
        try:
            got = session.run(None, {"tokens": batch})[0]
        except Exception as exc:  # noqa: BLE001
            raise OnnxTextUnavailable(f"the export does not run: {_first_line(exc)}") from exc
        with torch.no_grad():
            want = wrapper(torch.from_numpy(batch)).numpy()
        cosine = float((_l2(got) * _l2(want)).sum(axis=1).min())
        if got.shape != want.shape or cosine < MIN_COSINE:
            raise OnnxTextUnavailable(f"the export disagrees with torch (cosine {cosine:.6f})")
        worst = max(worst, float(np.abs(got - want).max()))
    del session
    return worst


def _copy_vocab(folder: Path) -> None:
    source, target = bundled_vocab(), folder / VOCAB_COPY
    if source is None:
        raise OnnxTextUnavailable("open_clip's BPE vocabulary file was not found")
    if target.is_file() and target.read_bytes() == source.read_bytes():
        return
    tmp = folder / f"{_TEMP_PREFIX}vocab{_TEMP_SUFFIX}"
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)


# -- the query side ----------------------------------------------------------------------------------
def _session(path: Path) -> Any:
    return onnx_export.session(path, _threads())


def usable_record(manifest: dict[str, Any], enabled: bool = True) -> dict[str, Any] | None:
    """The manifest's export record when it is complete and belongs to the index's model."""
    return onnx_export.usable_record(manifest, TOWER, enabled)


def export_files(folder: Path, record: dict[str, Any]) -> dict[str, Path]:
    """The files of an export record, by digest key."""
    return {"graph": folder / record["file"], "data": folder / record["data"],
            "vocab": folder / record.get("tokenizer", {}).get("vocab", VOCAB_COPY)}


def export_mismatch(folder: Path, record: dict[str, Any], full: bool = False) -> str | None:
    """Why the export files in ``folder`` are not the ones ``record`` describes (None: they
    are, or the record predates digests). Cheap unless ``full``."""
    return onnx_export.mismatch(export_files(folder, record), record.get("digests"), full)


class Preload:
    """An ONNX text encoder loading in a background thread (see ``preload``)."""

    def __init__(self, folder: Path, record: dict[str, Any], texts: list[str]):
        self.folder = folder
        self.record = record
        self._future: Future = Future()
        # Not a daemon: a process that exits (an error reported at once, say) waits for the load
        # to end. onnxruntime aborts the whole process ("terminate called without an active
        # exception") when the interpreter shuts down under a session still being built.
        threading.Thread(target=self._work, args=(list(texts),), name="mmsearch-onnx-preload", daemon=False).start()

    def _work(self, texts: list[str]) -> None:
        try:
            encoder = OnnxTextEncoder(self.folder, self.record)
            if texts:
                encoder.remember(texts)
            self._future.set_result(encoder)
        except BaseException as exc:  # noqa: BLE001 - handed to whoever collects it
            self._future.set_exception(exc)

    def matches(self, folder: Path, record: dict[str, Any]) -> bool:
        return Path(folder).absolute() == self.folder and record.get("file") == self.record.get("file") \
            and record.get("exported_at") == self.record.get("exported_at")

    def result(self) -> OnnxTextEncoder:
        return self._future.result()


def preload(folder: str | Path, texts: list[str] = (), enabled: bool = True) -> Preload | None:
    """Start loading ``folder``'s text encoder in a background thread, if it has one, and
    encode ``texts`` with it; hand the result to the Engine (``Engine(text_encoder=...)``).

    onnxruntime builds its session (~0.3 s for ViT-B-32) and runs the model without holding the
    GIL, so a one-shot query overlaps both with importing the database and FAISS layers.
    """
    folder = Path(folder).expanduser().absolute()
    manifest = onnx_export.read_manifest(folder)
    record = usable_record(manifest, enabled) if manifest is not None else None  # None: not an index (yet)
    return Preload(folder, record, list(texts)) if record is not None else None


def load(folder: Path, record: dict[str, Any], preloaded: Preload | None = None) -> OnnxTextEncoder:
    """The encoder for ``record``: the preloaded one when it is for this export, else loaded now."""
    if preloaded is not None and preloaded.matches(folder, record):
        return preloaded.result()
    return OnnxTextEncoder(folder, record)


class OnnxTextEncoder:
    """Texts in, L2-normalised float32 vectors out, with onnxruntime and no torch (a ``TextEncoder``).

    ``run`` on one session is thread-safe in onnxruntime, so one instance serves every thread.
    """

    def __init__(self, folder: Path, record: dict[str, Any]):
        graph = folder / record["file"]
        if not graph.is_file() or not (folder / record["data"]).is_file():
            raise OnnxTextUnavailable(f"{graph.name} or its weights file is missing")
        vocab = folder / record["tokenizer"].get("vocab", VOCAB_COPY)
        problem = export_mismatch(folder, record)
        if problem:
            raise OnnxTextUnavailable(problem)
        try:
            if record["tokenizer"]["kind"] == HF_TOKENIZER_KIND:
                self.tokenizer = HFTextTokenizer.from_record(vocab, record)
            else:
                self.tokenizer = ClipTokenizer(vocab if vocab.is_file() else None, int(record["context_length"]))
            self.session = _session(graph)
        except Exception as exc:  # noqa: BLE001 - a corrupt file, onnxruntime's own errors, no onnxruntime
            raise OnnxTextUnavailable(f"cannot load {graph.name}: {type(exc).__name__}: {_first_line(exc)}") from exc
        self.record = record
        self.kind = "onnx"
        self.dim = int(record["dim"])
        self._lock = threading.Lock()  # guards the tokenizer's cache (sessions need none)
        self._remembered: dict[str, np.ndarray] = {}  # vectors encoded ahead by ``preload``

    def remember(self, texts: list[str]) -> None:
        """Encode ``texts`` now, in one batch; later ``encode_texts`` calls asking for any of them
        (a query encodes its terms one at a time) take each remembered vector once."""
        vectors = self.encode_texts(texts)
        self._remembered = dict(zip(texts, vectors))

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.empty((0, self.dim), np.float32)
        if self._remembered and all(t in self._remembered for t in texts):
            found = np.stack([self._remembered[t] for t in texts])
            for text in set(texts):
                del self._remembered[text]
            return found
        with self._lock:
            tokens = self.tokenizer(texts)
        parts = []
        for start in range(0, len(tokens), BATCH):
            try:
                parts.append(self.session.run(None, {"tokens": tokens[start:start + BATCH]})[0])
            except Exception as exc:  # noqa: BLE001 - onnxruntime's own exception types
                raise OnnxTextUnavailable(f"the ONNX text encoder failed: {_first_line(exc)}") from exc
        vectors = _l2(np.concatenate(parts))
        if vectors.shape[1] != self.dim:
            raise OnnxTextUnavailable(f"the ONNX text encoder gives {vectors.shape[1]}-d vectors, not {self.dim}")
        return vectors


TOWER = onnx_export.Tower(
    name="text", key=MANIFEST_KEY, file_prefix=FILE_PREFIX, temp=(_TEMP_PREFIX, _TEMP_SUFFIX), cache_suffix="",
    unavailable=OnnxTextUnavailable, parts=_parts, produce=produce, outdated=lambda record: False,
    usable=lambda record: (record.get("tokenizer") or {}).get("kind") in TOKENIZER_KINDS, log=log,
)
