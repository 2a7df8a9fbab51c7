"""The training loop: :class:`TrainConfig`, :class:`TrainStep`, :func:`train` and :func:`evaluate`."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from edgeprune.data import ImageDataset, ImageStore, Normalizer, check_compatible
from edgeprune.errors import EdgepruneError
from edgeprune.files import atomic_write, write_json
from edgeprune.runtime import Ranks, default_threads, device_of, process_ranks, resolve_device
from edgeprune.train.checkpoint import (
    CHECKPOINT_FILE,
    check_resumable,
    read_checkpoint,
    restore_checkpoint,
    save_checkpoint,
)
from edgeprune.train.distributed import seed_epoch, share_object, start_group, state_on_cpu, sync_buffers
from edgeprune.train.progress import Progress

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
    augment: bool = True
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
    test_accuracy: float
    train_seconds: float
    out_dir: Path | None = field(default=None)


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
    if len(data.train_y) == 0 or len(data.test_y) == 0:
        raise EdgepruneError(f"data set '{data.name}' has an empty train or test split")
    if data.train_x.dtype != torch.uint8 or data.train_x.ndim != 4:
        raise EdgepruneError("data set images must be uint8 [N, C, H, W]")


def _on_device(data: ImageDataset, device: torch.device) -> ImageDataset:
    """The data set with its four tensors on ``device`` (the same object on the CPU)."""
    if device.type == "cpu":
        return data
    moved = {k: getattr(data, k).to(device) for k in ("train_x", "train_y", "test_x", "test_y")}
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
    ):
        self.device = device if device is not None else torch.device("cpu")
        self.ranks = ranks or Ranks()
        self.model = model.to(self.device, memory_format=torch.channels_last).train()
        self._net: nn.Module | None = None if self.ranks.distributed else self.model
        self.config = config
        self.generator = generator
        self.store = ImageStore(data.train_x.to(self.device))
        self.labels = data.train_y.to(self.device)
        self.normalize = Normalizer(data.mean, data.std)
        self.optimizer = make_optimizer(model, config)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)

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
            if self.config.augment:
                x = self.store.random_crop_flip(index, self.generator, part=part)
            else:
                x = self.store.batch(index[part])
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
        self.optimizer.step()
        return shown, correct


@torch.inference_mode()
def evaluate(model: nn.Module, data: ImageDataset, batch_size: int = 512, ranks: Ranks | None = None) -> float:
    """Accuracy on the test split, in [0, 1], on the model's device; in a torchrun job each process scores a share."""
    ranks = ranks or Ranks()
    device = device_of(model)
    normalize = Normalizer(data.mean, data.std)
    part = ranks.part(len(data.test_y))
    test_x, test_y = data.test_x[part], data.test_y[part]
    was_training = model.training
    model.eval()
    correct = 0
    try:
        for start in range(0, len(test_y), batch_size):
            x = normalize(test_x[start : start + batch_size].to(device))
            y = test_y[start : start + batch_size].to(device)
            correct += int((model(x).argmax(1) == y).sum())
    finally:
        model.train(was_training)
    if ranks.distributed:
        total = torch.tensor(correct, dtype=torch.int64, device=device)
        dist.all_reduce(total)
        correct = int(total)
    return correct / max(1, len(data.test_y))


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


