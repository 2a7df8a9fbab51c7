"""Model files that never execute code when loaded: the architecture as JSON, weights in safetensors.

``DIR/model.json`` names the zoo model, its constructor arguments and every conv, linear and
BatchNorm layer's channel widths; ``DIR/model.safetensors`` holds the weights and buffers.
``load`` builds the zoo model, resizes those layers to the recorded widths and loads the weights
strictly, so a missing, truncated or mismatched file is a one-line error, never a pickle.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.models import create

FORMAT = "edgeprune-model/1"
SPEC_FILE = "model.json"
WEIGHTS_FILE = "model.safetensors"


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` through a temporary file in the same folder, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: Path, data: object) -> None:
    """Write JSON atomically."""
    atomic_write(path, lambda p: p.write_text(json.dumps(data, indent=2) + "\n"))


def layer_widths(model: nn.Module) -> dict[str, dict[str, int]]:
    """Channel widths of every conv, linear and BatchNorm layer, by module name."""
    widths: dict[str, dict[str, int]] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            widths[name] = {"in_channels": m.in_channels, "out_channels": m.out_channels, "groups": m.groups}
        elif isinstance(m, nn.Linear):
            widths[name] = {"in_features": m.in_features, "out_features": m.out_features}
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            widths[name] = {"num_features": m.num_features}
    return widths


def model_spec(model: nn.Module, input_shape: tuple[int, ...] = (3, 32, 32)) -> dict:
    """The JSON architecture of a zoo model (possibly pruned)."""
    arch = getattr(model, "edgeprune_arch", None)
    if arch is None:
        raise EdgepruneError("only models built by edgeprune.create (or loaded from a model folder) can be saved")
    return {
        "format": FORMAT,
        "arch": arch["name"],
        "kwargs": arch["kwargs"],
        "input_shape": list(input_shape),
        "layers": layer_widths(model),
    }


def save(model: nn.Module, directory: str | Path, input_shape: tuple[int, ...] = (3, 32, 32)) -> Path:
    """Write ``model.json`` and ``model.safetensors`` for ``model`` into ``directory``."""
    directory = Path(directory)
    spec = model_spec(model, input_shape)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(directory / WEIGHTS_FILE, lambda p: save_file(tensors, str(p), metadata={"format": FORMAT}))
    write_json(directory / SPEC_FILE, spec)
    return directory


def read_spec(directory: str | Path) -> dict:
    """Read and validate ``model.json``."""
    path = Path(directory) / SPEC_FILE
    if not path.is_file():
        raise EdgepruneError(f"{path}: not found (is '{directory}' a model folder written by edgeprune?)")
    try:
        spec = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EdgepruneError(f"{path}: not valid JSON ({e.msg if hasattr(e, 'msg') else e})") from None
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise EdgepruneError(f"{path}: not an {FORMAT} file")
    for key in ("arch", "kwargs", "layers", "input_shape"):
        if key not in spec:
            raise EdgepruneError(f"{path}: missing '{key}'")
    return spec


def _resized(m: nn.Module, w: dict[str, int]) -> nn.Module:
    """A fresh layer like ``m`` with the recorded widths."""
    if isinstance(m, nn.modules.conv._ConvNd):
        return type(m)(
            w["in_channels"], w["out_channels"], m.kernel_size, m.stride, m.padding, m.dilation,
            w["groups"], m.bias is not None, m.padding_mode,
        )  # fmt: skip
    if isinstance(m, nn.Linear):
        return nn.Linear(w["in_features"], w["out_features"], bias=m.bias is not None)
    return type(m)(w["num_features"], m.eps, m.momentum, m.affine, m.track_running_stats)


def build(spec: dict) -> nn.Module:
    """Build the (possibly pruned) architecture described by a spec, with fresh weights."""
    kwargs = dict(spec["kwargs"])
    model = create(spec["arch"], **kwargs)
    recorded = spec["layers"]
    current = layer_widths(model)
    if set(recorded) != set(current):
        raise EdgepruneError(f"model.json layers do not match architecture '{spec['arch']}'")
    modules = dict(model.named_modules())
    try:
        for name, widths in recorded.items():
            if widths != current[name]:
                parent_name, _, child = name.rpartition(".")
                parent = modules[parent_name] if parent_name else model
                setattr(parent, child, _resized(modules[name], widths))
    except (KeyError, TypeError, ValueError) as e:
        raise EdgepruneError(f"model.json has invalid layer widths ({e})") from None
    model.edgeprune_arch = {"name": spec["arch"], "kwargs": kwargs}
    return model


def load(directory: str | Path) -> nn.Module:
    """Rebuild a saved model from ``DIR/model.json`` and ``DIR/model.safetensors``; no pickle."""
    directory = Path(directory)
    if not directory.is_dir():
        raise EdgepruneError(f"{directory}: no such model folder")
    model = build(read_spec(directory))
    path = directory / WEIGHTS_FILE
    if not path.is_file():
        raise EdgepruneError(f"{path}: not found")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise EdgepruneError(f"{path}: unreadable or truncated ({str(e).splitlines()[0]})") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise EdgepruneError(f"{path}: weights do not match model.json (missing {missing[:3]}, unexpected {extra[:3]})")
    for key, value in tensors.items():
        if value.shape != expected[key].shape:
            raise EdgepruneError(
                f"{path}: '{key}' has shape {tuple(value.shape)}, model.json says {tuple(expected[key].shape)}"
            )
    model.load_state_dict(tensors, strict=True)
    return model.eval()


def input_shape_of(directory: str | Path) -> tuple[int, ...]:
    """The input shape (C, H, W) recorded in a model folder."""
    return tuple(read_spec(directory)["input_shape"])


def is_model_dir(path: str | Path) -> bool:
    """True when ``path`` is a folder holding a model.json."""
    return (Path(path) / SPEC_FILE).is_file()


def resolve_model(name_or_dir: str, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """A model from a saved folder, or a fresh zoo model by name."""
    if is_model_dir(name_or_dir):
        return load(name_or_dir)
    if os.sep in name_or_dir or Path(name_or_dir).exists():
        raise EdgepruneError(f"{name_or_dir}: not a model folder (no {SPEC_FILE}) and not a zoo model name")
    return create(name_or_dir, num_classes=num_classes, in_channels=in_channels)


__all__ = ["atomic_write", "build", "load", "read_spec", "resolve_model", "save", "write_json"]
