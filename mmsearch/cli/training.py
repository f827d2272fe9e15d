"""``mmsearch eval`` and ``mmsearch train``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from ..fsutil import printable_path
from .base import DeviceOpt, IndexOpt, JsonOpt, ModelOpt, PretrainedOpt, open_engine, read_settings, command, err, out
from .progress import RichProgress, QuietProgress

DataArg = Annotated[Path, typer.Argument(help="Captioned dataset: .jsonl, .csv/.tsv, Karpathy dataset_*.json, or a folder of images with same-named .txt captions.", show_default=False)]
ImageRootOpt = Annotated[Optional[Path], typer.Option("--image-root", metavar="DIR", help="Folder that relative image paths are resolved against \\[default: the dataset file's folder].")]


def _load_dataset(data: Path, image_root: Path | None, quiet: bool = False):
    from ..training.datasets import load_dataset

    dataset = load_dataset(data, image_root)
    if Path(dataset.source) != data.expanduser():  # a folder holding a dataset file
        err.print(Text(f"reading {printable_path(dataset.source)}"))
    for problem in dataset.problems[:20]:
        err.print(Text(f"skipped {problem}", style="yellow"))
    if len(dataset.problems) > 20:
        err.print(Text(f"... and {len(dataset.problems) - 20} more skipped rows", style="yellow"))
    return dataset


def _recall_table(title: str, rows: list[tuple[str, dict | None, dict | None]]) -> Table:
    """One row per direction (and per model/baseline/reading of ties), Recall@1/5/10 in percent;
    a direction given as None has no row."""
    table = Table(title=Text(title), show_edge=False, header_style="bold")
    table.add_column("")
    for k in ("R@1", "R@5", "R@10"):
        table.add_column(k, justify="right")
    for direction, label in ((1, "text->image"), (2, "image->text")):
        for row in rows:
            figures = row[direction]
            if figures is not None:
                suffix = f" ({row[0]})" if row[0] else ""
                table.add_row(Text(label + suffix), *[f"{figures.get(k, 0):.2f}" for k in ("R@1", "R@5", "R@10")])
    return table


@command("eval")
def eval_cmd(
    data: DataArg,
    split: Annotated[Optional[str], typer.Option("--split", "-s", metavar="SPLIT", help="Evaluate one split (test, val, train) of a dataset that has them \\[default: test if present, else all].")] = None,
    index: IndexOpt = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    device: DeviceOpt = None,
    image_root: ImageRootOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, metavar="N", help="Images or captions per encoder batch.")] = 64,
    limit: Annotated[Optional[int], typer.Option("--limit", metavar="N", min=1, help="Evaluate only the first N images (quick checks).")] = None,
    as_json: JsonOpt = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", metavar="", help="No progress bar.")] = False,
    documents: Annotated[bool, typer.Option("--documents", metavar="", help="Evaluate document retrieval instead: each image with its first caption is a document, found by another caption (Recall@K) or by its product code (token@1), ranked image only, text only, early, late, RRF, lexical and hybrid.")] = False,
) -> None:
    """Text->image and image->text Recall@1/5/10 of a model (the index's, or --model) on a captioned dataset."""
    from ..training.datasets import Dataset
    from ..training.evaluate import evaluate

    dataset = _load_dataset(data, image_root)
    if split is None and "test" in dataset.splits:
        split = "test"
    subset = dataset.split(split)
    if limit is not None:
        subset = Dataset(subset.source, subset.items[:limit], subset.problems)
    if documents:
        _eval_documents(subset, index, model, pretrained, device, as_json, quiet)
        return
    with open_engine(index, model, pretrained, device) as engine:
        encoder = engine.encoder
        progress = QuietProgress(err) if quiet or as_json else RichProgress(err)
        with progress:
            report = evaluate(encoder, subset, batch_size=batch_size, progress=progress, split=split or "all")
    if as_json:
        sys.stdout.write(json.dumps(report.as_dict(), ensure_ascii=False) + "\n")
        return
    title = f"{report.dataset} [{report.split}]: {report.images} images, {report.captions} captions; {report.model}"
    rows: list[tuple[str, dict | None, dict | None]] = [("", report.text_to_image, report.image_to_text)]
    for reading, name in (("strict", "ties against"), ("expected", "ties at random")):
        t2i, i2t = (report.ties.get(d, {}).get(reading) for d in ("text_to_image", "image_to_text"))
        if t2i is not None or i2t is not None:
            rows.append((name, t2i, i2t))
    rows.append(("chance", report.chance["text_to_image"], report.chance["image_to_text"]))
    out.print(_recall_table(title, rows))
    if report.ties:
        out.print("Tied scores (identical captions or images): the first rows rank ties in dataset order, the "
                  "top-K protocol of papers and open_clip; 'ties against' ranks every tie above the right answer, "
                  "'ties at random' is the mean over random orders of ties.")


def _eval_documents(subset, index, model, pretrained, device, as_json: bool, quiet: bool) -> None:
    from ..training.documents import evaluate_documents

    with open_engine(index, model, pretrained, device) as engine:
        spec = engine.spec

    def engine_for(folder: Path):
        return open_engine(folder, spec.name, spec.pretrained or "none", device)

    progress = QuietProgress(err) if quiet or as_json else RichProgress(err)
    with progress:
        report = evaluate_documents(engine_for, subset, progress=progress)
    if as_json:
        sys.stdout.write(json.dumps(report.as_dict(), ensure_ascii=False) + "\n")
        return
    table = Table(title=Text(f"{report.dataset}: {report.documents} documents, {report.queries} queries; {report.model}"),
                  show_edge=False, header_style="bold")
    for name, justify in (("ranking", "left"), ("R@1", "right"), ("R@5", "right"), ("R@10", "right"), ("token@1", "right")):
        table.add_column(name, justify=justify)
    for name, row in report.rows.items():
        table.add_row(Text(name), *[f"{row[k]:.2f}" for k in ("R@1", "R@5", "R@10", "token@1")])
    out.print(table)


class _TrainBar(RichProgress):
    """The training bar: one row per epoch, its batches with loss and learning rate; when the epoch
    ends, its row shows that epoch's own validation recall (never the previous epoch's)."""

    def __init__(self, console: Console):
        super().__init__(console)
        self.bar = Progress(
            SpinnerColumn(), TextColumn("{task.description:<11}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=console,
        )
        self.info = ""

    def start(self, phase: str, total: int | None) -> None:
        if self.task is not None and self.task_total is None:
            self.bar.update(self.task, total=1, completed=1)
        self.info = ""
        self.task = self.bar.add_task(phase, total=total, info="")
        self.task_total = total

    def metrics(self, values: dict) -> None:
        self.info = f"loss {values['loss']:.4f}  lr {values['lr']:.2e}"
        if self.task is not None:
            self.bar.update(self.task, info=self.info)

    def epoch(self, record: Any) -> None:
        recall = ""
        if record.val:
            t2i, i2t = record.val["text_to_image"], record.val["image_to_text"]
            recall = f"val t2i R@5 {t2i['R@5']:.1f}  i2t R@5 {i2t['R@5']:.1f}  rsum {record.val['rsum']:.1f}"
        if record.epoch == 0:
            if recall:
                self.console.print(Text(f"start (before training): {recall}"))
            return
        if self.task is not None and recall:  # the finished epoch's row, still the current task
            self.bar.update(self.task, info=f"{self.info}  {recall}" if self.info else recall)
        line = f"epoch {record.epoch}: loss {record.loss:.4f}" + (f", {recall}" if recall else "")
        self.console.print(Text(line + ("  (best so far)" if record.best else "")))


class _QuietTrain(QuietProgress):
    def metrics(self, values: dict) -> None:
        pass

    def epoch(self, record: Any) -> None:
        pass


@command("train")
def train_cmd(
    data: DataArg,
    out_dir: Annotated[Path, typer.Option("--out", "-o", metavar="DIR", help="Folder for config.json, checkpoint.pt (best), last.pt (resume state), train.json.")],
    model: Annotated[Optional[str], typer.Option("--model", "-m", metavar="NAME", help="Starting architecture: open_clip name, JSON config, local-dir:PATH or a `mmsearch train` folder \\[default: $MMSEARCH_MODEL, else ViT-B-32].")] = None,
    pretrained: Annotated[Optional[str], typer.Option("--pretrained", "-p", metavar="WEIGHTS", help="Starting weights: tag, checkpoint file, or 'none' to train from scratch.")] = None,
    epochs: Annotated[int, typer.Option("--epochs", "-e", metavar="N", min=1)] = 10,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", metavar="N", min=2, help="Image-caption pairs per step (the contrastive negatives).")] = 64,
    lr: Annotated[Optional[float], typer.Option("--lr", metavar="RATE", help="Peak learning rate \\[default: 1e-5 fine-tuning, 5e-4 from scratch].")] = None,
    weight_decay: Annotated[float, typer.Option("--weight-decay", metavar="DECAY", min=0.0, help="AdamW weight decay (not on gains, biases, temperature).")] = 0.1,
    warmup: Annotated[Optional[int], typer.Option("--warmup", metavar="STEPS", min=0, help="Linear warm-up steps before the cosine decay \\[default: 5% of steps, at most 1000].")] = None,
    grad_clip: Annotated[float, typer.Option("--grad-clip", metavar="NORM", min=0.0, help="Clip the gradient norm to this (0: off).")] = 1.0,
    lock_image: Annotated[bool, typer.Option("--lock-image", metavar="", help="Freeze the image tower (LiT): train the text side only.")] = False,
    lock_text: Annotated[bool, typer.Option("--lock-text", metavar="", help="Freeze the text tower: train the image side only.")] = False,
    augment: Annotated[bool, typer.Option("--augment", metavar="", help="Random resized crops of training images (off by default).")] = False,
    val_fraction: Annotated[float, typer.Option("--val-fraction", metavar="FRACTION", min=0.0, max=0.9, help="Images held out for validation when the dataset has no val split \\[default: 0, train on every image].")] = 0.0,
    keep: Annotated[str, typer.Option("--keep", metavar="last|best", help="Weights written to checkpoint.pt: 'last' epoch, or 'best' validation recall (needs a val split or --val-fraction).")] = "last",
    amp: Annotated[Optional[bool], typer.Option("--amp/--no-amp", metavar="", help="Mixed precision \\[default: on with CUDA].", show_default=False)] = None,
    seed: Annotated[int, typer.Option("--seed", metavar="N")] = 0,
    device: DeviceOpt = None,
    image_root: ImageRootOpt = None,
    resume: Annotated[bool, typer.Option("--resume", metavar="", help="Continue the interrupted run saved in --out (its options are kept).")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", metavar="", help="Replace a previous run in --out.")] = False,
    as_json: JsonOpt = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", metavar="", help="No progress bar.")] = False,
) -> None:
    """Fine-tune (or train from scratch) the dual encoder on captioned images; index with --model OUT afterwards."""
    from ..training.train import TrainOptions, train

    options = TrainOptions(
        epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, warmup_steps=warmup,
        grad_clip=grad_clip or None, lock_image=lock_image, lock_text=lock_text, augment=augment,
        val_fraction=val_fraction, keep=keep, seed=seed, amp=amp,
    )
    dataset = _load_dataset(data, image_root)
    progress = _QuietTrain(err) if quiet or as_json else _TrainBar(err)
    with progress:
        settings = read_settings()
        report = train(dataset, out_dir, model, pretrained, options, device=device, resume=resume, overwrite=overwrite,
                       progress=progress, defaults=(settings.model, settings.pretrained))
    for warning in report.warnings:  # on stderr, with --json too
        err.print(Text(f"warning: {warning}", style="bold yellow"))
    if as_json:
        sys.stdout.write(json.dumps(report.as_dict(), ensure_ascii=False) + "\n")
        return
    out.print(f"trained {report.epochs} epoch(s), {report.steps} steps on {report.train_images} images in {report.seconds:.0f} s")
    if report.start and report.end:
        where = (f"validation ({report.measured_images} images)" if report.measured_on == "validation"
                 else f"{report.measured_images} training images (not held out)")
        kept = "the starting weights" if report.kept_epoch == 0 else f"epoch {report.kept_epoch} ({report.keep})"
        out.print(_recall_table(f"{where}: start, and checkpoint.pt = {kept}", [
            ("start", report.start["text_to_image"], report.start["image_to_text"]),
            ("kept", report.end["text_to_image"], report.end["image_to_text"]),
        ]))
        out.print(f"recall sum {report.start['rsum']:.1f} -> {report.end['rsum']:.1f}"
                  + (f"; best validation epoch {report.best_epoch}" if report.best_epoch is not None else ""))
    out.print(f"model: {report.out}  (mmsearch index --model {report.out} ...)")