@dataclass
class _Run:
    """Where a run stands: epochs done, optimiser steps, records, seconds trained, the newest checkpoint's epoch."""

    epoch: int = 0
    step: int = 0
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    last_good: int = 0


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
) -> TrainResult:
    """Train ``model`` in place on ``data``; with ``out_dir``, checkpoint every epoch, log metrics and save it.

    ``callback`` gets each epoch's metrics after its checkpoint (in every process of a torchrun job);
    ``threads`` defaults to all cores, shared among the job's processes on this machine; ``device`` is
    ``cpu``, ``cuda``, ``mps`` or ``auto`` (the model ends on the device it came from). Under torchrun
    (WORLD_SIZE > 1) this process joins the job; see the module's docstring.
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
    ranks = process_ranks()
    target = resolve_device(device, ranks.local_rank)
    torch.set_num_threads(threads or max(1, default_threads() // ranks.local_world))
    created = start_group(ranks, target)
    try:
        if ranks.distributed:
            ranks = replace(ranks, rank=dist.get_rank(), world=dist.get_world_size())
        return _train(model, data, config, out, resume, Progress(progress and ranks.main), callback, target, ranks)
    finally:
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
) -> TrainResult:
    """:func:`train` once its arguments are checked and its process group joined."""
    torch.manual_seed(config.seed)  # dropout
    generator = torch.Generator().manual_seed(config.seed)  # sampling and augmentation, the same in every process
    home = device_of(model)
    data = _on_device(data, device)  # the images go to the device once
    plan = _Plan.of(len(data.train_y), config)
    if plan.batch < ranks.world:
        raise EdgepruneError(f"a batch of {plan.batch} images cannot be shared by {ranks.world} processes")
    stepper = TrainStep(model, data, config, generator, device, ranks)
    signature = {"config": asdict(config), "data": data_signature(data)}
    ckpt = out / CHECKPOINT_FILE if out is not None else None
    run = _resume(ckpt, signature, plan.steps_per_epoch, stepper, ranks, bar) if resume and ckpt else _Run()
    if out is not None and ranks.main:
        out.mkdir(parents=True, exist_ok=True)
        _write_metrics(out, run.history)
    while run.epoch < config.epochs:
        record = _epoch(stepper, data, plan, run, config, bar, ckpt)
        if out is not None and ckpt is not None:
            if ranks.main:
                state = dict(signature, epoch=run.epoch, step=run.step, history=run.history)
                state.update(train_seconds=run.seconds, world_size=ranks.world)
                save_checkpoint(ckpt, model, stepper.optimizer, generator, state)
                _write_metrics(out, run.history)
            run.last_good = run.epoch
        if callback is not None:
            callback(record)
    final = run.history[-1]["test_acc"] if run.history else evaluate(model, data, ranks=ranks)
    model.to(home, memory_format=torch.contiguous_format)
    model.eval()
    if out is not None and ranks.main:
        _save_trained(model, out, data, config, run, final, device, ranks)
    if ranks.distributed:
        dist.barrier()  # the other processes end once rank 0 has written the model
    return TrainResult(run.history, final, run.seconds, out)


def _save_trained(
    model: nn.Module,
    out: Path,
    data: ImageDataset,
    config: TrainConfig,
    run: _Run,
    final: float,
    device: torch.device,
    ranks: Ranks,
) -> None:
    """Write the trained model and ``train.json``, its summary."""
    from edgeprune.io import save

    save(model, out, data.input_shape())
    summary = {
        "test_accuracy": final,
        "epochs": len(run.history),
        "train_seconds": round(run.seconds, 3),
        "config": asdict(config),
        "data": data_signature(data),
        "normalize": {"mean": list(data.mean), "std": list(data.std), "scale": "pixels / 255"},
        "device": device.type,
        "processes": ranks.world,
    }
    write_json(out / SUMMARY_FILE, summary)


def _resume(ckpt: Path, signature: dict, steps_per_epoch: int, stepper: TrainStep, ranks: Ranks, bar: Progress) -> _Run:
    """The checkpoint's run, or a fresh one when there is none; in a torchrun job rank 0 reads it and shares it."""
    if not ranks.distributed:
        return _read_run(ckpt, signature, steps_per_epoch, stepper, ranks, bar)
    shared = share_object(_resume_main(ckpt, signature, steps_per_epoch, stepper, ranks, bar) if ranks.main else None)
    assert isinstance(shared, dict)
    if "error" in shared:
        raise EdgepruneError(shared["error"])
    if not ranks.main:
        stepper.optimizer.load_state_dict(shared["optimizer"])
        stepper.generator.set_state(shared["generator"])
    return shared["run"]


def _resume_main(
    ckpt: Path, signature: dict, steps_per_epoch: int, stepper: TrainStep, ranks: Ranks, bar: Progress
) -> dict:
    """Rank 0's part of a resume in a torchrun job: what the others need, or the error they all stop with."""
    try:
        run = _read_run(ckpt, signature, steps_per_epoch, stepper, ranks, bar)
    except EdgepruneError as e:
        return {"error": str(e)}
    optimizer = state_on_cpu(stepper.optimizer.state_dict())
    return {"run": run, "optimizer": optimizer, "generator": stepper.generator.get_state()}


