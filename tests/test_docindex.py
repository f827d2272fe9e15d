"""The document index (``storage.docindex``): early fusion's candidates from one vector per
document, used only while it holds the snapshot's generation at the weights asked; its answers
checked against early-fusion scores computed by hand from the stored vectors, and against the
item path."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest
from docs_corpus import make_docs_corpus

from mmsearch import Engine
from mmsearch import filters as filters_mod
from mmsearch.check import check_folder
from mmsearch.search.request import Ranking as FusionOptions
from mmsearch.storage import IndexStore, docindex, writer_lock

DIM = 32


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def _row(item_id, path, locator, modality, taken=None):
    return dict(id=item_id, path=path, locator=locator, modality=modality, size=1,
                mtime_ns=1_500_000_000_000_000_000, content_hash=f"h{item_id:063x}", width=None, height=None,
                text="words" if modality == "text" else None, meta=None, taken_at=taken,
                date_source="exif" if taken else None)


def write_library(folder, docs: int, lone_images: int = 3, lone_texts: int = 3, seed: int = 0, first_id: int = 1,
                  frames: int = 0, tag: str = ""):
    """A library of JSONL records (text + image), image + sidecar pairs, lone images and lone
    texts (and a video of ``frames`` frames), with vectors written through the store; images
    dated 2020-2023 in turn. ``tag``: in every path (to add another library beside one)."""
    rng = np.random.default_rng(seed)
    rows, vectors = [], []
    next_id = first_id
    for i in range(docs):
        image = _unit(rng.standard_normal(DIM))
        text = _unit(image + rng.standard_normal(DIM).astype(np.float32) * 0.8)
        taken = datetime(2020 + i % 4, 6, 1)
        if i % 2:
            parts = [(f"/lib{tag}/shop.jsonl", str(i + 1), "text", None), (f"/lib{tag}/shop.jsonl", f"{i + 1}:image", "image", taken)]
        else:
            parts = [(f"/lib{tag}/photos/p{i}.jpg", "", "image", taken), (f"/lib{tag}/photos/p{i}.txt", "", "text", None)]
        for (path, locator, modality, when), v in zip(parts, (text, image) if i % 2 else (image, text)):
            rows.append(_row(next_id, path, locator, modality, when))
            vectors.append(v)
            next_id += 1
    for i in range(lone_images):
        rows.append(_row(next_id, f"/lib{tag}/alone/a{i}.jpg", "", "image", datetime(2023, 1, 1)))
        vectors.append(_unit(rng.standard_normal(DIM)))
        next_id += 1
    for i in range(lone_texts):
        rows.append(_row(next_id, f"/lib{tag}/notes/n{i}.txt", "", "text"))
        vectors.append(_unit(rng.standard_normal(DIM)))
        next_id += 1
    for i in range(frames):
        row = _row(next_id, f"/lib{tag}/clips/walk.mp4", f"f{i}", "video")
        rows.append(dict(row, meta={"t": float(i), "duration": float(frames)}))
        vectors.append(_unit(rng.standard_normal(DIM)))
        next_id += 1
    if IndexStore.is_index(folder):
        store = IndexStore.open(folder)
    else:
        store = IndexStore.create(folder, {"name": "synthetic", "pretrained": None, "fingerprint": "synthetic"}, DIM)
    with writer_lock(folder), store.write() as w:
        w.bulk_insert(rows, np.stack(vectors))
    store.close()
    return next_id


def rebuild(folder):
    store = IndexStore.open(folder)
    try:
        with writer_lock(folder):
            return docindex.refresh(store)
    finally:
        store.close()


def by_hand(engine, query, weights=(0.5, 0.5), wanted=None):
    """Every document's early-fusion score from the stored vectors: [(score, representative id)],
    best first (ties: lowest id)."""
    from mmsearch.media.documents import doc_key

    with engine.store.read() as r:
        rows = r.items(sorted(r.item_ids()))
        blobs = dict(r.embeddings(list(rows)))
    docs: dict = {}
    for row in rows.values():
        docs.setdefault(doc_key(row.path, row.locator, row.modality), []).append(row)
    out = []
    for key, parts in docs.items():
        if key[1] == "video":  # a video: its best frame
            out.append(max((float(query @ np.frombuffer(blobs[p.id], np.float32)), -p.id) for p in parts))
            out[-1] = (out[-1][0], -out[-1][1])
            continue
        image = next((p for p in parts if p.modality == "image"), None)
        text = next((p for p in parts if p.modality == "text"), None)
        rep = image or text
        if wanted is not None and not wanted.matches(rep):
            continue
        vecs = [np.frombuffer(blobs[p.id], np.float32) for p in (image, text) if p is not None]
        fused = vecs[0] if len(vecs) == 1 else weights[0] * vecs[0] + weights[1] * vecs[1]
        out.append((float(query @ (fused / np.linalg.norm(fused))), rep.id))
    out.sort(key=lambda s: (-s[0], s[1]))
    return out


def ranked(engine, query, k=10, **kwargs):
    options = FusionOptions("early", kwargs.pop("mode", "vector"), kwargs.pop("image_weight", 0.5),
                            kwargs.pop("text_weight", 0.5))
    return Ranking([(h.score, h.id) for h in engine.search_fused(query, None, options, k=k, **kwargs)])


def in_use(engine, weights=(0.5, 0.5)) -> bool:
    with engine.store.snapshot() as snap:
        return docindex.for_query(snap, weights) is not None


def expected(engine, query, k=10, **kwargs):
    return Ranking(by_hand(engine, query, **kwargs)[:k])


class Ranking(list):
    """(score, id) pairs, equal to another when the ids are the same in the same order and the
    scores agree to float32 precision."""

    def __eq__(self, other):
        return [i for _, i in self] == [i for _, i in other] and \
            np.allclose([s for s, _ in self], [s for s, _ in other], atol=1e-5)

    __hash__ = None


@pytest.fixture
def library(tmp_path):
    folder = tmp_path / "idx"
    write_library(folder, docs=300)  # 606 items: more than one pool of candidates (50)
    record = rebuild(folder)
    assert (record["documents"], record["vectors"], record["gen"]) == (300, 306, 1)
    return folder


def queries(n=12, seed=5):
    return _unit(np.random.default_rng(seed).standard_normal((n, DIM)))


def test_early_fusion_searches_the_document_index_and_finds_the_best_documents(library):
    with Engine(library) as engine:
        assert in_use(engine)
        assert in_use(engine, (1.0, 1.0))  # the same fused vectors (the weights' ratio)
        for q in queries():
            assert ranked(engine, q) == expected(engine, q)
            assert ranked(engine, q, k=3) == expected(engine, q, k=3)
        # A document's vector is normalise(0.5 v_image + 0.5 v_text), keyed by its image part.
        with engine.store.snapshot() as snap:
            index = docindex.for_query(snap, (0.5, 0.5))
            blobs = dict(snap.reader.embeddings([1, 2]))
        stored = index.index.reconstruct(1)
        assert np.allclose(stored, docindex.fuse(np.frombuffer(blobs[1], np.float32),
                                                 np.frombuffer(blobs[2], np.float32)), atol=1e-6)


def test_filters_apply_to_documents_as_their_representative(library):
    wanted = filters_mod.parse("2022-01-01", None, None, None)
    with Engine(library) as engine:
        assert in_use(engine)
        for q in queries(6, seed=9):
            got = ranked(engine, q, after="2022-01-01")
            assert got == expected(engine, q, wanted=wanted)
            assert got and all(engine.get(i).taken_at >= "2022-01-01" for _, i in got)


def test_other_weights_and_types_take_the_item_path(tmp_path):
    folder = tmp_path / "idx"
    write_library(folder, docs=12, lone_images=2, lone_texts=2)  # 28 items: one pool holds them all
    rebuild(folder)
    with Engine(folder) as engine:
        assert in_use(engine) and not in_use(engine, (0.7, 0.3))
        for q in queries(6):
            assert ranked(engine, q, image_weight=0.7, text_weight=0.3, k=20) == \
                expected(engine, q, k=20, weights=(0.7, 0.3))
            hits = engine.search_fused(q, None, FusionOptions("early"), k=5, type="text")
            assert hits and all(h.modality == "text" for h in hits)


def test_a_stale_document_index_is_not_used_and_answers_stay_right(library):
    q = queries(1, seed=11)[0]
    # A new document whose image is the query itself: the best match.
    store = IndexStore.open(library)
    with writer_lock(library), store.write() as w:
        w.bulk_insert([_row(5000, "/lib/new.jpg", "", "image"), _row(5001, "/lib/new.txt", "", "text")],
                      np.stack([q, q]))
    store.close()
    with Engine(library) as engine:
        assert not in_use(engine)  # built at generation 1, the catalogue is at 2
        got = ranked(engine, q)
        assert got[0][1] == 5000 and got == expected(engine, q)
        # A removed document is not found, though the stale file still holds it.
        store = engine.store
        with engine.store.write() as w:
            w.remove([5000, 5001])
        assert 5000 not in [i for _, i in ranked(engine, q)]
        assert ranked(engine, q) == expected(engine, q)
    assert rebuild(library)["gen"] == 3
    with Engine(library) as engine:
        assert in_use(engine)
        assert ranked(engine, q) == expected(engine, q)
    assert [p.name for _, p in docindex.saved_files(library)] == [docindex.file_name(3)]


def test_a_damaged_document_index_is_passed_over_reported_and_repaired(library):
    path = library / IndexStore.open(library).manifest[docindex.RECORD]["file"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    q = queries(1, seed=3)[0]
    with Engine(library) as engine:
        assert not in_use(engine)
        assert ranked(engine, q) == expected(engine, q)
    # (`check` also reports the synthetic library's files as vanished: they never existed.)
    assert "document_index" in [p.kind for p in check_folder(library).problems]
    rebuild(library)  # what `check --repair` does (checked on real files below)
    with Engine(library) as engine:
        assert in_use(engine)
        assert ranked(engine, q) == expected(engine, q)
    # A record naming a file that never got written (a writer killed before the rename): not used.
    path.unlink()
    with Engine(library) as engine:
        assert not in_use(engine)
        assert ranked(engine, q) == expected(engine, q)
    assert "document_index" in [p.kind for p in check_folder(library).problems]


def test_a_library_of_one_modality_is_known_to_have_no_documents_without_a_pass_over_its_items(tmp_path):
    folder = tmp_path / "idx"
    write_library(folder, docs=0, lone_images=6, lone_texts=0)
    record = rebuild(folder)
    # The two modality probes answered: no layout pass, so no count of vectors either.
    assert record["documents"] == 0 and record["vectors"] is None and "file" not in record
    with Engine(folder) as engine:
        assert not in_use(engine)
        for q in queries(3):
            assert ranked(engine, q) == expected(engine, q)
    assert "document_index" not in [p.kind for p in check_folder(folder).problems]


def test_a_library_without_documents_needs_no_document_index(tmp_path):
    folder = tmp_path / "idx"
    write_library(folder, docs=0, lone_images=5, lone_texts=5)
    record = rebuild(folder)
    assert record["documents"] == 0 and "file" not in record and docindex.saved_files(folder) == []
    with Engine(folder) as engine:
        assert not in_use(engine)
        for q in queries(3):
            assert ranked(engine, q) == expected(engine, q)
    assert "document_index" not in [p.kind for p in check_folder(folder).problems]


def test_index_runs_keep_the_document_index_current_and_it_ranks_as_the_item_path(tmp_path, tiny_model, monkeypatch):
    root = make_docs_corpus(tmp_path / "corpus")
    idx = tmp_path / "idx"
    with Engine(idx, model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint)) as engine:
        engine.add([root])
        record = engine.store.manifest[docindex.RECORD]
        with engine.store.read() as r:
            assert record["gen"] == r.generation()
        # Two JSONL records with images, three captioned photos, a photo with a sidecar.
        assert record["documents"] == 6 and (idx / record["file"]).is_file()
        assert in_use(engine)
        words = ["red running shoe", "lighthouse", "boats in the harbour", "fruit market", "a line of text",
                 str(root / "photos" / "market.jpg")]  # an image query: left out, its sidecar's text stays
        for mode in ("vector", "hybrid"):
            asked = words if mode == "vector" else words[:-1]  # (hybrid needs words)
            with_index = [[(h.id, round(h.score, 5)) for h in engine.search(w, k=20, fusion="early", mode=mode)]
                          for w in asked]
            monkeypatch.setattr(docindex, "USE_DOCUMENT_INDEX", False)
            exact = [[(h.id, round(h.score, 5)) for h in engine.search(w, k=20, fusion="early", mode=mode)]
                     for w in asked]
            monkeypatch.setattr(docindex, "USE_DOCUMENT_INDEX", True)
            assert with_index == exact and all(with_index)
        # A new photo with a sidecar: the next run rebuilds the index at the new generation.
        from conftest import make_image

        make_image(root / "photos" / "pier.jpg", seed=40)
        (root / "photos" / "pier.txt").write_text("a wooden pier in the fog")
        engine.add([root])
        record = engine.store.manifest[docindex.RECORD]
        with engine.store.read() as r:
            assert record["gen"] == r.generation()
        assert record["documents"] == 7 and in_use(engine)
        assert [p.name for _, p in docindex.saved_files(idx)] == [record["file"]]
        assert engine.search("wooden pier", k=3, fusion="early")
        # A run that changes nothing keeps it as it is.
        engine.add([root])
        assert engine.store.manifest[docindex.RECORD] == record
    # A damaged file: reported by `check`, rebuilt by `check --repair`.
    path = idx / record["file"]
    path.write_bytes(path.read_bytes()[:-16] + bytes(16))
    report = check_folder(idx)
    assert [p.kind for p in report.problems] == ["document_index"]
    with Engine(idx) as engine:
        assert not in_use(engine)
    assert check_folder(idx, repair=True).ok and check_folder(idx).ok
    with Engine(idx) as engine:
        assert in_use(engine)


def test_video_frames_are_found_through_the_document_index(tmp_path):
    folder = tmp_path / "idx"
    last = write_library(folder, docs=40, frames=8)
    record = rebuild(folder)
    assert (record["documents"], record["vectors"]) == (40, 40 + 6 + 8)  # every frame as itself
    with Engine(folder) as engine:
        assert in_use(engine)
        frame = last - 3
        with engine.store.read() as r:
            [(_, blob)] = r.embeddings([frame])
        q = _unit(np.frombuffer(blob, np.float32) + 0.05 * queries(1)[0])
        got = ranked(engine, q)
        assert got[0][1] == frame and got == expected(engine, q)
        hit = engine.search_fused(q, None, FusionOptions("early"), k=1)[0]
        assert hit.modality == "video" and hit.start is not None


# -- updated from the catalogue's changes, not rebuilt --------------------------------------------
def contents(index) -> dict[int, np.ndarray]:
    """Every (id, vector) a document index holds (flat: exact; IVF: the decoded codes)."""
    ids = index.ids()
    if index.kind == "flat":
        return dict(zip(ids.tolist(), index.index.reconstruct_batch(ids)))
    index.index.set_direct_map_type(__import__("faiss").DirectMap.Hashtable)
    return dict(zip(ids.tolist(), index.index.reconstruct_batch(ids)))


def same_as_a_rebuild(store, exact: bool = True) -> dict:
    """The saved (updated) document index holds the entries a whole build makes of the same
    snapshot, with the same parts table and counts; returns its record."""
    record = store.manifest[docindex.RECORD]
    with store.read() as r:
        assert record["gen"] == r.generation()
        whole = docindex.build(store, r)
    saved = docindex.VectorIndex(store.dim, __import__("faiss").read_index(str(store.folder / record["file"])))
    got, want = contents(saved), contents(whole.index)
    assert sorted(got) == sorted(want)
    if exact:
        assert all(np.allclose(got[i], want[i], atol=1e-6) for i in want)
    parts = np.load(store.folder / record["parts"]["file"])
    assert np.array_equal(parts, whole.parts)
    for key in ("documents", "vectors", "irregular"):
        assert record[key] == whole.facts[key], key
    return record


def test_index_runs_update_the_document_index_and_it_equals_a_rebuild(tmp_path, tiny_model):
    from conftest import make_image

    root = make_docs_corpus(tmp_path / "corpus")
    photos = root / "photos"
    for i in range(4):
        make_image(photos / f"walk{i}.jpg", seed=50 + i)
        (photos / f"walk{i}.txt").write_text(f"a walk by the river, day {i}")
    idx = tmp_path / "idx"
    words = ["red running shoe", "lighthouse", "river walk", "fruit market", "wooden pier", "a line of text"]

    def rankings(engine):
        return [[(h.id, round(h.score, 5)) for h in engine.search(w, k=20, fusion="early")] for w in words]

    def step(engine, change) -> dict:
        change()
        engine.add([root])
        record = same_as_a_rebuild(engine.store)
        assert record["update"] == "incremental" and in_use(engine)
        updated = rankings(engine)
        with writer_lock(idx):
            docindex.refresh(engine.store, force=True)
        assert engine.store.manifest[docindex.RECORD]["update"] == "build" and in_use(engine)
        assert rankings(engine) == updated and all(updated)
        return record

    with Engine(idx, model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint)) as engine:
        engine.add([root])
        assert engine.store.manifest[docindex.RECORD]["update"] == "build"

        def add():  # a new photo with its sidecar, and a sidecar for a photo that had none
            make_image(photos / "pier.jpg", seed=40)
            (photos / "pier.txt").write_text("a wooden pier in the fog")
            (root / "photos" / "exif.md").write_text("a white lighthouse")  # a second text part (irregular)

        def change():  # a sidecar's words, a photo's pixels, a JSONL record's text
            (photos / "walk0.txt").write_text("a crowded market street")
            make_image(photos / "walk1.jpg", seed=70)
            lines = (root / "shop" / "shoes.jsonl").read_text().splitlines()
            lines[0] = lines[0].replace("red running shoe", "green trail shoe")
            (root / "shop" / "shoes.jsonl").write_text("\n".join(lines) + "\n")

        def delete():  # a photo whose sidecar stays, a sidecar whose photo stays, a whole pair
            (photos / "walk2.jpg").unlink()
            (photos / "walk3.txt").unlink()
            (photos / "market.jpg").unlink()
            (photos / "market.txt").unlink()

        def rename():  # a pair to a new name, a photo away from its sidecar
            (photos / "pier.jpg").rename(photos / "jetty.jpg")
            (photos / "pier.txt").rename(photos / "jetty.txt")
            (photos / "walk1.jpg").rename(photos / "walk1-moved.jpg")

        records = [step(engine, what) for what in (add, change, delete, rename)]
        assert [r["documents"] for r in records] == [11, 11, 8, 7]
        assert records[0]["irregular"] == 1 and records[0]["changed"] == 3
        # Every generation's deletions reached the document index before their tombstones went.
        with engine.store.read() as r:
            assert r.purged_through() <= engine.store.manifest[docindex.RECORD]["gen"]
    files = sorted(p.name for p in idx.iterdir() if p.name.startswith("documents.g"))
    record = records[-1]
    assert len(files) == 2 and set(files) == {engine.store.manifest[docindex.RECORD]["file"],
                                              engine.store.manifest[docindex.RECORD]["parts"]["file"]}


def test_an_ivf_document_index_is_updated_in_place_and_retrained_only_when_it_outgrows_its_training(
        tmp_path, monkeypatch):
    from mmsearch.storage import VectorSettings

    monkeypatch.setenv("MMSEARCH_FLAT_MAX", "100")  # IVF from 100 entries (nlist 6, all probed)
    settings = VectorSettings(flat_max=100)
    folder = tmp_path / "idx"
    last = write_library(folder, docs=300)
    store = IndexStore.open(folder, settings)
    with writer_lock(folder):
        record = docindex.refresh(store)
    assert record["type"] == "ivf-sq8" and record["update"] == "build" and record["trained_for"] == 306
    # Documents added, one removed (its image: its text stays, alone), a frame of a new video.
    last = write_library(folder, docs=20, lone_images=1, lone_texts=0, seed=3, first_id=last, frames=2, tag="2")
    with writer_lock(folder), store.write() as w:
        w.remove([3])
    with writer_lock(folder):
        record = docindex.refresh(store)
    assert record["update"] == "incremental" and record["type"] == "ivf-sq8"
    assert record["documents"] == 319 and record["vectors"] == 306 + 20 + 1 + 2
    same_as_a_rebuild(store, exact=False)  # (other codes: the quantiser was trained on other vectors)
    with Engine(folder) as engine:
        assert in_use(engine)
        for q in queries():
            assert ranked(engine, q) == expected(engine, q)
    # Four times what it was trained for: trained again, whole.
    write_library(folder, docs=1000, seed=4, first_id=last, tag="3")
    with writer_lock(folder):
        record = docindex.refresh(store)
    assert record["update"] == "build" and record["trained_for"] == record["vectors"] > 4 * 306
    store.close()


def test_without_its_parts_file_or_past_the_purged_tombstones_it_is_built_whole(library):
    store = IndexStore.open(library)
    record = store.manifest[docindex.RECORD]
    (library / record["parts"]["file"]).unlink()
    with writer_lock(library), store.write() as w:
        w.remove([1])
    with writer_lock(library):
        assert docindex.refresh(store)["update"] == "build"
    with writer_lock(library), store.write() as w:
        w.remove([3])
        w.purge_tombstones(w.generation())  # as a store that did not hold them would have
    with writer_lock(library):
        assert docindex.refresh(store)["update"] == "build"
    same_as_a_rebuild(store)
    store.close()
