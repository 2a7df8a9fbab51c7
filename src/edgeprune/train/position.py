"""A position inside an epoch: kept step by step, saved when an interrupt stops a run, restored on resume.

edgeprune's own data path draws an epoch's order (one ``randperm``) and then every batch's augmentation from the
run's seeded generator, so the generator's state at the epoch's start redraws the order, and its state after a
step goes on with the next batch's draws. :class:`Tracker` commits each finished step's totals and RNG states
in one assignment, so that an interrupt arriving anywhere reads a consistent position back: the last committed
step (with its BatchNorm statistics, which the next step's forward pass changes before its update), or the
step whose weight update had finished just before it. An interrupt during the update itself (the
optimiser's ``step``) leaves no consistent position, and nothing is saved for it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from edgeprune.errors import EdgepruneError
from edgeprune.train.checkpoint import Checkpoint, save_checkpoint

EPOCH_RNG = "rng.epoch"  # checkpoint tensor: the generator's state at the start of the position's epoch


@dataclass
class Position:
    """Steps done in an epoch, the epoch's running totals, and the RNG states to go on from."""

    done: int  # optimiser steps of this epoch already trained
    loss_sum: float  # the epoch's summed loss (float64), its images' count ``seen``, its correct outputs
    correct: int
    seen: int
    seconds: float  # training seconds spent in this epoch so far
    epoch_rng: torch.Tensor  # the generator's state at the epoch's start: its order is redrawn from it
    generator: torch.Tensor  # the generator's state after ``done`` steps
    torch_rng: torch.Tensor  # torch's global CPU state after ``done`` steps (dropout)
    buffers: list[torch.Tensor] | None = None  # the model's buffers after ``done`` steps (BatchNorm statistics)

    def record(self) -> dict:
        """The JSON part a checkpoint holds under ``position``."""
        return {
            "step": self.done,
            "loss_sum": self.loss_sum,
            "correct": self.correct,
            "seen": self.seen,
            "seconds": round(self.seconds, 3),
        }

    def rng(self) -> dict[str, torch.Tensor]:
        """The checkpoint's RNG tensors for this position."""
        return {"rng.torch": self.torch_rng, "rng.generator": self.generator, EPOCH_RNG: self.epoch_rng}


def position_of(path: Path, saved: Checkpoint) -> Position | None:
    """The position a restored checkpoint holds (None for one written at an epoch's end)."""
    record = saved.state.get("position")
    if record is None:
        return None
    epoch_rng = saved.tensors.get(EPOCH_RNG)
    if epoch_rng is None:  # read_checkpoint refuses this; kept for a checkpoint built by hand
        raise EdgepruneError(f"{path}: checkpoint has a position but no {EPOCH_RNG} tensor")
    return Position(
        record["step"],
        float(record["loss_sum"]),
        record["correct"],
        record["seen"],
        float(record["seconds"]),
        epoch_rng,
        saved.tensors["rng.generator"],
        saved.tensors["rng.torch"],
    )


class Tracker:
    """One epoch's progress as the loop commits it, read back consistently when an interrupt stops the loop.

    ``stepper`` counts weight updates begun and finished (``begun``, ``applied``) and keeps the last batch's
    loss, correct count and size (``last``) before updating; :meth:`commit` stores all of a step's totals in one
    assignment.
    """

    def __init__(self, stepper: object, epoch_rng: torch.Tensor, resumed: Position | None = None) -> None:
        """Track the epoch whose generator state at its start was ``epoch_rng``, from ``resumed`` if given."""
        self.stepper = stepper
        self.epoch_rng = epoch_rng
        self.generator: torch.Generator = stepper.generator  # type: ignore[attr-defined]
        self.model: torch.nn.Module = stepper.model  # type: ignore[attr-defined]
        first = resumed or Position(0, 0.0, 0, 0, 0.0, epoch_rng, self.generator.get_state(), torch.get_rng_state())
        self.base = stepper.applied - first.done  # type: ignore[attr-defined]
        self.earlier = first.seconds
        self.t0 = time.perf_counter()
        loss_sum = torch.tensor(first.loss_sum, dtype=torch.float64)
        correct = torch.tensor(first.correct, dtype=torch.int64)
        self.totals = (first.done, loss_sum, correct, first.seen, first.generator, first.torch_rng, self._buffers())

    def commit(self, loss: torch.Tensor, correct: torch.Tensor, images: int) -> None:
        """Add a finished step (its mean loss, correct count and images) and the RNG states after it."""
        self.totals = self._after(self.totals, loss, correct, images)

    def _after(self, totals: tuple, loss: torch.Tensor, correct: torch.Tensor, images: int) -> tuple:
        """``totals`` with one more step."""
        done, loss_sum, right, seen = totals[:4]
        loss_sum = loss_sum + loss.cpu().double() * images
        rng = (self.generator.get_state(), torch.get_rng_state())
        return done + 1, loss_sum, right + correct.cpu(), seen + images, *rng, self._buffers()

    def _buffers(self) -> list[torch.Tensor]:
        """Copies of the model's buffers."""
        return [b.detach().clone() for b in self.model.buffers()]

    @property
    def seconds(self) -> float:
        """Training seconds in this epoch, across resumes."""
        return self.earlier + time.perf_counter() - self.t0

    def snapshot(self) -> Position | None:
        """The position to save after an interrupt, or None when it stopped a weight update half done."""
        totals, stepper = self.totals, self.stepper
        if stepper.begun != stepper.applied:  # type: ignore[attr-defined]
            return None
        pending = stepper.applied - self.base - totals[0]  # type: ignore[attr-defined]
        if pending == 1:  # the weights took a step the loop had not committed yet
            totals = self._after(totals, *stepper.last)  # type: ignore[attr-defined]
        elif pending != 0:
            return None
        done, loss_sum, right, seen, generator, torch_rng, buffers = totals
        totals_now = (done, float(loss_sum), int(right), seen, self.seconds)
        return Position(*totals_now, self.epoch_rng, generator, torch_rng, buffers)


def stop_position(ckpt: Path, stepper: object, state: dict, position: Position | None, steps: int) -> str:
    """After an interrupt in an epoch's steps: save ``position`` where it can be; say what was kept.

    ``state`` is the run's at the epoch's start (settings, ``epoch``, ``history``, ``train_seconds``); in a
    torchrun job nothing is saved (it resumes at epoch boundaries). The model takes the buffers of the position's
    last step first: its last consistent state.
    """
    epoch = state["epoch"] + 1
    if stepper.ranks.distributed:  # type: ignore[attr-defined]
        return f"stopped in epoch {epoch}: a torchrun job resumes at epoch boundaries, --resume starts it again"
    if position is None:
        return f"stopped while updating the weights in epoch {epoch}: the last checkpoint stays, --resume starts there"
    if position.done == 0:
        return f"stopped at the start of epoch {epoch}: --resume starts it again"
    model = stepper.model  # type: ignore[attr-defined]
    with torch.no_grad():
        for buffer, value in zip(model.buffers(), position.buffers or [], strict=position.buffers is not None):
            buffer.copy_(value)
    state = dict(state, step=state["epoch"] * steps + position.done, world_size=1, position=position.record())
    optimizer, generator = stepper.optimizer, stepper.generator  # type: ignore[attr-defined]
    save_checkpoint(ckpt, model, optimizer, generator, state, rng=position.rng())
    return f"stopped in epoch {epoch} after step {position.done} of {steps}: the position is saved in {ckpt}"


__all__ = ["EPOCH_RNG", "Position", "Tracker", "position_of", "stop_position"]
