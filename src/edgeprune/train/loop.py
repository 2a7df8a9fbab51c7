"""The training loop: :class:`TrainConfig`, :class:`TrainStep`, :func:`train` and :func:`evaluate`."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from edgeprune.data import AUGMENTATIONS, ImageDataset, Normalizer, augment_mode, check_compatible
from edgeprune.data.memmap import image_store, is_mapped, read_range, storage_note
from edgeprune.data.progress import Progress
from edgeprune.errors import EdgepruneError
from edgeprune.files import atomic_write, write_json
from edgeprune.runtime import Ranks, default_threads, device_of, process_ranks, resolve_device
from edgeprune.train.busy import machine_load
from edgeprune.train.checkpoint import (
    CHECKPOINT_FILE,
    save_checkpoint,
)
from edgeprune.train.distill import Distill, Teacher, teacher_for
from edgeprune.train.distributed import seed_epoch, start_group, sync_buffers
from edgeprune.train.logs import Sinks, check_sinks
from edgeprune.train.position import Tracker, stop_position
from edgeprune.train.resume import Run as _Run
from edgeprune.train.resume import resume_run as _resume

OPTIMIZERS = ("sgd", "rmsprop")
SCHEDULES = ("onecycle", "cosine", "constant")
PRECISIONS = ("fp32", "bf16")
DEFAULT_LR = {"sgd": 0.05, "rmsprop": 1e-3}
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "train.json"


@dataclass
class TrainConfig:
    """Training settings; ``lr=None`` means the optimiser's default (0.05 for SGD, 1e-3 for RMSprop)."""

    epochs: int
    batch_size: int = 128
    lr: float | None = None
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    warmup_epochs: float = 1.0  # capped at 30% of the run
    label_smoothing: float = 0.1
    seed: int = 0
    augment: bool | str = True  # cifar, imagenet or none; True: cifar for images at their own size, else imagenet
    precision: str = "fp32"  # or "bf16": autocast forward to bfloat16 (fast on CPUs with AMX / AVX-512 BF16)

    def validate(self) -> TrainConfig:
        """Check every setting; raise EdgepruneError naming the first bad one."""
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise EdgepruneError(f"epochs must be a positive integer, got {self.epochs!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise EdgepruneError(f"batch size must be a positive integer, got {self.batch_size!r}")
        if self.optimizer not in OPTIMIZERS:
            raise EdgepruneError(f"unknown optimizer '{self.optimizer}'; choose from: {', '.join(OPTIMIZERS)}")
        if self.precision not in PRECISIONS:
            raise EdgepruneError(f"unknown precision '{self.precision}'; choose from: {', '.join(PRECISIONS)}")
        if self.schedule not in SCHEDULES:
            raise EdgepruneError(f"unknown schedule '{self.schedule}'; choose from: {', '.join(SCHEDULES)}")
        if not isinstance(self.augment, bool) and self.augment not in AUGMENTATIONS:
            raise EdgepruneError(f"unknown augmentation '{self.augment}'; choose from: {', '.join(AUGMENTATIONS)}")
        checks = [
            ("lr", self.lr is None or (math.isfinite(self.lr) and self.lr > 0), "a positive number"),
            ("momentum", math.isfinite(self.momentum) and 0 <= self.momentum < 1, "in [0, 1)"),
            ("weight_decay", math.isfinite(self.weight_decay) and self.weight_decay >= 0, "a number >= 0"),
            ("warmup_epochs", math.isfinite(self.warmup_epochs) and self.warmup_epochs >= 0, "a number >= 0"),
            ("label_smoothing", 0 <= self.label_smoothing < 1, "in [0, 1)"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise EdgepruneError(f"{name.replace('_', ' ')} must be {expected}, got {getattr(self, name)!r}")
        return self

    @property
    def peak_lr(self) -> float:
        """The learning rate at the end of warm-up."""
        return float(self.lr) if self.lr is not None else DEFAULT_LR[self.optimizer]


@dataclass
class TrainResult:
    """Per-epoch history, final test accuracy and training seconds (all epochs, across resumes)."""

    history: list[dict]
    test_accuracy: float | None  # None when the data set has no test split (a validation split only)
    train_seconds: float
    out_dir: Path | None = field(default=None)
    val_accuracy: float | None = None  # the last epoch's, when the data set has a validation split


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float, schedule: str) -> float:
    """Learning rate for optimiser step ``step`` (0-based): linear warm-up, then the schedule's decay."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    if schedule == "constant":
        return peak
    p = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if schedule == "onecycle":
        return peak * max(1.0 - p, 0.0) + peak * 1e-3 * p
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(p, 1.0)))


def _check_data(data: ImageDataset) -> None:
    if len(data.train_y) == 0 or (len(data.test_y) == 0 and not (data.val_y is not None and len(data.val_y))):
        raise EdgepruneError(f"data set '{data.name}' has an empty train or test split")
    if data.train_x.dtype != torch.uint8 or data.train_x.ndim != 4:
        raise EdgepruneError("data set images must be uint8 [N, C, H, W]")


def _on_device(data: ImageDataset, device: torch.device) -> ImageDataset:
    """The data set with its four tensors on ``device`` (the same object on the CPU)."""
    if device.type == "cpu":
        return data
    names = ("train_x", "train_y", "test_x", "test_y") + (("val_x", "val_y") if data.val_y is not None else ())
    moved = {k: getattr(data, k).to(device) for k in names if not is_mapped(getattr(data, k))}  # mapped: by batch
    return replace(data, **moved)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov) or RMSprop; weight decay on conv and linear weights only, not on biases or norms."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        nesterov = config.momentum > 0
        return torch.optim.SGD(groups, lr=config.peak_lr, momentum=config.momentum, nesterov=nesterov)
    return torch.optim.RMSprop(groups, lr=config.peak_lr, alpha=0.9, eps=1e-7)  # Keras defaults, as in the paper


def data_signature(data: ImageDataset) -> dict:
    """What identifies a data set to a checkpoint or a run record: name, sizes, classes, image shape."""
    return {
        "name": data.name,
        "train": len(data.train_y),
        "test": len(data.test_y),
        "classes": data.classes,
        "shape": list(data.input_shape()),
        **data.signature_extras(),  # a validation split, a resize rule: only when there are
    }


class TrainStep:
    """One training step on the in-memory data set: gather, augment, normalise, forward, backward, update.

    Moves ``model`` to ``device`` in channels-last layout and training mode, and owns its optimiser. In a
    torchrun job (``ranks``) each step trains this process's share of the batch, and the model is wrapped in
    DistributedDataParallel at the first step (after a resume has restored rank 0's state).
    """

    def __init__(
        self,
        model: nn.Module,
        data: ImageDataset,
        config: TrainConfig,
        generator: torch.Generator,
        device: torch.device | None = None,
        ranks: Ranks | None = None,
        *,
        teacher: Teacher | None = None,
    ):
        self.device = device if device is not None else torch.device("cpu")
        self.teacher = teacher.to(self.device) if teacher is not None else None  # distillation, frozen
        self.ranks = ranks or Ranks()
        self.model = model.to(self.device, memory_format=torch.channels_last).train()
        self._net: nn.Module | None = None if self.ranks.distributed else self.model
        self.config = config
        self.generator = generator
        self.store = image_store(data.train_x, self.device, data.input_shape()[1:])  # mapped: read by batch
        self.augmentation = augment_mode(config.augment, bool(data.resize))
        self.labels = data.train_y.to(self.device)
        self.normalize = Normalizer(data.mean, data.std)
        self.optimizer = make_optimizer(model, config)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        self.begun = self.applied = 0  # weight updates begun and finished, and the last one's batch totals
        self.last: tuple[torch.Tensor, torch.Tensor, int] | None = None  # (edgeprune.train.position reads them)

    @property
    def net(self) -> nn.Module:
        """The module to train: the model, or in a torchrun job the model in DistributedDataParallel."""
        if self._net is None:  # wrapping sends rank 0's weights and buffers to every process
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self._net = DistributedDataParallel(self.model, device_ids=ids)
        return self._net

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's share of images ``index``, augmented (when configured) and normalised, and their labels.

        Crops and flips are drawn for all of ``index``, so every process draws the same. Runs on one thread:
        these few memory-bound passes take about 2 ms per 128 CIFAR images, and OpenMP's spin-waiting makes
        them 20x slower with 2 threads when other processes share the cores.
        """
        part = self.ranks.part(len(index))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            x = self.store.augment(self.augmentation, index, self.generator, part)
            return self.normalize(x), self.labels[index[part].to(self.device)]
        finally:
            torch.set_num_threads(threads)

    def _batch_totals(
        self, loss: torch.Tensor, correct: torch.Tensor, share: int, batch: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole batch's mean loss (float64) and count of correct outputs, summed over the job's processes."""
        totals = torch.stack([loss.detach().double() * share, correct.double()])
        dist.all_reduce(totals)
        return totals[0] / batch, totals[1].long()

    def __call__(self, index: torch.Tensor, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Train on images ``index`` at learning rate ``lr``; return the loss and the count of correct outputs.

        In a torchrun job both are the whole batch's, over all processes. A non-finite loss is returned
        without updating the weights (in every process: they all see the same loss).
        """
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x, y = self.batch(index)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.precision == "bf16"):
            logits = self.net(x)
        loss = self.criterion(logits.float(), y)
        if self.teacher is not None:  # its outputs on the same augmented batch x (edgeprune.train.distill)
            loss = self.teacher.loss(logits.float(), x, loss, bf16=self.config.precision == "bf16")
        correct = (logits.detach().argmax(1) == y).sum()
        shown = loss.detach()
        if self.ranks.distributed:
            shown, correct = self._batch_totals(loss, correct, len(y), len(index))
            if len(y) * self.ranks.world != len(index):  # uneven shares: DDP's mean of means, re-weighted
                loss = loss * (len(y) * self.ranks.world / len(index))
        if not torch.isfinite(shown):
            return shown, torch.zeros((), dtype=torch.int64)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.last = (shown, correct, len(index))
        self.begun = self.begun + 1  # each count is set in one store: an interrupt sees either value
        self.optimizer.step()
        self.applied = self.applied + 1
        return shown, correct


@torch.inference_mode()
def evaluate(
    model: nn.Module, data: ImageDataset, batch_size: int = 512, ranks: Ranks | None = None, *, split: str = "test"
) -> float:
    """Accuracy on ``split`` (test or val), in [0, 1], on the model's device; under torchrun, a share each."""
    ranks = ranks or Ranks()
    device = device_of(model)
    normalize = Normalizer(data.mean, data.std)
    all_x, all_y = data.split_arrays(split)
    part = ranks.part(len(all_y))
    test_x, test_y = all_x[part], all_y[part]
    was_training = model.training
    model.eval()
    correct = 0
    try:
        for start in range(0, len(test_y), batch_size):
            x = normalize(read_range(test_x, start, start + batch_size).to(device))  # mapped: read, not faulted
            y = test_y[start : start + batch_size].to(device)
            correct += int((model(x).argmax(1) == y).sum())
    finally:
        model.train(was_training)
    if ranks.distributed:
        total = torch.tensor(correct, dtype=torch.int64, device=device)
        dist.all_reduce(total)
        correct = int(total)
    return correct / max(1, len(all_y))


def _write_metrics(out_dir: Path, history: list[dict]) -> None:
    text = "".join(json.dumps(r) + "\n" for r in history)
    atomic_write(out_dir / METRICS_FILE, lambda p: p.write_text(text))


@dataclass(frozen=True)
class _Plan:
    """A run's shape: training images, (global) batch, steps per epoch and in all, warm-up steps, schedule."""

    n: int
    batch: int
    steps_per_epoch: int
    total_steps: int
    warmup: int
    peak: float
    schedule: str

    @classmethod
    def of(cls, n: int, config: TrainConfig) -> _Plan:
        """The plan of ``config`` on ``n`` training images."""
        batch = min(config.batch_size, n)
        steps = n // batch  # the incomplete last batch is left out; the permutation changes every epoch
        total = config.epochs * steps
        warmup = min(round(config.warmup_epochs * steps), int(0.3 * total))
        return cls(n, batch, steps, total, warmup, config.peak_lr, config.schedule)

    def lr(self, step: int) -> float:
        """The learning rate of optimiser step ``step``."""
        return lr_at(step, self.total_steps, self.warmup, self.peak, self.schedule)


def train(
    model: nn.Module,
    data: ImageDataset,
    config: TrainConfig,
    out_dir: str | Path | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    callback: Callable[[dict], None] | None = None,
    threads: int | None = None,
    device: str | torch.device = "cpu",
    teacher: nn.Module | str | Path | Teacher | None = None,
    distill: Distill | None = None,
    log: Sequence[str] = (),
) -> TrainResult:
    """Train ``model`` in place on ``data``; with ``out_dir``, checkpoint every epoch, log metrics and save it.

    ``callback`` gets each epoch's metrics after its checkpoint (in every process of a torchrun job);
    ``threads`` defaults to all cores, shared among the job's processes on this machine; ``device`` is
    ``cpu``, ``cuda``, ``mps`` or ``auto`` (the model ends on the device it came from). Under torchrun
    (WORLD_SIZE > 1) this process joins the job; see the module's docstring. With ``teacher`` (a module, a
    model folder or a code reference, same classes) the loss is distilled from it with ``distill``'s alpha and
    temperature (:mod:`edgeprune.train.distill`). ``log`` names sinks for each epoch's numbers besides
    ``metrics.jsonl``: ``csv``, ``tensorboard``, ``mlflow`` (:mod:`edgeprune.train.logs`; they need ``out_dir``).
    """
    config.validate()
    _check_data(data)
    check_compatible(model, data)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        from edgeprune.io import model_spec

        model_spec(model, data.input_shape())  # the final save must work: refuse a model with no builder now
    if resume and out is None:
        raise EdgepruneError("resuming needs the output folder that holds the checkpoint")
    if threads is not None and threads < 1:
        raise EdgepruneError(f"threads must be positive, got {threads}")
    if log and out is None:
        raise EdgepruneError("logging (log=...) needs an output folder")
    check_sinks(log)  # an unknown sink or a missing package, before any work
    guide = teacher_for(teacher, data, distill)  # checked against the data now, before any training
    ranks = process_ranks()
    target = resolve_device(device, ranks.local_rank)
    torch.set_num_threads(threads or max(1, default_threads() // ranks.local_world))
    created = start_group(ranks, target)
    try:
        if ranks.distributed:
            ranks = replace(ranks, rank=dist.get_rank(), world=dist.get_world_size())
        bar = Progress(progress and ranks.main)
        return _train(model, data, config, out, resume, bar, callback, target, ranks, guide, log=log)
    finally:
        if guide is not None:
            guide.release()  # back where it came from
        if created and dist.is_initialized():
            dist.destroy_process_group()


def _train(
    model: nn.Module,
    data: ImageDataset,
    config: TrainConfig,
    out: Path | None,
    resume: bool,
    bar: Progress,
    callback: Callable[[dict], None] | None,
    device: torch.device,
    ranks: Ranks,
    teacher: Teacher | None = None,
    *,
    log: Sequence[str] = (),
) -> TrainResult:
    """:func:`train` once its arguments are checked and its process group joined."""
    torch.manual_seed(config.seed)  # dropout
    generator = torch.Generator().manual_seed(config.seed)  # sampling and augmentation, the same in every process
    home = device_of(model)
    data = _on_device(data, device)  # the images go to the device once
    if is_mapped(data.train_x):
        bar.line(f"data: {storage_note(data.train_x)}")  # which path ran; the in-memory one is the usual
    config = replace(config, augment=augment_mode(config.augment, bool(data.resize)))  # recorded by name
    plan = _Plan.of(len(data.train_y), config)
    if plan.batch < ranks.world:
        raise EdgepruneError(f"a batch of {plan.batch} images cannot be shared by {ranks.world} processes")
    stepper = TrainStep(model, data, config, generator, device, ranks, teacher=teacher)
    signature = {"config": asdict(config), "data": data_signature(data)}
    if teacher is not None:  # absent without one: earlier checkpoints resume as before
        signature["distill"] = teacher.signature()
    ckpt = out / CHECKPOINT_FILE if out is not None else None
    steps = plan.steps_per_epoch
    run = _resume(ckpt, signature, steps, stepper, ranks, bar, positions=True) if resume and ckpt else _Run()
    if out is not None and ranks.main:
        out.mkdir(parents=True, exist_ok=True)
        _write_metrics(out, run.history)
    settings = {"config": {**asdict(config), "lr": config.peak_lr}, "data": data_signature(data)}
    sinks = Sinks(log if ranks.main else (), out, {**settings, "model": type(model).__name__}, resume=resume)
    try:
        _epochs(stepper, data, plan, run, config, bar, ckpt, signature=signature, sinks=sinks, callback=callback)
    except BaseException:
        sinks.close(finished=False)
        raise
    sinks.close()
    final = run.history[-1].get("test_acc") if run.history else evaluate(model, data, ranks=ranks)
    model.to(home, memory_format=torch.contiguous_format)
    model.eval()
    if out is not None and ranks.main:
        _save_trained(model, out, data, config, run, final, device, ranks, distill=signature.get("distill"))
    if ranks.distributed:
        dist.barrier()  # the other processes end once rank 0 has written the model
    return TrainResult(run.history, final, run.seconds, out, val_accuracy=(run.history or [{}])[-1].get("val_acc"))


def _epochs(
    stepper: TrainStep,
    data: ImageDataset,
    plan: _Plan,
    run: _Run,
    config: TrainConfig,
    bar: Progress,
    ckpt: Path | None,
    *,
    signature: dict,
    sinks: Sinks,
    callback: Callable[[dict], None] | None,
) -> None:
    """The run's remaining epochs, each checkpointed (rank 0), logged and handed to ``callback``."""
    ranks, out = stepper.ranks, ckpt.parent if ckpt is not None else None
    while run.epoch < config.epochs:
        try:
            record = _epoch(stepper, data, plan, run, config, bar, ckpt)
        except KeyboardInterrupt:
            if ckpt is not None and ranks.main and run.stopped:  # the position in the epoch, where it can be saved
                state = dict(signature, epoch=run.epoch, history=run.history, train_seconds=run.seconds)
                bar.line(stop_position(ckpt, stepper, state, run.position, plan.steps_per_epoch))
            raise
        if out is not None and ckpt is not None:
            if ranks.main:
                state = dict(signature, epoch=run.epoch, step=run.step, history=run.history)
                state.update(train_seconds=run.seconds, world_size=ranks.world)
                save_checkpoint(ckpt, stepper.model, stepper.optimizer, stepper.generator, state)
                _write_metrics(out, run.history)
            run.last_good = run.epoch
        if ranks.main:
            sinks.epoch(record, run.history)
        if callback is not None:
            callback(record)


def _save_trained(
    model: nn.Module,
    out: Path,
    data: ImageDataset,
    config: TrainConfig,
    run: _Run,
    final: float,
    device: torch.device,
    ranks: Ranks,
    *,
    distill: dict | None = None,
) -> None:
    """Write the trained model and ``train.json``, its summary (with the distillation settings, if any)."""
    from edgeprune.io import save

    save(model, out, data.input_shape())
    summary = {
        "test_accuracy": final,
        **({"val_accuracy": run.history[-1]["val_acc"]} if "val_acc" in run.history[-1] else {}),
        "epochs": len(run.history),
        "train_seconds": round(run.seconds, 3),
        "config": {**asdict(config), "lr": config.peak_lr},  # the rate used, also when defaulted
        "data": data_signature(data),
        "normalize": {"mean": list(data.mean), "std": list(data.std), "scale": "pixels / 255"},
        "data_storage": {
            "images": "mapped" if is_mapped(data.train_x) else "memory",
            "note": storage_note(data.train_x),
        },
        "device": device.type,
        "processes": ranks.world,
        **({"distill": distill} if distill is not None else {}),
    }
    write_json(out / SUMMARY_FILE, summary)


def _epoch(
    stepper: TrainStep,
    data: ImageDataset,
    plan: _Plan,
    run: _Run,
    config: TrainConfig,
    bar: Progress,
    ckpt: Path | None,
) -> dict:
    """Train and test one epoch; append its record to ``run.history`` and return it."""
    ranks = stepper.ranks
    label = f"epoch {run.epoch + 1}/{config.epochs}"
    seed_epoch(stepper.device, config.seed, ranks.rank, run.epoch)
    loss, accuracy, seen, seconds, lr = _steps(stepper, plan, run, label, bar, ckpt)
    load = machine_load()  # the epoch's machine load, for honest times (a comparison marks loaded ones)
    t1 = time.perf_counter()
    if ranks.distributed:
        sync_buffers(stepper.model)
    test_acc = evaluate(stepper.model, data, ranks=ranks) if len(data.test_y) else None  # None: no test split
    val_acc = evaluate(stepper.model, data, ranks=ranks, split="val") if data.val_y is not None else None
    record = {
        "epoch": run.epoch + 1,
        "loss": loss,
        "train_acc": accuracy,
        **({"test_acc": test_acc} if test_acc is not None else {}),
        **({"val_acc": val_acc} if val_acc is not None else {}),
        "epoch_seconds": round(seconds, 3),
        "eval_seconds": round(time.perf_counter() - t1, 3),
        "train_seconds": round(run.seconds + seconds, 3),
        "images_per_s": round(seen / max(seconds, 1e-9), 1),
        "lr": lr,
        **load,
    }
    run.epoch, run.seconds = run.epoch + 1, run.seconds + seconds
    run.history.append(record)
    scores = "".join(f"{k[:-4]} {100 * record[k]:.2f}% " for k in ("val_acc", "test_acc") if k in record)
    bar.update(
        label, plan.steps_per_epoch, plan.steps_per_epoch,
        f"loss {record['loss']:.3f} acc {100 * record['train_acc']:.1f}% {scores}"
        f"{record['images_per_s']:.0f} img/s {seconds:.1f}s",
        final=True,
    )  # fmt: skip
    return record


def _steps(
    stepper: TrainStep, plan: _Plan, run: _Run, label: str, bar: Progress, ckpt: Path | None
) -> tuple[float, float, int, float, float]:
    """One epoch's optimiser steps (advancing ``run.step``): mean loss, accuracy, images, seconds, last lr.

    A resumed run goes on from ``run.position`` (the epoch's order redrawn from the generator's state at its
    start); an interrupt leaves in ``run.position`` the position to save (:mod:`edgeprune.train.position`).
    """
    resumed, run.position, generator = run.position, None, stepper.generator
    epoch_rng = resumed.epoch_rng if resumed is not None else generator.get_state()
    generator.set_state(epoch_rng)
    perm = torch.randperm(plan.n, generator=generator)
    if resumed is not None:
        generator.set_state(resumed.generator)  # after its last step's draws
    tracker = Tracker(stepper, epoch_rng, resumed)
    first = run.step - tracker.totals[0]  # the epoch's first optimiser step
    lr = plan.lr(run.step - 1 if tracker.totals[0] else run.step)  # the last step's, as the epoch's record says
    try:
        for s in range(tracker.totals[0], plan.steps_per_epoch):
            lr = plan.lr(run.step)
            index = perm[s * plan.batch : (s + 1) * plan.batch]
            loss, correct_here = stepper(index, lr)
            if not torch.isfinite(loss):
                kept = f"; the last good checkpoint (epoch {run.last_good}) is kept in {ckpt}" if run.last_good else ""
                raise EdgepruneError(
                    f"loss became {float(loss.detach())} at epoch {run.epoch + 1}, step {s + 1}: training diverged "
                    f"(try a lower --lr){kept}"
                )
            tracker.commit(loss, correct_here, len(index))
            run.step = first + s + 1
            seen, loss_sum, correct = tracker.totals[3], tracker.totals[1], tracker.totals[2]
            bar.update(
                label, s + 1, plan.steps_per_epoch,
                f"loss {float(loss_sum) / seen:.3f} acc {100 * int(correct) / seen:.1f}% "
                f"{seen / max(tracker.seconds, 1e-9):.0f} img/s",
            )  # fmt: skip
    except KeyboardInterrupt:
        run.position, run.stopped = tracker.snapshot(), True
        raise
    _, loss_sum, correct, seen = tracker.totals[:4]
    return float(loss_sum) / max(seen, 1), int(correct) / max(seen, 1), seen, tracker.seconds, lr


__all__ = [
    "METRICS_FILE",
    "SUMMARY_FILE",
    "TrainConfig",
    "TrainResult",
    "TrainStep",
    "data_signature",
    "evaluate",
    "lr_at",
    "make_optimizer",
    "train",
]
