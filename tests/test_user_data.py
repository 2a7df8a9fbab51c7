"""Training on the user's own torch Dataset or DataLoader: checkpoints, resume, metrics and bad batches."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import small_model
from torch.utils.data import DataLoader, Dataset, TensorDataset

import edgeprune.train
from edgeprune.errors import EdgepruneError
from edgeprune.io import load
from edgeprune.train import TrainConfig
from edgeprune.train.source import EPOCH_NOTE

CLASSES = 3


def tensors(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Float images whose brightness says their class (learnable), normalised around 0."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    x = torch.rand(n, 3, 8, 8, generator=g) + y.view(-1, 1, 1, 1).float()
    return (x - 1.5) / 1.0, y


class Bright(Dataset):
    """A plain torch Dataset subclass with its own transform (a horizontal flip of every other image)."""

    def __init__(self, n: int, seed: int):
        self.x, self.y = tensors(n, seed)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.x[i].flip(-1) if i % 2 else self.x[i]
        return image, self.y[i]


def make(kind: str):
    if kind == "dataset":
        return Bright(48, 0), Bright(24, 1)
    x, y = tensors(48, 0)
    tx, ty = tensors(24, 1)
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True), DataLoader(TensorDataset(tx, ty), 16)


def config(epochs: int = 3) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=16, seed=0, lr=0.02)


def numbers(history: list[dict]) -> list[tuple]:
    return [(r["epoch"], r["loss"], r["train_acc"], r["test_acc"], r["lr"]) for r in history]


@pytest.mark.parametrize("kind", ["dataset", "dataloader"])
def test_resumed_run_equals_an_uninterrupted_one(kind, tmp_path, capsys):
    train_data, test_data = make(kind)
    whole = small_model(num_classes=CLASSES)
    full = edgeprune.train(whole, train_data, test_data, config(), tmp_path / "full", progress=False, log=["csv"])

    def stop(record):
        if record["epoch"] == 1:
            raise KeyboardInterrupt

    part = small_model(num_classes=CLASSES)
    train_data, test_data = make(kind)
    with pytest.raises(KeyboardInterrupt):
        edgeprune.train(part, train_data, test_data, config(), tmp_path / "part", progress=False, callback=stop)
    capsys.readouterr()
    again = small_model(num_classes=CLASSES, seed=5)  # other initial weights: the checkpoint's replace them
    train_data, test_data = make(kind)
    resumed = edgeprune.train(again, train_data, test_data, config(), tmp_path / "part", resume=True)
    err = capsys.readouterr().err
    assert (err.count(EPOCH_NOTE) == 1) == (kind == "dataloader")
    assert numbers(resumed.history) == numbers(full.history)
    sa, sb = whole.state_dict(), again.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    metrics = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert numbers(metrics) == numbers(full.history)
    assert len((tmp_path / "full" / "metrics.csv").read_text().splitlines()) == 1 + 3
    summary = json.loads((tmp_path / "full" / "train.json").read_text())
    assert summary["epochs"] == 3 and summary["config"]["lr"] == 0.02 and summary["config"]["augment"] == "none"
    saved = load(tmp_path / "full").eval()  # the saved model's accuracy, computed here
    x, y = tensors(24, 1)
    if kind == "dataset":
        x = torch.stack([x[i].flip(-1) if i % 2 else x[i] for i in range(len(x))])
    with torch.inference_mode():
        assert (saved(x).argmax(1) == y).float().mean().item() == pytest.approx(full.test_accuracy)


def test_user_data_learns_and_bad_batches_are_one_line_errors(tmp_path):
    model = small_model(num_classes=CLASSES)
    result = edgeprune.train(model, *make("dataset"), TrainConfig(epochs=4, batch_size=8, lr=0.05), progress=False)
    assert result.history[-1]["test_acc"] > 1 / CLASSES + 0.2  # brightness is learnable
    x, y = tensors(16, 0)
    uint8 = TensorDataset((x * 50).clamp(0, 255).to(torch.uint8), y)
    for data, message in [
        (uint8, "images must be a float"),
        (TensorDataset(x, y.float()), "labels must be an integer"),
        ([1, 2, 3], "expected a torch Dataset"),
    ]:
        with pytest.raises(EdgepruneError, match=message) as e:
            edgeprune.train(small_model(num_classes=CLASSES), data, TensorDataset(x, y), config(1), progress=False)
        assert "\n" not in str(e.value)
    with pytest.raises(EdgepruneError, match="needs test data"):
        edgeprune.train(small_model(num_classes=CLASSES), TensorDataset(x, y), None, config(1))
