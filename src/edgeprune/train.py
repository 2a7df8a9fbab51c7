"""Fast, resumable CPU training of a (pruned) model on an in-memory image data set.

The whole training split stays in memory as uint8, stored channels-last (NHWC). Each step draws a
batch of indices from a seeded ``torch.Generator``; one gather reads the batch with a random
4-pixel-padded crop and horizontal flip already applied (index arithmetic, no per-image loop), the
result is converted to float and normalised on the fly, already in channels-last layout, which is
what the model is converted to as well. The optimiser is SGD with Nesterov momentum (or RMSprop,
lr 1e-3, as in the paper) with a per-step learning-rate schedule: linear warm-up, then linear
("onecycle"), cosine, or no ("constant") decay. The loss uses label smoothing.

After every epoch the test split is evaluated and, when an output folder is given, a checkpoint is
written atomically as one safetensors file: model and optimiser tensors plus both RNG states as
tensors, everything else (epoch, step, history, config) as JSON in its metadata; no pickle. The
metadata also holds SHA-256 checksums of the tensors and of the JSON state; resuming verifies them and
the state's schema before it changes or writes anything (a corrupt checkpoint is a one-line error), then
restores all of it, so an interrupted and resumed run ends with exactly the weights of an
uninterrupted one. ``metrics.jsonl`` gets one line per epoch, ``train.json`` the final summary
(including the normalisation the model expects), and the trained weights are saved with
:func:`edgeprune.io.save` as ``model.json`` + ``model.safetensors``.

Devices: ``train(..., device=...)`` runs on ``cpu`` (the default), ``cuda``, ``mps`` or ``auto`` (CUDA, else
MPS, else the CPU). The uint8 images go to the device once and crops, flips and normalisation run there; every
random draw still comes from the CPU generator, so the data order and augmentation do not depend on the device,
and on the CPU nothing changes.

Processes: launched by ``torchrun`` (RANK, WORLD_SIZE, LOCAL_RANK set; WORLD_SIZE > 1), ``train`` joins the job's
process group (nccl on CUDA, gloo otherwise) and trains with DistributedDataParallel. ``batch_size`` stays the
global batch: every process draws the same permutation and the same crop and flip parameters for the whole batch
and takes its contiguous share (:meth:`Ranks.part`), so images, order and augmentation are those of a
one-process run, and the generator state is the same in every process. Gradients are averaged (weighted by
share when the batch does not divide evenly); BatchNorm normalises each share on its own, and rank 0's running
statistics are given to all at every epoch end. Rank 0 alone writes the checkpoint (the unwrapped model's
weights, its RNG states, the world size), the metrics and the final model, and on resume verifies and restores
the checkpoint and sends the optimiser and generator state to the others (over the job's own process group).
A checkpoint resumes with any number of processes; a change is said.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from edgeprune.data import ImageDataset
from edgeprune.errors import EdgepruneError
from edgeprune.files import atomic_write, tensors_digest, write_json
from edgeprune.measure import default_threads

OPTIMIZERS = ("sgd", "rmsprop")
SCHEDULES = ("onecycle", "cosine", "constant")
PRECISIONS = ("fp32", "bf16")
DEFAULT_LR = {"sgd": 0.05, "rmsprop": 1e-3}
CHECKPOINT_FILE = "checkpoint.safetensors"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "train.json"
CHECKPOINT_FORMAT = "edgeprune-checkpoint/2"  # /2: metadata has checksums of the tensors and of the state
LEGACY_CHECKPOINT_FORMAT = "edgeprune-checkpoint/1"  # no checksums: resumed after the schema checks only
TENSORS_SHA256 = "tensors_sha256"  # metadata key: edgeprune.files.tensors_digest of all tensors
STATE_SHA256 = "state_sha256"  # metadata key: SHA-256 of the "state" JSON text
RNG_TENSORS = ("rng.torch", "rng.generator")
DEVICES = ("auto", "cpu", "cuda", "mps")
PAD = 4


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


# -- batches ----------------------------------------------------------------------------------


class ImageStore:
    """The training images (uint8 [N, C, H, W]) and vectorised batch gathers with crop and flip.

    A batch is read with one ``index_select``, zero-padded with one copy, and every output pixel
    is then gathered with one more ``index_select`` whose flat indices are a precomputed grid
    (plain or mirrored) plus one offset per image. The result is laid out channels-last (NHWC in
    memory), the layout the model trains in, so converting it to float is a contiguous pass.
    """

    def __init__(self, x: torch.Tensor):
        self.x = x.contiguous()  # on any device: the gathers run where the images are
        _, self.channels, self.height, self.width = x.shape
        self._grids: dict[int, torch.Tensor] = {}

    def _grid(self, pad: int) -> torch.Tensor:
        """Offsets of output pixel (i, j, c) in one padded image [C, H+2p, W+2p]: [2, H, W, C], plain and mirrored."""
        if pad not in self._grids:
            c, h, w = self.channels, self.height, self.width
            hp, wp = h + 2 * pad, w + 2 * pad
            i = torch.arange(h).view(h, 1, 1) * wp
            j = torch.arange(w).view(1, w, 1)
            ch = torch.arange(c).view(1, 1, c) * (hp * wp)
            grid = torch.stack([ch + i + j, ch + i + (w - 1 - j)]).to(torch.int32)
            self._grids[pad] = grid.to(self.x.device)
        return self._grids[pad]

    def crop_flip(
        self, index: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, pad: int = PAD
    ) -> torch.Tensor:
        """Images ``index`` cropped at offsets (dy, dx) of their zero-padded versions, mirrored where ``flip``.

        Offsets are in [0, 2 * pad]. Image b of the result equals ``zero_pad(x[index[b]])[:, dy:dy+H,
        dx:dx+W]``, flipped left-right when ``flip[b]``: uint8 [B, C, H, W], channels-last in memory.
        """
        b, c, h, w = len(index), self.channels, self.height, self.width
        hp, wp = h + 2 * pad, w + 2 * pad
        device = self.x.device
        index, dy, dx, flip = (t.to(device) for t in (index, dy, dx, flip))
        src = self.x.index_select(0, index)
        if pad:
            padded = src.new_zeros((b, c, hp, wp))
            padded[:, :, pad : pad + h, pad : pad + w] = src
        else:
            padded = src
        base = torch.arange(b, device=device) * (c * hp * wp) + dy * wp + dx  # where each crop starts
        dtype = torch.int32 if b * c * hp * wp < 2**31 else torch.int64  # int32: half the index traffic
        flat = self._grid(pad).index_select(0, flip.long()).to(dtype).view(b, -1)
        flat.add_(base.to(dtype).view(b, 1))
        out = padded.view(-1).index_select(0, flat.view(-1)).view(b, h, w, c)
        return out.permute(0, 3, 1, 2)

    def batch(self, index: torch.Tensor) -> torch.Tensor:
        """Images ``index`` unaugmented, uint8 [B, C, H, W], channels-last in memory."""
        zeros = torch.zeros(len(index), dtype=torch.int64)
        return self.crop_flip(index, zeros, zeros, torch.zeros(len(index), dtype=torch.bool), pad=0)

    def random_crop_flip(
        self, index: torch.Tensor, generator: torch.Generator, pad: int = PAD, part: slice = slice(None)
    ) -> torch.Tensor:
        """``crop_flip`` of ``index[part]``, with offsets and flips drawn from ``generator`` for all of ``index``."""
        b = len(index)
        dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
        flip = torch.randint(0, 2, (b,), generator=generator).bool()
        return self.crop_flip(index[part], dy[part], dx[part], flip[part], pad)


class Normalizer:
    """uint8 batches -> normalised float32 batches in channels-last layout."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
        self.inv_std = 1.0 / (torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0)
        self._full: dict[tuple[int, int, str], tuple[torch.Tensor, torch.Tensor]] = {}

    def _constants(self, h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        # Full-size constants broadcast only over the batch: much faster than a size-3 inner broadcast.
        key = (h, w, str(device))
        if key not in self._full:
            c = self.mean.shape[1]
            scale = self.inv_std.expand(1, c, h, w).contiguous(memory_format=torch.channels_last)
            shift = (-self.mean * self.inv_std).expand(1, c, h, w).contiguous(memory_format=torch.channels_last)
            self._full[key] = (scale.to(device), shift.to(device))
        return self._full[key]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Convert a uint8 [B, C, H, W] batch to normalised float32, channels-last, on its device."""
        scale, shift = self._constants(x.shape[2], x.shape[3], x.device)
        out = x.to(torch.float32, memory_format=torch.channels_last)
        return out.mul_(scale).add_(shift)


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


# -- checks -----------------------------------------------------------------------------------


def check_compatible(model: nn.Module, data: ImageDataset) -> None:
    """Raise EdgepruneError unless ``model`` takes the data set's images and has one output per class."""
    c, h, w = data.input_shape()
    first = next((m for m in model.modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))), None)
    expected_c = getattr(first, "in_channels", None)
    if expected_c is not None and expected_c != c:
        raise EdgepruneError(
            f"the model takes {expected_c}-channel images, the data set '{data.name}' has {c}-channel images"
        )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, c, h, w, device=_device_of(model)))
    except RuntimeError as e:
        msg = str(e).splitlines()[0][:160]
        raise EdgepruneError(f"the model cannot take the data set's {c}x{h}x{w} images ({msg})") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise EdgepruneError(
            f"train handles classification models with one (N, classes) output; this model returns a "
            f"{type(out).__name__}"
        )
    if out.ndim != 2:
        raise EdgepruneError(
            f"train handles classification models with one (N, classes) output; this model's output has shape "
            f"{tuple(out.shape)} for 2 images"
        )
    if out.shape[1] != data.num_classes:
        raise EdgepruneError(
            f"the model has {tuple(out.shape[1:])} outputs, the data set '{data.name}' has {data.num_classes} classes"
        )


