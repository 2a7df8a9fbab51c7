"""Resuming a training run: where a run stands (:class:`Run`) and reading it back from its checkpoint."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgeprune.data import augment_mode
from edgeprune.data.progress import Progress
from edgeprune.errors import EdgepruneError
from edgeprune.runtime import Ranks
from edgeprune.train.checkpoint import check_resumable, extends, plural, read_checkpoint, restore_checkpoint
from edgeprune.train.distill import check_same_teacher
from edgeprune.train.distributed import share_object, state_on_cpu
from edgeprune.train.position import Position, position_of


@dataclass
class Run:
    """Where a run stands: epochs done, optimiser steps, records, seconds trained, the newest checkpoint's epoch."""

    epoch: int = 0
    step: int = 0
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    last_good: int = 0
    position: Position | None = None  # where in epoch ``epoch + 1`` a resumed run goes on (None: at its start)
    stopped: bool = False  # an interrupt stopped the steps of epoch ``epoch + 1`` (position: where, if known)


def resume_run(
    ckpt: Path,
    signature: dict,
    steps_per_epoch: int,
    stepper: object,
    ranks: Ranks,
    bar: Progress,
    *,
    positions: bool = False,
) -> Run:
    """The checkpoint's run, or a fresh one when there is none; in a torchrun job rank 0 reads it and shares it.

    ``positions``: the data path can go on from a position inside an epoch (edgeprune's own data sets); without
    it a checkpoint holding one is refused.
    """
    if not ranks.distributed:
        return _read_run(ckpt, signature, steps_per_epoch, stepper, ranks, bar, positions)
    read = _resume_main(ckpt, signature, steps_per_epoch, stepper, ranks, bar, positions) if ranks.main else None
    shared = share_object(read)
    assert isinstance(shared, dict)
    if "error" in shared:
        raise EdgepruneError(shared["error"])
    if not ranks.main:
        stepper.optimizer.load_state_dict(shared["optimizer"])
        stepper.generator.set_state(shared["generator"])
    return shared["run"]


def _resume_main(
    ckpt: Path, signature: dict, steps_per_epoch: int, stepper: object, ranks: Ranks, bar: Progress, positions: bool
) -> dict:
    """Rank 0's part of a resume in a torchrun job: what the others need, or the error they all stop with."""
    try:
        run = _read_run(ckpt, signature, steps_per_epoch, stepper, ranks, bar, positions)
    except EdgepruneError as e:
        return {"error": str(e)}
    optimizer = state_on_cpu(stepper.optimizer.state_dict())
    return {"run": run, "optimizer": optimizer, "generator": stepper.generator.get_state()}


def _read_run(
    ckpt: Path, signature: dict, steps_per_epoch: int, stepper: object, ranks: Ranks, bar: Progress, positions: bool
) -> Run:
    """Verify the checkpoint, load it into model, optimiser and generator, and return its run (a fresh one if none)."""
    if not ckpt.is_file():
        bar.line(f"no checkpoint in {ckpt.parent}; starting from epoch 1")
        return Run()
    saved = read_checkpoint(ckpt)  # verified before anything is changed or written
    if isinstance(saved.state["config"].get("augment"), bool):  # before augmentations had names: cifar or none
        saved.state["config"]["augment"] = augment_mode(saved.state["config"]["augment"], False)
    check_resumable(ckpt, saved.state, signature, steps_per_epoch)
    check_same_teacher(ckpt, saved.state, signature.get("distill"))
    if "position" in saved.state and not positions:
        raise EdgepruneError(
            f"{ckpt}: the checkpoint holds a position inside epoch {saved.state['epoch'] + 1}, which this data path "
            "cannot go on from (it resumes at epoch boundaries); delete it or train without --resume"
        )
    meta = restore_checkpoint(ckpt, saved, stepper.model, stepper.optimizer, stepper.generator)
    position = position_of(ckpt, saved)
    unverified = "" if saved.verified else " (an older checkpoint without checksums: not verified)"
    where = _resuming_line(meta["epoch"], signature["config"]["epochs"], position, steps_per_epoch, ckpt)
    bar.line(where + unverified)
    if extends(saved.state, signature):
        bar.line(
            f"extending a finished run of {plural(meta['epoch'], 'epoch')} to {signature['config']['epochs']}: the "
            "learning-rate schedule is recomputed for the longer run (epochs done keep their rates)"
        )
    before = meta.get("world_size", 1)
    if before != ranks.world:
        bar.line(
            f"the checkpoint was written by {before} process(es), this run has {ranks.world}: the same global batch, "
            "data order and augmentation continue; BatchNorm sees each process's share of a batch"
        )
    return Run(meta["epoch"], meta["step"], meta["history"], float(meta["train_seconds"]), meta["epoch"], position)


def _resuming_line(epoch: int, epochs: int, position: Position | None, steps: int, ckpt: Path) -> str:
    """Where the resumed run goes on: inside an epoch, at the start of one, or after the last."""
    if position is not None:
        return f"resuming at epoch {epoch + 1}/{epochs}, step {position.done} of {steps} (where it stopped) from {ckpt}"
    start = f", at the start of epoch {epoch + 1}," if epoch < epochs else ""
    return f"resuming after epoch {epoch}/{epochs}{start} from {ckpt}"


__all__ = ["Run", "resume_run"]
