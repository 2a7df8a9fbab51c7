"""Training on the user's own data: a torch ``Dataset`` or ``DataLoader`` yielding ``(images, labels)``.

The images are float tensors ``[N, C, H, W]``, already transformed and normalised by the user's own code:
edgeprune's augmentation and normalisation are for its own uint8 data sets and do not apply (the run records
``augment: none``); put random crops and flips in the Dataset's transforms. A ``Dataset`` is batched here by a
``DataLoader`` shuffled with the run's seeded generator; a ``DataLoader`` of the user's is used as it is. Both
train with the same optimiser, schedule, checkpoints, metrics, log sinks and progress as :func:`train`.

Resume: checkpoints are written at epoch ends, with the generator and torch's global random state, so a run
resumed from one repeats an uninterrupted run exactly when the data order comes from those (a ``Dataset`` given
here, or a ``DataLoader`` shuffled by torch's global generator or not at all). A position inside an epoch is not
saved: a stopped run resumes at the start of the epoch it was in, which the run says once.

Epochs: before each one, ``set_epoch(epoch)`` (0-based) is called on the DataLoader's dataset and on its sampler
when they have one (the convention of torch's ``DistributedSampler``), so an order drawn per epoch from a seed repeats
on resume. edgeprune's own stream of tar shards (:class:`edgeprune.data.stream.StreamBatches`, what ``edgeprune train``
trains on when a shard set streams) is such a dataset: it augments and normalises its batches itself, and the run
records its augmentation, normalisation and ``data_storage: stream`` instead of ``augment: none``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from edgeprune.data.progress import Progress
from edgeprune.data.stream import STORAGE, StreamBatches
from edgeprune.errors import EdgepruneError
from edgeprune.files import write_json
from edgeprune.train.checkpoint import CHECKPOINT_FILE, save_checkpoint
from edgeprune.train.logs import Sinks, check_sinks
from edgeprune.train.loop import METRICS_FILE, SUMMARY_FILE, TrainConfig, TrainResult, lr_at, make_optimizer
from edgeprune.train.resume import Run, resume_run

EPOCH_NOTE = "your own data: checkpoints at epoch ends; a stopped run resumes at the start of its epoch"
STREAM_NOTE = "a shard stream resumes at epoch boundaries: the epoch that was stopped is trained again from its start"


def is_user_data(data: object) -> bool:
    """Whether ``data`` is a torch Dataset or DataLoader (not one of edgeprune's data sets)."""
    return isinstance(data, DataLoader | Dataset)


def as_loader(data: object, batch_size: int, generator: torch.Generator, shuffle: bool) -> DataLoader:
    """``data`` as a DataLoader: a user's DataLoader as it is, a sized Dataset batched (and shuffled) here."""
    if isinstance(data, DataLoader):
        loader = data
    elif isinstance(data, Dataset) and hasattr(data, "__len__"):
        loader = DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator if shuffle else None)
    else:
        raise EdgepruneError(f"expected a torch Dataset with a length or a DataLoader, got {type(data).__name__}")
    try:
        len(loader)
    except TypeError:
        raise EdgepruneError("the training DataLoader needs a length (the schedule is set in steps)") from None
    return loader


