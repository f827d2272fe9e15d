"""The torch-free text path: CLIP tokenizer parity, ONNX export parity, no torch import for a
text query, and fallback to torch whenever the export is absent, broken or turned off."""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from mmsearch import Engine
from mmsearch.encoders import onnx_text
from mmsearch.settings import Settings
from mmsearch.encoders.tokenizer import ClipTokenizer

from conftest import make_image

TEXTS = [
    "", " ", "a dog", "A DOG!!", "a photo of a dog", "café naïve résumé Ærøskøbing", "🐶🐱 emoji 👍🏽 👨‍👩‍👧",
    "東京タワーの夜景", "北京烤鸭", "한국어 텍스트", "&amp;lt;b&amp;gt; &quot;hi&quot; &#39;x&#39; &nbsp;x", "x" * 1000,
    "word " * 200, "3.14159 12345 1e10 0x1F", "Hello,   world\t\n\n  spaces", "it's they're we've I'm you'll he'd",
    "IT'S THEY'RE", "<start_of_text> <END_OF_TEXT> mid<end_of_text>dle", "Ã© mojibake Ã¢â‚¬â€œ", "ﬁ ligature ｆｕｌｌｗｉｄｔｈ",
    "\u200b zero\u00a0width\u2028line", "مرحبا بالعالم", "Привет, мир!", "😀" * 100, "tab\tsep", "a\x0bb\x07c\x1b[31mred",
    "https://example.com/a?b=c&d=e#f", "C++ / C# / F# ... --- ***", "ǅ ß ẞ İstanbul ΣΊΣΥΦΟΣ", "e\u0301 vs é", "\r\n\r\n",
    "snake_case camelCase kebab-case", "1,000,000.00 $5 €10 50%", "(parentheses) [brackets] {braces}",
]


def _random_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    pool = [chr(c) for c in range(32, 127)] + list("\t\n\r\x0b\x0c\x00éüßÆ€“”‘’…—ﬁ東京🐶\u200d\u0301&;#")
    return ["".join(rng.choice(pool) for _ in range(rng.randint(0, 80))) for _ in range(n)]


@pytest.fixture(scope="module")
def clip_tokenizer() -> ClipTokenizer:
    return ClipTokenizer()


# -- tokenizer -------------------------------------------------------------------------------------
def test_tokenizer_ids_equal_open_clip(clip_tokenizer):
    import open_clip

    theirs = open_clip.get_tokenizer("ViT-B-32")
    texts = TEXTS + _random_texts(1500)
    ours = clip_tokenizer(texts)
    expected = theirs(texts).numpy()
    assert ours.dtype == np.int64 and ours.shape == expected.shape == (len(texts), 77)
    differ = [texts[i] for i in range(len(texts)) if not np.array_equal(ours[i], expected[i])]
    assert differ == []
    # Other context lengths, as models with longer contexts use.
    assert np.array_equal(clip_tokenizer(TEXTS, context_length=16), theirs(TEXTS, context_length=16).numpy())


def test_tokenizer_truncates_keeping_the_end_token(clip_tokenizer):
    tokens = clip_tokenizer(["word " * 200, "a dog"])
    assert tokens[0, 0] == clip_tokenizer.start_id and tokens[0, -1] == clip_tokenizer.end_id
    assert (tokens[0] != 0).all()
    assert tokens[1, :4].tolist() == [clip_tokenizer.start_id, 320, 1929, clip_tokenizer.end_id]
    assert (tokens[1, 4:] == 0).all()


def test_tokenizer_rejects_a_file_that_is_not_a_vocabulary(tmp_path):
    import gzip

    bad = tmp_path / "vocab.txt.gz"
    bad.write_bytes(gzip.compress(b"header\na b\n"))
    with pytest.raises(ValueError):
        ClipTokenizer(bad)


# -- export and query ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def indexed(tmp_path_factory, tiny_model):
    """An index built with the tiny model (texts and images), exported at creation."""
    base = tmp_path_factory.mktemp("onnx")
    root = base / "corpus"
    for i in range(6):
        make_image(root / f"img{i}.png", seed=i)
    for i, text in enumerate(["a dog running on grass", "a red pasta dish", "sunset over the sea", "東京の夜景"]):
        (root / f"t{i}.txt").write_text(text, encoding="utf-8")
    index = base / "index"
    with Engine(index, model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint)) as engine:
        engine.add([root])
    return index, root


