"""The checkpoint format: one safetensors file, written atomically, verified before anything is restored.

Model and optimiser tensors plus both RNG states are tensors; everything else (epoch, step, history, config)
is JSON in the metadata, no pickle. The metadata also holds SHA-256 checksums of the tensors and of the JSON
state; reading verifies them and the state's schema before it changes or writes anything (a corrupt
checkpoint is a one-line error).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from edgeprune.errors import EdgepruneError, first_line
from edgeprune.files import atomic_write, tensors_digest

CHECKPOINT_FILE = "checkpoint.safetensors"
CHECKPOINT_FORMAT = "edgeprune-checkpoint/2"  # /2: metadata has checksums of the tensors and of the state
LEGACY_CHECKPOINT_FORMAT = "edgeprune-checkpoint/1"  # no checksums: resumed after the schema checks only
TENSORS_SHA256 = "tensors_sha256"  # metadata key: edgeprune.files.tensors_digest of all tensors
STATE_SHA256 = "state_sha256"  # metadata key: SHA-256 of the "state" JSON text
RNG_TENSORS = ("rng.torch", "rng.generator", "rng.epoch")  # rng.epoch: only with a position in an epoch


def _host(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous CPU copy of ``tensor``, detached."""
    return tensor.detach().to("cpu").contiguous().clone()


def save_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    state: dict,
    *,
    rng: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write model, optimiser and RNG state (tensors) and ``state`` (JSON) atomically, with checksums of both.

    ``rng`` gives RNG tensors by name in place of the live states (a position inside an epoch saves those of its
    last finished step, and ``rng.epoch``, the generator's state at the epoch's start).
    """
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
    tensors.update({k: v.clone() for k, v in (rng or {}).items()})
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


def _read_file(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor], str]:
    """The safetensors metadata, tensors and tensor digest of ``path``; one-line error when unreadable."""
    try:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        return metadata, tensors, tensors_digest(tensors)
    except (SafetensorError, OSError, ValueError, TypeError, RuntimeError) as e:
        raise _bad(path, f"unreadable checkpoint ({first_line(e)})") from None


def _parse_state(path: Path, text: str) -> dict:
    """The JSON state object, or a one-line error."""
    try:
        state = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise _bad(path, f"checkpoint state is not JSON ({first_line(e)})") from None
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
    """``history``: one record per epoch, numbered 1.., with finite numbers and accuracies in [0, 1]."""
    if not isinstance(history, list) or len(history) != epoch:
        raise _bad(path, f"checkpoint 'history' must be a list of {epoch} epoch records")
    for i, record in enumerate(history):
        # a run on a folder of train/ alone has no test split: its epochs carry a validation accuracy only
        scored = isinstance(record, dict) and any(_is_number(record.get(k)) for k in ("test_acc", "val_acc"))
        ok = scored and record.get("epoch") == i + 1
        if not ok or not all(isinstance(k, str) and _is_number(v) for k, v in record.items()):
            raise _bad(path, f"checkpoint 'history' record {i + 1} is malformed")
        for key, name in (("test_acc", "test"), ("val_acc", "validation"), ("train_acc", "training")):
            if key in record and not 0 <= record[key] <= 1:
                raise _bad(path, f"checkpoint 'history' record {i + 1} has a {name} accuracy outside [0, 1]")


def _check_state(path: Path, state: dict, verified: bool) -> None:
    """Check the keys ``save_checkpoint`` writes, their types and ranges."""
    expected = CHECKPOINT_FORMAT if verified else LEGACY_CHECKPOINT_FORMAT
    if state.get("format") != expected:
        raise _bad(path, f"not an {expected} file (format {str(state.get('format'))[:40]!r})")
    checks = [
        ("config", isinstance(state.get("config"), dict), "an object"),
        ("data", isinstance(state.get("data"), dict), "an object"),
        ("epoch", _is_int(state.get("epoch"), 0 if "position" in state else 1), "a positive integer"),
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
    if "position" in state:  # absent at an epoch's end and before positions were saved
        _check_position(path, state["position"])


def _check_position(path: Path, position: object) -> None:
    """A position inside an epoch: steps done (>= 1), the epoch's totals so far, its seconds."""
    if not isinstance(position, dict):
        raise _bad(path, f"checkpoint 'position' must be an object, got {_short(position, 40)}")
    checks = [
        ("step", _is_int(position.get("step"), 1), "a positive integer"),
        ("seen", _is_int(position.get("seen"), 1), "a positive integer"),
        ("correct", _is_int(position.get("correct"), 0), "an integer >= 0"),
        ("loss_sum", _is_number(position.get("loss_sum")) and position["loss_sum"] >= 0, "a number >= 0"),
        ("seconds", _is_number(position.get("seconds")) and position["seconds"] >= 0, "a number >= 0"),
    ]
    for key, ok, what in checks:
        if not ok:
            raise _bad(path, f"checkpoint 'position' {key} must be {what}, got {_short(position.get(key), 40)}")
    if position["correct"] > position["seen"] or position["step"] > position["seen"]:
        raise _bad(path, "checkpoint 'position' counts more correct outputs or steps than images seen")


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
    if ("position" in state) != ("rng.epoch" in tensors):
        raise _bad(path, "checkpoint has a position in an epoch without rng.epoch, or rng.epoch without one")
    return Checkpoint(tensors, state, verified)