def _check_data(data: ImageDataset) -> None:
    if len(data.train_y) == 0 or len(data.test_y) == 0:
        raise EdgepruneError(f"data set '{data.name}' has an empty train or test split")
    if data.train_x.dtype != torch.uint8 or data.train_x.ndim != 4:
        raise EdgepruneError("data set images must be uint8 [N, C, H, W]")


# -- devices and processes --------------------------------------------------------------------


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


def _mps_available() -> bool:
    """Whether Apple's Metal (MPS) device can be used."""
    backend = getattr(torch.backends, "mps", None)
    return backend is not None and backend.is_available()


def resolve_device(device: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` (CUDA, else MPS, else CPU), ``cpu``, ``cuda`` (GPU ``local_rank``) or ``mps``; an error if absent."""
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


def _device_of(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (the CPU for a model without either)."""
    first = next(iter(model.parameters()), None)
    first = first if first is not None else next(iter(model.buffers()), None)
    return first.device if first is not None else torch.device("cpu")


def _on_device(data: ImageDataset, device: torch.device) -> ImageDataset:
    """The data set with its four tensors on ``device`` (the same object on the CPU)."""
    if device.type == "cpu":
        return data
    moved = {k: getattr(data, k).to(device) for k in ("train_x", "train_y", "test_x", "test_y")}
    return replace(data, **moved)


def _start_group(ranks: Ranks, device: torch.device) -> bool:
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


def _seed_epoch(device: torch.device, seed: int, rank: int, epoch: int) -> None:
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


def _share(obj: object) -> object:
    """Rank 0's ``obj`` in every process (pickled by torch.distributed, between the job's own processes)."""
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _sync_buffers(model: nn.Module) -> None:
    """Give every process rank 0's buffers (BatchNorm statistics), which each process updated on its own share."""
    for buffer in model.buffers():
        flat = buffer if buffer.is_contiguous() else buffer.contiguous()
        dist.broadcast(flat, src=0)
        if flat is not buffer:
            buffer.copy_(flat)


def _on_cpu(state: dict) -> dict:
    """An optimiser ``state_dict`` with its tensors on the CPU, to send to the other processes."""
    moved = {
        i: {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in e.items()} for i, e in state["state"].items()
    }
    return {"state": moved, "param_groups": state["param_groups"]}


# -- optimiser and checkpoints ----------------------------------------------------------------


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


def _host(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous CPU copy of ``tensor``, detached."""
    return tensor.detach().to("cpu").contiguous().clone()


def save_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator, state: dict
) -> None:
    """Write model, optimiser and RNG state (tensors) and ``state`` (JSON) atomically, with checksums of both."""
    tensors = {f"model.{k}": _host(v) for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    scalars: dict[str, dict] = {}
    for idx, entry in opt["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = _host(value)
            else:
                scalars.setdefault(str(idx), {})[key] = value
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.generator"] = generator.get_state()
    meta = dict(state, format=CHECKPOINT_FORMAT, optim_groups=opt["param_groups"], optim_scalars=scalars)
    text = json.dumps(meta)
    metadata = {"state": text, TENSORS_SHA256: tensors_digest(tensors), STATE_SHA256: _sha256_text(text)}
    atomic_write(path, lambda p: save_file(tensors, str(p), metadata=metadata))


@dataclass
class Checkpoint:
    """A checkpoint file's tensors and JSON state: read, checksummed and schema-checked, not yet applied."""

    tensors: dict[str, torch.Tensor]
    state: dict
    verified: bool  # False: an edgeprune-checkpoint/1 file, written before checkpoints had checksums


def _sha256_text(text: str) -> str:
    """The hex SHA-256 of a string's UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _bad(path: Path, what: str) -> EdgepruneError:
    """The one-line error for a checkpoint that cannot be used."""
    return EdgepruneError(f"{path}: {what}; delete it or train without --resume")


def _first_line(e: BaseException) -> str:
    """An exception's message, first line only, shortened."""
    lines = str(e).strip().splitlines()
    return (lines[0] if lines else type(e).__name__)[:200]


def _read_file(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor], str]:
    """The safetensors metadata, tensors and tensor digest of ``path``; one-line error when unreadable."""
    try:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        return metadata, tensors, tensors_digest(tensors)
    except (SafetensorError, OSError, ValueError, TypeError, RuntimeError) as e:
        raise _bad(path, f"unreadable checkpoint ({_first_line(e)})") from None


def _parse_state(path: Path, text: str) -> dict:
    """The JSON state object, or a one-line error."""
    try:
        state = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise _bad(path, f"checkpoint state is not JSON ({_first_line(e)})") from None
    if not isinstance(state, dict):
        raise _bad(path, f"checkpoint state is a JSON {type(state).__name__}, not an object")
    return state


def _verified_state(path: Path, metadata: dict[str, str], digest: str) -> tuple[dict, bool]:
    """Check the checksums (before anything is parsed); return the state and whether it was verified."""
    text = metadata.get("state")
    if not isinstance(text, str):
        raise _bad(path, "not an edgeprune checkpoint (no 'state' metadata)")
    sums = (metadata.get(TENSORS_SHA256), metadata.get(STATE_SHA256))
    if sums == (None, None):
        state = _parse_state(path, text)
        if state.get("format") == LEGACY_CHECKPOINT_FORMAT:
            return state, False
        raise _bad(path, f"checkpoint has no checksums (metadata '{TENSORS_SHA256}', '{STATE_SHA256}')")
    if sums != (digest, _sha256_text(text)):
        raise _bad(path, "checksum mismatch, the checkpoint is corrupt")
    return _parse_state(path, text), True


def _is_int(value: object, minimum: int = 0) -> bool:
    """A JSON integer (not a bool) in [minimum, 2**63)."""
    return isinstance(value, int) and not isinstance(value, bool) and minimum <= value < 2**63


def _is_number(value: object) -> bool:
    """A finite JSON number (not a bool) of sane size."""
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**63


def _check_history(path: Path, history: object, epoch: int) -> None:
    """``history``: one record per epoch, numbered 1.., with finite numbers and a test accuracy in [0, 1]."""
    if not isinstance(history, list) or len(history) != epoch:
        raise _bad(path, f"checkpoint 'history' must be a list of {epoch} epoch records")
    for i, record in enumerate(history):
        ok = isinstance(record, dict) and record.get("epoch") == i + 1 and _is_number(record.get("test_acc"))
        if not ok or not all(isinstance(k, str) and _is_number(v) for k, v in record.items()):
            raise _bad(path, f"checkpoint 'history' record {i + 1} is malformed")
        if not 0 <= record["test_acc"] <= 1:
            raise _bad(path, f"checkpoint 'history' record {i + 1} has a test accuracy outside [0, 1]")


def _check_state(path: Path, state: dict, verified: bool) -> None:
    """Check the keys ``save_checkpoint`` writes, their types and ranges."""
    expected = CHECKPOINT_FORMAT if verified else LEGACY_CHECKPOINT_FORMAT
    if state.get("format") != expected:
        raise _bad(path, f"not an {expected} file (format {str(state.get('format'))[:40]!r})")
    checks = [
        ("config", isinstance(state.get("config"), dict), "an object"),
        ("data", isinstance(state.get("data"), dict), "an object"),
        ("epoch", _is_int(state.get("epoch"), 1), "a positive integer"),
        ("step", _is_int(state.get("step"), 0), "an integer >= 0"),
        ("train_seconds", _is_number(state.get("train_seconds")) and state["train_seconds"] >= 0, "a number >= 0"),
        ("history", isinstance(state.get("history"), list), "a list"),
        ("optim_groups", isinstance(state.get("optim_groups"), list), "a list"),
        ("optim_scalars", isinstance(state.get("optim_scalars"), dict), "an object"),
    ]
    for key, ok, what in checks:
        if key not in state:
            raise _bad(path, f"checkpoint state has no '{key}'")
        if not ok:
            raise _bad(path, f"checkpoint '{key}' must be {what}, got {_short(state[key], 40)}")
    if "world_size" in state and not _is_int(state["world_size"], 1):  # absent before multi-process training
        raise _bad(path, f"checkpoint 'world_size' must be a positive integer, got {_short(state['world_size'], 40)}")
    _check_history(path, state.get("history"), state["epoch"])


def _check_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Known tensor names only (model.*, optim.<index>.*, the two RNG states) and finite weights."""
    for name, value in tensors.items():
        parts = name.split(".", 2)
        known = name in RNG_TENSORS or (parts[0] == "model" and len(parts) > 1)
        known = known or (parts[0] == "optim" and len(parts) == 3 and parts[1].isdecimal() and parts[1].isascii())
        if not known:
            raise _bad(path, f"checkpoint has an unexpected tensor {name[:80]!r}")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise _bad(path, f"checkpoint tensor {name[:80]!r} has non-finite values")


def read_checkpoint(path: Path) -> Checkpoint:
    """Read ``path`` and verify its checksums and the schema of its state; change nothing, write nothing."""
    metadata, tensors, digest = _read_file(path)
    state, verified = _verified_state(path, metadata, digest)
    _check_state(path, state, verified)
    _check_tensors(path, tensors)
    return Checkpoint(tensors, state, verified)


def _model_weights(path: Path, ckpt: Checkpoint, model: nn.Module) -> dict[str, torch.Tensor]:
    """The checkpoint's weights, checked to be ``model``'s layer names, shapes and dtypes."""
    weights = {k[len("model.") :]: v for k, v in ckpt.tensors.items() if k.startswith("model.")}
    expected = model.state_dict()
    same = set(weights) == set(expected) and all(
        weights[k].shape == v.shape and weights[k].dtype == v.dtype for k, v in expected.items()
    )
    if not same:
        raise EdgepruneError(f"{path}: the checkpoint is of a different model (layer names, shapes or dtypes differ)")
    return weights


def _optimizer_groups(path: Path, ckpt: Checkpoint, optimizer: torch.optim.Optimizer) -> list[dict]:
    """The saved parameter groups, checked to equal this optimiser's but for the learning rate."""
    live = json.loads(json.dumps(optimizer.state_dict()["param_groups"]))
    groups = ckpt.state["optim_groups"]
    if len(groups) != len(live):
        raise _bad(path, f"optimiser state has {len(groups)} parameter groups, this optimiser {len(live)}")
    for i, (saved, now) in enumerate(zip(groups, live)):
        if not isinstance(saved, dict) or set(saved) != set(now):
            raise _bad(path, f"optimiser parameter group {i} does not fit this optimiser (other keys)")
        other = [k for k in now if k != "lr" and saved[k] != now[k]]
        if other or not (_is_number(saved["lr"]) and saved["lr"] >= 0):
            raise _bad(path, f"optimiser parameter group {i} differs from this run's ({(other or ['lr'])[0]})")
    return groups


def _optimizer_entries(path: Path, ckpt: Checkpoint, params: list[torch.Tensor]) -> dict[int, dict]:
    """Per-parameter optimiser state: tensors shaped like their parameter (or scalars), JSON scalars."""
    state: dict[int, dict] = {}
    for key, value in ckpt.tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            i = int(idx)
            if i >= len(params) or not value.is_floating_point() or value.ndim and value.shape != params[i].shape:
                raise _bad(path, f"optimiser tensor {key[:80]!r} does not fit this model's parameters")
            state.setdefault(i, {})[name] = value
    for idx, entries in ckpt.state["optim_scalars"].items():
        fits = idx.isdecimal() and idx.isascii() and int(idx) < len(params) and isinstance(entries, dict)
        if not fits or not all(v is None or isinstance(v, bool) or _is_number(v) for v in entries.values()):
            raise _bad(path, f"optimiser scalars of parameter {idx[:20]!r} do not fit this optimiser")
        if set(entries) & set(state.get(int(idx), {})):
            raise _bad(path, f"optimiser state of parameter {idx} is stored twice")
        state.setdefault(int(idx), {}).update(entries)
    return state


def _rng_states(path: Path, ckpt: Checkpoint, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The two RNG states, checked: uint8, the size this torch uses, accepted by a scratch generator."""
    found = []
    for name, now in (("rng.torch", torch.get_rng_state()), ("rng.generator", generator.get_state())):
        value = ckpt.tensors.get(name)
        if value is None:
            raise _bad(path, f"checkpoint has no {name} tensor")
        if value.dtype != torch.uint8 or value.shape != now.shape:
            raise _bad(path, f"{name} must be uint8 of shape {list(now.shape)}, got {value.dtype} {list(value.shape)}")
        try:
            torch.Generator().set_state(value)
        except RuntimeError as e:
            raise _bad(path, f"{name} is not a valid RNG state ({_first_line(e)})") from None
        found.append(value)
    return found[0], found[1]


def restore_checkpoint(
    path: Path, ckpt: Checkpoint, model: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator
) -> dict:
    """Check that ``ckpt`` fits model, optimiser and generator, then load it into them; return its state."""
    weights = _model_weights(path, ckpt, model)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    opt_state = {
        "state": _optimizer_entries(path, ckpt, params),
        "param_groups": _optimizer_groups(path, ckpt, optimizer),
    }
    rng_torch, rng_generator = _rng_states(path, ckpt, generator)
    try:
        optimizer.load_state_dict(opt_state)
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise _bad(path, f"optimiser state does not fit ({_first_line(e)})") from None
    model.load_state_dict(weights)
    torch.set_rng_state(rng_torch)
    generator.set_state(rng_generator)
    return ckpt.state


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator) -> dict:
    """Verify what ``save_checkpoint`` wrote and restore it; return its JSON state (one-line EdgepruneError if bad)."""
    return restore_checkpoint(path, read_checkpoint(path), model, optimizer, generator)


# -- progress ---------------------------------------------------------------------------------


class Progress:
    """A one-line progress bar on stderr: redrawn in place on a terminal; in a log, a line a minute and at the end.

    A log (not a terminal) gets periodic lines because a VGG-16 epoch here takes 15 minutes, and
    a job run under nohup or CI should not look hung for that long.
    """

    def __init__(
        self,
        enabled: bool,
        stream: object = None,
        log_interval: float = 60.0,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interval = 0.25 if self.tty else log_interval
        self.clock = clock
        self.last = 0.0 if self.tty else clock()

    def update(self, label: str, done: int, total: int, text: str, final: bool = False) -> None:
        """Show ``done``/``total`` steps of ``label`` with ``text``."""
        if not self.enabled:
            return
        now = self.clock()
        if not final and now - self.last < self.interval:
            return
        self.last = now
        width = 24
        filled = int(width * done / max(total, 1))
        bar = "#" * filled + "." * (width - filled)
        line = f"{label} [{bar}] {done}/{total} {text}"
        if self.tty:
            self.stream.write("\r\033[K" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def line(self, text: str) -> None:
        """Print a line of its own."""
        if self.enabled:
            self.stream.write(text + "\n")
            self.stream.flush()


# -- training ---------------------------------------------------------------------------------


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
    device = _device_of(model)
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
    created = _start_group(ranks, target)
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
    home = _device_of(model)
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
    shared = _share(_resume_main(ckpt, signature, steps_per_epoch, stepper, ranks, bar) if ranks.main else None)
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
    optimizer = _on_cpu(stepper.optimizer.state_dict())
    return {"run": run, "optimizer": optimizer, "generator": stepper.generator.get_state()}


def _read_run(
    ckpt: Path, signature: dict, steps_per_epoch: int, stepper: TrainStep, ranks: Ranks, bar: Progress
) -> _Run:
    """Verify the checkpoint, load it into model, optimiser and generator, and return its run (a fresh one if none)."""
    if not ckpt.is_file():
        bar.line(f"no checkpoint in {ckpt.parent}; starting from epoch 1")
        return _Run()
    saved = read_checkpoint(ckpt)  # verified before anything is changed or written
    _check_resumable(ckpt, saved.state, signature, steps_per_epoch)
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
    _seed_epoch(stepper.device, config.seed, ranks.rank, run.epoch)
    loss, accuracy, seen, seconds, lr = _steps(stepper, plan, run, label, bar, ckpt)
    t1 = time.perf_counter()
    if ranks.distributed:
        _sync_buffers(stepper.model)
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


def _check_resumable(path: Path, state: dict, signature: dict, steps_per_epoch: int) -> None:
    """Refuse a checkpoint of other settings or data, or whose epoch and step do not fit this run."""
    for key in ("config", "data"):
        if state[key] != signature[key]:
            diff = describe_difference(state[key], signature[key])
            raise EdgepruneError(
                f"{path}: made with different {key} ({diff}); resume with the same settings or start over"
            )
    epoch, epochs = state["epoch"], signature["config"]["epochs"]
    if epoch > epochs or state["step"] != epoch * steps_per_epoch:
        raise _bad(
            path,
            f"checkpoint is at epoch {epoch}, step {state['step']}; this run has {epochs} epochs of "
            f"{steps_per_epoch} steps",
        )


def describe_difference(old: dict, new: dict) -> str:
    """The first three settings that differ, shortened, on one line."""
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return ", ".join(f"{k}: was {_short(old.get(k))}, now {_short(new.get(k))}" for k in keys[:3]) or "unknown"


def _short(value: object, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


__all__ = [
    "DEVICES",
    "Ranks",
    "TrainConfig",
    "TrainResult",
    "check_compatible",
    "data_signature",
    "describe_difference",
    "ImageStore",
    "Normalizer",
    "TrainStep",
    "evaluate",
    "lr_at",
    "process_ranks",
    "resolve_device",
    "train",
]
