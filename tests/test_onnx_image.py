"""The torch-free image path: the image tower exported to ONNX (float32, and int8 when it agrees
with float32), image queries, the server and small indexing runs without importing torch, the
measured choice of encoder and its override, checks, and fallback to torch whenever an export is
absent, broken, refused or turned off."""

from __future__ import annotations

import json
import os
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmsearch import Engine
from mmsearch.encoders import onnx_image
from mmsearch.settings import Settings

from conftest import ENV, make_image, run

PHOTOS = sorted((Path(__file__).parent / "data" / "photos").glob("*.jpg"))


def _settings(**changes) -> Settings:
    return Settings.from_env().but(**changes)


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, tiny_model):
    """An index of images and texts built with the tiny model, exported at creation."""
    base = tmp_path_factory.mktemp("onnx-image")
    root = base / "corpus"
    for i in range(12):
        make_image(root / f"img{i}.jpg", seed=i, size=(120 + 8 * i, 90))
    for i, path in enumerate(PHOTOS):
        shutil.copy(path, root / f"photo{i}.jpg")
    (root / "note.txt").write_text("a dog running on grass", encoding="utf-8")
    index = base / "index"
    with Engine(index, model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint)) as engine:
        engine.add([root])
    return index, root


@pytest.fixture
def index_copy(indexed, tmp_path):
    index, root = indexed
    copy = tmp_path / "index"
    shutil.copytree(index, copy)
    return copy, root


def _images() -> list[Image.Image]:
    return [Image.open(p).convert("RGB") for p in PHOTOS]


# -- export ----------------------------------------------------------------------------------------
def test_export_is_recorded_checked_and_matches_torch(indexed):
    index, _ = indexed
    with Engine(index, settings=_settings(image_encoder="onnx")) as engine:
        record = engine.store.manifest[onnx_image.MANIFEST_KEY]
        assert record["status"] == "ok" and record["fingerprint"] == engine.store.manifest["model"]["fingerprint"]
        assert record["min_cosine"] >= onnx_image.MIN_COSINE and record["pixels"]["crop"] == 32
        for path in onnx_image.export_files(index, record).values():
            assert path.is_file()
        assert set(record["digests"]) == {"graph", "data"} | ({"int8"} if record["int8"].get("accepted") else set())
        measured = record["measured"]
        assert measured["cpu"] == onnx_image.cpu_name() and measured["choice"] in measured["ms_per_image"]
        assert {"onnx", "torch-fp32"} <= set(measured["ms_per_image"]) or "torch-bf16" in measured["ms_per_image"]
        fast = engine.encode_images(_images())
        assert engine.image_encoder.kind == "onnx" and not engine.model_loaded  # torch was not needed
        slow = engine.encoder.encode_images(_images())
    assert fast.dtype == np.float32 and fast.shape == slow.shape
    assert (fast * slow).sum(axis=1).min() >= 0.9999


def test_int8_is_kept_only_when_it_agrees_with_float32(indexed, tmp_path, tiny_model, monkeypatch):
    index, root = indexed
    record = json.loads((index / "manifest.json").read_text())[onnx_image.MANIFEST_KEY]
    int8 = record["int8"]
    assert int8["thresholds"] == {"min_cosine": onnx_image.INT8_MIN_COSINE, "top10_overlap": onnx_image.INT8_MIN_OVERLAP}
    if int8["accepted"]:
        assert int8["min_cosine"] >= onnx_image.INT8_MIN_COSINE and int8["top10_overlap"] >= onnx_image.INT8_MIN_OVERLAP
        with Engine(index, settings=_settings(image_encoder="onnx-int8")) as engine:
            quantised = engine.encode_images(_images())
            assert engine.image_encoder.kind == "onnx-int8"
        with Engine(index, settings=_settings(image_encoder="onnx")) as engine:
            exact = engine.encode_images(_images())
        assert (quantised * exact).sum(axis=1).min() >= onnx_image.INT8_MIN_COSINE
    # A quantised model that disagrees is refused, recorded with its figures, and never used.
    monkeypatch.setenv("MMSEARCH_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(onnx_image, "INT8_MIN_OVERLAP", 1.01)
    other = tmp_path / "strict"
    with Engine(other, model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint)) as engine:
        engine.add([root])
        refused = engine.store.manifest[onnx_image.MANIFEST_KEY]
        assert refused["status"] == "ok" and refused["int8"]["accepted"] is False
        assert "disagrees with float32" in refused["int8"]["reason"] and "top10_overlap" in refused["int8"]
        assert "onnx-int8" not in refused["measured"]["ms_per_image"]
        assert not list(other.glob("*.int8*.onnx"))
        assert onnx_image.indexing_choice(engine.store.manifest, "onnx-int8") == "onnx"


