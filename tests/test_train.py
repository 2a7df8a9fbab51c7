"""Training: vectorised augmentation, schedules, determinism, checkpoints and resume, bad input."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_cli, small_model, synthetic
from safetensors import safe_open
from torch import nn

from edgeprune.data import ImageStore, Normalizer, check_compatible, load_dataset
from edgeprune.errors import EdgepruneError
from edgeprune.io import load, save
from edgeprune.train import (
    CHECKPOINT_FILE,
    Progress,
    TrainConfig,
    evaluate,
    lr_at,
    train,
)

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT / "data" / "cifar10-mini.tar.gz"


@pytest.fixture(scope="module")
def mini(shared_cache):
    """A few hundred real CIFAR-10 images from the shipped mini archive."""
    old = os.environ.get("EDGEPRUNE_CACHE")
    os.environ["EDGEPRUNE_CACHE"] = str(shared_cache)
    try:
        return load_dataset(MINI, limit_train=192, limit_test=64)
    finally:
        if old is None:
            os.environ.pop("EDGEPRUNE_CACHE")
        else:
            os.environ["EDGEPRUNE_CACHE"] = old


def quick(**kwargs):
    return TrainConfig(**{"epochs": 3, "batch_size": 32, "seed": 0, **kwargs})


def weights_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# -- augmentation and batches -----------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3, 4, 9])
def test_crop_flip_equals_a_window_of_the_padded_image(channels):
    pad = 2
    x = torch.randint(0, 256, (5, channels, 6, 7), dtype=torch.uint8)
    store = ImageStore(x)
    padded = np.pad(x.numpy(), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    index = torch.tensor([3, 0, 4, 4, 1])
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            for flip in (False, True):
                b = len(index)
                out = store.crop_flip(
                    index, torch.full((b,), dy), torch.full((b,), dx), torch.full((b,), flip), pad
                ).numpy()
                assert out.shape == (b, channels, 6, 7) and out.dtype == np.uint8
                for k, i in enumerate(index.tolist()):
                    window = padded[i, :, dy : dy + 6, dx : dx + 7]
                    assert np.array_equal(out[k], window[:, :, ::-1] if flip else window)


def test_mixed_offsets_in_one_batch_and_random_draws():
    x = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    store = ImageStore(x)
    index, dy, dx = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 8, 4, 3]), torch.tensor([8, 0, 4, 5])
    flip = torch.tensor([True, False, False, True])
    out = store.crop_flip(index, dy, dx, flip)
    padded = np.pad(x.numpy(), ((0, 0), (0, 0), (4, 4), (4, 4)))
    for k in range(4):
        window = padded[k, :, dy[k] : dy[k] + 5, dx[k] : dx[k] + 5]
        assert np.array_equal(out[k].numpy(), window[:, :, ::-1] if flip[k] else window)
    assert torch.equal(out[2], x[2])  # centre offset, no flip: the image itself
    a = store.random_crop_flip(index, torch.Generator().manual_seed(5))
    b = store.random_crop_flip(index, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert torch.equal(store.batch(torch.tensor([2, 0])), x[[2, 0]])


def test_normalizer_output_is_normalised_channels_last_float():
    x = torch.randint(0, 256, (3, 3, 4, 5), dtype=torch.uint8)
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.25, 0.3)
    out = Normalizer(mean, std)(x)
    expected = (x.double() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out.double(), expected, atol=1e-5)


def test_learning_rate_schedules():
    total, warm, peak = 100, 10, 0.1
    assert lr_at(0, total, warm, peak, "onecycle") == pytest.approx(0.01)
    assert lr_at(9, total, warm, peak, "onecycle") == pytest.approx(peak)
    assert lr_at(10, total, warm, peak, "cosine") == pytest.approx(peak)
    assert lr_at(99, total, warm, peak, "onecycle") < 0.002
    assert lr_at(99, total, warm, peak, "cosine") < 0.001
    assert lr_at(55, total, warm, peak, "constant") == peak
    values = [lr_at(s, total, warm, peak, "onecycle") for s in range(total)]
    assert values.index(max(values)) in (9, 10) and all(a >= b for a, b in zip(values[10:], values[11:]))


# -- training -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_training_is_deterministic_learns_and_writes_records(mini, tmp_path):
    a, b, c = small_model(), small_model(), small_model()
    ra = train(a, mini, quick(), out_dir=tmp_path / "a", progress=False, threads=1)
    rb = train(b, mini, quick(), progress=False, threads=1)
    train(c, mini, quick(seed=1), progress=False, threads=1)
    assert weights_equal(a, b) and not weights_equal(a, c)
    assert ra.test_accuracy == rb.test_accuracy == ra.history[-1]["test_acc"]
    assert ra.history[-1]["loss"] < ra.history[0]["loss"]  # it learns
    assert 0 <= ra.test_accuracy <= 1 and ra.train_seconds > 0
    lines = [json.loads(s) for s in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3]
    assert set(lines[0]) >= {"epoch", "loss", "train_acc", "test_acc", "epoch_seconds", "train_seconds", "lr"}
    assert lines[-1]["train_seconds"] == pytest.approx(sum(r["epoch_seconds"] for r in lines), abs=0.01)
    saved = load(tmp_path / "a")  # trained weights next to the spec, loadable without pickle
    assert weights_equal(saved, a)
    summary = json.loads((tmp_path / "a" / "train.json").read_text())
    assert summary["test_accuracy"] == ra.test_accuracy and len(summary["normalize"]["mean"]) == 3
    assert evaluate(saved, mini) == pytest.approx(ra.test_accuracy)


def test_checkpoint_is_safetensors_with_json_state(mini, tmp_path):
    train(small_model(), mini, quick(epochs=1), out_dir=tmp_path, progress=False, threads=1)
    path = tmp_path / CHECKPOINT_FILE
    assert path.read_bytes()[:8] != b"\x80\x04\x95"  # not a pickle
    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
        state = json.loads(f.metadata()["state"])
    assert {"rng.torch", "rng.generator"} <= keys and any(k.startswith("optim.") for k in keys)
    assert state["epoch"] == 1 and state["step"] == 6 and len(state["history"]) == 1
    assert state["config"]["seed"] == 0


class Stop(Exception):
    pass


@pytest.mark.slow
@pytest.mark.parametrize(("optimizer", "precision"), [("sgd", "fp32"), ("rmsprop", "bf16")])
def test_interrupted_and_resumed_run_equals_uninterrupted(mini, tmp_path, optimizer, precision):
    config = quick(optimizer=optimizer, precision=precision)
    whole = small_model()
    train(whole, mini, config, out_dir=tmp_path / "whole", progress=False, threads=1)

    def interrupt_after_first(record):
        if record["epoch"] == 1:
            raise KeyboardInterrupt

    part = small_model()
    with pytest.raises(KeyboardInterrupt):
        train(part, mini, config, out_dir=tmp_path / "part", progress=False, threads=1, callback=interrupt_after_first)
    resumed = small_model(seed=99)  # different starting weights: all state comes from the checkpoint
    result = train(resumed, mini, config, out_dir=tmp_path / "part", resume=True, progress=False, threads=1)
    assert weights_equal(whole, resumed)
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    lines = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(s)["epoch"] for s in lines] == [1, 2, 3]  # no epoch lost or repeated
    assert result.train_seconds == pytest.approx(sum(r["epoch_seconds"] for r in result.history), abs=0.01)


@pytest.mark.slow
@pytest.mark.e2e
def test_killed_process_resumes_to_the_same_weights(mini, tmp_path, shared_cache):
    """SIGKILL a training process after its first checkpoint, resume here: same weights as in one go."""
    config = quick(epochs=4)
    script = (
        "import sys, torch, edgeprune\n"
        "from edgeprune.data import load_dataset\n"
        "from edgeprune.train import TrainConfig, train\n"
        f"d = load_dataset({str(MINI)!r}, limit_train=192, limit_test=64)\n"
        "torch.manual_seed(0)\n"
        "m = edgeprune.create('tiny', channels=4)\n"
        "def slow(r):\n"
        "    import time; time.sleep(30)\n"  # after each checkpoint: plenty of time to be killed
        f"train(m, d, TrainConfig(epochs=4, batch_size=32, seed=0), out_dir={str(tmp_path / 'run')!r},"
        " progress=False, threads=1, callback=slow)\n"
    )
    env = dict(os.environ, EDGEPRUNE_CACHE=str(shared_cache))
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE)
    ckpt = tmp_path / "run" / CHECKPOINT_FILE
    deadline = time.monotonic() + 60
    try:
        while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ckpt.exists(), proc.stderr.read().decode() if proc.poll() is not None else "no checkpoint"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    resumed = small_model(seed=5)
    result = train(resumed, mini, config, out_dir=tmp_path / "run", resume=True, progress=False, threads=1)
    whole = small_model()
    train(whole, mini, config, progress=False, threads=1)
    assert weights_equal(whole, resumed)
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4]


def test_resume_refuses_other_settings_and_needs_an_out_dir(mini, tmp_path):
    train(small_model(), mini, quick(epochs=1), out_dir=tmp_path, progress=False, threads=1)
    with pytest.raises(EdgepruneError, match="different config.*lr: was None, now 0.01"):  # more epochs: extended
        train(small_model(), mini, quick(epochs=2, lr=0.01), out_dir=tmp_path, resume=True, progress=False, threads=1)
    with pytest.raises(EdgepruneError, match="needs the output folder"):
        train(small_model(), mini, quick(), resume=True, progress=False, threads=1)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(mini, tmp_path):
    model = small_model()

    def poison(record):
        with torch.no_grad():
            model.head.weight.fill_(float("nan"))

    with pytest.raises(EdgepruneError, match=r"loss became nan at epoch 2, step 1.*checkpoint \(epoch 1\) is kept"):
        train(model, mini, quick(), out_dir=tmp_path, progress=False, threads=1, callback=poison)
    with safe_open(str(tmp_path / CHECKPOINT_FILE), "pt") as f:
        assert json.loads(f.metadata()["state"])["epoch"] == 1
        assert all(torch.isfinite(f.get_tensor(k)).all() for k in f.keys() if k.startswith("model."))


def test_model_must_fit_the_data():
    with pytest.raises(EdgepruneError, match="takes 3-channel images.*has 1-channel"):
        check_compatible(small_model(), synthetic(n=16, c=1))
    with pytest.raises(EdgepruneError, match=r"\(10,\) outputs.*has 2 classes"):
        check_compatible(small_model(), synthetic(n=16))
    flat = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 30 * 30, 2))
    with pytest.raises(EdgepruneError, match="cannot take the data set's 3x8x8 images"):
        check_compatible(flat, synthetic(n=16))
    check_compatible(small_model(num_classes=2), synthetic(n=16))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"epochs": 0}, "epochs must be a positive integer, got 0"),
        ({"epochs": -2}, "epochs must be a positive integer"),
        ({"epochs": 1.5}, "epochs must be a positive integer"),
        ({"optimizer": "adam"}, "unknown optimizer 'adam'"),
        ({"schedule": "step"}, "unknown schedule"),
        ({"precision": "fp16"}, "unknown precision 'fp16'"),
        ({"lr": -1.0}, "lr must be a positive number"),
        ({"label_smoothing": 1.0}, "label smoothing must be in"),
    ],
)
def test_bad_config(changes, message):
    with pytest.raises(EdgepruneError, match=message):
        TrainConfig(**{"epochs": 1, **changes}).validate()


# -- command line -------------------------------------------------------------------------------


@pytest.fixture
def model_dir(tmp_path):
    path = tmp_path / "pruned"
    save(small_model(), path)
    return path


def test_cli_trains_a_model_folder_in_place(model_dir, capsys):
    code, out, err = run_cli(
        capsys, "train", model_dir, "--data", MINI, "--epochs", 1, "--limit-train", 128, "--limit-test", 50,
        "--batch-size", 32, "--quiet", "--threads", 1,
    )  # fmt: skip
    assert code == 0, err
    assert "cifar10-mini: 128 train / 50 test images" in out
    assert "test accuracy" in out.splitlines()[-1] and str(model_dir) in out
    assert (model_dir / CHECKPOINT_FILE).is_file() and (model_dir / "metrics.jsonl").is_file()
    assert load(model_dir) is not None


def test_cli_zoo_model_needs_out_and_resume_finishes(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "tiny", "--data", MINI, "--epochs", 1)
    assert code == 2 and err.strip() == "edgeprune train: error: --out is required when training a zoo model by name"
    code, out, err = run_cli(
        capsys, "train", "tiny", "--data", MINI, "--epochs", 1, "--limit-train", 64, "--limit-test", 20,
        "--batch-size", 64, "--out", tmp_path / "r", "--quiet", "--threads", 1,
    )  # fmt: skip
    assert code == 0, err
    code, out, err = run_cli(
        capsys, "train", "tiny", "--data", MINI, "--epochs", 1, "--limit-train", 64, "--limit-test", 20,
        "--batch-size", 64, "--out", tmp_path / "r", "--quiet", "--threads", 1, "--resume",
    )  # fmt: skip
    assert code == 0 and "after 1 epoch (" in out  # nothing left to do, same result


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--epochs", "abc"], "--epochs must be an integer, got 'abc'"),
        (["--epochs", "-1"], "--epochs must be at least 1, got '-1'"),
        (["--epochs", "2", "--batch-size", "0"], "--batch-size must be at least 1"),
        (["--epochs", "1", "--lr", "fast"], "--lr must be a number, got 'fast'"),
        (["--epochs", "1", "--optimizer", "adam"], "unknown optimizer 'adam'"),
    ],
)
def test_cli_bad_numbers(model_dir, capsys, args, message):
    code, _, err = run_cli(capsys, "train", model_dir, "--data", MINI, *args)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("edgeprune train: error: ") and message in err


def test_cli_missing_data_and_wrong_shapes(model_dir, tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", model_dir, "--data", tmp_path / "nope", "--epochs", 1)
    assert code == 2 and err.startswith("edgeprune train: error: ") and "nope: no such data set" in err
    from PIL import Image

    for split in ("train", "test"):
        for cls in ("a", "b"):
            (tmp_path / "gray" / split / cls).mkdir(parents=True)
            Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "gray" / split / cls / "x.png")
    code, _, err = run_cli(capsys, "train", model_dir, "--data", tmp_path / "gray", "--epochs", 1, "--quiet")
    assert code == 2 and err.count("\n") == 1
    assert "was built for 3x32x32 images, the data set 'gray' has 1x32x32 images" in err
    code, _, err = run_cli(capsys, "train", "nosuchnet", "--data", MINI, "--epochs", 1, "--out", tmp_path / "o")
    assert code == 2 and "unknown model 'nosuchnet'" in err


def test_progress_in_a_log_prints_a_line_per_interval_and_the_final_one():
    clock = iter([0.0, 10.0, 59.0, 61.0, 100.0, 120.0, 131.0]).__next__
    log = io.StringIO()  # not a terminal
    bar = Progress(True, stream=log, log_interval=60.0, clock=clock)  # starts its clock at 0
    for done in range(1, 6):  # at t = 10, 59, 61, 100, 120
        bar.update("epoch 1/1", done, 6, f"step {done}")
    bar.update("epoch 1/1", 6, 6, "done", final=True)  # t = 131: the final line always prints
    lines = log.getvalue().splitlines()
    assert [line.split()[-1] for line in lines] == ["3", "done"]  # t = 61 (60 s after 0), then the end
    assert "\r" not in log.getvalue() and lines[0].startswith("epoch 1/1 [") and "3/6" in lines[0]
    quiet = io.StringIO()
    Progress(False, stream=quiet).update("e", 1, 1, "x", final=True)
    assert quiet.getvalue() == ""
