"""Recall@K evaluation and contrastive training: figures checked by brute force, a tiny model
trained on the synthetic shapes data beats chance and its untrained self on held-out
combinations, and the result indexes and queries through the CLI."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_image
from mmsearch.training.datasets import load_dataset
from mmsearch.errors import TrainingError, TrainingInterrupted
from mmsearch.training.evaluate import chance_recall, evaluate, recall_at_k, recall_figures
from mmsearch.encoders import ModelSpec, TorchEncoder as Encoder
from mmsearch.training.train import LAST_STATE, TrainOptions, Trainer, split_for_training, train

ROOT = Path(__file__).resolve().parents[1]
# A little bigger than conftest's TINY_CONFIG (8-px patches, 2 layers, short context) so that it
# can learn colours, shapes and positions in a few seconds of CPU time.
SMALL_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One intra-op thread: on a small shared CI machine, OpenMP threads spinning against other
    processes make these tiny models many times slower than one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _synthetic():
    spec = importlib.util.spec_from_file_location("make_synthetic_dataset", ROOT / "scripts" / "make_synthetic_dataset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- recall against brute force ------------------------------------------------------------------
def _brute_force(image_emb, text_emb, owners, k):
    """Rank every candidate by sorting, one query at a time."""
    t2i_hits = 0
    for j, t in enumerate(text_emb):
        scores = [float(np.dot(t, im)) for im in image_emb]
        top = sorted(range(len(scores)), key=lambda i: -scores[i])[:k]
        t2i_hits += owners[j] in top
    i2t_hits, n_queries = 0, 0
    for i, im in enumerate(image_emb):
        if i not in owners:
            continue
        n_queries += 1
        scores = [float(np.dot(im, t)) for t in text_emb]
        top = sorted(range(len(scores)), key=lambda j: -scores[j])[:k]
        i2t_hits += any(owners[j] == i for j in top)
    return 100 * t2i_hits / len(text_emb), 100 * i2t_hits / n_queries


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recall_matches_brute_force_with_several_captions_per_image(seed):
    rng = np.random.default_rng(seed)
    n_images, dim = 40, 16
    image_emb = rng.normal(size=(n_images, dim)).astype(np.float32)
    owners = []
    for i in range(n_images - 2):  # the last two images have no caption: not i2t queries, still t2i candidates
        owners += [i] * int(rng.integers(1, 6))
    text_emb = image_emb[owners] + rng.normal(scale=1.2, size=(len(owners), dim)).astype(np.float32)
    image_emb /= np.linalg.norm(image_emb, axis=1, keepdims=True)
    text_emb /= np.linalg.norm(text_emb, axis=1, keepdims=True)
    t2i, i2t = recall_at_k(image_emb, text_emb, owners, ks=(1, 5, 10), chunk=7)
    for k in (1, 5, 10):
        expected_t2i, expected_i2t = _brute_force(image_emb, text_emb, owners, k)
        assert t2i[f"R@{k}"] == pytest.approx(expected_t2i, abs=1e-3)
        assert i2t[f"R@{k}"] == pytest.approx(expected_i2t, abs=1e-3)
    assert 0 < t2i["R@1"] < t2i["R@5"] < 100  # a case where the numbers mean something


def test_recall_hand_computed_case_and_ties():
    # 3 images on axes; image 0 has captions matching 0 and 2, image 1 one caption pointing at 2.
    images = np.eye(3, dtype=np.float32)
    texts = np.array([[1, 0, 0], [0, 0.1, 1], [0.1, 0, 1]], np.float32)
    owners = [0, 0, 1]
    t2i, i2t = recall_at_k(images, texts, owners, ks=(1, 2))
    # captions: #0 -> image0 rank1 (hit@1), #1 -> image2 then image1 (miss@1, miss@2), #2 -> image2 then image0 (miss, miss)
    assert t2i == {"R@1": pytest.approx(100 / 3, abs=1e-3), "R@2": pytest.approx(100 / 3, abs=1e-3)}
    # image0: best own caption #0 at rank 1; image1: its caption #2 (score 0) ranks below #1 (0.1)
    assert i2t == {"R@1": 50.0, "R@2": 50.0}
    # A collapsed model (everything the same vector): top-K takes ties in dataset order, so the
    # first image's queries hit; ties counted against the model give zero; random ties give chance.
    same = np.ones((5, 4), np.float32) / 2
    figures = recall_figures(same, same[:5], list(range(5)), ks=(1, 2))
    assert figures.text_to_image == figures.image_to_text == {"R@1": 20.0, "R@2": 40.0}
    assert figures.strict["text_to_image"] == figures.strict["image_to_text"] == {"R@1": 0.0, "R@2": 0.0}
    assert figures.expected["text_to_image"] == figures.expected["image_to_text"] == {"R@1": 20.0, "R@2": 40.0}


# -- ties: duplicate captions against an independent top-K --------------------------------------
def _independent_top_k(sims: np.ndarray, positive: np.ndarray, k: int) -> float:
    """Written from the protocol: sort each query's candidates by score (a stable sort keeps
    dataset order among equal scores), take the first k, a hit when any is a positive."""
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return 100 * float(np.mean(np.take_along_axis(positive, order, axis=1).any(axis=1)))


def _independent_strict(sims: np.ndarray, positive: np.ndarray, k: int) -> float:
    """Every non-positive scoring at least as high as the best positive ranks above it."""
    best = np.where(positive, sims, -np.inf).max(axis=1, keepdims=True)
    return 100 * float(np.mean(((sims >= best) & ~positive).sum(axis=1) < k))


def _duplicate_caption_set(seed: int):
    """240 images with one caption each, 49 distinct caption strings (as in the tracker's set),
    vectors with small integer entries so that every score is exact in any summation order."""
    rng = np.random.default_rng(seed)
    n_images, n_strings, dim = 240, 49, 6
    string_of = np.concatenate([np.arange(n_strings), rng.integers(0, n_strings, n_images - n_strings)])
    rng.shuffle(string_of)
    vocab = rng.integers(-3, 4, size=(n_strings, dim)).astype(np.float32)
    # A good but imperfect model: each image near the vector of its caption's text.
    images = vocab[string_of] * 2 + rng.integers(-1, 2, size=(n_images, dim)).astype(np.float32)
    return images, vocab[string_of], list(range(n_images)), string_of


@pytest.mark.parametrize("seed", [0, 1])
def test_duplicate_captions_top_k_recall_matches_an_independent_implementation(seed):
    images, texts, owners, string_of = _duplicate_caption_set(seed)
    figures = recall_figures(images, texts, owners, ks=(1, 5, 10), chunk=37)
    i2t_sims, t2i_sims = images @ texts.T, texts @ images.T
    i2t_pos = np.eye(len(images), dtype=bool)  # image i's only caption is caption i
    t2i_pos = i2t_pos.T
    for k in (1, 5, 10):
        assert figures.image_to_text[f"R@{k}"] == pytest.approx(_independent_top_k(i2t_sims, i2t_pos, k), abs=1e-3)
        assert figures.text_to_image[f"R@{k}"] == pytest.approx(_independent_top_k(t2i_sims, t2i_pos, k), abs=1e-3)
        assert figures.strict["image_to_text"][f"R@{k}"] == pytest.approx(_independent_strict(i2t_sims, i2t_pos, k), abs=1e-3)
        assert figures.strict["text_to_image"][f"R@{k}"] == pytest.approx(_independent_strict(t2i_sims, t2i_pos, k), abs=1e-3)
    # Strict image->text R@1 can only count images whose caption text is unique; top-K is not capped so.
    unique_texts = np.bincount(string_of)[string_of] == 1
    assert figures.strict["image_to_text"]["R@1"] <= 100 * unique_texts.mean() + 1e-3
    assert figures.image_to_text["R@1"] > figures.strict["image_to_text"]["R@1"]
    # Expected under random tie orders: a Monte Carlo estimate, ties broken by random jitter
    # smaller than the gap between two distinct (integer) scores.
    rng = np.random.default_rng(100 + seed)
    draws = [_independent_top_k(i2t_sims + rng.uniform(0, 0.5, i2t_sims.shape), i2t_pos, 5) for _ in range(600)]
    assert figures.expected["image_to_text"]["R@5"] == pytest.approx(np.mean(draws), abs=0.5)
    assert figures.strict["image_to_text"]["R@5"] <= figures.expected["image_to_text"]["R@5"]
    assert set(figures.ties()) >= {"image_to_text"}


def test_recall_equals_open_clips_own_evaluation_without_ties():
    """open_clip_train's get_clip_metrics (one caption per image, argsort of the logits)."""
    metrics_module = pytest.importorskip("open_clip_train.train")
    rng = np.random.default_rng(7)
    images = rng.normal(size=(150, 16)).astype(np.float32)
    texts = images + rng.normal(scale=1.5, size=images.shape).astype(np.float32)
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    theirs = metrics_module.get_clip_metrics(torch.from_numpy(images), torch.from_numpy(texts), torch.tensor(100.0))
    figures = recall_figures(images, texts, list(range(150)))
    assert not figures.ties()
    for k in (1, 5, 10):
        assert figures.text_to_image[f"R@{k}"] == pytest.approx(100 * theirs[f"text_to_image_R@{k}"], abs=1e-3)
        assert figures.image_to_text[f"R@{k}"] == pytest.approx(100 * theirs[f"image_to_text_R@{k}"], abs=1e-3)
    assert 0 < figures.image_to_text["R@1"] < figures.image_to_text["R@10"] < 100


def test_eval_of_a_dataset_with_duplicate_captions(tmp_path, tiny_model, cli):
    """Through the real model and command: identical captions get identical vectors (so their ties
    are exact), the headline figures are the independent top-K of those vectors, and the strict
    and expected readings are reported beside them."""
    rows = []
    phrases = ["a photo of a dog", "a photo of a cat", "a red square", "a picture"]
    for i in range(24):
        make_image(tmp_path / f"{i}.png", seed=i, size=(32, 32))
        captions = [phrases[i % 4]] + ([f"image number {i}"] if i % 3 == 0 else [])
        rows.append({"image": f"{i}.png", "captions": captions})
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = load_dataset(tmp_path / "d.jsonl")
    encoder = Encoder(ModelSpec.resolve(str(tiny_model.config), str(tiny_model.checkpoint)))
    from mmsearch.training.evaluate import embed_dataset

    image_emb, text_emb, owners, _ = embed_dataset(encoder, ds, batch_size=5)
    texts, _ = ds.pairs()
    first = {t: j for j, t in reversed(list(enumerate(texts)))}
    for j, t in enumerate(texts):
        assert np.array_equal(text_emb[j], text_emb[first[t]])
    report = evaluate(encoder, ds, batch_size=5)
    sims = image_emb.astype(np.float64) @ text_emb.astype(np.float64).T
    positive = np.asarray(owners)[None, :] == np.arange(len(image_emb))[:, None]
    for k in (1, 5, 10):
        assert report.image_to_text[f"R@{k}"] == pytest.approx(_independent_top_k(sims, positive, k), abs=1e-3)
        assert report.ties["image_to_text"]["strict"][f"R@{k}"] == pytest.approx(_independent_strict(sims, positive, k), abs=1e-3)
    assert sum(report.ties["image_to_text"]["strict"].values()) < sum(report.image_to_text.values())
    data = json.loads(cli("eval", tmp_path / "d.jsonl", *tiny_model.args, "--json").stdout)
    assert data["image_to_text"] == report.image_to_text and data["ties"] == report.ties
    table = cli("eval", tmp_path / "d.jsonl", *tiny_model.args, "-q").stdout
    assert "image->text (ties against)" in table and "image->text (ties at random)" in table
    assert "top-K protocol" in table


def test_chance_levels():
    chance = chance_recall(100, [i for i in range(100) for _ in range(5)], ks=(1, 5, 10))
    assert chance["text_to_image"] == {"R@1": 1.0, "R@5": 5.0, "R@10": 10.0}
    # P(one of 5 captions in a random top 1 of 500) = 5/500 = 1%
    assert chance["image_to_text"]["R@1"] == pytest.approx(1.0, abs=1e-3)
    assert 4.5 < chance["image_to_text"]["R@5"] < 5.0


# -- evaluation with a real model ----------------------------------------------------------------
def test_evaluate_encodes_in_batches_and_skips_broken_images(tmp_path, tiny_model):
    rows = []
    for i in range(7):
        make_image(tmp_path / f"{i}.png", seed=i, size=(32, 32))
        rows.append({"image": f"{i}.png", "captions": [f"picture number {i}", f"image {i} of seven"][: 1 + i % 2]})
    (tmp_path / "broken.png").write_bytes(b"not an image")
    rows.append({"image": "broken.png", "caption": "broken"})
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = load_dataset(tmp_path / "d.jsonl")
    encoder = Encoder(ModelSpec.resolve(str(tiny_model.config), str(tiny_model.checkpoint)))
    events = []

    class Recorder:
        def start(self, phase, total):
            events.append((phase, total))

        def advance(self, n=1):
            events.append(n)

        def skip(self, skip):
            events.append(("skip", Path(skip.path).name))

    report = evaluate(encoder, ds, batch_size=3, progress=Recorder())
    assert report.images == 7 and report.captions == 10
    assert ("skip", "broken.png") in events and ("images", 8) in events and ("captions", 10) in events
    # Same figures as encoding everything at once outside the evaluator.
    from mmsearch.media.image import load_image

    image_emb = encoder.encode_images([load_image(tmp_path / f"{i}.png") for i in range(7)])
    texts, owners = [], []
    for i, row in enumerate(rows[:7]):
        texts += row["captions"]
        owners += [i] * len(row["captions"])
    t2i, i2t = recall_at_k(image_emb, encoder.encode_texts(texts), owners)
    assert report.text_to_image == t2i and report.image_to_text == i2t


# -- training --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shapes")
    _synthetic().generate(out, {"train": 640, "val": 64, "test": 100}, image_size=32, captions=4, seed=0)
    return out / "dataset.jsonl"


@pytest.fixture(scope="module")
def small_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "mmsmall.json"
    path.write_text(json.dumps(SMALL_CONFIG))
    return path


@pytest.fixture(scope="module")
def trained(shapes, small_config, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("run") / "model"
    report = train(load_dataset(shapes), out, str(small_config), "none",
                   TrainOptions(epochs=6, batch_size=64, lr=1e-3, seed=0))
    return out, report


def test_synthetic_dataset_holds_out_combinations(shapes):
    meta = json.loads((shapes.parent / "metadata.json").read_text())
    held = set(meta["held_out_pairs"])
    assert len(held) == 5
    for line in shapes.read_text().splitlines():
        row = json.loads(line)
        pairs = {f"{o['colour']} {o['shape']}" for o in row["objects"]}
        assert bool(pairs & held) == (row["split"] == "test"), row
        assert len(set(row["captions"])) == 4
        for obj in row["objects"]:  # every object is named in some caption
            assert any(obj["colour"] in c for c in row["captions"])
    ds = load_dataset(shapes)
    assert (len(ds.split("train")), len(ds.split("val")), len(ds.split("test"))) == (640, 64, 100)


def test_trained_tiny_model_beats_chance_and_its_untrained_self_on_held_out_test(trained, shapes, small_config):
    out, report = trained
    test = load_dataset(shapes).split("test")
    untrained = evaluate(Encoder(ModelSpec.resolve(str(small_config), "none")), test)
    after = evaluate(Encoder(ModelSpec.resolve(str(out))), test)
    chance = after.chance["text_to_image"]["R@5"]
    assert chance == 5.0
    assert after.text_to_image["R@5"] >= 5 * chance, after.as_dict()
    assert after.text_to_image["R@5"] >= untrained.text_to_image["R@5"] + 10, (untrained.as_dict(), after.as_dict())
    assert after.image_to_text["R@5"] > untrained.image_to_text["R@5"]
    # The run's record: validation on the named val split each epoch, the last epoch's weights
    # kept, the best epoch recorded beside them, the start and end measured on the same images.
    assert report.epochs == 6 and report.train_images == 640 and report.val_images == 64
    assert all(r.val is not None for r in report.history)
    best = max(report.history, key=lambda r: r.val["rsum"])
    assert report.best_epoch == best.epoch and report.kept_epoch == 6
    saved = torch.load(out / "checkpoint.pt", map_location="cpu")
    assert saved["epoch"] == 6 and saved["val"] == report.history[-1].val == report.end
    assert report.improved and report.end["rsum"] > report.start["rsum"] and not report.warnings
    log = json.loads((out / "train.json").read_text())
    assert log["done"] and log["options"]["lr"] == 1e-3 and len(log["history"]) == 6
    assert json.loads((out / "config.json").read_text()) == SMALL_CONFIG
    # The loss went down and the learnable temperature moved.
    assert report.history[-1].loss < report.history[0].loss
    assert report.history[-1].logit_scale != pytest.approx(1 / 0.07, abs=1e-3)


def test_trained_model_indexes_and_queries_through_the_cli(trained, shapes, cli, tmp_path):
    out, _ = trained
    images = shapes.parent / "images" / "test"
    index = tmp_path / "idx"
    cli("index", images, "--index", index, "--model", out, "-q")
    info = json.loads(cli("info", "--index", index, "--json").stdout)
    assert info["images"] == 100 and info["model"]["name"] == str(out / "config.json")
    assert info["model"]["pretrained"] == str(out / "checkpoint.pt")
    row = json.loads((shapes.parent / "test.jsonl").read_text().splitlines()[0])
    caption = row["captions"][0]
    hits = json.loads(cli("query", caption, "--index", index, "--top", "100", "--json").stdout)["hits"]
    assert len(hits) == 100
    # Scores are the trained model's cosine similarities, whichever way the model is named.
    encoder = Encoder(ModelSpec.resolve(str(out / "config.json"), str(out / "checkpoint.pt")))
    from mmsearch.media.image import load_image

    target = shapes.parent / row["image"]
    expected = float(encoder.encode_images([load_image(target)])[0] @ encoder.encode_texts([caption])[0])
    hit = next(h for h in hits if Path(h["path"]) == target)
    assert hit["score"] == pytest.approx(expected, abs=1e-4)
    # Same model named as config + checkpoint: no mismatch, same ranking.
    again = json.loads(cli("query", caption, "--index", index, "--top", "5", "--json",
                           "--model", out / "config.json", "--pretrained", out / "checkpoint.pt").stdout)["hits"]
    assert [h["path"] for h in again] == [h["path"] for h in hits[:5]]


def test_eval_and_train_commands(shapes, small_config, cli, tmp_path):
    out = tmp_path / "cli-model"
    result = cli("train", shapes, "--out", out, "--model", small_config, "--pretrained", "none",
                 "--epochs", "1", "--batch-size", "64", "--lr", "1e-3", "--json")
    report = json.loads(result.stdout)
    assert report["epochs"] == 1 and report["best_epoch"] == 1 and report["train_images"] == 640
    assert (out / "config.json").is_file() and (out / "checkpoint.pt").is_file() and (out / LAST_STATE).is_file()
    # A second run into the same folder must be asked for.
    result = cli("train", shapes, "--out", out, "--model", small_config, "--pretrained", "none", ok=False)
    assert result.exit_code == 1 and "--resume" in result.stderr
    evaluated = json.loads(cli("eval", shapes, "--model", out, "--json").stdout)
    assert evaluated["split"] == "test" and evaluated["images"] == 100 and evaluated["captions"] == 400
    assert evaluated["chance"]["text_to_image"]["R@10"] == 10.0
    library = evaluate(Encoder(ModelSpec.resolve(str(out))), load_dataset(shapes).split("test"))
    assert evaluated["text_to_image"] == library.text_to_image and evaluated["image_to_text"] == library.image_to_text
    table = cli("eval", shapes, "--model", out, "--split", "val", "-q").stdout
    assert "text->image (chance)" in table and "64 images, 256 captions" in table
    bad = cli("eval", shapes, "--model", out, "--split", "nope", ok=False)
    assert bad.exit_code == 1 and "no 'nope' split" in bad.stderr


def test_resume_after_interruption_gives_the_same_model(shapes, small_config, tmp_path):
    ds = load_dataset(shapes)
    ds_train, ds_val = split_for_training(ds, 0.1)
    ds_train.items = ds_train.items[:128]
    opts = dict(epochs=2, batch_size=32, lr=1e-3, seed=3)

    straight = tmp_path / "straight"
    Trainer(ds_train, ds_val, straight, str(small_config), "none", TrainOptions(**opts)).run()

    class StopAfter:
        def __init__(self, steps):
            self.left = steps

        def start(self, phase, total):
            pass

        def advance(self, n=1):
            pass

        def metrics(self, values):
            self.left -= 1
            if self.left == 0:
                raise KeyboardInterrupt

    interrupted = tmp_path / "interrupted"
    with pytest.raises(TrainingInterrupted, match="--resume"):
        Trainer(ds_train, ds_val, interrupted, str(small_config), "none", TrainOptions(**opts), progress=StopAfter(6)).run()
    state = torch.load(interrupted / LAST_STATE, map_location="cpu", weights_only=False)
    assert (state["epoch"], state["batch"], state["step"]) == (1, 2, 6)
    with pytest.raises(TrainingError, match="already holds"):
        Trainer(ds_train, ds_val, interrupted, str(small_config), "none", TrainOptions(**opts))
    report = Trainer(ds_train, ds_val, interrupted, resume=True).run()
    assert report.steps == 8 and [r.epoch for r in report.history] == [1, 2]
    a = torch.load(straight / "checkpoint.pt", map_location="cpu")["state_dict"]
    b = torch.load(interrupted / "checkpoint.pt", map_location="cpu")["state_dict"]
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)


def test_locked_image_tower_stays_fixed(shapes, small_config, tmp_path):
    ds = load_dataset(shapes)
    ds_train = ds.split("train")
    ds_train.items = ds_train.items[:64]
    out = tmp_path / "lit"
    Trainer(ds_train, None, out, str(small_config), "none",
            TrainOptions(epochs=1, batch_size=32, lr=1e-3, lock_image=True)).run()
    before = Trainer(ds_train, None, tmp_path / "unused", str(small_config), "none", TrainOptions()).model.state_dict()
    after = torch.load(out / "checkpoint.pt", map_location="cpu")["state_dict"]
    assert all(torch.equal(before[k], after[k]) for k in after if k.startswith("visual."))
    assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith("transformer."))
    with pytest.raises(TrainingError, match="nothing to train"):
        TrainOptions(lock_image=True, lock_text=True).check()