def _ops(path: Path) -> set[str]:
    import onnx

    return {node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node}


def test_int8_quantises_the_matrix_products_only_and_older_int8_graphs_are_quantised_again(index_copy, tmp_path,
                                                                                           monkeypatch):
    """int8 leaves the patch convolution in float32 (onnxruntime's ConvInteger was a quarter of
    ViT-B-32-256's int8 time for 3% of its work); an index whose int8 graph was made the old way
    (everything quantised) gets today's on its next indexing run, from its float32 graph, and
    its vectors stay within the guard of float32 on real photos."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from mmsearch.fsutil import file_digest

    index, root = index_copy
    record = json.loads((index / "manifest.json").read_text())[onnx_image.MANIFEST_KEY]
    assert record["int8"]["accepted"] and record["int8"]["method"] == onnx_image.INT8_METHOD
    ops = _ops(index / record["int8"]["file"])
    assert "MatMulInteger" in ops and "Conv" in ops and "ConvInteger" not in ops
    # The index as the previous version left it: every operator quantised, no method recorded.
    old = index / "image_encoder.old.int8.onnx"
    with onnx_image._root_logger_silenced():
        quantize_dynamic(str(index / record["file"]), str(old), weight_type=QuantType.QInt8)
    assert "ConvInteger" in _ops(old)
    (index / record["int8"]["file"]).unlink()
    manifest = json.loads((index / "manifest.json").read_text())
    int8 = {k: v for k, v in record["int8"].items() if k != "method"}
    manifest[onnx_image.MANIFEST_KEY] = dict(record, int8=dict(int8, file=old.name),
                                             digests=dict(record["digests"], int8=file_digest(old)))
    (index / "manifest.json").write_text(json.dumps(manifest))
    assert onnx_image.export_needed(manifest)
    # An index's exports are hard links of the export cache's (onnx_export.publish), and onnx
    # refuses to load external data with several links: the re-quantisation must not depend on it.
    links = tmp_path / "cache-links"
    links.mkdir()
    for part in index.glob(record["file"] + "*"):
        os.link(part, links / part.name)
    assert any(p.stat().st_nlink > 1 for p in index.glob(record["file"] + ".data"))
    monkeypatch.setenv("MMSEARCH_CACHE", str(tmp_path / "cache"))  # the session's cache stays as it was
    with Engine(index) as engine:  # the next run, nothing new to index
        engine.add([root])
        again = engine.store.manifest[onnx_image.MANIFEST_KEY]
    assert again["int8"]["method"] == onnx_image.INT8_METHOD and again["int8"]["accepted"]
    assert again["exported_at"] == record["exported_at"] and again["digests"]["graph"] == record["digests"]["graph"]
    assert not old.exists() and "ConvInteger" not in _ops(index / again["int8"]["file"])
    assert again["measured"]["cpu"] == onnx_image.cpu_name() and "onnx-int8" in again["measured"]["ms_per_image"]
    images = _images() + [Image.open(p).convert("RGB") for p in sorted(root.glob("img*.jpg"))]
    vectors = {}
    for variant in ("onnx", "onnx-int8"):
        with Engine(index, settings=_settings(image_encoder=variant)) as engine:
            vectors[variant] = engine.encode_images(images)
            assert engine.image_encoder.kind == variant
    assert (vectors["onnx"] * vectors["onnx-int8"]).sum(axis=1).min() >= onnx_image.INT8_MIN_COSINE
    assert onnx_image.top_overlap(vectors["onnx"], vectors["onnx-int8"]) >= onnx_image.INT8_MIN_OVERLAP


def test_top_overlap():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(40, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    assert onnx_image.top_overlap(vectors, vectors) == 1.0
    assert onnx_image.top_overlap(vectors, vectors + rng.normal(0, 1e-4, vectors.shape).astype(np.float32)) >= 0.95
    assert onnx_image.top_overlap(vectors, rng.normal(size=(40, 16)).astype(np.float32)) < 0.5


# -- the choice ------------------------------------------------------------------------------------
def test_choice_follows_measurement_setting_and_cpu(indexed, monkeypatch):
    index, _ = indexed
    manifest = json.loads((index / "manifest.json").read_text())
    record = manifest[onnx_image.MANIFEST_KEY]
    accepted = bool(record["int8"].get("accepted"))

    def with_choice(choice: str, cpu: str = onnx_image.cpu_name()) -> dict:
        return dict(manifest, **{onnx_image.MANIFEST_KEY: dict(record, measured=dict(record["measured"], choice=choice, cpu=cpu))})

    assert onnx_image.indexing_choice(with_choice("torch-fp32")) == "torch"
    assert onnx_image.query_variant(with_choice("torch-bf16")) == "onnx"  # one query: ONNX's start wins
    assert onnx_image.indexing_choice(with_choice("onnx")) == "onnx"
    assert onnx_image.indexing_choice(with_choice("torch-fp32"), "onnx") == "onnx"
    assert onnx_image.indexing_choice(with_choice("onnx"), "torch") == "torch"
    assert onnx_image.query_variant(with_choice("onnx"), "torch") is None
    assert onnx_image.indexing_choice(with_choice("onnx"), "onnx-int8") == ("onnx-int8" if accepted else "onnx")
    assert onnx_image.query_variant(with_choice("onnx"), enabled=False) is None
    # Measured on another CPU: no AMX here means ONNX (int8 when accepted), AMX means torch.
    elsewhere = with_choice("torch-bf16", cpu="another CPU x64")
    monkeypatch.setattr(onnx_image, "cpu_has_amx_flag", lambda: False)
    assert onnx_image.indexing_choice(elsewhere) == ("onnx-int8" if accepted else "onnx")
    monkeypatch.setattr(onnx_image, "cpu_has_amx_flag", lambda: True)
    assert onnx_image.indexing_choice(elsewhere) == "torch"
    assert onnx_image.export_needed(elsewhere)  # the next indexing run measures again


def test_image_encoder_setting_is_parsed():
    assert Settings.from_env({"MMSEARCH_IMAGE_ENCODER": "ONNX-int8"}).image_encoder == "onnx-int8"
    from mmsearch.errors import SettingsError

    with pytest.raises(SettingsError, match="MMSEARCH_IMAGE_ENCODER"):
        Settings.from_env({"MMSEARCH_IMAGE_ENCODER": "fast"})


def test_info_shows_the_choice(indexed, cli, monkeypatch):
    index, _ = indexed
    monkeypatch.setenv("MMSEARCH_IMAGE_ENCODER", "auto")
    shown = cli("info", "-i", index, "--json").stdout
    encoders = json.loads(shown)["encoders"]
    assert encoders["text"] == "onnx" and encoders["image"]["status"] == "ok"
    assert encoders["image"]["indexing"] in ("torch", "onnx", "onnx-int8") and encoders["image"]["queries"].startswith("onnx")
    from mmsearch.cli.library import _describe_encoders

    line = _describe_encoders(encoders)
    assert line.startswith("text onnx; images: indexing ") and "measured ms/image" in line
    forced = _describe_encoders({"text": "torch", "image": dict(encoders["image"], setting="torch", indexing="torch")})
    assert "set by MMSEARCH_IMAGE_ENCODER=torch" in forced


# -- without torch ---------------------------------------------------------------------------------
def _python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180,
                          env={**ENV, **(env or {})})


def _cli_query(index: Path, image: Path, env: dict[str, str] | None = None) -> dict:
    code = (
        "import json, sys\n"
        "from mmsearch.cli import main\n"
        f"sys.argv = ['mmsearch', 'query', {str(image)!r}, '--index', {str(index)!r}, '--json', '--top', '8']\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'open_clip': 'open_clip' in sys.modules}))\n"
    )
    result = _python(code, env)
    assert result.returncode == 0, result.stderr
    hits_line, modules_line = result.stdout.strip().splitlines()[-2:]
    return {"hits": json.loads(hits_line)["hits"], **json.loads(modules_line)}


def test_cli_image_query_imports_no_torch_and_equals_the_torch_path(indexed):
    index, root = indexed
    query = root / "photo0.jpg"
    fast = _cli_query(index, query, {"MMSEARCH_IMAGE_ENCODER": "onnx"})
    assert fast["torch"] is False and fast["open_clip"] is False
    slow = _cli_query(index, query, {"MMSEARCH_IMAGE_ENCODER": "torch"})
    assert slow["torch"] is True  # the setting really selects the other path
    assert [h["id"] for h in fast["hits"]] == [h["id"] for h in slow["hits"]] and len(fast["hits"]) == 8
    assert np.allclose([h["score"] for h in fast["hits"]], [h["score"] for h in slow["hits"]], atol=1e-4)
    default = _cli_query(index, query, {"MMSEARCH_IMAGE_ENCODER": "auto"})  # int8 where it won: still no torch
    assert default["torch"] is False and default["hits"][0]["id"] == fast["hits"][0]["id"]


def test_server_start_and_uploaded_image_query_import_no_torch(indexed):
    index, root = indexed
    code = (
        "import json, sys\n"
        "from fastapi.testclient import TestClient\n"
        "from mmsearch import Engine\n"
        "from mmsearch.server import create_app\n"
        f"engine = Engine({str(index)!r})\n"
        "with TestClient(create_app(engine, allowed_hosts=['testserver'])) as client:\n"
        "    health = client.get('/api/health').json()\n"
        f"    data = open({str(root / 'photo1.jpg')!r}, 'rb').read()\n"
        "    found = client.post('/api/search', files={'image': ('q.jpg', data, 'image/jpeg')},\n"
        "                        data={'q': '[{\"upload\": \"image\"}]', 'k': '3'})\n"
        "    assert found.status_code == 200, found.text\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'health': health, 'hits': found.json()['hits']}))\n"
    )
    result = _python(code)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["torch"] is False and seen["health"]["model_loaded"] is True
    assert seen["hits"] and seen["hits"][0]["path"] != str(root / "photo1.jpg")  # the query image left out


def test_small_index_run_of_new_files_imports_no_torch(index_copy, tmp_path):
    index, root = index_copy
    extra = tmp_path / "extra"
    for i in range(3):
        make_image(extra / f"new{i}.jpg", seed=100 + i, size=(200, 150))
    (extra / "caption.txt").write_text("a black cat sleeping on a sofa", encoding="utf-8")
    code = (
        "import json, sys\n"
        "from mmsearch.cli import main\n"
        f"sys.argv = ['mmsearch', 'index', {str(root)!r}, {str(extra)!r}, '--index', {str(index)!r}, '--json']\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
        "print(json.dumps({'torch': 'torch' in sys.modules}))\n"
    )
    result = _python(code, {"MMSEARCH_IMAGE_ENCODER": "onnx"})
    assert result.returncode == 0, result.stderr
    report_line, modules_line = result.stdout.strip().splitlines()[-2:]
    assert json.loads(report_line)["added"] == 4 and json.loads(modules_line)["torch"] is False
    with Engine(index) as engine:  # what ONNX stored is what torch computes
        hits = engine.search(str(extra / "new1.jpg"), k=1, include_query=True)
        assert hits[0].path == str(extra / "new1.jpg") and hits[0].score > 0.9999
        with engine.store.read() as reader:
            stored = np.frombuffer(reader.vector_of(hits[0].id), np.float32)
        expected = engine.encoder.encode_images([Image.open(extra / "new1.jpg").convert("RGB")])
    assert (stored * expected).sum() >= 0.9999


def test_new_index_of_a_model_exported_on_this_machine_imports_no_torch(indexed, tmp_path, tiny_model):
    """A second index of the same model takes the dimension, both exports and the encoder timing
    from the cache: the new process never loads torch, and its vectors are the first index's."""
    index, root = indexed
    fresh = tmp_path / "fresh"
    code = (
        "import json, sys\n"
        "from mmsearch.cli import main\n"
        f"sys.argv = ['mmsearch', 'index', {str(root)!r}, '--index', {str(fresh)!r}, '--json',"
        f" '--model', {str(tiny_model.config)!r}, '--pretrained', {str(tiny_model.checkpoint)!r}]\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
        "print(json.dumps({'torch': 'torch' in sys.modules}))\n"
    )
    result = _python(code, {"MMSEARCH_IMAGE_ENCODER": "onnx"})
    assert result.returncode == 0, result.stderr
    report_line, modules_line = result.stdout.strip().splitlines()[-2:]
    assert json.loads(modules_line)["torch"] is False
    assert json.loads(report_line)["added"] == len(list(root.iterdir()))
    with Engine(index) as old, Engine(fresh) as new:
        assert new.store.manifest["model"] == old.store.manifest["model"] and new.store.dim == old.store.dim
        with old.store.read() as a, new.store.read() as b:
            for row in b.items(list(b.item_ids())).values():
                twin = [r for r in a.items(list(a.item_ids())).values() if r.path == row.path]
                mine = np.frombuffer(b.vector_of(row.id), np.float32)
                theirs = np.frombuffer(a.vector_of(twin[0].id), np.float32)
                assert float(mine @ theirs) >= 0.9999, row.path


