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
from mmsearch.datasets import load_dataset
from mmsearch.errors import TrainingError, TrainingInterrupted
from mmsearch.evaluate import chance_recall, evaluate, recall_at_k
from mmsearch.model import Encoder, ModelSpec
from mmsearch.train import LAST_STATE, TrainOptions, Trainer, split_for_training, train

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
    # image0: best own caption #0 at rank 1; image1: its caption #2 ranks below #1 (0.1 vs 0.1 tie: counts against)
    assert i2t == {"R@1": 50.0, "R@2": 50.0}
    # A collapsed model (everything the same vector) gets no credit from ties.
    same = np.ones((5, 4), np.float32) / 2
    t2i, i2t = recall_at_k(same, same[:5], list(range(5)), ks=(1,))
    assert t2i["R@1"] == 0 and i2t["R@1"] == 0


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
    from mmsearch.corpus import load_image

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
    # The run's record: validation each epoch, the best epoch's weights kept.
    assert report.epochs == 6 and report.train_images == 640 and report.val_images == 64
    assert all(r.val is not None for r in report.history)
    best = max(report.history, key=lambda r: r.val["rsum"])
    assert report.best_epoch == best.epoch
    saved = torch.load(out / "checkpoint.pt", map_location="cpu")
    assert saved["epoch"] == best.epoch
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
    from mmsearch.corpus import load_image

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
