"""The Engine's parts on their own: ``QueryEncoders`` (the model choice and the encoders queries
use: ONNX where the index has a valid export, else torch) over an ``IndexHandle``, and the
indexing run's export phase (``indexing.exports``), with the tiny model and real exports."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from mmsearch import Engine
from mmsearch.encoders import onnx_image, onnx_text
from mmsearch.encoders.queries import DEFAULT_BATCH_CPU, QueryEncoders
from mmsearch.errors import ModelMismatchError
from mmsearch.indexing.handle import IndexHandle
from mmsearch.indexing import exports
from mmsearch.settings import Settings

from conftest import make_image


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, tiny_model):
    """An index built with the tiny model (texts and images), its towers exported at creation."""
    base = tmp_path_factory.mktemp("encoders")
    root = base / "corpus"
    for i in range(4):
        make_image(root / f"img{i}.png", seed=i)
    (root / "t0.txt").write_text("a dog running on grass", encoding="utf-8")
    index = base / "index"
    with Engine(index, model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint)) as engine:
        engine.add([root])
    return index, root


def _encoders(index, settings: Settings | None = None, **kwargs) -> tuple[IndexHandle, QueryEncoders]:
    settings = settings or Settings.from_env()
    handle = IndexHandle(index, settings)
    return handle, QueryEncoders(lambda: handle.current, lambda: handle.store, index, settings, **kwargs)


def test_exports_are_used_without_torch(indexed):
    index, root = indexed
    handle, encoders = _encoders(index)
    try:
        assert encoders.text.kind == "onnx" and encoders.image.kind.startswith("onnx")
        assert encoders.matches_index() and encoders.requested is None
        texts = encoders.encode_texts(["a dog"])
        images = encoders.encode_images([encoders.query_image(str(root / "img0.png"))])
        assert texts.shape == images.shape == (1, handle.store.dim)
        assert abs(float(np.linalg.norm(images[0])) - 1) < 1e-5
        assert not encoders.torch_loaded  # neither tower needed torch
        assert encoders.encoders_now()["texts"] == "onnx" and encoders.default_batch() == DEFAULT_BATCH_CPU
        assert not exports.needed(handle.store)  # the run recorded both towers for the index's model
    finally:
        handle.close()
        encoders.close()


def test_missing_exports_fall_back_to_torch(indexed, tmp_path):
    index, root = indexed
    copy = tmp_path / "index"
    shutil.copytree(index, copy)
    handle, encoders = _encoders(copy)
    try:
        onnx_texts = encoders.encode_texts(["a dog", "sunset"])
        onnx_images = encoders.encode_images([encoders.query_image(str(root / "img1.png"))])
        for tower in (onnx_text, onnx_image):
            for path in tower.export_files(copy, handle.store.manifest[tower.MANIFEST_KEY]).values():
                path.unlink(missing_ok=True)
    finally:
        handle.close()
    handle, encoders = _encoders(copy)  # a fresh holder: the exports are gone
    try:
        assert encoders.onnx_text() is None and encoders.onnx_image() is None
        assert encoders.text.kind == "torch" and encoders.image.kind == "torch" and encoders.torch_loaded
        texts = encoders.encode_texts(["a dog", "sunset"])
        images = encoders.encode_images([encoders.query_image(str(root / "img1.png"))])
        assert (texts * onnx_texts).sum(axis=1).min() > 0.999  # the same space, by torch
        assert (images * onnx_images).sum(axis=1).min() > 0.999
    finally:
        handle.close()
        encoders.close()


def test_onnx_turned_off_uses_torch(indexed):
    index, _ = indexed
    handle, encoders = _encoders(index, Settings.from_env().but(onnx=False))
    try:
        assert encoders.text.kind == "torch" and encoders.image.kind == "torch"
        assert encoders.encoders_now() == {"images": "torch", "texts": "torch"}
    finally:
        handle.close()
        encoders.close()


def test_another_model_is_a_mismatch_and_never_uses_the_index_exports(indexed, other_tiny_model):
    index, _ = indexed
    handle, encoders = _encoders(index, model=str(other_tiny_model.config),
                                 pretrained=str(other_tiny_model.checkpoint))
    try:
        assert not encoders.matches_index()
        assert encoders.onnx_text() is None and encoders.onnx_image() is None
        error = encoders.mismatch("use another --index")
        assert isinstance(error, ModelMismatchError) and str(error).endswith("use another --index")
    finally:
        handle.close()
        encoders.close()


def test_no_index_yet_has_no_exports_and_loads_nothing(tmp_path):
    handle, encoders = _encoders(tmp_path / "none")
    assert handle.current is None and encoders.onnx_text() is None and encoders.onnx_image() is None
    assert not encoders.torch_loaded and encoders.matches_index()