def test_a_model_exported_here_is_not_validated_again_through_open_clip(tmp_path):
    """Resolving an architecture name imports open_clip (and torch) to validate it, unless this
    machine already exported exactly that model (which validated the name then)."""
    code = (
        "import json, sys\n"
        "from mmsearch.encoders import ModelSpec\n"
        "seen = []\n"
        "spec = ModelSpec.resolve('ViT-B-32', 'none', exported=lambda s: seen.append(s) or True)\n"
        "print(json.dumps({'name': spec.name, 'pretrained': spec.pretrained, 'asked': len(seen),"
        " 'open_clip': 'open_clip' in sys.modules}))\n"
        "ModelSpec.resolve('ViT-B-32', 'none', exported=lambda s: False)\n"
        "print(json.dumps({'open_clip': 'open_clip' in sys.modules}))\n"
    )
    result = _python(code)
    assert result.returncode == 0, result.stderr
    first, second = (json.loads(line) for line in result.stdout.strip().splitlines()[-2:])
    assert first == {"name": "ViT-B-32", "pretrained": None, "asked": 1, "open_clip": False}
    assert second == {"open_clip": True}


# -- failures fall back to torch -------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["corrupt_graph", "missing_weights"])
def test_broken_export_falls_back_to_torch_and_check_finds_it(index_copy, damage, caplog, cli):
    index, root = index_copy
    query = str(root / "photo0.jpg")
    with Engine(index, settings=_settings(image_encoder="onnx")) as engine:
        reference = [(h.id, round(h.score, 4)) for h in engine.search(query, k=5)]
        record = engine.store.manifest[onnx_image.MANIFEST_KEY]
    if damage == "corrupt_graph":
        (index / record["file"]).write_bytes(b"not an onnx model")
    else:
        (index / record["data"]).unlink()
    with caplog.at_level(logging.WARNING), Engine(index, settings=_settings(image_encoder="onnx")) as engine:
        hits = [(h.id, round(h.score, 4)) for h in engine.search(query, k=5)]
        assert engine.model_loaded and engine.image_encoder.kind == "torch"
    assert [h[0] for h in hits] == [h[0] for h in reference]
    assert "torch model" in caplog.text
    result = cli("check", "-i", index, ok=False)
    assert result.exit_code == 1 and "onnx_image" in result.stderr
    cli("check", "-i", index, "--repair")
    with Engine(index) as engine:
        assert onnx_image.export_mismatch(index, engine.store.manifest[onnx_image.MANIFEST_KEY], full=True) is None
        assert engine.image_encoder.kind.startswith("onnx")