def test_export_is_recorded_and_matches_torch(indexed):
    index, _ = indexed
    with Engine(index) as engine:
        record = engine.store.manifest[onnx_text.MANIFEST_KEY]
        assert record["status"] == "ok" and record["fingerprint"] == engine.store.manifest["model"]["fingerprint"]
        assert record["context_length"] == 77 and record["tokenizer"]["kind"] == "clip_bpe" and record["opset"]
        assert (index / record["file"]).is_file() and (index / record["data"]).is_file()
        assert (index / onnx_text.VOCAB_COPY).is_file()
        texts = TEXTS + _random_texts(40, seed=3)
        fast = engine.encode_texts(texts)
        assert not engine.model_loaded  # the ONNX encoder answered, torch was not needed
        slow = engine.encoder.encode_texts(texts)
    assert fast.dtype == np.float32 and fast.shape == slow.shape
    assert np.allclose(np.linalg.norm(fast, axis=1), 1, atol=1e-5)
    assert (fast * slow).sum(axis=1).min() >= 0.9999


def _query_subprocess(index: Path, text: str, env: dict[str, str] | None = None) -> dict:
    code = (
        "import json, sys\n"
        "from mmsearch.cli import main\n"
        f"sys.argv = ['mmsearch', 'query', {text!r}, '--index', {str(index)!r}, '--json', '--top', '20']\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'open_clip': 'open_clip' in sys.modules}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
    )
    assert result.returncode == 0, result.stderr
    hits_line, modules_line = result.stdout.strip().splitlines()[-2:]
    return {"hits": json.loads(hits_line)["hits"], **json.loads(modules_line)}


def test_cli_text_query_imports_no_torch_and_equals_the_torch_path(indexed):
    index, _ = indexed
    fast = _query_subprocess(index, "a dog on grass")
    assert fast["torch"] is False and fast["open_clip"] is False
    slow = _query_subprocess(index, "a dog on grass", env={"MMSEARCH_ONNX": "0"})
    assert slow["torch"] is True  # the switch really selects the other path
    assert [h["id"] for h in fast["hits"]] == [h["id"] for h in slow["hits"]] and len(fast["hits"]) == 10
    assert np.allclose([h["score"] for h in fast["hits"]], [h["score"] for h in slow["hits"]], atol=1e-5)


def test_search_from_threads_shares_one_session(indexed):
    index, _ = indexed
    queries = ["a dog", "pasta", "sea at sunset", "night city"] * 4
    with Engine(index) as engine:
        expected = {q: [(h.id, round(h.score, 5)) for h in engine.search(q, k=5)] for q in set(queries)}
        session = engine.text_encoder
        assert session.kind == "onnx"
        got: dict[int, list] = {}

        def run(i: int) -> None:
            got[i] = [(h.id, round(h.score, 5)) for h in engine.search(queries[i], k=5)]

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(queries))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert engine.text_encoder is session and not engine.model_loaded
    assert all(got[i] == expected[queries[i]] for i in range(len(queries)))


@pytest.fixture
def index_copy(indexed, tmp_path):
    import shutil

    index, root = indexed
    copy = tmp_path / "index"
    shutil.copytree(index, copy)
    return copy, root


@pytest.mark.parametrize("damage", ["corrupt_graph", "missing_weights", "missing_graph"])
def test_broken_export_falls_back_to_torch(index_copy, damage, caplog):
    index, _ = index_copy
    with Engine(index) as engine:
        reference = [(h.id, round(h.score, 5)) for h in engine.search("a dog", k=5)]
        record = engine.store.manifest[onnx_text.MANIFEST_KEY]
    if damage == "corrupt_graph":
        (index / record["file"]).write_bytes(b"not an onnx model")
    elif damage == "missing_weights":
        (index / record["data"]).unlink()
    else:
        (index / record["file"]).unlink()
    with caplog.at_level(logging.WARNING), Engine(index) as engine:
        hits = [(h.id, round(h.score, 5)) for h in engine.search("a dog", k=5)]
        assert engine.model_loaded and engine.text_encoder.kind == "torch"
    assert [h[0] for h in hits] == [h[0] for h in reference]
    assert np.allclose([h[1] for h in hits], [h[1] for h in reference], atol=1e-4)
    assert "torch model" in caplog.text


