"""Queries in other languages: open_clip's multilingual models (Hugging Face text towers and
tokenizers, as ``xlm-roberta-base-ViT-B-32`` and ``nllb-clip-base``) index, answer text queries
through their ONNX export with the ``tokenizers`` library (neither torch nor transformers loaded),
and are served; ``check`` verifies and repairs their export.

No weights can be downloaded: the model is a tiny randomly initialised XLM-RoBERTa text tower
with a tokenizer trained in the test (tests/multilingual_model.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TinyModel, make_image
from multilingual_model import CAPTIONS, write_xlmr_model
from test_onnx_text import TEXTS, _random_texts

from mmsearch import Engine
from mmsearch.check import check_folder
from mmsearch.encoders import onnx_text
from mmsearch.encoders.hf_tokenizer import KIND, HFTextTokenizer, describe

MORE_TEXTS = [
    *CAPTIONS, "Ærøskøbing İstanbul ẞ ß ΣΊΣΥΦΟΣ", "<s> </s> <pad> <mask> <unk>", "mid</s>dle<s>x", "UPPER lower MiXeD",
    "  lots   of\t\twhite\nspace  ", "&amp; &lt;tag&gt; &quot;q&quot;", "ﬁ ligature ｆｕｌｌｗｉｄｔｈ", "e\u0301 vs é",
    "草" * 300, "palabra " * 100,
]


@pytest.fixture(scope="module")
def xlmr_model(tmp_path_factory) -> TinyModel:
    return TinyModel(*write_xlmr_model(tmp_path_factory.mktemp("xlmr")))


@pytest.fixture(scope="module")
def xlmr_index(tmp_path_factory, xlmr_model):
    """Images and multilingual texts indexed with the tiny multilingual model."""
    base = tmp_path_factory.mktemp("mling")
    root = base / "corpus"
    for i in range(4):
        make_image(root / f"img{i}.png", seed=i)
    for i, text in enumerate(CAPTIONS[:8]):
        (root / f"t{i}.txt").write_text(text, encoding="utf-8")
    index = base / "index"
    with Engine(index, model=str(xlmr_model.config), pretrained=str(xlmr_model.checkpoint)) as engine:
        engine.add([root])
    return index, root


# -- the tokenizer -------------------------------------------------------------------------------
def _ours(theirs, folder: Path) -> HFTextTokenizer:
    document, settings = describe(theirs)
    (folder / "tokenizer.json").write_text(document, encoding="utf-8")
    return HFTextTokenizer(folder / "tokenizer.json", **settings)


def test_tokenizer_ids_equal_open_clip(xlmr_model, tmp_path):
    import open_clip

    theirs = open_clip.get_tokenizer(xlmr_model.config.stem)
    assert type(theirs).__name__ == "HFTokenizer" and theirs.context_length == 77
    ours = _ours(theirs, tmp_path)
    texts = TEXTS + MORE_TEXTS + _random_texts(800, seed=7)
    got, want = ours(texts), theirs(texts).numpy()
    assert got.dtype == np.int64 and got.shape == want.shape == (len(texts), 77)
    assert [texts[i] for i in range(len(texts)) if not np.array_equal(got[i], want[i])] == []
    # The facts the ONNX graph relies on: <s> first, </s> kept last when cut, padding with the pad id.
    long, short = ours(["草" * 300, "a dog"])
    assert long[0] == 0 and long[-1] == 2 and (long != 1).all()
    assert short[0] == 0 and (short[short != 1][-1] == 2) and short[-1] == 1
    assert ours([]).shape == (0, 77)


def test_tokenizer_other_settings_equal_open_clip(xlmr_model, tmp_path):
    """open_clip's HFTokenizer options: lower-case cleaning, a short context, the separator
    token zeroed (strip_sep_token)."""
    from open_clip.tokenizer import HFTokenizer

    hf = str(xlmr_model.config.parent / "hf")
    theirs = HFTokenizer(hf, context_length=16, clean="lower", strip_sep_token=True)
    ours = _ours(theirs, tmp_path)
    texts = TEXTS + MORE_TEXTS + _random_texts(200, seed=8)
    assert np.array_equal(ours(texts), theirs(texts).numpy())
    assert ours.settings["strip_sep_id"] == 2 and ours.settings["clean"] == "lower"
    with pytest.raises(ValueError, match="cleans"):
        describe(HFTokenizer(hf, clean="canonicalize"))


# -- export, query, serve, check -------------------------------------------------------------------
def test_export_is_recorded_and_matches_torch(xlmr_index):
    index, _ = xlmr_index
    with Engine(index) as engine:
        record = engine.store.manifest[onnx_text.MANIFEST_KEY]
        assert record["status"] == "ok", record
        tokenizer = record["tokenizer"]
        assert tokenizer["kind"] == KIND and tokenizer["pad_id"] == 1 and record["context_length"] == 77
        assert (index / tokenizer["vocab"]).is_file() and tokenizer["vocab"].startswith(onnx_text.FILE_PREFIX)
        assert set(record["digests"]) == {"graph", "data", "vocab"}
        assert not (index / onnx_text.VOCAB_COPY).exists()  # CLIP's vocabulary is not this model's
        texts = TEXTS + MORE_TEXTS + _random_texts(40, seed=3)
        fast = engine.encode_texts(texts)
        assert not engine.model_loaded and engine.text_encoder.kind == "onnx"
        # Token ids alone: the graph makes the attention mask from the pad id, as open_clip does.
        assert [i.name for i in engine.text_encoder.session.get_inputs()] == ["tokens"]
        slow = engine.encoder.encode_texts(texts)
    assert fast.dtype == np.float32 and fast.shape == slow.shape
    assert (fast * slow).sum(axis=1).min() >= 0.9999
    # Case is kept (no lower-casing), as open_clip's HFTokenizer does.
    assert not np.allclose(fast[texts.index("a dog")], fast[texts.index("A DOG!!")], atol=1e-3)


def test_query_and_server_answer_without_torch(xlmr_index):
    """A multilingual text query through the library and the HTTP server, torch never loaded."""
    import httpx

    from mmsearch.server import ServerThread, create_app

    index, root = xlmr_index
    with Engine(index) as engine:
        hits = engine.search(CAPTIONS[2], k=3)
        assert hits[0].path == str(root / "t2.txt") and hits[0].score == pytest.approx(1.0, abs=1e-4)
        server = ServerThread(create_app(engine)).start()
        try:
            answer = httpx.get(f"{server.url}/api/search", params={"q": CAPTIONS[5], "k": 3}, timeout=30).json()
        finally:
            server.stop()
        assert answer["hits"][0]["text"] == CAPTIONS[5]
        assert not engine.model_loaded


def _query_subprocess(index: Path, text: str, env: dict[str, str] | None = None) -> dict:
    code = (
        "import json, sys\n"
        "from mmsearch.cli import main\n"
        f"sys.argv = ['mmsearch', 'query', {text!r}, '--index', {str(index)!r}, '--json', '--top', '8']\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
        "print(json.dumps({m: m in sys.modules for m in ('torch', 'open_clip', 'transformers', 'tokenizers')}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, check=False,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
    assert result.returncode == 0, result.stderr
    hits_line, modules_line = result.stdout.strip().splitlines()[-2:]
    return {"hits": json.loads(hits_line)["hits"], **json.loads(modules_line)}


def test_cli_query_imports_neither_torch_nor_transformers(xlmr_index):
    index, _ = xlmr_index
    fast = _query_subprocess(index, "草の上を走る犬")
    assert fast["torch"] is False and fast["open_clip"] is False and fast["transformers"] is False
    assert fast["tokenizers"] is True  # the tokenizer really came from the tokenizers library
    assert fast["hits"][0]["text"] == "草の上を走る犬"


@pytest.mark.slow
def test_cli_query_equals_the_torch_path(xlmr_index):
    index, _ = xlmr_index
    fast = _query_subprocess(index, "un chien qui court")
    slow = _query_subprocess(index, "un chien qui court", env={"MMSEARCH_ONNX": "0"})
    assert slow["torch"] is True and slow["transformers"] is True  # the switch selects the other path
    assert [h["id"] for h in fast["hits"]] == [h["id"] for h in slow["hits"]] and len(fast["hits"]) == 8
    assert np.allclose([h["score"] for h in fast["hits"]], [h["score"] for h in slow["hits"]], atol=1e-4)


@pytest.mark.slow
def test_nllb_style_model_exports_and_matches_torch(tmp_path):
    """nllb-clip-base's kind: an M2M100 encoder pooled on its first token, NLLB's tokenizer
    putting a language code first."""
    config, checkpoint = write_xlmr_model(tmp_path / "model", name="mmnllb", nllb=True)
    root = tmp_path / "corpus"
    root.mkdir()
    for i, text in enumerate(CAPTIONS[:6]):
        (root / f"t{i}.txt").write_text(text, encoding="utf-8")
    with Engine(tmp_path / "index", model=str(config), pretrained=str(checkpoint)) as engine:
        engine.add([root])
        record = engine.store.manifest[onnx_text.MANIFEST_KEY]
        assert type(engine.encoder.tokenizer.tokenizer).__name__ == "NllbTokenizer"
    assert record["status"] == "ok" and record["tokenizer"]["kind"] == KIND, record
    texts = TEXTS + MORE_TEXTS
    with Engine(tmp_path / "index") as engine:
        fast = engine.encode_texts(texts)
        assert not engine.model_loaded
        slow = engine.encoder.encode_texts(texts)
        ids = engine.encoder.tokenizer(["a dog"])[0]
        assert ids[0] == engine.encoder.tokenizer.tokenizer.convert_tokens_to_ids("eng_Latn")  # the language code
        assert np.array_equal(engine.text_encoder.tokenizer(["a dog"])[0], ids.numpy())
    assert (fast * slow).sum(axis=1).min() >= 0.9999


def test_check_verifies_and_repairs_the_tokenizer_file(xlmr_model, xlmr_index, tmp_path):
    """A second index of the model takes the cached export, tokenizer included; `check` finds a
    tokenizer file that is not the recorded one, and `--repair` makes the export again."""
    from mmsearch.encoders import ModelSpec, TorchEncoder

    root = tmp_path / "corpus"
    (root / "a.txt").parent.mkdir(parents=True)
    (root / "a.txt").write_text(CAPTIONS[4], encoding="utf-8")
    (root / "b.txt").write_text(CAPTIONS[7], encoding="utf-8")
    index = tmp_path / "index"
    with Engine(index, model=str(xlmr_model.config), pretrained=str(xlmr_model.checkpoint)) as engine:
        engine.add([root])
        record = engine.store.manifest[onnx_text.MANIFEST_KEY]
    assert record["status"] == "ok" and record.get("from_cache")  # xlmr_index exported the model first
    assert check_folder(index).problems == []
    path = index / record["tokenizer"]["vocab"]
    # Another tokenizer of the same size: ids that no longer fit the model's embeddings.
    document = path.read_text(encoding="utf-8")
    path.write_text(document.replace('"<unk>"', '"<UNK>"', 1), encoding="utf-8")
    report = check_folder(index)
    assert [p.kind for p in report.problems] == ["onnx_text"]
    with Engine(index) as engine:  # never answers with a damaged tokenizer: torch instead
        assert engine.search(CAPTIONS[4], k=1)[0].path.endswith("a.txt") and engine.model_loaded
    repaired = check_folder(index, repair=True,
                            encoder_factory=lambda store: TorchEncoder(ModelSpec.from_manifest(store.manifest["model"])))
    assert repaired.problems and all(p.repaired for p in repaired.problems)
    assert check_folder(index).problems == [] and path.read_text(encoding="utf-8") == document
    with Engine(index) as engine:
        assert engine.search(CAPTIONS[7], k=1)[0].path.endswith("b.txt") and not engine.model_loaded


def test_cli_index_and_query_with_random_weights(xlmr_model, tmp_path, cli):
    """`--pretrained none` makes the Hugging Face text tower random too (as the fingerprint
    says), never fetched from the hub; the CLI indexes and answers as with any model."""
    root = tmp_path / "corpus"
    root.mkdir()
    for i, text in enumerate(CAPTIONS[:5]):
        (root / f"t{i}.txt").write_text(text, encoding="utf-8")
    index = tmp_path / "index"
    cli("index", root, "--index", index, "--model", xlmr_model.config, "--pretrained", "none")
    manifest = json.loads((index / "manifest.json").read_text())
    assert manifest["text_onnx"]["status"] == "ok" and manifest["text_onnx"]["tokenizer"]["kind"] == KIND
    hits = json.loads(cli("query", CAPTIONS[3], "--index", index, "--json").stdout)["hits"]
    assert hits[0]["path"] == str(root / "t3.txt") and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