def test_failed_export_never_fails_indexing(tmp_path, tiny_model, monkeypatch, caplog):
    monkeypatch.setenv("MMSEARCH_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "corpus"
    make_image(root / "a.jpg", seed=1)

    def broken(*args, **kwargs):
        raise RuntimeError("exporter bug")

    monkeypatch.setattr(onnx_image, "export_image_encoder", broken)
    index = tmp_path / "index"
    with caplog.at_level(logging.WARNING), \
            Engine(index, model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint)) as engine:
        assert engine.add([root]).added == 1
        record = engine.store.manifest[onnx_image.MANIFEST_KEY]
        assert record["status"] == "failed" and record["retry"] is True and "exporter bug" in record["reason"]
        assert onnx_image.indexing_choice(engine.store.manifest) == "torch"
    assert caplog.text.count("exporting the ONNX image encoder") == 1
    monkeypatch.undo()
    monkeypatch.setenv("MMSEARCH_CACHE", str(tmp_path / "cache"))
    with Engine(index) as engine:  # the next run tries again
        engine.add()
        assert engine.store.manifest[onnx_image.MANIFEST_KEY]["status"] == "ok"


def test_disabled_onnx_exports_nothing_and_uses_torch(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("MMSEARCH_ONNX", "0")
    root = tmp_path / "corpus"
    make_image(root / "a.jpg", seed=1)
    index = tmp_path / "index"
    with Engine(index, model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint)) as engine:
        engine.add([root])
        assert onnx_image.MANIFEST_KEY not in engine.store.manifest
    assert not list(index.glob(f"{onnx_image.FILE_PREFIX}*"))
    with Engine(index) as engine:
        assert engine.search(str(root / "a.jpg"), k=1, include_query=True)[0].score > 0.999
        assert engine.image_encoder.kind == "torch"


