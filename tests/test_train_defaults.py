"""`mmsearch train` defaults and outputs: every image trained on and the last epoch kept unless
asked, the starting model measured and a loud warning when training does not beat it, last.pt
usable as --pretrained, the progress rows showing their own epoch's recall, and the folder that
scripts/make_synthetic_dataset.py writes accepted by `eval` and `train`."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from mmsearch.training.datasets import load_dataset
from mmsearch.errors import TrainingError, TrainingInterrupted
from mmsearch.training.evaluate import evaluate
from mmsearch.encoders import ModelSpec, TorchEncoder as Encoder
from mmsearch.training.train import LAST_STATE, TrainOptions, Trainer, split_for_training, train

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "make_synthetic_dataset.py"


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _make_synthetic(out: Path, train_n: int, val_n: int, test_n: int) -> Path:
    """The real script, run as a user runs it."""
    subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--train", str(train_n), "--val", str(val_n),
                    "--test", str(test_n), "--size", "32", "--captions", "2"], check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory) -> Path:
    return _make_synthetic(tmp_path_factory.mktemp("shapes") / "shapes", 64, 16, 16)


@pytest.fixture(scope="module")
def train_only(shapes_dir, tmp_path_factory) -> Path:
    """The train rows alone: a dataset that names no val split."""
    out = tmp_path_factory.mktemp("trainonly") / "train.jsonl"
    rows = [json.loads(line) for line in (shapes_dir / "train.jsonl").read_text().splitlines()]
    out.write_text("".join(json.dumps({**r, "image": str(shapes_dir / r["image"])}) + "\n" for r in rows))
    return out


class _StopAfter:
    """A progress listener that interrupts training after ``steps`` steps, like Ctrl-C."""

    def __init__(self, steps: int):
        self.left = steps

    def start(self, phase, total):
        pass

    def advance(self, n=1):
        pass

    def metrics(self, values):
        self.left -= 1
        if self.left == 0:
            raise KeyboardInterrupt


# -- defaults ------------------------------------------------------------------------------------
def test_defaults_train_on_every_image_and_keep_the_last_epoch(train_only, tiny_model, tmp_path):
    opts = TrainOptions()
    assert opts.val_fraction == 0 and opts.keep == "last"
    ds = load_dataset(train_only)
    rest, held = split_for_training(ds, opts.val_fraction)
    assert held is None and len(rest) == len(ds) == 64
    out = tmp_path / "run"
    report = train(ds, out, str(tiny_model.config), "none", TrainOptions(epochs=2, batch_size=16, lr=1e-3))
    assert report.train_images == 64 and report.val_images == 0 and report.keep == "last"
    assert report.kept_epoch == 2 and torch.load(out / "checkpoint.pt", map_location="cpu")["epoch"] == 2
    # Without validation, start and end are measured on a fixed sample of training images.
    assert report.measured_on == "training sample" and report.measured_images == 64
    assert report.start is not None and report.end is not None and report.improved == (report.end["rsum"] > report.start["rsum"])
    last_weights = torch.load(out / LAST_STATE, map_location="cpu", weights_only=True)["state_dict"]
    kept = torch.load(out / "checkpoint.pt", map_location="cpu")["state_dict"]
    assert all(torch.equal(last_weights[k], kept[k]) for k in kept)
    # The end figures are the kept model's, on the same images.
    log = json.loads((out / "train.json").read_text())
    assert log["end"] == report.end and log["kept_epoch"] == 2 and log["options"]["keep"] == "last"
    with pytest.raises(TrainingError, match="best epoch needs validation"):
        train(ds, tmp_path / "best", str(tiny_model.config), "none", TrainOptions(epochs=1, batch_size=16, keep="best"))


def test_named_val_split_is_validated_and_last_epoch_kept_unless_best_asked(shapes_dir, tiny_model, tmp_path):
    ds = load_dataset(shapes_dir / "dataset.jsonl")
    report = train(ds, tmp_path / "last", str(tiny_model.config), "none", TrainOptions(epochs=3, batch_size=16, lr=1e-3))
    assert report.train_images == 64 and report.val_images == 16 and report.measured_on == "validation"
    assert all(r.val is not None for r in report.history) and report.kept_epoch == 3
    assert report.end == report.history[-1].val and report.start is not None
    best = train(ds, tmp_path / "best", str(tiny_model.config), "none",
                 TrainOptions(epochs=3, batch_size=16, lr=1e-3, keep="best"))
    by_rsum = max(best.history, key=lambda r: r.val["rsum"])
    assert best.kept_epoch == best.best_epoch == by_rsum.epoch and best.end == by_rsum.val
    assert torch.load(tmp_path / "best" / "checkpoint.pt", map_location="cpu")["epoch"] == by_rsum.epoch
    with pytest.raises(TrainingError, match="keep must be one of"):
        TrainOptions(keep="first").check()


def test_training_that_does_not_beat_the_starting_model_says_so(shapes_dir, tiny_model, tmp_path, cli):
    """Fine-tuning with a learning rate far too small to move the model: the output is no better
    than the input, and the command says it in a warning, not only in an epoch number."""
    out = tmp_path / "stuck"
    result = cli("train", shapes_dir, "--out", out, *tiny_model.args, "--epochs", "2", "--batch-size", "16",
                 "--lr", "1e-12", "--keep", "best")
    assert "warning: no epoch beat the starting model" in result.stderr
    assert "checkpoint.pt holds the starting weights unchanged" in result.stderr
    log = json.loads((out / "train.json").read_text())
    assert log["kept_epoch"] == 0 and log["improved"] is False and log["warnings"]
    saved = torch.load(out / "checkpoint.pt", map_location="cpu")["state_dict"]
    start = torch.load(tiny_model.checkpoint, map_location="cpu")["state_dict"]
    assert all(torch.equal(saved[k], start[k]) for k in start)
    # Keeping the last epoch: the trained weights are written, and the warning still comes.
    result = cli("train", shapes_dir, "--out", tmp_path / "stuck-last", *tiny_model.args, "--epochs", "2",
                 "--batch-size", "16", "--lr", "1e-12", "--json")
    report = json.loads(result.stdout)
    assert report["kept_epoch"] == 2 and report["improved"] is False
    assert any("did not improve on the starting model" in w for w in report["warnings"])
    assert "did not improve" in result.stderr


# -- last.pt as --pretrained -----------------------------------------------------------------------
def test_interrupted_runs_last_state_loads_wherever_a_checkpoint_does(train_only, tiny_model, tmp_path, cli):
    ds = load_dataset(train_only)
    out = tmp_path / "interrupted"
    with pytest.raises(TrainingInterrupted, match="--resume"):
        Trainer(ds, None, out, str(tiny_model.config), "none", TrainOptions(epochs=2, batch_size=16, lr=1e-3),
                progress=_StopAfter(3)).run()
    last = out / LAST_STATE
    state = torch.load(last, map_location="cpu", weights_only=True)  # plain data, no pickled objects
    assert (state["epoch"], state["batch"], state["step"]) == (0, 3, 3)
    # The library's encoder, open_clip's loader behind it, gives the saved weights.
    encoder = Encoder(ModelSpec.resolve(str(out / "config.json"), str(last)))
    reference = Encoder(ModelSpec.resolve(str(tiny_model.config), "none"))
    reference.model.load_state_dict(state["state_dict"])
    texts = ["a red circle", "two blue squares at the top"]
    np.testing.assert_allclose(encoder.encode_texts(texts), reference.encode_texts(texts), atol=1e-6)
    untrained = Encoder(ModelSpec.resolve(str(tiny_model.config), "none")).encode_texts(texts)
    assert not np.allclose(encoder.encode_texts(texts), untrained, atol=1e-4)
    # ... and every command that takes --pretrained.
    evaluated = json.loads(cli("eval", train_only, "--model", out / "config.json", "--pretrained", last, "--json").stdout)
    assert evaluated["images"] == 64
    assert evaluated["text_to_image"] == evaluate(encoder, ds).text_to_image
    report = json.loads(cli("train", train_only, "--out", tmp_path / "again", "--model", out / "config.json",
                            "--pretrained", last, "--epochs", "1", "--batch-size", "16", "--json").stdout)
    assert report["steps"] == 4
    cli("index", ROOT / "scripts", "--index", tmp_path / "idx", "--model", out / "config.json", "--pretrained", last, "-q")
    # Resuming still works from the new layout.
    resumed = Trainer(ds, None, out, resume=True).run()
    assert resumed.steps == 8 and [r.epoch for r in resumed.history] == [1, 2]


# -- the progress rows -----------------------------------------------------------------------------
def test_each_epoch_row_shows_its_own_validation_recall(shapes_dir, tiny_model, tmp_path):
    from mmsearch.cli.training import _TrainBar

    console = Console(file=io.StringIO(), width=200, force_terminal=False)
    bar = _TrainBar(console)
    with bar:
        report = train(load_dataset(shapes_dir / "dataset.jsonl"), tmp_path / "run", str(tiny_model.config), "none",
                       TrainOptions(epochs=3, batch_size=16, lr=2e-3), progress=bar)
    rows = {task.description: task.fields["info"] for task in bar.bar.tasks if task.description.startswith("epoch")}
    assert len(rows) == 3
    for record in report.history:
        t2i, i2t = record.val["text_to_image"], record.val["image_to_text"]
        own = f"val t2i R@5 {t2i['R@5']:.1f}  i2t R@5 {i2t['R@5']:.1f}  rsum {record.val['rsum']:.1f}"
        assert rows[f"epoch {record.epoch}/3"].endswith(own), (record.epoch, rows)
    printed = console.file.getvalue()
    for record in report.history:
        assert f"epoch {record.epoch}: loss {record.loss:.4f}, val t2i R@5 {record.val['text_to_image']['R@5']:.1f}" in printed
    assert "start (before training): val" in printed


# -- the synthetic script's output folder -----------------------------------------------------------
def test_eval_and_train_accept_the_folder_the_synthetic_script_writes(shapes_dir, tiny_model, tmp_path, cli):
    result = cli("eval", shapes_dir, *tiny_model.args, "--json")
    evaluated = json.loads(result.stdout)
    assert evaluated["split"] == "test" and evaluated["images"] == 16 and evaluated["captions"] == 32
    assert evaluated["dataset"] == str(shapes_dir / "dataset.jsonl")
    assert "reading" in result.stderr and "dataset.jsonl" in result.stderr
    report = json.loads(cli("train", shapes_dir, "--out", tmp_path / "m", "--model", tiny_model.config,
                            "--pretrained", "none", "--epochs", "1", "--batch-size", "16", "--json").stdout)
    assert report["train_images"] == 64 and report["val_images"] == 16 and report["measured_on"] == "validation"