def _batch(item: object, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)`` of one batch, checked: float [N, C, H, W] images, integer [N] labels."""
    if not isinstance(item, tuple | list) or len(item) < 2:
        raise EdgepruneError(f"{where}: each batch must be (images, labels), got {type(item).__name__}")
    x, y = item[0], item[1]
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim != 4:
        raise EdgepruneError(f"{where}: images must be a float [N, C, H, W] tensor (transformed and normalised)")
    if not isinstance(y, torch.Tensor) or y.dtype not in (torch.int64, torch.int32) or y.shape != x.shape[:1]:
        raise EdgepruneError(f"{where}: labels must be an integer [N] tensor, one per image")
    return x, y.long()


@torch.inference_mode()
def loader_accuracy(model: nn.Module, loader: DataLoader) -> float:
    """Accuracy of ``model`` on every batch of ``loader``, in [0, 1]."""
    was_training = model.training
    model.eval()
    correct = seen = 0
    try:
        for item in loader:
            x, y = _batch(item, "test data")
            correct += int((model(x).argmax(1) == y).sum())
            seen += len(y)
    finally:
        model.train(was_training)
    return correct / max(seen, 1)


def _stream_of(loader: DataLoader) -> StreamBatches | None:
    """edgeprune's own shard stream behind ``loader``, if it is one (it records its augmentation and normalisation)."""
    return loader.dataset if isinstance(loader.dataset, StreamBatches) else None


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Call ``set_epoch(epoch)`` on the loader's dataset and sampler where they have one (DistributedSampler's way)."""
    seen = set()
    for part in (loader.dataset, getattr(loader, "sampler", None), getattr(loader.batch_sampler, "sampler", None)):
        if part is not None and id(part) not in seen and callable(getattr(part, "set_epoch", None)):
            seen.add(id(part))
            part.set_epoch(epoch)


def _signature(train_loader: DataLoader, test_loader: DataLoader, model: nn.Module) -> dict:
    """What identifies the user's data to a checkpoint: sizes, image shape and classes (from the model)."""
    stream = _stream_of(train_loader)
    if stream is not None and stream.record is not None:
        return stream.record
    x, _ = _batch(next(iter(test_loader)), "test data")
    with torch.inference_mode():
        was = model.training
        classes = int(model.eval()(x[:1]).shape[1])
        model.train(was)
    sizes = [
        len(loader.dataset) if hasattr(loader.dataset, "__len__") else None for loader in (train_loader, test_loader)
    ]
    return {"name": "user", "train": sizes[0], "test": sizes[1], "classes": classes, "shape": list(x.shape[1:])}


def train_user(
    model: nn.Module,
    data: object,
    test_data: object,
    config: TrainConfig,
    out_dir: str | Path | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    callback: Callable[[dict], None] | None = None,
    log: Sequence[str] = (),
) -> TrainResult:
    """Train ``model`` in place on the user's ``data``, testing on ``test_data`` after every epoch (see the module).

    Before each epoch, ``set_epoch(epoch)`` is called on a DataLoader's dataset and sampler that have one.
    """
    config.validate()
    out = Path(out_dir) if out_dir is not None else None
    if resume and out is None:
        raise EdgepruneError("resuming needs the output folder that holds the checkpoint")
    if log and out is None:
        raise EdgepruneError("logging (log=...) needs an output folder")
    check_sinks(log)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    loader = as_loader(data, config.batch_size, generator, shuffle=True)
    tests = as_loader(test_data, config.batch_size, generator, shuffle=False)
    stream = _stream_of(loader)  # edgeprune's own: it augments; the user's transforms otherwise, edgeprune's do not
    config = replace(config, augment=stream.augment if stream is not None else "none")
    signature = {"config": asdict(config), "data": _signature(loader, tests, model)}
    if out is not None:
        from edgeprune.io import model_spec

        model_spec(model, tuple(signature["data"]["shape"]))  # the final save must work: refuse now
    bar = Progress(progress)
    optimizer = make_optimizer(model, config)
    stepper = _Stepper(model, optimizer, generator, config)
    steps = len(loader)
    ckpt = out / CHECKPOINT_FILE if out is not None else None
    run = resume_run(ckpt, signature, steps, stepper, stepper.ranks, bar) if resume and ckpt else Run()
    if resume and isinstance(data, DataLoader):
        bar.line(STREAM_NOTE if stream is not None else EPOCH_NOTE)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    settings = {"config": {**asdict(config), "lr": config.peak_lr}, "data": signature["data"]}
    sinks = Sinks(log, out, {**settings, "model": type(model).__name__}, resume=resume)
    try:
        while run.epoch < config.epochs:
            set_epoch(loader, run.epoch)
            record = _epoch(stepper, loader, tests, run, bar)
            if ckpt is not None:
                state = dict(signature, epoch=run.epoch, step=run.step, history=run.history)
                state.update(train_seconds=run.seconds, world_size=1)
                save_checkpoint(ckpt, model, optimizer, generator, state)
                _write_metrics(out, run.history)
                run.last_good = run.epoch
            sinks.epoch(record, run.history)
            if callback is not None:
                callback(record)
    except BaseException:
        sinks.close(finished=False)
        raise
    sinks.close()
    final = run.history[-1]["test_acc"] if run.history else loader_accuracy(model, tests)
    model.eval()
    if out is not None:
        _save(model, out, signature, config, run, final, stream)
    return TrainResult(run.history, final, run.seconds, out)