def test_second_index_reuses_the_cached_export(indexed, tmp_path, tiny_model, monkeypatch):
    index, root = indexed
    first = json.loads((index / "manifest.json").read_text())[onnx_image.MANIFEST_KEY]

    def no_export(*args, **kwargs):
        raise AssertionError("exported again although the cache holds this model")

    def no_measure(*args, **kwargs):
        raise AssertionError("measured again although the cache holds this machine's measurement")

    monkeypatch.setattr(onnx_image, "export_image_encoder", no_export)
    monkeypatch.setattr(onnx_image, "measure", no_measure)  # timing the encoders loads torch: once per machine
    other = tmp_path / "second"
    with Engine(other, model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint)) as engine:
        engine.add([root])
        record = engine.store.manifest[onnx_image.MANIFEST_KEY]
        assert record["status"] == "ok" and record["from_cache"].endswith(first["fingerprint"] + onnx_image.CACHE_SUFFIX)
        assert (other / record["data"]).read_bytes() == (index / first["data"]).read_bytes()
        assert record["measured"]["cpu"] == onnx_image.cpu_name()
        assert record["measured"]["choice"] == first["measured"]["choice"]


def test_reembed_with_another_model_exports_again(index_copy, other_tiny_model):
    index, root = index_copy
    with Engine(index) as engine:
        old = engine.store.manifest[onnx_image.MANIFEST_KEY]
    with Engine(index, model=str(other_tiny_model.config), pretrained=str(other_tiny_model.checkpoint)) as engine:
        engine.add([root], reembed=True)
        new = engine.store.manifest[onnx_image.MANIFEST_KEY]
        torch_vectors = engine.encoder.encode_images(_images())
    assert new["status"] == "ok" and new["fingerprint"] != old["fingerprint"]
    assert not (index / old["file"]).exists() and (index / new["file"]).is_file()
    with Engine(index, settings=_settings(image_encoder="onnx")) as engine:
        assert (engine.encode_images(_images()) * torch_vectors).sum(axis=1).min() >= 0.9999
        assert not engine.model_loaded


