"""Runtime facts of this process: the device a run uses, the cores it may use, and its place in a torchrun job.

A leaf module: it imports nothing of edgeprune but ``errors``, and torch only inside :func:`resolve_device`,
so that the thread count and the ranks are there without it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgeprune.errors import EdgepruneError

if TYPE_CHECKING:
    import torch
    from torch import nn

DEVICES = ("auto", "cpu", "cuda", "mps")


def default_threads() -> int:
    """All the cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# -- devices ----------------------------------------------------------------------------------


def _mps_available() -> bool:
    """Whether Apple's Metal (MPS) device can be used."""
    import torch

    backend = getattr(torch.backends, "mps", None)
    return backend is not None and backend.is_available()


def resolve_device(device: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` (CUDA, else MPS, else CPU), ``cpu``, ``cuda`` (GPU ``local_rank``) or ``mps``; an error if absent."""
    import torch

    if isinstance(device, torch.device):
        index = device.index if device.index is not None else local_rank
        name = device.type
    else:
        index, name = local_rank, device
    if name not in DEVICES:
        raise EdgepruneError(f"unknown device {str(name)[:40]!r}; choose from: {', '.join(DEVICES)}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise EdgepruneError("device cuda is not available (no CUDA GPU, or a torch build without CUDA)")
        if index >= torch.cuda.device_count():
            raise EdgepruneError(f"device cuda:{index} is not available: {torch.cuda.device_count()} GPU(s)")
        return torch.device("cuda", index)
    if name == "mps" and not _mps_available():
        raise EdgepruneError("device mps is not available (Apple silicon and a torch build with MPS needed)")
    return torch.device(name)


def device_of(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (the CPU for a model without either)."""
    first = next(iter(model.parameters()), None)
    first = first if first is not None else next(iter(model.buffers()), None)
    if first is not None:
        return first.device
    import torch

    return torch.device("cpu")


# -- processes --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ranks:
    """This process's place in a torchrun job; the defaults are a single process."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world > 1

    @property
    def main(self) -> bool:
        """The process that writes files and shows progress: rank 0."""
        return self.rank == 0

    def part(self, n: int) -> slice:
        """This process's contiguous share of ``n`` items; shares differ in size by at most one."""
        return slice(n * self.rank // self.world, n * (self.rank + 1) // self.world)


def _env_int(env: Mapping[str, str], key: str, default: int) -> int:
    """An integer environment variable; ``default`` when it is unset or empty."""
    text = env.get(key, "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise EdgepruneError(f"environment variable {key} must be an integer, got {text[:40]!r}") from None


def process_ranks(environ: Mapping[str, str] | None = None) -> Ranks:
    """The ranks torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE); one process when they are unset."""
    env = os.environ if environ is None else environ
    keys = (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0), ("LOCAL_WORLD_SIZE", 1))
    ranks = Ranks(*(_env_int(env, key, default) for key, default in keys))
    if ranks.world < 1 or not 0 <= ranks.rank < ranks.world or ranks.local_rank < 0 or ranks.local_world < 1:
        raise EdgepruneError(
            f"inconsistent process environment: RANK={ranks.rank} WORLD_SIZE={ranks.world} "
            f"LOCAL_RANK={ranks.local_rank} LOCAL_WORLD_SIZE={ranks.local_world}"
        )
    return ranks


__all__ = ["DEVICES", "Ranks", "default_threads", "device_of", "process_ranks", "resolve_device"]