def test_document_evaluation_fusion_beats_the_best_single_modality(trained, shapes, tmp_path):
    """Documents (an image with one caption) found by another caption: on the trained model,
    fusing both vectors ranks above either alone, and only BM25 finds exact product codes."""
    from mmsearch import Engine
    from mmsearch.search.request import Ranking
    from mmsearch.training.documents import Config, evaluate_documents

    out, _ = trained
    configs = [Config("image only", Ranking("late"), "image"), Config("text only", Ranking("late"), "text"),
               Config("early", Ranking("early", image_weight=0.3, text_weight=0.7)),
               Config("late", Ranking("late", image_weight=0.3, text_weight=0.7)),
               Config("hybrid", Ranking("early", "hybrid", image_weight=0.3, text_weight=0.7))]
    test = load_dataset(shapes).split("test")
    test.items = test.items[:40]
    report = evaluate_documents(lambda folder: Engine(folder, model=str(out)), test, configs=configs,
                                work=tmp_path / "work")
    rows = report.rows
    assert report.documents == 40 and set(rows) == {c.name for c in configs}
    single = max(rows["image only"]["R@1"], rows["text only"]["R@1"])
    assert max(rows["early"]["R@1"], rows["late"]["R@1"]) >= single, rows
    assert rows["hybrid"]["R@1"] > single, rows
    # Exact tokens: a product code means nothing to the vectors, everything to BM25.
    assert rows["hybrid"]["token@1"] == 100.0 and rows["text only"]["token@1"] < 50, rows
    # The index it was measured on holds one document per image: a text and an image part each.
    with Engine(tmp_path / "work" / "index") as engine:
        assert engine.info()["images"] == 40 and engine.info()["texts"] == 40