@pytest.mark.slow
def test_vit_b_32_image_export_parity(tmp_path):
    """The default architecture (random weights): float32 export equals torch; int8 is judged."""
    root = tmp_path / "corpus"
    root.mkdir()
    for i, path in enumerate(PHOTOS):
        shutil.copy(path, root / f"p{i}.jpg")
    index = tmp_path / "index"
    with Engine(index, model="ViT-B-32", pretrained="none") as engine:
        engine.add([root])
        record = engine.store.manifest[onnx_image.MANIFEST_KEY]
        assert record["status"] == "ok" and record["dim"] == 512 and record["min_cosine"] >= onnx_image.MIN_COSINE
        torch_vectors = engine.encoder.encode_images(_images())
    with Engine(index, settings=_settings(image_encoder="onnx")) as engine:
        assert (engine.encode_images(_images()) * torch_vectors).sum(axis=1).min() >= 0.9999
        assert not engine.model_loaded



def test_preload_loads_in_the_background_and_encodes_the_query_image_ahead(indexed, tmp_path):
    index, root = indexed
    settings = _settings(image_encoder="onnx")
    assert onnx_image.preload(tmp_path / "not-an-index", [str(root / "photo0.jpg")], settings) is None
    assert onnx_image.preload(index, [str(root / "photo0.jpg")], settings.but(image_encoder="torch")) is None
    query = str(root / "photo0.jpg")
    with Engine(index, settings=settings) as engine:
        expected = [(h.id, round(h.score, 5)) for h in engine.search(query, k=5)]
    ahead = onnx_image.preload(index, [query, str(root / "missing.jpg")], settings)
    with Engine(index, settings=settings, image_encoder=ahead) as engine:
        got = [(h.id, round(h.score, 5)) for h in engine.search(query, k=5)]
        assert engine.encoders.onnx_image_loaded is ahead.result() and ahead.take(query) is None  # used, once
        again = [(h.id, round(h.score, 5)) for h in engine.search(query, k=5)]  # encoded now
        assert not engine.model_loaded
    assert got == expected == again


