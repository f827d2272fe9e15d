"""Contrastive training of an open_clip dual encoder on a captioned dataset (``mmsearch train``).

Fine-tunes pretrained weights or trains from random init with the symmetric InfoNCE loss
(``open_clip.ClipLoss``; ``SigLipLoss`` for models with a logit bias) and a learnable temperature:
AdamW with decoupled weight decay (none on gains, biases, embeddings' scale and the temperature),
linear warm-up then cosine decay per step, gradient clipping, mixed precision on CUDA, optional
locked image or text tower (LiT), no image augmentation unless asked. Each epoch samples one
caption per image.

Every training image is trained on unless asked otherwise: a validation split is used only when
the dataset names one (or ``val_fraction`` holds images out), and the last epoch's weights are
kept unless ``keep="best"`` asks for the epoch with the best validation recall. Measured on the
synthetic shapes set (BENCHMARKS.md), the best-epoch selection never beat the last epoch, and
holding out 10% of the images cost test recall on average.

The starting model is measured too, before the first step, on the validation split or, without
one, on a fixed sample of training images, and again at the end: ``TrainReport.improved`` and
``warnings`` say when training did not improve on it (a learning rate too small to move the
model, for example).

Output folder (``mmsearch index --model DIR`` reads it directly):

* ``config.json``: the open_clip model config (``--model DIR/config.json``);
* ``checkpoint.pt``: the kept weights, ``{"state_dict": ...}`` (``--pretrained DIR/checkpoint.pt``);
* ``last.pt``: full training state (``state_dict`` of the model, optimizer, schedule, position)
  for ``--resume``, written at every epoch end, every ``save_every`` seconds and on interruption;
  open_clip reads its ``state_dict`` like any checkpoint, so ``--pretrained DIR/last.pt`` gives
  the weights so far;
* ``train.json``: options, data sizes, per-epoch history, start and end figures, warnings.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..media import BadInput, Skip, load_image
from .datasets import Dataset
from ..errors import ModelLoadError, TrainingError, TrainingInterrupted
from .evaluate import chance_recall, recall_at_k
from ..encoders.spec import TRAINED_CHECKPOINT, TRAINED_CONFIG, ModelSpec, read_config
from ..encoders.torch_encoder import load_open_clip, pick_device

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger(__name__)

LAST_STATE = "last.pt"
TRAIN_LOG = "train.json"
CACHE_LIMIT_BYTES = 1 << 30  # decoded training images kept in memory up to this size
# Without a validation split, the start and the end are compared on this many training images:
# enough for recall to move by whole percent steps, a few seconds of encoding for a ViT-B-32.
PROBE_IMAGES = 256
KEEP_CHOICES = ("last", "best")


@dataclass
class TrainOptions:
    """Hyper-parameters and switches; ``None`` means "choose from the situation"."""

    epochs: int = 10
    batch_size: int = 64
    lr: float | None = None  # 5e-4 from scratch, 1e-5 when fine-tuning
    weight_decay: float = 0.1
    warmup_steps: int | None = None  # default: 5% of all steps, at most 1000
    grad_clip: float | None = 1.0
    lock_image: bool = False
    lock_text: bool = False
    augment: bool = False
    val_fraction: float = 0.0  # held out from train when the dataset has no val split
    keep: str = "last"  # weights written to checkpoint.pt: "last" epoch, or "best" on validation
    seed: int = 0
    amp: bool | None = None  # default: on for CUDA
    eval_batch_size: int = 128
    workers: int | None = None
    save_every: float = 600.0  # seconds between mid-epoch saves of the resume state
    cache_images: bool | None = None  # default: when augmentation is off and they fit in 1 GiB

    def check(self) -> None:
        if self.epochs < 1 or self.batch_size < 2:
            raise TrainingError("epochs must be >= 1 and batch size >= 2 (contrastive batches need negatives)")
        if self.lock_image and self.lock_text:
            raise TrainingError("locking both towers leaves nothing to train")
        if self.lr is not None and not self.lr > 0:
            raise TrainingError(f"learning rate must be positive, not {self.lr}")
        if self.keep not in KEEP_CHOICES:
            raise TrainingError(f"keep must be one of {', '.join(KEEP_CHOICES)}, not {self.keep!r}")


@dataclass
class EpochRecord:
    epoch: int
    step: int
    loss: float
    lr: float
    logit_scale: float
    seconds: float
    val: dict[str, Any] | None = None
    best: bool = False  # best validation rsum so far
    kept: bool = False  # these weights were written to checkpoint.pt


@dataclass
class TrainReport:
    out: str
    config: str
    checkpoint: str
    train_images: int
    val_images: int
    epochs: int
    steps: int
    seconds: float
    best_epoch: int | None  # best validation rsum (0: the starting model), None without validation
    best_val: dict[str, Any] | None
    history: list[EpochRecord] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    keep: str = "last"
    kept_epoch: int | None = None  # the epoch whose weights checkpoint.pt holds (0: the starting weights)
    measured_on: str | None = None  # "validation" or "training sample": where start and end were measured
    measured_images: int = 0
    start: dict[str, Any] | None = None  # recall of the starting model
    end: dict[str, Any] | None = None  # recall of the kept model, on the same images
    improved: bool | None = None  # end rsum above start rsum
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["skipped"] = [{"path": s.path, "reason": s.reason} for s in self.skipped]
        return data


def split_for_training(dataset: Dataset, val_fraction: float, seed: int = 0) -> tuple[Dataset, Dataset | None]:
    """(train, val): the dataset's own train/val splits when it has them (test is never used),
    else a deterministic hold-out of ``val_fraction`` of the images (none when 0)."""
    if dataset.splits:
        train = dataset.split("train") if "train" in dataset.splits else None
        if train is None:
            raise TrainingError(f"{dataset.source} has splits ({', '.join(dataset.splits)}) but no train split")
        if "val" in dataset.splits:
            return train, dataset.split("val")
        dataset = train
    if val_fraction <= 0:
        return dataset, None
    rest, held = dataset.holdout(val_fraction, salt=str(seed))
    if not held.items or len(rest.items) < 2:
        raise TrainingError(f"{dataset.source}: too few images ({len(dataset)}) to hold out a validation split")
    return rest, held


def model_config(spec: ModelSpec) -> dict:
    """The open_clip architecture config of ``spec`` (written to DIR/config.json)."""
    import open_clip

    if spec.config_path:
        return read_config(spec.config_path)
    if spec.name.startswith("local-dir:"):
        path = Path(spec.name[len("local-dir:"):]) / "open_clip_config.json"
        try:
            return json.loads(path.read_text(encoding="utf-8"))["model_cfg"]
        except (OSError, KeyError, json.JSONDecodeError) as exc:
            raise ModelLoadError(f"cannot read the model config {path}: {exc}") from exc
    if spec.name.startswith("hf-hub:"):
        try:
            from open_clip.factory import _get_hf_config

            return _get_hf_config(spec.name[len("hf-hub:"):])["model_cfg"]
        except Exception as exc:  # hub errors of many kinds
            raise ModelLoadError(f"cannot fetch the config of {spec.name}: {exc}") from exc
    cfg = open_clip.get_model_config(spec.name)
    if cfg is None:
        raise ModelLoadError(f"no open_clip config for {spec.name}")
    return cfg


class _Batches:
    """Training images as preprocessed tensors: decoded once into memory, or per batch in threads."""

    def __init__(self, dataset: Dataset, transform: Callable, image_size: int, cache: bool, workers: int,
                 progress: Any = None):
        import torch

        self.items = list(dataset.items)
        self.transform = transform
        self.image_size = image_size
        self.pool = ThreadPoolExecutor(workers)
        self.skipped: list[Skip] = []
        self.cache: torch.Tensor | None = None
        if cache:
            _start(progress, "decode", len(self.items))
            kept, tensors = [], []
            for item, result in zip(self.items, self.pool.map(self._decode, self.items)):
                if isinstance(result, Skip):
                    self._skip(result, progress)
                else:
                    kept.append(item)
                    tensors.append(result)
                _advance(progress, 1)
            if not tensors:
                raise TrainingError(f"no image of {dataset.source} could be decoded")
            self.items, self.cache = kept, torch.stack(tensors)

    def _decode(self, item: Any) -> Any:
        try:
            return self.transform(load_image(item.image, target=self.image_size))
        except (BadInput, OSError) as exc:
            return Skip(str(item.image), str(exc))

    def _skip(self, skip: Skip, progress: Any) -> None:
        self.skipped.append(skip)
        if progress is not None and hasattr(progress, "skip"):
            progress.skip(skip)

    def __len__(self) -> int:
        return len(self.items)

    def fetch(self, indices: list[int], progress: Any = None):
        """(images tensor, positions in ``indices`` that decoded)."""
        import torch

        if self.cache is not None:
            return self.cache[torch.as_tensor(indices)], list(range(len(indices)))
        results = list(self.pool.map(self._decode, [self.items[i] for i in indices]))
        good = [j for j, r in enumerate(results) if not isinstance(r, Skip)]
        for r in results:
            if isinstance(r, Skip) and r.path not in {s.path for s in self.skipped}:
                self._skip(r, progress)
        if not good:
            return None, []
        return torch.stack([results[j] for j in good]), good

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def _start(progress: Any, phase: str, total: int | None) -> None:
    if progress is not None:
        progress.start(phase, total)


def _advance(progress: Any, n: int, **metrics: Any) -> None:
    if progress is None:
        return
    if metrics and hasattr(progress, "metrics"):
        progress.metrics(metrics)
    progress.advance(n)


def _atomic_save(obj: Any, path: Path) -> None:
    import torch

    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class Trainer:
    """One training run into ``out``; ``run()`` trains and returns a ``TrainReport``."""

    def __init__(
        self, train: Dataset, val: Dataset | None, out: str | Path, model: str | None = None,
        pretrained: str | None = None, options: TrainOptions | None = None, device: str | None = None,
        resume: bool = False, overwrite: bool = False, progress: Any = None,
        defaults: tuple[str | None, str | None] = (None, None),
    ):
        import open_clip
        import torch

        self.options = options or TrainOptions()
        self.options.check()
        self.out = Path(out).expanduser()
        self.progress = progress
        self.device = pick_device(device)
        last = self.out / LAST_STATE
        self.state: dict | None = None
        if resume:
            if not last.is_file():
                raise TrainingError(f"nothing to resume: {last} does not exist")
            try:
                self.state = torch.load(last, map_location="cpu", weights_only=False)
            except Exception as exc:  # pickle/zip errors of many kinds
                raise TrainingError(f"cannot read the resume state {last}: {exc}") from exc
            self.options = TrainOptions(**self.state["options"])
            spec = ModelSpec.resolve(str(self.out / TRAINED_CONFIG), "none")
            self.config = read_config(self.out / TRAINED_CONFIG)
        else:
            if (self.out / TRAINED_CHECKPOINT).exists() or last.exists():
                if not overwrite:
                    raise TrainingError(f"{self.out} already holds a training run; use --resume to continue it or --overwrite to replace it")
            if self.out.exists() and not self.out.is_dir():
                raise TrainingError(f"{self.out} exists and is not a folder")
            # ``defaults``: MMSEARCH_MODEL / MMSEARCH_PRETRAINED, as for `eval` and `index`.
            spec = ModelSpec.resolve(model, pretrained, defaults=defaults)
            self.config = model_config(spec)
        self.spec = spec
        opts = self.options
        model_obj, preprocess_train, preprocess_val, self.tokenizer = load_open_clip(spec, self.device, "fp32", opts.seed)
        self.model = model_obj
        if self.state is not None:
            # "model": resume states written before last.pt took open_clip's "state_dict" key.
            self.model.load_state_dict(self.state["state_dict"] if "state_dict" in self.state else self.state["model"])
        if opts.lock_image:
            self.model.lock_image_tower(unlocked_groups=0, freeze_bn_stats=True)
        if opts.lock_text:
            self.model.lock_text_tower(unlocked_layers=0, freeze_layer_norm=True)
        self.preprocess = preprocess_val
        self.train_transform = preprocess_train if opts.augment else preprocess_val
        size = getattr(self.model.visual, "image_size", 224)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.lr = opts.lr if opts.lr is not None else (1e-5 if spec.pretrained else 5e-4)
        opts.lr = self.lr  # saved with the resume state, where the base weights are no longer known
        self.train_data, self.val_data = train, val
        self.amp = opts.amp if opts.amp is not None else self.device.startswith("cuda")
        if self.amp and not self.device.startswith("cuda"):
            raise TrainingError("mixed precision (--amp) needs a CUDA device")
        self.amp_dtype = (torch.bfloat16 if self.amp and torch.cuda.is_bf16_supported() else torch.float16)
        logit_bias = getattr(self.model, "logit_bias", None)
        self.loss_fn = open_clip.SigLipLoss() if logit_bias is not None else open_clip.ClipLoss()

    # -- pieces ------------------------------------------------------------------------------
    def _optimizer(self):
        import torch

        decay, no_decay = [], []
        for name, param in self.model.named_parameters():
            if not param.requires_grad:
                continue
            # open_clip's convention: no decay on gains, biases, norms, the temperature and logit bias.
            exclude = param.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
            (no_decay if exclude else decay).append(param)
        groups = [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": self.options.weight_decay}]
        return torch.optim.AdamW(groups, lr=self.lr, betas=(0.9, 0.98), eps=1e-6)

    def _schedule(self, optimizer, total: int, warmup: int):
        import torch

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def _autocast(self):
        import contextlib

        import torch

        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)

    def encode_image_tensors(self, batch) -> np.ndarray:
        import torch

        with torch.inference_mode(), self._autocast():
            features = self.model.encode_image(batch.to(self.device), normalize=True)
        return features.float().cpu().numpy()

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        with torch.inference_mode(), self._autocast():
            features = self.model.encode_text(self.tokenizer(texts).to(self.device), normalize=True)
        return features.float().cpu().numpy()

    def validate(self, images, texts: list[str], owners: list[int]) -> dict[str, Any]:
        """Recall@1/5/10 both ways on the validation split (model left in eval mode)."""
        self.model.eval()
        bs = self.options.eval_batch_size
        img = np.concatenate([self.encode_image_tensors(images[i:i + bs]) for i in range(0, len(images), bs)])
        txt = np.concatenate([self.encode_texts(texts[i:i + bs]) for i in range(0, len(texts), bs)])
        t2i, i2t = recall_at_k(img, txt, owners)
        return {"text_to_image": t2i, "image_to_text": i2t, "rsum": round(sum(t2i.values()) + sum(i2t.values()), 4)}

    # -- the run -----------------------------------------------------------------------------
    def _check_set(self, train: _Batches, workers: int) -> tuple[str, Any, list[str], list[int]]:
        """(name, images, captions, owners) that the start, each epoch and the end are measured on:
        the validation split, or without one a fixed sample of training images (not held out)."""
        if self.val_data is not None:
            name, val = "validation", _Batches(self.val_data, self.preprocess, self.image_size, True, workers, self.progress)
            images, items = val.cache, val.items
            val.close()
        else:
            rows = sorted(random.Random(self.options.seed).sample(range(len(train)), min(len(train), PROBE_IMAGES)))
            items = [train.items[i] for i in rows]
            name = "training sample"
            if train.cache is not None and not self.options.augment:
                images = train.cache[rows]  # decoded with the evaluation transform already
            else:
                probe = _Batches(Dataset(self.train_data.source, items), self.preprocess, self.image_size, True, workers)
                images, items = probe.cache, probe.items
                probe.close()
        texts: list[str] = []
        owners: list[int] = []
        for row, item in enumerate(items):
            texts.extend(item.captions)
            owners.extend([row] * len(item.captions))
        return name, images, texts, owners

    def run(self) -> TrainReport:
        import torch

        opts = self.options
        workers = opts.workers or min(8, os.cpu_count() or 2)
        per_image = 3 * self.image_size * self.image_size * 4
        cache = opts.cache_images if opts.cache_images is not None else (
            not opts.augment and per_image * len(self.train_data) <= CACHE_LIMIT_BYTES)
        if opts.augment and cache:
            raise TrainingError("cached images cannot be augmented; leave out --cache-images")
        if opts.keep == "best" and self.val_data is None:
            raise TrainingError("keeping the best epoch needs validation images: a val split in the dataset, or --val-fraction")
        train = _Batches(self.train_data, self.train_transform, self.image_size, cache, workers, self.progress)
        n = len(train)
        if n < 2:
            train.close()
            raise TrainingError("training needs at least two decodable images")
        measured_on, check_images, check_texts, check_owners = self._check_set(train, workers)
        validating = self.val_data is not None
        batch_size = min(opts.batch_size, n)
        steps_per_epoch = n // batch_size
        total = steps_per_epoch * opts.epochs
        warmup = opts.warmup_steps if opts.warmup_steps is not None else min(1000, max(1, total // 20))
        optimizer = self._optimizer()
        scheduler = self._schedule(optimizer, total, warmup)
        scaler = torch.amp.GradScaler("cuda", enabled=self.amp and self.amp_dtype == torch.float16)
        params = [p for p in self.model.parameters() if p.requires_grad]

        history: list[EpochRecord] = []
        best_val: dict | None = None
        best_epoch: int | None = None
        kept_epoch: int | None = None
        start_figures: dict | None = None
        epoch, batch_in_epoch, step = 0, 0, 0
        elapsed_before = 0.0
        if self.state is not None:
            optimizer.load_state_dict(self.state["optimizer"])
            scheduler.load_state_dict(self.state["scheduler"])
            scaler.load_state_dict(self.state["scaler"])
            epoch, batch_in_epoch, step = self.state["epoch"], self.state["batch"], self.state["step"]
            history = [EpochRecord(**r) for r in self.state["history"]]
            best_val, best_epoch = self.state["best_val"], self.state["best_epoch"]
            kept_epoch, start_figures = self.state.get("kept_epoch"), self.state.get("start")
            elapsed_before = self.state.get("seconds", 0.0)
            if self.state.get("train_images") != n:
                train.close()
                raise TrainingError(
                    f"the training data changed since the run was saved ({self.state.get('train_images')} images then, {n} now)"
                )
        else:
            self.out.mkdir(parents=True, exist_ok=True)
            _atomic_write(self.out / TRAINED_CONFIG, json.dumps(self.config, indent=2) + "\n")
        started = time.monotonic()
        last_save = started
        loss_sum, loss_count = 0.0, 0
        end_figures: dict | None = None

        def weights() -> dict:
            return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}

        def save_state(at_epoch: int, at_batch: int) -> None:
            # "state_dict" is the key open_clip's checkpoint loader reads: last.pt works as --pretrained.
            _atomic_save({
                "state_dict": weights(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "epoch": at_epoch, "batch": at_batch, "step": step, "options": asdict(opts),
                "history": [asdict(r) for r in history], "best_val": best_val, "best_epoch": best_epoch,
                "kept_epoch": kept_epoch, "start": start_figures,
                "train_images": n, "seconds": elapsed_before + time.monotonic() - started,
                "config": self.config, "spec": {"name": self.spec.name, "pretrained": self.spec.pretrained},
            }, self.out / LAST_STATE)

        def save_kept(record: EpochRecord) -> None:
            nonlocal kept_epoch
            _atomic_save({"state_dict": weights(), "epoch": record.epoch, "step": record.step, "val": record.val},
                         self.out / TRAINED_CHECKPOINT)
            record.kept, kept_epoch = True, record.epoch

        def write_log(done: bool) -> TrainReport:
            improved = None
            if start_figures is not None and end_figures is not None:
                improved = end_figures["rsum"] > start_figures["rsum"]
            report = TrainReport(
                out=str(self.out), config=str(self.out / TRAINED_CONFIG), checkpoint=str(self.out / TRAINED_CHECKPOINT),
                train_images=n, val_images=len(check_images) if validating else 0, epochs=len(history),
                steps=step, seconds=round(elapsed_before + time.monotonic() - started, 2), best_epoch=best_epoch,
                best_val=best_val, history=history, skipped=train.skipped, keep=opts.keep, kept_epoch=kept_epoch,
                measured_on=measured_on, measured_images=len(check_images), start=start_figures, end=end_figures, improved=improved,
                warnings=self._warnings(done, improved, measured_on, len(check_images), start_figures, end_figures, kept_epoch),
            )
            data = report.as_dict()
            data.update(done=done, options=asdict(opts), lr=self.lr, warmup_steps=warmup,
                        base_model=self.spec.display if self.state is None else self.state["spec"],
                        device=self.device, amp=self.amp, dataset=self.train_data.source,
                        chance=chance_recall(len(check_images), check_owners))
            _atomic_write(self.out / TRAIN_LOG, json.dumps(data, indent=2) + "\n")
            return report

        if start_figures is None:
            # The starting model, measured before any step: training must be seen to improve on it.
            start_figures = self.validate(check_images, check_texts, check_owners)
            start_record = EpochRecord(epoch=0, step=0, loss=float("nan"), lr=0.0, logit_scale=0.0, seconds=0.0,
                                       val=start_figures if validating else None)
            if validating and self.spec.pretrained:
                # With starting weights, they are a candidate for the best epoch too.
                best_val, best_epoch, start_record.best = start_figures, 0, True
                if opts.keep == "best":
                    save_kept(start_record)
            if self.progress is not None and hasattr(self.progress, "epoch"):
                self.progress.epoch(start_record)
        position = batch_in_epoch  # batches of the current epoch already trained on
        try:
            while epoch < opts.epochs:
                generator = torch.Generator().manual_seed(opts.seed * 100003 + epoch)
                order = torch.randperm(n, generator=generator).tolist()
                pick = torch.randint(0, 1 << 30, (n,), generator=generator).tolist()
                epoch_start = time.monotonic()
                _start(self.progress, f"epoch {epoch + 1}/{opts.epochs}", steps_per_epoch)
                if batch_in_epoch:
                    _advance(self.progress, batch_in_epoch)
                self.model.train()
                for b in range(batch_in_epoch, steps_per_epoch):
                    indices = order[b * batch_size:(b + 1) * batch_size]
                    images, good = train.fetch(indices, self.progress)
                    if images is None or len(good) < 2:
                        step, position = step + 1, b + 1
                        scheduler.step()
                        continue
                    captions = []
                    for j in good:
                        item = train.items[indices[j]]
                        captions.append(item.captions[pick[indices[j]] % len(item.captions)])
                    tokens = self.tokenizer(captions).to(self.device, non_blocking=True)
                    images = images.to(self.device, non_blocking=True)
                    with self._autocast():
                        image_f = self.model.encode_image(images, normalize=True)
                        text_f = self.model.encode_text(tokens, normalize=True)
                        scale = self.model.logit_scale.exp()
                        bias = getattr(self.model, "logit_bias", None)
                        loss = self.loss_fn(image_f, text_f, scale, bias) if bias is not None else self.loss_fn(image_f, text_f, scale)
                    if not torch.isfinite(loss):
                        raise TrainingError(f"loss became {loss.item()} at step {step}; lower the learning rate (--lr)")
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    if opts.grad_clip:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(params, opts.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                    scheduler.step()
                    with torch.no_grad():
                        self.model.logit_scale.clamp_(0, math.log(100))
                    step, position = step + 1, b + 1
                    loss_value = float(loss.detach())
                    loss_sum += loss_value
                    loss_count += 1
                    _advance(self.progress, 1, loss=loss_value, lr=scheduler.get_last_lr()[-1])
                    if opts.save_every and time.monotonic() - last_save > opts.save_every:
                        save_state(epoch, b + 1)
                        last_save = time.monotonic()
                record = EpochRecord(
                    epoch=epoch + 1, step=step, loss=round(loss_sum / max(1, loss_count), 5),
                    lr=scheduler.get_last_lr()[-1], logit_scale=round(float(self.model.logit_scale.detach().exp()), 4),
                    seconds=round(time.monotonic() - epoch_start, 2),
                )
                loss_sum, loss_count = 0.0, 0
                if validating:
                    record.val = self.validate(check_images, check_texts, check_owners)
                    record.best = best_val is None or record.val["rsum"] > best_val["rsum"]
                    if record.best:
                        best_val, best_epoch = record.val, record.epoch
                if opts.keep == "last" or record.best:
                    save_kept(record)
                history.append(record)
                if self.progress is not None and hasattr(self.progress, "epoch"):
                    self.progress.epoch(record)
                epoch, batch_in_epoch, position = epoch + 1, 0, 0
                save_state(epoch, 0)
                last_save = time.monotonic()
                if epoch < opts.epochs:
                    write_log(done=False)
        except KeyboardInterrupt:
            save_state(epoch, position)
            write_log(done=False)
            raise TrainingInterrupted(
                f"training interrupted at epoch {epoch + 1}, step {step}; state saved in {self.out / LAST_STATE} "
                "(usable as --pretrained), continue with --resume"
            ) from None
        finally:
            train.close()
        # The kept model on the images the start was measured on.
        if validating:
            end_figures = next((r.val for r in history if r.epoch == kept_epoch), start_figures if kept_epoch == 0 else None)
        else:
            end_figures = self.validate(check_images, check_texts, check_owners)
        return write_log(done=True)

    @staticmethod
    def _warnings(done: bool, improved: bool | None, measured_on: str, images: int, start: dict | None,
                  end: dict | None, kept_epoch: int | None) -> list[str]:
        if not done or improved is not False or start is None or end is None:
            return []
        where = "validation" if measured_on == "validation" else f"{images} training images (not held out)"
        figures = f"recall sum {start['rsum']:.1f} at the start, {end['rsum']:.1f} at the end, on {where}"
        if kept_epoch == 0:
            return [f"no epoch beat the starting model: checkpoint.pt holds the starting weights unchanged ({figures}); "
                    "try a larger --lr or more epochs"]
        return [f"training did not improve on the starting model ({figures}); try another --lr or more epochs"]


def train(
    dataset: Dataset, out: str | Path, model: str | None = None, pretrained: str | None = None,
    options: TrainOptions | None = None, device: str | None = None, resume: bool = False,
    overwrite: bool = False, progress: Any = None, val: Dataset | None = None,
    defaults: tuple[str | None, str | None] = (None, None),
) -> TrainReport:
    """Train on ``dataset`` (its train split, validating on its val split or a hold-out) into ``out``;
    ``defaults``: the model and weights to start from when ``model`` is not given (the
    environment's ``MMSEARCH_MODEL`` / ``MMSEARCH_PRETRAINED``, see ``Settings``)."""
    opts = options or TrainOptions()
    saved_log = Path(out).expanduser() / TRAIN_LOG
    if resume and saved_log.is_file():
        # A resumed run keeps its options, and so must split the data as it did.
        try:
            saved = json.loads(saved_log.read_text(encoding="utf-8"))["options"]
            opts.val_fraction, opts.seed = saved["val_fraction"], saved["seed"]
        except (OSError, KeyError, TypeError, json.JSONDecodeError) as exc:
            raise TrainingError(f"cannot read {saved_log} to resume: {exc}") from exc
    if val is None:
        dataset, val = split_for_training(dataset, opts.val_fraction, opts.seed)
    random.seed(opts.seed)
    return Trainer(dataset, val, out, model, pretrained, opts, device, resume, overwrite, progress, defaults).run()
