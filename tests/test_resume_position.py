"""Resuming inside an epoch: an interrupted run saves its position, and the resumed run ends bit-identical."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import assert_one_line_error, small_model, synthetic
from safetensors import safe_open
from safetensors.torch import save_file

import edgeprune.files
import edgeprune.train.loop as loop
from edgeprune.data import ImageDataset
from edgeprune.train import CHECKPOINT_FILE, TrainConfig, train

CONFIG = TrainConfig(epochs=2, batch_size=8, seed=0)  # 32 images: 4 steps an epoch
STEPS = 4
TIMES = {"epoch_seconds", "eval_seconds", "train_seconds", "images_per_s", "load_1m", "cores"}


@pytest.fixture(scope="module")
def data() -> ImageDataset:
    """The tiny data set (augmented: crops and flips drawn per batch), shared."""
    return synthetic()


@pytest.fixture(scope="module")
def whole(data, tmp_path_factory) -> Path:
    """The output folder of an uninterrupted run."""
    out = tmp_path_factory.mktemp("whole")
    train(small_model(num_classes=2), data, CONFIG, out_dir=out, progress=False, threads=1)
    return out


def metrics(out: Path) -> list[dict]:
    """``metrics.jsonl`` without its time and load fields."""
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(s).items() if k not in TIMES} for s in lines]


def stop_at(monkeypatch, call: int, where: str) -> None:
    """Interrupt training at optimiser step ``call`` (1-based, over the run): before it, in its forward pass
    (batch drawn, BatchNorm statistics changed), after its update (before the loop counts it), or inside
    the optimiser's update."""
    count = {"n": 0}
    original_call, original_optimizer = loop.TrainStep.__call__, loop.make_optimizer

    def step(self, index, lr):
        count["n"] += 1
        if where == "forward" and count["n"] == call:
            self.model.register_forward_hook(lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        if where == "before" and count["n"] == call:
            raise KeyboardInterrupt
        result = original_call(self, index, lr)
        if where == "after" and count["n"] == call:
            raise KeyboardInterrupt
        return result

    def optimizer(model, config):
        made = original_optimizer(model, config)
        if where == "update":
            made.register_step_post_hook(lambda *_: count["n"] == call and (_ for _ in ()).throw(KeyboardInterrupt()))
        return made

    monkeypatch.setattr(loop.TrainStep, "__call__", step)
    monkeypatch.setattr(loop, "make_optimizer", optimizer)


def interrupted(data, out: Path, monkeypatch, capsys, call: int, where: str) -> str:
    """Run until the interrupt; return what the run said."""
    stop_at(monkeypatch, call, where)
    with pytest.raises(KeyboardInterrupt):
        train(small_model(num_classes=2), data, CONFIG, out_dir=out, progress=True, threads=1)
    monkeypatch.undo()
    return capsys.readouterr().err


def resumed(data, out: Path, capsys) -> str:
    """Resume the run in ``out`` (from other starting weights); return what it said."""
    train(small_model(seed=9, num_classes=2), data, CONFIG, out_dir=out, resume=True, progress=True, threads=1)
    return capsys.readouterr().err


def state_of(path: Path) -> dict:
    """A checkpoint's JSON state."""
    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["state"])


@pytest.mark.parametrize(
    ("call", "where", "epoch", "done"),
    [
        (3, "before", 1, 2),  # in the first epoch: no epoch-end checkpoint yet
        (7, "forward", 2, 2),  # its draws and BatchNorm statistics are put back
        (6, "after", 2, 2),  # its update was done: it counts
    ],
)
def test_interrupted_inside_an_epoch_resumes_to_the_same_bytes(
    data, whole, tmp_path, monkeypatch, capsys, call, where, epoch, done
):
    said = interrupted(data, tmp_path, monkeypatch, capsys, call, where)
    assert f"stopped in epoch {epoch} after step {done} of {STEPS}: the position is saved" in said
    state = state_of(tmp_path / CHECKPOINT_FILE)
    assert state["position"]["step"] == done and state["step"] == (epoch - 1) * STEPS + done
    said = resumed(data, tmp_path, capsys)
    assert f"resuming at epoch {epoch}/2, step {done} of {STEPS}" in said
    assert (tmp_path / "model.safetensors").read_bytes() == (whole / "model.safetensors").read_bytes()
    assert metrics(tmp_path) == metrics(whole)
    assert "position" not in state_of(tmp_path / CHECKPOINT_FILE)  # the end's checkpoint is an epoch's