def test_mmsearch_serve_loads_onnx_encoders_ahead_without_torch(indexed):
    """`serve` itself (what `mmsearch serve` runs): encoders preloaded, no torch at any point."""
    index, root = indexed
    code = (
        "import json, socket, sys, threading, time, urllib.request\n"
        "from mmsearch.server import serve\n"
        "with socket.socket() as s:\n    s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]\n"
        f"threading.Thread(target=serve, args=({str(index)!r},), kwargs={{'port': port, 'log_level': 'error'}},\n"
        "                 daemon=True).start()\n"
        "deadline = time.monotonic() + 120\n"
        "while True:\n"
        "    try:\n"
        "        health = json.loads(urllib.request.urlopen(f'http://127.0.0.1:{port}/api/health', timeout=5).read())\n"
        "        break\n"
        "    except OSError:\n"
        "        assert time.monotonic() < deadline\n"
        "        time.sleep(0.05)\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'health': health}))\n"
    )
    result = _python(code, {"MMSEARCH_IMAGE_ENCODER": "auto"})
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["torch"] is False and seen["health"]["model_loaded"] is True


def test_first_run_shows_the_export_as_a_phase_and_no_quantiser_noise(tmp_path, tiny_model):
    """onnxruntime's quantiser logs advice and a protobuf dump per input through the root logger;
    a user sees one progress phase for the exports instead."""
    root = tmp_path / "corpus"
    make_image(root / "a.jpg", seed=1)
    env = dict(ENV, MMSEARCH_CACHE=str(tmp_path / "cache"))  # nothing cached: both towers export
    done = run("index", root, "-i", tmp_path / "index", *tiny_model.args, env=env)
    err = done.stderr.decode()
    assert done.returncode == 0, err
    assert "exporting" in err
    assert "WARNING:root" not in err and "dim_value" not in err and "quantization" not in err
    assert json.loads((tmp_path / "index" / "manifest.json").read_text())[onnx_image.MANIFEST_KEY]["int8"]