def recorded_stream_normalization(out: Path) -> dict | None:
    """The normalisation a streamed run's checkpoint in ``out`` recorded (None without such a checkpoint)."""
    ckpt = out / CHECKPOINT_FILE
    if not ckpt.is_file():
        return None
    data = read_checkpoint(ckpt).state.get("data")
    return data.get("normalize") if isinstance(data, dict) and data.get("storage") == "stream" else None


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
    names = [n for n in RNG_TENSORS if n != "rng.epoch" or n in ckpt.tensors]
    for name in names:
        now = torch.get_rng_state() if name == "rng.torch" else generator.get_state()
        value = ckpt.tensors.get(name)
        if value is None:
            raise _bad(path, f"checkpoint has no {name} tensor")
        if value.dtype != torch.uint8 or value.shape != now.shape:
            raise _bad(path, f"{name} must be uint8 of shape {list(now.shape)}, got {value.dtype} {list(value.shape)}")
        try:
            torch.Generator().set_state(value)
        except RuntimeError as e:
            raise _bad(path, f"{name} is not a valid RNG state ({first_line(e)})") from None
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
        raise _bad(path, f"optimiser state does not fit ({first_line(e)})") from None
    model.load_state_dict(weights)
    torch.set_rng_state(rng_torch)
    generator.set_state(rng_generator)
    return ckpt.state


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator) -> dict:
    """Verify what ``save_checkpoint`` wrote and restore it; return its JSON state (one-line EdgepruneError if bad)."""
    return restore_checkpoint(path, read_checkpoint(path), model, optimizer, generator)


def check_resumable(path: Path, state: dict, signature: dict, steps_per_epoch: int) -> None:
    """Refuse a checkpoint of other settings or data, or whose epoch and step do not fit this run."""
    for key in ("config", "data"):
        if key == "config" and extends(state, signature):
            continue  # a finished run given more epochs: the schedule is recomputed for them (see extends)
        if state[key] != signature[key]:
            diff = describe_difference(state[key], signature[key])
            raise EdgepruneError(
                f"{path}: made with different {key} ({diff}); resume with the same settings or start over"
            )
    epoch, epochs = state["epoch"], signature["config"]["epochs"]
    within = state["position"]["step"] if "position" in state else 0  # steps done in epoch + 1
    fits = epoch + (within > 0) <= epochs and within <= steps_per_epoch
    if not fits or state["step"] != epoch * steps_per_epoch + within:
        where = f" (step {within} of epoch {epoch + 1})" if within else ""
        raise _bad(
            path,
            f"checkpoint is at epoch {epoch}, step {state['step']}{where}; this run has {plural(epochs, 'epoch')} "
            f"of {plural(steps_per_epoch, 'step')}",
        )


def plural(n: int, word: str) -> str:
    """``1 epoch``, ``2 epochs``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def extends(state: dict, signature: dict) -> bool:
    """Whether this run extends the checkpoint's finished run: same settings but more epochs.

    The learning-rate schedule is recomputed for the new number of epochs: the epochs already trained keep the
    rates they had, the new ones take the rates the longer run's schedule gives them.
    """
    old, new = state["config"], signature["config"]
    if old.get("epochs") is None or state["epoch"] != old["epochs"] or new["epochs"] <= old["epochs"]:
        return False
    return {**old, "epochs": new["epochs"]} == new


def describe_difference(old: dict, new: dict) -> str:
    """The first three settings that differ, shortened, on one line."""
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return ", ".join(f"{k}: was {_short(old.get(k))}, now {_short(new.get(k))}" for k in keys[:3]) or "unknown"


def _short(value: object, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


__all__ = [
    "CHECKPOINT_FILE",
    "CHECKPOINT_FORMAT",
    "Checkpoint",
    "check_resumable",
    "describe_difference",
    "load_checkpoint",
    "read_checkpoint",
    "recorded_stream_normalization",
    "restore_checkpoint",
    "save_checkpoint",
]
