"""torch.distributed for a torchrun job: joining its process group, per-rank seeds, and what rank 0 shares."""

from __future__ import annotations

import hashlib

import torch
import torch.distributed as dist
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.runtime import Ranks


def start_group(ranks: Ranks, device: torch.device) -> bool:
    """Join the torchrun job's process group (nccl on CUDA, gloo otherwise); True when this call created it."""
    if not ranks.distributed or (dist.is_available() and dist.is_initialized()):
        return False
    if not dist.is_available():
        raise EdgepruneError("this torch build has no torch.distributed: train in one process")
    if device.type == "mps":
        raise EdgepruneError("multi-process training runs on cpu or cuda devices, not mps")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    return True


def seed_epoch(device: torch.device, seed: int, rank: int, epoch: int) -> None:
    """Seed the dropout streams no checkpoint holds from (seed, rank, epoch), so that a resumed run repeats them.

    Rank 0's CPU stream is the checkpoint's ``rng.torch`` and just continues: a single CPU process is unchanged.
    """
    digest = hashlib.sha256(f"edgeprune:{seed}:{rank}:{epoch}".encode()).digest()
    derived = int.from_bytes(digest[:8], "little") >> 1
    if rank > 0:
        torch.default_generator.manual_seed(derived)
    if device.type == "cuda":
        torch.cuda.manual_seed(derived)
    elif device.type == "mps":
        torch.mps.manual_seed(derived)


def share_object(obj: object) -> object:
    """Rank 0's ``obj`` in every process (pickled by torch.distributed, between the job's own processes)."""
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sync_buffers(model: nn.Module) -> None:
    """Give every process rank 0's buffers (BatchNorm statistics), which each process updated on its own share."""
    for buffer in model.buffers():
        flat = buffer if buffer.is_contiguous() else buffer.contiguous()
        dist.broadcast(flat, src=0)
        if flat is not buffer:
            buffer.copy_(flat)


def state_on_cpu(state: dict) -> dict:
    """An optimiser ``state_dict`` with its tensors on the CPU, to send to the other processes."""
    moved = {
        i: {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in e.items()} for i, e in state["state"].items()
    }
    return {"state": moved, "param_groups": state["param_groups"]}


__all__ = ["seed_epoch", "share_object", "start_group", "state_on_cpu", "sync_buffers"]