class _Stepper:
    """The model, optimiser and generator a resume restores (what :func:`resume_run` reads from a stepper)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator, config):  # noqa: ANN001
        from edgeprune.runtime import Ranks

        self.model, self.optimizer, self.generator, self.config = model.train(), optimizer, generator, config
        self.ranks = Ranks()
        self.criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)


def _epoch(stepper: _Stepper, loader: DataLoader, tests: DataLoader, run: Run, bar: Progress) -> dict:
    """Train one epoch on ``loader`` and test on ``tests``; append the record to ``run.history`` and return it."""
    config, steps = stepper.config, len(loader)
    total = config.epochs * steps
    warmup = min(round(config.warmup_epochs * steps), int(0.3 * total))
    label = f"epoch {run.epoch + 1}/{config.epochs}"
    loss_sum, correct, seen, lr = 0.0, 0, 0, config.peak_lr
    t0 = time.perf_counter()
    for s, item in enumerate(loader):
        x, y = _batch(item, "training data")
        lr = lr_at(run.step, total, warmup, config.peak_lr, config.schedule)
        for group in stepper.optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.precision == "bf16"):
            logits = stepper.model(x)
        loss = stepper.criterion(logits.float(), y)
        if not torch.isfinite(loss):
            raise EdgepruneError(f"loss became {float(loss)} at epoch {run.epoch + 1}, step {s + 1}: training diverged")
        stepper.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        stepper.optimizer.step()
        run.step += 1
        loss_sum, seen = loss_sum + float(loss.detach()) * len(y), seen + len(y)
        correct += int((logits.detach().argmax(1) == y).sum())
        bar.update(label, s + 1, steps, f"loss {loss_sum / seen:.3f} acc {100 * correct / seen:.1f}%")
    seconds = time.perf_counter() - t0
    test_acc = loader_accuracy(stepper.model, tests)
    record = {
        "epoch": run.epoch + 1,
        "loss": loss_sum / max(seen, 1),
        "train_acc": correct / max(seen, 1),
        "test_acc": test_acc,
        "epoch_seconds": round(seconds, 3),
        "train_seconds": round(run.seconds + seconds, 3),
        "images_per_s": round(seen / max(seconds, 1e-9), 1),
        "lr": lr,
    }
    run.epoch, run.seconds = run.epoch + 1, run.seconds + seconds
    run.history.append(record)
    bar.update(label, steps, steps, f"loss {record['loss']:.3f} test {100 * test_acc:.2f}%", final=True)
    return record


def _write_metrics(out: Path, history: list[dict]) -> None:
    """``metrics.jsonl``: one line per epoch."""
    import json

    from edgeprune.files import atomic_write

    text = "".join(json.dumps(r) + "\n" for r in history)
    atomic_write(out / METRICS_FILE, lambda p: p.write_text(text))


def _save(
    model: nn.Module, out: Path, signature: dict, config: TrainConfig, run: Run, final: float, stream: object
) -> None:
    """The trained model and ``train.json`` (a shard stream's normalisation and storage, when it is one)."""
    from edgeprune.io import save

    save(model, out, tuple(signature["data"]["shape"]))
    summary = {
        "test_accuracy": final,
        "epochs": len(run.history),
        "train_seconds": round(run.seconds, 3),
        "config": {**asdict(config), "lr": config.peak_lr},
        "data": signature["data"],
        "normalize": "the user's own transforms" if stream is None else _normalization(signature),
        **({"data_storage": {"images": STORAGE, "note": stream.note}} if stream is not None else {}),
        "device": "cpu",
        "processes": 1,
    }
    write_json(out / SUMMARY_FILE, summary)


def _normalization(signature: dict) -> dict:
    """A stream's normalisation as ``train.json`` records it (the checkpoint has it in its data signature)."""
    return {k: v for k, v in signature["data"]["normalize"].items() if k != "sample"} | {
        "estimated_from": f"{signature['data']['normalize']['sample']:,} training images"
    }


__all__ = ["EPOCH_NOTE", "STREAM_NOTE", "as_loader", "is_user_data", "loader_accuracy", "set_epoch", "train_user"]