@pytest.mark.parametrize(("call", "where", "said"), [(5, "before", "at the start of"), (6, "update", "while updating")])
def test_an_interrupt_with_no_position_keeps_the_epoch_checkpoint(
    data, whole, tmp_path, monkeypatch, capsys, call, where, said
):
    assert f"stopped {said}" in interrupted(data, tmp_path, monkeypatch, capsys, call, where)
    assert "position" not in state_of(tmp_path / CHECKPOINT_FILE)
    assert "resuming after epoch 1/2, at the start of epoch 2, from" in resumed(data, tmp_path, capsys)
    assert (tmp_path / "model.safetensors").read_bytes() == (whole / "model.safetensors").read_bytes()
    assert metrics(tmp_path) == metrics(whole)


def test_an_interrupt_in_the_first_step_writes_no_checkpoint(data, tmp_path, monkeypatch, capsys):
    assert "stopped at the start of epoch 1" in interrupted(data, tmp_path, monkeypatch, capsys, 1, "before")
    assert not (tmp_path / CHECKPOINT_FILE).exists()


@pytest.fixture(scope="module")
def saved(data, tmp_path_factory) -> bytes:
    """A checkpoint of a position: epoch 2, after its step 2."""
    out = tmp_path_factory.mktemp("saved")
    with pytest.MonkeyPatch.context() as patch:
        stop_at(patch, 7, "before")
        with pytest.raises(KeyboardInterrupt):
            train(small_model(num_classes=2), data, CONFIG, out_dir=out, progress=False, threads=1)
    return (out / CHECKPOINT_FILE).read_bytes()


def rewrite(path: Path, state: Callable[[dict], None], tensors: Callable[[dict], None] = lambda t: None) -> None:
    """Edit a checkpoint's state and tensors and give it matching checksums (as a buggy writer would)."""
    with safe_open(str(path), "pt") as f:
        data, metadata = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())
    meta = json.loads(metadata["state"])
    state(meta)
    tensors(data)
    metadata["state"] = json.dumps(meta)
    metadata["state_sha256"] = hashlib.sha256(metadata["state"].encode()).hexdigest()
    metadata["tensors_sha256"] = edgeprune.files.tensors_digest(data)
    save_file(data, str(path), metadata=metadata)


def beyond(state: dict) -> None:
    """Step 5 of an epoch of 4, the global step made to agree."""
    state["position"]["step"], state["step"], state["position"]["seen"] = 5, 9, 40


@pytest.mark.parametrize(
    ("state", "tensors", "message"),
    [
        (beyond, None, "step 5 of epoch 2"),
        (lambda s: s.update(step=7), None, "epoch 1, step 7"),
        (lambda s: s["position"].update(step=0), None, "'position' step"),
        (lambda s: s["position"].update(correct=99), None, "more correct outputs"),
        (lambda s: s["position"].update(loss_sum=float("nan")), None, "'position' loss_sum"),
        (lambda s: s.update(position=[2]), None, "'position' must be an object"),
        (lambda s: None, lambda t: t.pop("rng.epoch"), "without rng.epoch"),
        (lambda s: None, lambda t: t.update({"rng.epoch": torch.zeros(3, dtype=torch.uint8)}), "rng.epoch must be"),
    ],
)
def test_a_position_that_does_not_fit_is_refused_in_one_line(data, saved, tmp_path, state, tensors, message):
    path = tmp_path / CHECKPOINT_FILE
    path.write_bytes(saved)
    rewrite(path, state, tensors or (lambda t: None))
    before = path.read_bytes()
    assert_one_line_error(
        lambda: train(small_model(num_classes=2), data, CONFIG, out_dir=tmp_path, resume=True, progress=False),
        str(path),
        message,
    )
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_FILE]
