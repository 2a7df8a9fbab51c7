"""Several processes (torchrun, DistributedDataParallel on gloo) and devices: sharding, rank 0's files, resume."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import small_model, synthetic
from safetensors import safe_open
from safetensors.torch import save_file

import edgeprune.runtime as train_module
from edgeprune.cli import main
from edgeprune.data import ImageStore
from edgeprune.errors import EdgepruneError
from edgeprune.files import tensors_digest
from edgeprune.io import load
from edgeprune.runtime import Ranks, process_ranks, resolve_device
from edgeprune.train import (
    CHECKPOINT_FILE,
    TrainConfig,
    read_checkpoint,
    train,
)

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT / "data" / "cifar10-mini.tar.gz"
TRAIN_ARGS = [
    "train", "tiny", "--model-args", '{"channels": 4}', "--data", str(MINI), "--limit-train", "128",
    "--limit-test", "64", "--epochs", "2", "--batch-size", "31", "--threads", "1", "--device", "cpu", "--quiet",
]  # fmt: skip  # 31 images a step: shares of 15 and 16, so the uneven weighting is exercised too
LOUD_ARGS = [a for a in TRAIN_ARGS if a != "--quiet"]  # progress on: "resuming ..." is a progress line

# Run under torchrun: edgeprune's CLI, with each rank's weights digested after every epoch (and the epoch-1
# checkpoint kept), through a wrapper of edgeprune.train.train, which cmd_train imports when it runs.
WORKER = """
import hashlib, json, os, shutil, sys
from pathlib import Path
import edgeprune.train as T
from edgeprune.cli import main

def digest(model):
    h = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()

real = T.train

def train(model, data, config, out_dir=None, *args, **kwargs):
    rank = os.environ["RANK"]
    def record(metrics):
        with open(Path(os.environ["DIGESTS"]) / f"rank{rank}.jsonl", "a") as f:
            f.write(json.dumps({"epoch": metrics["epoch"], "digest": digest(model)}) + "\\n")
        if rank == "0" and metrics["epoch"] == 1:
            shutil.copy(Path(out_dir) / "checkpoint.safetensors", os.environ["KEEP"])
    return real(model, data, config, out_dir, *args, callback=record, **kwargs)

