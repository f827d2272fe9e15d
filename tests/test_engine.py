"""Library API: indexing, incremental updates, searching, model identity."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import IMAGE_COUNT, PG_SLOW, TEXT_COUNT, make_image
from mmsearch import Engine, ModelMismatchError, QueryError, QueryTerm
from mmsearch.media.image import load_image


def open_engine(tmp_path, model, name="idx") -> Engine:
    return Engine(tmp_path / name, model=str(model.config), pretrained=str(model.checkpoint))


def faiss_ids(engine: Engine) -> set[int]:
    return engine.vector_ids()


def db_ids(engine: Engine) -> set[int]:
    with engine.store.read() as r:
        return r.item_ids()


def test_index_then_query_by_text_and_image(backend, tmp_path, tiny_model, corpus):
    with open_engine(tmp_path, tiny_model) as engine:
        report = engine.add([corpus])
        assert (report.added, report.removed, len(report.skipped)) == (IMAGE_COUNT + TEXT_COUNT, 0, 0)
        info = engine.info()
        assert (info["images"], info["texts"]) == (IMAGE_COUNT, TEXT_COUNT)

        # A text query equal to an indexed text finds that text first, with cosine ~1.
        hits = engine.search("a black cat sleeping on a sofa", k=3)
        assert hits[0].modality == "text" and hits[0].text == "a black cat sleeping on a sofa"
        assert hits[0].path.endswith("captions.jsonl") and hits[0].locator == "2"
        assert hits[0].meta == {"source": "captions", "n": 2}
        assert hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert [h.rank for h in hits] == [1, 2, 3]
        assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))

        # An image query finds the same file first (when asked to include it) with score ~1.
        query = corpus / "b.png"
        hits = engine.search(query, k=3, include_query=True)
        assert hits[0].path == str(query) and hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert hits[0].width == 96 and hits[0].height == 72
        # ... and leaves itself out by default.
        assert str(query) not in [h.path for h in engine.search(query, k=20)]


@pytest.mark.parametrize("backend", PG_SLOW, indirect=True)  # PostgreSQL: with the slow tests
def test_type_filter_and_min_score_and_under(backend, tmp_path, tiny_model, corpus):
    with open_engine(tmp_path, tiny_model) as engine:
        engine.add([corpus])
        images = engine.search("a red pasta dish", k=20, type="image")
        texts = engine.search("a red pasta dish", k=20, type="text")
        assert len(images) == IMAGE_COUNT and {h.modality for h in images} == {"image"}
        assert len(texts) == TEXT_COUNT and {h.modality for h in texts} == {"text"}
        everything = engine.search("a red pasta dish", k=50)
        assert len(everything) == IMAGE_COUNT + TEXT_COUNT
        cut = sorted(h.score for h in everything)[5]
        kept = engine.search("a red pasta dish", k=50, min_score=cut)
        assert kept and all(h.score >= cut for h in kept) and len(kept) == len(everything) - 5
        sub = engine.search("a red pasta dish", k=50, under=corpus / "sub")
        assert {os.path.basename(h.path) for h in sub} == {"d.bmp", "e.gif", "f.tiff"}
        with pytest.raises(QueryError):
            engine.search("x", type="audio")  # (video is a type since videos are indexed)



def test_a_small_folder_is_pushed_into_the_search_by_its_path_range(tmp_path, tiny_model, monkeypatch):
    """`--under` alone: a folder holding a small part of the index is listed through the path
    index (a range on SQLite, where LIKE reads every row) and pushed into the search, giving the
    hits over-fetching gives; folders whose names extend the prefix ('a0', 'a b', 'ab') stay out."""
    from mmsearch.search import candidates

    root = tmp_path / "lib"
    for folder, count in (("a", 3), ("a0", 2), ("a b", 2), ("ab", 2), ("a/deeper", 2), ("other", 40)):
        for i in range(count):
            make_image(root / folder / f"{i}.png", seed=hash((folder, i)) % 1000)
    (root / "a.png").parent.mkdir(parents=True, exist_ok=True)
    make_image(root / "a.png", seed=7)  # a file whose name is the folder's plus an extension
    used: list[str] = []
    real = candidates.Candidates.__init__

    def spy(self, *args, **kwargs):
        real(self, *args, **kwargs)
        used.append(self.mode)

    monkeypatch.setattr(candidates.Candidates, "__init__", spy)
    with open_engine(tmp_path, tiny_model) as engine:
        engine.add([root])
        pushed = engine.search("a photo", k=10, under=root / "a")
        assert used[-1] == candidates.EXACT
        before = len(used)
        fused = engine.search("a photo", k=10, under=root / "a", fusion="early")  # lone images: their cosines
        assert used[before:] == [candidates.EXACT]  # the fused path pushes the folder down too
        monkeypatch.setattr(candidates, "PUSHDOWN_MAX", 0)  # never listed: over-fetch, as before
        fetched = engine.search("a photo", k=10, under=root / "a")
        assert used[-1] == candidates.OVERFETCH
    assert [(h.id, round(h.score, 5)) for h in pushed] == [(h.id, round(h.score, 5)) for h in fetched]
    assert [(h.id, round(h.score, 5)) for h in fused] == [(h.id, round(h.score, 5)) for h in pushed]
    assert sorted(os.path.relpath(h.path, root) for h in pushed) == sorted(
        ["a/0.png", "a/1.png", "a/2.png", "a/deeper/0.png", "a/deeper/1.png"])

def test_weighted_combination_matches_manual_vector(tmp_path, tiny_model, corpus):
    with open_engine(tmp_path, tiny_model) as engine:
        engine.add([corpus])
        enc = engine.encoder
        beach = enc.encode_texts(["beach"])[0]
        dog = enc.encode_images([load_image(corpus / "a.jpg")])[0]
        people = enc.encode_texts(["people"])[0]
        expected = 2 * beach + dog - people
        expected /= np.linalg.norm(expected)
        hits = engine.search(["2:beach", "+", str(corpus / "a.jpg"), "-", "people"], k=20, include_query=True)
        inline = engine.search(f"2:beach + {corpus / 'a.jpg'} - people", k=20, include_query=True)
        assert [h.id for h in hits] == [h.id for h in inline]
        for hit in hits:
            stored = np.frombuffer(_embedding(engine, hit.id), np.float32)
            assert hit.score == pytest.approx(float(stored @ expected), abs=1e-4)


def _embedding(engine, item_id) -> bytes:
    with engine.store.read() as r:
        return r.vector_of(item_id)


def test_incremental_add_modify_delete_rename(backend, tmp_path, tiny_model, corpus):
    with open_engine(tmp_path, tiny_model) as engine:
        engine.add([corpus])
        again = engine.add([corpus])
        assert (again.added, again.updated, again.reused, again.removed) == (0, 0, 0, 0)
        assert again.unchanged == IMAGE_COUNT + TEXT_COUNT

        # New file, modified file, deleted file, renamed file, touched-but-identical file.
        make_image(corpus / "new.jpg", seed=50)
        make_image(corpus / "b.png", seed=51)
        (corpus / "c.webp").unlink()
        old_id = engine.search(corpus / "a.jpg", k=1, include_query=True)[0].id
        old_vector = _embedding(engine, old_id)
        os.rename(corpus / "a.jpg", corpus / "renamed.jpg")
        st = os.stat(corpus / "notes" / "pasta.txt")
        os.utime(corpus / "notes" / "pasta.txt", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))

        report = engine.add([corpus])
        assert (report.added, report.updated, report.reused, report.removed) == (1, 1, 1, 2)
        assert report.unchanged == IMAGE_COUNT + TEXT_COUNT - 3

        paths = {os.path.basename(h.path) for h in engine.search("x", k=50, type="image")}
        assert paths == {"renamed.jpg", "new.jpg", "b.png", "d.bmp", "e.gif", "f.tiff"}
        renamed = engine.search(corpus / "renamed.jpg", k=1, include_query=True)[0]
        assert renamed.path.endswith("renamed.jpg") and renamed.score == pytest.approx(1.0, abs=1e-4)
        assert _embedding(engine, renamed.id) == old_vector  # reused, not re-encoded
        modified = engine.search(corpus / "b.png", k=1, include_query=True)[0]
        assert modified.path.endswith("b.png") and modified.score == pytest.approx(1.0, abs=1e-4)
        assert faiss_ids(engine) == db_ids(engine)


def test_jsonl_lines_are_incremental_and_duplicates_reuse(backend, tmp_path, tiny_model, corpus):
    with open_engine(tmp_path, tiny_model) as engine:
        engine.add([corpus])
        shutil.copy(corpus / "b.png", corpus / "copy-of-b.png")
        with open(corpus / "captions.jsonl", "a") as fh:
            fh.write('{"text": "a new caption"}\n{"broken json\n')
        report = engine.add([corpus])
        # The duplicate image copies a stored vector; only the one new caption is encoded.
        assert (report.added, report.reused, report.updated, report.removed) == (1, 1, 0, 0)
        assert [s.path for s in report.skipped] == [f"{corpus / 'captions.jsonl'}:4"]
        assert "malformed JSON" in report.skipped[0].reason
        hit = engine.search("a new caption", k=1)[0]
        assert (hit.locator, hit.text) == ("3", "a new caption")


def test_hidden_and_exclude(tmp_path, tiny_model, corpus):
    with open_engine(tmp_path, tiny_model) as engine:
        report = engine.add([corpus], exclude=["*.gif", "notes/*"])
        assert report.added == IMAGE_COUNT + TEXT_COUNT - 3
        report = engine.add([corpus], include_hidden=True)
        assert report.added == 4  # the gif, both notes, and the hidden image
        assert any(h.path.endswith("secret.jpg") for h in engine.search("x", k=50))


def test_exif_orientation_is_applied(tmp_path, tiny_model):
    folder = tmp_path / "photos"
    upright = make_image(folder / "upright.png", seed=7, size=(60, 100))
    img = Image.open(upright).rotate(90, expand=True)  # stored sideways...
    exif = Image.Exif()
    exif[0x0112] = 6  # ...with EXIF saying "rotate 90 degrees clockwise to display"
    img.save(folder / "sideways.jpg", exif=exif, quality=100)
    with open_engine(tmp_path, tiny_model) as engine:
        engine.add([folder])
        hit = engine.search(upright, k=1)[0]
        assert hit.path.endswith("sideways.jpg") and (hit.width, hit.height) == (60, 100)
        assert hit.score > 0.99  # same picture once upright (JPEG loss only)


@pytest.mark.parametrize("backend", PG_SLOW, indirect=True)  # PostgreSQL: with the slow tests
def test_model_mismatch_is_refused_then_reembed(backend, tmp_path, tiny_model, other_tiny_model, corpus):
    with open_engine(tmp_path, tiny_model) as engine:
        engine.add([corpus])
    with open_engine(tmp_path, other_tiny_model) as engine:
        with pytest.raises(ModelMismatchError, match="--reembed"):
            engine.add([corpus])
        with pytest.raises(ModelMismatchError):
            engine.search("cat")
        report = engine.add(None, reembed=True)  # re-embeds the known roots
        # Items keep their rows and ids; every one is embedded again with the new model.
        assert (report.reembedded, report.added, report.removed) == (IMAGE_COUNT + TEXT_COUNT, 0, 0)
    with Engine(tmp_path / "idx") as engine:  # no model named: the manifest's (new) model is used
        assert engine.spec.pretrained == str(other_tiny_model.checkpoint)
        assert engine.search("a black cat sleeping on a sofa", k=1)[0].score == pytest.approx(1.0, abs=1e-4)
        assert faiss_ids(engine) == db_ids(engine)


def test_more_like_this_by_item_id(tmp_path, tiny_model, corpus):
    with open_engine(tmp_path, tiny_model) as engine:
        engine.add([corpus])
        target = engine.search(corpus / "sub" / "d.bmp", k=1, include_query=True)[0]
        hits = engine.search(QueryTerm("item", str(target.id)), k=3)
        assert target.id not in [h.id for h in hits]
        by_image = engine.search(corpus / "sub" / "d.bmp", k=3)
        assert [h.id for h in hits] == [h.id for h in by_image]


def test_vectors_rebuilt_from_database_when_faiss_file_is_missing(backend, tmp_path, tiny_model, corpus):
    with open_engine(tmp_path, tiny_model) as engine:
        engine.add([corpus])
        expected = [(h.id, round(h.score, 5)) for h in engine.search("beach", k=5)]
    for path in (tmp_path / "idx").glob("vectors.*.faiss"):
        path.unlink()
    with Engine(tmp_path / "idx") as engine:
        assert [(h.id, round(h.score, 5)) for h in engine.search("beach", k=5)] == expected


def test_index_folder_inside_an_indexed_root_is_not_indexed(tmp_path, tiny_model, corpus):
    with Engine(corpus / "indexes" / "default", model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint)) as engine:
        engine.add([corpus])
        report = engine.add([corpus])
        assert (report.added, report.unchanged) == (0, IMAGE_COUNT + TEXT_COUNT)
        assert not any("/indexes/" in h.path for h in engine.search("x", k=50))


def test_random_init_is_the_same_model_in_every_process(tiny_model):
    from mmsearch.encoders import ModelSpec, TorchEncoder as Encoder

    spec = ModelSpec.resolve(str(tiny_model.config), "none")
    first = Encoder(spec).encode_texts(["a cat"])
    import torch

    torch.manual_seed(1234)  # whatever the caller's RNG state
    second = Encoder(spec).encode_texts(["a cat"])
    assert np.allclose(first, second)


def test_naming_the_index_own_model_does_not_import_open_clip():
    """`mmsearch index ./photos --model X --pretrained Y` on an index built with exactly X/Y skips
    open_clip's name checks (2-4 s of imports), so an unchanged re-index stays torch-free."""
    code = (
        "import json, sys\n"
        "from mmsearch.errors import ModelLoadError\n"
        "from mmsearch.encoders import ModelSpec\n"
        "known = {'name': 'ViT-B-32', 'pretrained': None}\n"
        "same = ModelSpec.resolve('ViT-B-32', 'none', known)\n"
        "before = 'open_clip' in sys.modules\n"
        "try:\n"
        "    ModelSpec.resolve('ViT-B-32-nonexistent', 'none', known)\n"
        "    unknown = 'accepted'\n"
        "except ModelLoadError:\n"
        "    unknown = 'rejected'\n"
        "print(json.dumps([same.name, same.pretrained, before, unknown]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == ["ViT-B-32", None, False, "rejected"]