def test_export_of_a_model_with_another_tokenizer_is_skipped(index_copy, caplog, tmp_path, monkeypatch):
    """A tokenizer our BPE cannot stand in for: recorded as skipped, indexing goes on."""
    import open_clip

    # The tokenizer is swapped under the same model fingerprint, so the cached export must not answer.
    monkeypatch.setenv("MMSEARCH_CACHE", str(tmp_path / "empty-cache"))
    index, root = index_copy
    with Engine(index) as engine:
        engine.store.update_manifest(**{onnx_text.MANIFEST_KEY: None})
        engine.encoder.tokenizer = open_clip.tokenizer.SimpleTokenizer(clean="whitespace")  # keeps case
        make_image(root.parent / "extra" / "new.png", seed=42)
        with caplog.at_level(logging.WARNING):
            report = engine.add([root, root.parent / "extra"])
        assert report.added == 1  # indexing went on
        record = engine.store.manifest[onnx_text.MANIFEST_KEY]
        assert record["status"] == "skipped" and "tokenizer" in record["reason"] and record["retry"] is False
        assert not list(index.glob(f"{onnx_text.FILE_PREFIX}*"))  # the old export went with it
        assert onnx_text.usable_record(engine.store.manifest) is None
        assert not onnx_text.export_needed(engine.store.manifest)  # not retried for the same model
    assert "will load torch" in caplog.text
    with Engine(index) as engine:
        assert engine.search("a dog", k=3) and engine.model_loaded


def test_disabled_export_and_later_export(tmp_path, tiny_model, monkeypatch):
    root = tmp_path / "corpus"
    make_image(root / "a.png", seed=1)
    (root / "b.txt").write_text("a cat on a sofa")
    index = tmp_path / "index"
    monkeypatch.setenv("MMSEARCH_ONNX", "0")
    with Engine(index, model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint)) as engine:
        engine.add([root])
        assert onnx_text.MANIFEST_KEY not in engine.store.manifest
    assert not list(index.glob(f"{onnx_text.FILE_PREFIX}*"))
    with Engine(index) as engine:
        assert engine.search("a cat", k=1)[0].path.endswith("b.txt") and engine.model_loaded
    monkeypatch.delenv("MMSEARCH_ONNX")
    with Engine(index) as engine:  # an older index gets its export on the next indexing run
        engine.add()
        assert engine.store.manifest[onnx_text.MANIFEST_KEY]["status"] == "ok"
    with Engine(index) as engine:
        assert engine.search("a cat", k=1)[0].path.endswith("b.txt") and not engine.model_loaded


def test_reembed_with_another_model_exports_again(index_copy, other_tiny_model):
    index, root = index_copy
    with Engine(index) as engine:
        old = engine.store.manifest[onnx_text.MANIFEST_KEY]
    with Engine(index, model=str(other_tiny_model.config), pretrained=str(other_tiny_model.checkpoint)) as engine:
        engine.add([root], reembed=True)
        new = engine.store.manifest[onnx_text.MANIFEST_KEY]
        torch_vectors = engine.encoder.encode_texts(["a dog", "pasta"])
    assert new["status"] == "ok" and new["fingerprint"] != old["fingerprint"]
    assert not (index / old["file"]).exists() and (index / new["file"]).is_file()
    with Engine(index) as engine:
        assert (engine.encode_texts(["a dog", "pasta"]) * torch_vectors).sum(axis=1).min() >= 0.9999
        assert not engine.model_loaded


@pytest.mark.slow
def test_vit_b_32_export_parity(tmp_path):
    """The default architecture (random weights): export, then ONNX equals torch."""
    root = tmp_path / "corpus"
    make_image(root / "a.png", seed=1)
    index = tmp_path / "index"
    with Engine(index, model="ViT-B-32", pretrained="none") as engine:
        engine.add([root])
        record = engine.store.manifest[onnx_text.MANIFEST_KEY]
        assert record["status"] == "ok" and record["dim"] == 512
        torch_vectors = engine.encoder.encode_texts(TEXTS)
    with Engine(index) as engine:
        onnx_vectors = engine.encode_texts(TEXTS)
        assert not engine.model_loaded
    assert (onnx_vectors * torch_vectors).sum(axis=1).min() >= 0.9999


