"""Calibrated scores: backgrounds measured when the index is built, `--type all` ordered by
calibrated score, and `--cutoff auto` on queries with and without a true match."""

from __future__ import annotations

import json

import numpy as np
import pytest
from docs_corpus import make_docs_corpus

from mmsearch import Engine, QueryError
from mmsearch.search.calibration import Background, Calibration, load, measure


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, tiny_model):
    base = tmp_path_factory.mktemp("calib")
    root = make_docs_corpus(base / "corpus")
    with Engine(base / "idx", model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint)) as engine:
        engine.add([root])
    return base / "idx", root


def test_background_statistics_are_the_sampled_cosines():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(30, 8)).astype(np.float32)
    x = rng.normal(size=(40, 8)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    background = Background.fit(q, x)
    cosines = [float(a @ b) for a in q for b in x]
    assert background.mean == pytest.approx(np.mean(cosines), abs=1e-5)
    assert background.std == pytest.approx(np.std(cosines), abs=1e-5)
    assert background.quantiles["0.999"] == pytest.approx(np.quantile(cosines, 0.999), abs=1e-5)
    assert background.z(0.5) == pytest.approx((0.5 - np.mean(cosines)) / np.std(cosines), abs=1e-4)
    # Image->image compares two disjoint halves: an image is never its own background.
    calibration = measure(x, np.empty((0, 8), np.float32), q[:5])
    assert calibration.pairs["image->image"].n == 20 * 20 and "text->text" not in calibration.pairs
    assert Calibration.from_dict(calibration.as_dict()) == calibration


def test_index_build_measures_calibration_and_type_all_mixes_by_it(calibrated):
    idx, _ = calibrated
    with Engine(idx) as engine:
        calibration = load(engine.store)
        assert {"text->image", "text->text", "image->text"} <= set(calibration.pairs)
        query = "a lighthouse in the fog"
        raw = engine.search(query, k=17)
        hits = engine.search(query, k=17, calibrated=True)
        assert sorted(h.id for h in hits) == sorted(h.id for h in raw)
        for hit in hits:
            background = calibration.background("text", hit.modality)
            assert hit.score == pytest.approx((hit.cosine - background.mean) / background.std, abs=1e-4)
            assert hit.calibrated == pytest.approx(hit.score, abs=1e-6)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        # Raw cosines put every text above every image (the modality gap of the model); the
        # calibrated ranking interleaves them by how far each stands above its own background.
        modalities = [h.modality for h in hits]
        raw_modalities = [h.modality for h in raw]
        assert raw_modalities != modalities
        assert modalities.index("image") < len(modalities) - modalities[::-1].index("text") - 1


def test_auto_cutoff_keeps_a_true_match_and_drops_background(calibrated, cli):
    idx, _ = calibrated
    with Engine(idx) as engine:
        # A query worded like an indexed caption: that caption stands out from the background.
        hits = engine.search("fishing boats in the harbour at dawn", k=10, cutoff="auto")
        assert len(hits) >= 1 and hits[0].text == "fishing boats in the harbour at dawn"
        calibration = load(engine.store)
        assert all(h.calibrated >= calibration.background("text", h.modality).auto_z for h in hits)
        # A query about nothing in the index: every hit is indistinguishable from the background.
        assert engine.search("zebra quantum saxophone", k=10) != []
        assert engine.search("zebra quantum saxophone", k=10, cutoff="auto") == []
        # A cutoff as a calibrated score means the same for every query and modality.
        strict = engine.search("fishing boats in the harbour at dawn", k=10, cutoff=100.0)
        assert strict == []
        with pytest.raises(QueryError, match="cutoff"):
            engine.search("x", cutoff="sometimes")
    out = json.loads(cli("query", "fishing boats in the harbour at dawn", "-i", idx, "--cutoff", "auto", "--json").stdout)
    assert out["hits"] and all("cosine" in h and "calibrated" in h for h in out["hits"])


def test_a_new_index_of_the_same_model_takes_the_probe_vectors_from_the_machines_cache(calibrated, tmp_path,
                                                                                       tiny_model, monkeypatch):
    """The probe captions are encoded once per model and machine (kept beside its ONNX exports):
    a second index's calibration encodes none, and its probes equal the first index's."""
    import os
    from pathlib import Path

    from mmsearch.search import calibration as calibration_mod

    index, root = calibrated
    with Engine(index) as first:
        fingerprint = first.store.manifest["model"]["fingerprint"]
        with first.store.read() as r:
            expected = r.calibration_probes(fingerprint, first.store.dim)
    kept = list((Path(os.environ["MMSEARCH_CACHE"]) / "onnx" / fingerprint).glob("calibration_probes.*.npy"))
    assert len(kept) == 1 and np.allclose(np.load(kept[0]), expected)
    calls = []
    real = calibration_mod.refresh

    def counting(store, encode_texts, cache=None):
        return real(store, lambda texts: calls.append(len(texts)) or encode_texts(texts), cache)

    monkeypatch.setattr(calibration_mod, "refresh", counting)
    with Engine(tmp_path / "second", model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint)) as second:
        second.add([root])
        with second.store.read() as r:
            assert np.allclose(r.calibration_probes(fingerprint, second.store.dim), expected)
        assert load(second.store) is not None
    assert calls == []  # no probe encoded for the second index