def _read_run(
    ckpt: Path, signature: dict, steps_per_epoch: int, stepper: TrainStep, ranks: Ranks, bar: Progress
) -> _Run:
    """Verify the checkpoint, load it into model, optimiser and generator, and return its run (a fresh one if none)."""
    if not ckpt.is_file():
        bar.line(f"no checkpoint in {ckpt.parent}; starting from epoch 1")
        return _Run()
    saved = read_checkpoint(ckpt)  # verified before anything is changed or written
    check_resumable(ckpt, saved.state, signature, steps_per_epoch)
    meta = restore_checkpoint(ckpt, saved, stepper.model, stepper.optimizer, stepper.generator)
    unverified = "" if saved.verified else " (an older checkpoint without checksums: not verified)"
    bar.line(f"resuming after epoch {meta['epoch']}/{signature['config']['epochs']} from {ckpt}{unverified}")
    before = meta.get("world_size", 1)
    if before != ranks.world:
        bar.line(
            f"the checkpoint was written by {before} process(es), this run has {ranks.world}: the same global batch, "
            "data order and augmentation continue; BatchNorm sees each process's share of a batch"
        )
    return _Run(meta["epoch"], meta["step"], meta["history"], float(meta["train_seconds"]), meta["epoch"])


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
    t1 = time.perf_counter()
    if ranks.distributed:
        sync_buffers(stepper.model)
    test_acc = evaluate(stepper.model, data, ranks=ranks)
    record = {
        "epoch": run.epoch + 1,
        "loss": loss,
        "train_acc": accuracy,
        "test_acc": test_acc,
        "epoch_seconds": round(seconds, 3),
        "eval_seconds": round(time.perf_counter() - t1, 3),
        "train_seconds": round(run.seconds + seconds, 3),
        "images_per_s": round(seen / max(seconds, 1e-9), 1),
        "lr": lr,
    }
    run.epoch, run.seconds = run.epoch + 1, run.seconds + seconds
    run.history.append(record)
    bar.update(
        label, plan.steps_per_epoch, plan.steps_per_epoch,
        f"loss {record['loss']:.3f} acc {100 * record['train_acc']:.1f}% test {100 * test_acc:.2f}% "
        f"{record['images_per_s']:.0f} img/s {seconds:.1f}s",
        final=True,
    )  # fmt: skip
    return record


def _steps(
    stepper: TrainStep, plan: _Plan, run: _Run, label: str, bar: Progress, ckpt: Path | None
) -> tuple[float, float, int, float, float]:
    """One epoch's optimiser steps (advancing ``run.step``): mean loss, accuracy, images, seconds, last lr."""
    perm = torch.randperm(plan.n, generator=stepper.generator)
    loss_sum = torch.zeros((), dtype=torch.float64)
    correct = torch.zeros((), dtype=torch.int64)
    seen, lr = 0, plan.lr(run.step)
    t0 = time.perf_counter()
    for s in range(plan.steps_per_epoch):
        lr = plan.lr(run.step)
        index = perm[s * plan.batch : (s + 1) * plan.batch]
        loss, correct_here = stepper(index, lr)
        if not torch.isfinite(loss):
            kept = f"; the last good checkpoint (epoch {run.last_good}) is kept in {ckpt}" if run.last_good else ""
            raise EdgepruneError(
                f"loss became {float(loss.detach())} at epoch {run.epoch + 1}, step {s + 1}: training diverged "
                f"(try a lower --lr){kept}"
            )
        run.step += 1
        seen += len(index)
        loss_sum += loss.cpu().double() * len(index)
        correct += correct_here.cpu()
        elapsed = time.perf_counter() - t0
        bar.update(
            label, s + 1, plan.steps_per_epoch,
            f"loss {float(loss_sum) / seen:.3f} acc {100 * int(correct) / seen:.1f}% {seen / elapsed:.0f} img/s",
        )  # fmt: skip
    seconds = time.perf_counter() - t0
    return float(loss_sum) / max(seen, 1), int(correct) / max(seen, 1), seen, seconds, lr


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