T.train = train
raise SystemExit(main(sys.argv[1:]))
"""


def weights_digest(model: torch.nn.Module) -> str:
    """The worker's digest of a model's state_dict."""
    h = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --nproc-per-node 2 ARGV`` on a free port, one thread per process."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    launcher += ["--master-addr", "127.0.0.1", "--master-port", str(free_port())]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [*launcher, *argv], env=full_env, capture_output=True, text=True, timeout=240, cwd=ROOT, check=False
    )


def metrics(folder: Path) -> list[dict]:
    """The records of metrics.jsonl."""
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


# -- two processes, end to end -----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_train_alike_resume_under_torchrun_and_in_one_process(tmp_path, capsys):
    """2 gloo processes: same weights in both, rank 0's files, loss falls; resume under torchrun and alone."""
    worker, digests, kept = tmp_path / "worker.py", tmp_path / "digests", tmp_path / "epoch1.safetensors"
    worker.write_text(WORKER)
    digests.mkdir()
    whole = tmp_path / "whole"
    done = torchrun(str(worker), *TRAIN_ARGS, "--out", str(whole), env={"DIGESTS": str(digests), "KEEP": str(kept)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count(" after 2 epochs (") == 1 and done.stdout.count("cifar10-mini: 128 train") == 1  # rank 0
    ranks = [[json.loads(line) for line in (digests / f"rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    assert [r["epoch"] for r in ranks[0]] == [1, 2] and ranks[0] == ranks[1]  # every epoch, the same weights
    assert weights_digest(load(whole)) == ranks[0][-1]["digest"]  # rank 0 saved what every rank holds
    history = metrics(whole)
    assert len(history) == 2 and history[1]["loss"] < history[0]["loss"]
    saved = read_checkpoint(whole / CHECKPOINT_FILE)
    assert saved.verified and saved.state["world_size"] == 2 and saved.state["epoch"] == 2
    assert json.loads((whole / "train.json").read_text())["processes"] == 2
    assert sorted(p.name for p in whole.iterdir() if p.name != ".edgeprune-manifest.json") == [
        "checkpoint.safetensors", "metrics.jsonl", "model.json", "model.safetensors", "train.json"
    ]  # fmt: skip

    # Resume under torchrun, plain `-m edgeprune`, from the epoch-1 checkpoint: the same weights as in one go.
    part = tmp_path / "part"
    part.mkdir()
    shutil.copy(kept, part / CHECKPOINT_FILE)
    resumed = torchrun("-m", "edgeprune", *LOUD_ARGS, "--out", str(part), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stderr.count("resuming after epoch 1/2") == 1 and "process(es)" not in resumed.stderr
    assert weights_digest(load(part)) == ranks[0][-1]["digest"]
    assert metrics(part)[0] == history[0]

    # Resume the same checkpoint in one process: allowed, and said.
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(kept, alone / CHECKPOINT_FILE)
    assert main([*LOUD_ARGS, "--out", str(alone), "--resume"]) == 0
    out = capsys.readouterr()
    assert "resuming after epoch 1/2" in out.err
    assert "written by 2 process(es), this run has 1" in out.err
    assert "after 2 epochs" in out.out
    assert read_checkpoint(alone / CHECKPOINT_FILE).state["world_size"] == 1
    assert metrics(alone)[0] == history[0] and len(metrics(alone)) == 2


# -- sharding and ranks ------------------------------------------------------------------------


def test_process_ranks_come_from_torchrun_s_environment():
    assert process_ranks({}) == Ranks(0, 1, 0, 1)
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    ranks = process_ranks(env)
    assert ranks == Ranks(3, 4, 1, 2) and ranks.distributed and not ranks.main
    for bad, message in [
        ({"WORLD_SIZE": "two"}, "WORLD_SIZE must be an integer"),
        ({"RANK": "2", "WORLD_SIZE": "2"}, "inconsistent process environment: RANK=2 WORLD_SIZE=2"),
        ({"WORLD_SIZE": "0"}, "inconsistent"),
    ]:
        with pytest.raises(EdgepruneError, match=message):
            process_ranks(bad)


@pytest.mark.parametrize(("n", "world"), [(128, 2), (31, 2), (7, 3), (5, 5), (64, 1)])
def test_shares_of_a_batch_cover_it_once_and_differ_by_at_most_one(n, world):
    parts = [Ranks(r, world).part(n) for r in range(world)]
    items = [i for p in parts for i in range(n)[p]]
    assert items == list(range(n))
    sizes = [len(range(n)[p]) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_each_share_of_an_augmented_batch_is_that_slice_of_the_whole_batch():
    """Every process draws crops and flips for the whole batch: the shares add up to the one-process batch."""
    x = torch.randint(0, 256, (20, 3, 6, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    store, index = ImageStore(x), torch.tensor([4, 9, 1, 17, 0, 3, 12])
    generator = torch.Generator().manual_seed(3)
    whole = store.random_crop_flip(index, generator)
    for world in (2, 3):
        shares = []
        for rank in range(world):
            g = torch.Generator().manual_seed(3)
            shares.append(store.random_crop_flip(index, g, part=Ranks(rank, world).part(len(index))))
            assert torch.equal(g.get_state(), generator.get_state())  # every process's stream stays in step
        assert torch.equal(torch.cat(shares), whole)


def test_a_checkpoint_with_a_bad_world_size_is_refused(tmp_path):
    data = synthetic()
    train(
        small_model(num_classes=2),
        data,
        TrainConfig(epochs=1, batch_size=8),
        out_dir=tmp_path,
        progress=False,
        threads=1,
    )
    path = tmp_path / CHECKPOINT_FILE
    with safe_open(str(path), "pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())
    state = json.loads(metadata["state"])
    assert state["world_size"] == 1
    state["world_size"] = "2"
    metadata["state"] = text = json.dumps(state)
    metadata["state_sha256"] = hashlib.sha256(text.encode()).hexdigest()
    metadata["tensors_sha256"] = tensors_digest(tensors)
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(EdgepruneError, match="checkpoint 'world_size' must be a positive integer, got '2'"):
        read_checkpoint(path)


# -- devices -----------------------------------------------------------------------------------


@pytest.fixture
def no_accelerator(monkeypatch):
    """A machine without CUDA or MPS, whatever this one has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(train_module, "_mps_available", lambda: False)


def test_devices_resolve_auto_to_the_cpu_without_an_accelerator(no_accelerator):
    assert resolve_device("auto") == torch.device("cpu") == resolve_device("cpu")
    for name, message in [
        ("cuda", "device cuda is not available"),
        ("mps", "device mps is not available"),
        ("tpu", "unknown device 'tpu'; choose from: auto, cpu, cuda, mps"),
    ]:
        with pytest.raises(EdgepruneError, match=message):
            resolve_device(name)


def test_cli_device_that_is_not_there_is_one_line_before_the_data_loads(no_accelerator, tmp_path, capsys):
    missing = tmp_path / "no-such-data"
    for device, message in [("cuda", "device cuda is not available"), ("gpu", "unknown device 'gpu'")]:
        code = main(["train", "tiny", "--data", str(missing), "--epochs", "1", "--out", str(tmp_path / device),
                     "--device", device])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and err.startswith(f"edgeprune train: error: {message}")
        assert not (tmp_path / device).exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_augmentation_equals_the_cpu_s_and_a_cuda_run_resumes_on_the_cpu(tmp_path):
    x = torch.randint(0, 256, (20, 3, 6, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    index = torch.tensor([4, 9, 1, 17, 0, 3, 12])
    on_cpu = ImageStore(x).random_crop_flip(index, torch.Generator().manual_seed(3))
    on_gpu = ImageStore(x.cuda()).random_crop_flip(index, torch.Generator().manual_seed(3))
    assert on_gpu.is_cuda and torch.equal(on_gpu.cpu(), on_cpu)

    data, config = synthetic(n=64), TrainConfig(epochs=2, batch_size=16, seed=0)
    with pytest.raises(KeyboardInterrupt):
        train(
            small_model(num_classes=2),
            data,
            config,
            out_dir=tmp_path / "a",
            progress=False,
            device="cuda",
            callback=stop_at_1,
        )
    result = train(
        small_model(seed=4, num_classes=2), data, config, out_dir=tmp_path / "a", resume=True, progress=False
    )
    assert len(result.history) == 2 and json.loads((tmp_path / "a" / "train.json").read_text())["device"] == "cpu"
    model = small_model(num_classes=2)
    result = train(model, data, TrainConfig(epochs=1, batch_size=16), out_dir=tmp_path / "b", device="cuda")
    assert next(model.parameters()).device.type == "cpu"  # back where it came from
    assert json.loads((tmp_path / "b" / "train.json").read_text())["device"] == "cuda"
    assert torch.isfinite(torch.tensor(result.history[0]["loss"]))


def stop_at_1(record: dict) -> None:
    """A training callback that interrupts the run after its first epoch."""
    if record["epoch"] == 1:
        raise KeyboardInterrupt