def test_second_index_of_a_model_reuses_the_cached_export(indexed, tmp_path, tiny_model, monkeypatch):
    """Exporting costs seconds; a model exported once is linked into every new index of it."""
    index, root = indexed
    first = json.loads((index / "manifest.json").read_text())[onnx_text.MANIFEST_KEY]
    entry = onnx_text.cache_dir(Settings.from_env().cache) / first["fingerprint"]
    assert (entry / first["file"]).is_file() and (entry / first["data"]).is_file()

    def no_export(*args, **kwargs):
        raise AssertionError("exported again although the cache holds this model")

    monkeypatch.setattr(onnx_text, "export_text_encoder", no_export)
    other = tmp_path / "second"
    with Engine(other, model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint)) as engine:
        engine.add([root])
        record = engine.store.manifest[onnx_text.MANIFEST_KEY]
        assert record["status"] == "ok" and record["from_cache"] == str(entry)
        assert (other / record["data"]).read_bytes() == (index / first["data"]).read_bytes()
    with Engine(other) as engine:
        assert engine.search("a dog running on grass", k=1)[0].path.endswith("t0.txt")
        assert not engine.model_loaded  # answered by the cached ONNX encoder


def test_damaged_cache_entry_is_not_used(indexed, tmp_path, tiny_model):
    index, root = indexed
    first = json.loads((index / "manifest.json").read_text())[onnx_text.MANIFEST_KEY]
    entry = onnx_text.cache_dir(Settings.from_env().cache) / first["fingerprint"]
    data = entry / first["data"]
    data.unlink()  # a new file, so the indexes that link the old one keep it
    data.write_bytes(b"truncated")
    other = tmp_path / "third"
    with Engine(other, model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint)) as engine:
        engine.add([root])
        record = engine.store.manifest[onnx_text.MANIFEST_KEY]
        assert record["status"] == "ok" and "from_cache" not in record  # exported afresh
        assert (other / record["data"]).stat().st_size == first.get("data_bytes", (index / first["data"]).stat().st_size)
    # ...and the fresh export replaced the damaged entry.
    assert (entry / first["data"]).stat().st_size == (other / record["data"]).stat().st_size


def test_cache_entry_is_hashed_whole_once_per_file_version(indexed, tmp_path, tiny_model, monkeypatch):
    # The first reuse hashes the parts whole and records their versions; a later change in place
    # (same size, bytes in the middle: the head/tail digests cannot see it) is a new version,
    # hashed whole again, and the damaged entry is not used.
    index, root = indexed
    first = json.loads((index / "manifest.json").read_text())[onnx_text.MANIFEST_KEY]
    entry = onnx_text.cache_dir(Settings.from_env().cache) / first["fingerprint"]
    with Engine(tmp_path / "second", model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint)) as engine:
        engine.add([root])
        assert "from_cache" in engine.store.manifest[onnx_text.MANIFEST_KEY]
    verified = json.loads((entry / "record.json").read_text())["verified"]
    data = entry / first["data"]
    assert verified["data"][0] == data.stat().st_size
    from mmsearch import fsutil

    hashed = []
    whole = fsutil.file_digest
    monkeypatch.setattr(fsutil, "file_digest", lambda path: hashed.append(Path(path)) or whole(path))
    monkeypatch.setattr(fsutil, "_WHOLE_ON_OPEN", 0)  # the tiny model's parts are as if large
    with Engine(tmp_path / "again", model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint)) as engine:
        engine.add([root])
        assert "from_cache" in engine.store.manifest[onnx_text.MANIFEST_KEY]
    assert not [p for p in hashed if p.parent == entry]  # the verified parts were not hashed again
    monkeypatch.undo()
    copy = tmp_path / "data.copy"
    copy.write_bytes(data.read_bytes())
    data.unlink()  # the indexes keep their links to the good bytes
    raw = bytearray(copy.read_bytes())
    middle = len(raw) // 2
    raw[middle:middle + 16] = bytes(16) if any(raw[middle:middle + 16]) else b"\xff" * 16
    data.write_bytes(bytes(raw))
    with Engine(tmp_path / "third", model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint)) as engine:
        engine.add([root])
        assert "from_cache" not in engine.store.manifest[onnx_text.MANIFEST_KEY]  # exported afresh


def test_preload_loads_in_the_background_and_encodes_ahead(indexed, tmp_path):
    index, _ = indexed
    onnx_text.preload(tmp_path / "not-an-index", ["ignored"])  # nothing to load: no error, no thread
    texts = ["a dog on grass", "sunset over the sea"]
    onnx_text.preload(index, texts)
    with Engine(index) as engine:
        ahead = engine.encode_texts(texts)  # collected from the preload, vectors encoded ahead
        assert engine.encoders.onnx_text_loaded is not None and not engine.encoders.onnx_text_loaded._remembered  # handed out once
        again = engine.encode_texts(texts)  # encoded now
        other = engine.encode_texts(["a red pasta dish"])
    assert np.allclose(ahead, again, atol=1e-6)
    assert other.shape == (1, ahead.shape[1])
