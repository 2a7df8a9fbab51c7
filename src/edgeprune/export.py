"""ONNX export, checked against PyTorch in onnxruntime before the file is put in place.

``export_onnx`` writes the model (eval mode, BatchNorm folded into the convs by constant folding)
with a dynamic batch dimension, runs the written file in onnxruntime (CPUExecutionProvider) on the
same random input as PyTorch, and fails with an ``EdgepruneError`` when the largest absolute
difference of the outputs exceeds ``atol`` (1e-4 by default). The file is written through a
temporary file and renamed only after the check passes, so a failed export leaves nothing behind.

Exporters: ``torchscript`` is torch's classic tracer (``torch.onnx.export(..., dynamo=False)``),
fast and dependency-free, still working in torch 2.13 although deprecated; ``dynamo`` is the
``torch.export``-based exporter, which needs the ``onnxscript`` package, takes several seconds
per model and writes opset 18 or later. ``auto`` (default) uses torchscript and falls back to
dynamo if torchscript fails (e.g. once torch removes it).

``pad_channels`` zero-pads the widths that pruning left odd to a SIMD-friendly multiple, keeping
the outputs: onnxruntime's fast blocked convolutions need such widths (see
docs/results/latency_realisation.md).
"""

from __future__ import annotations

import copy
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeprune.errors import EdgepruneError
from edgeprune.files import atomic_write
from edgeprune.io import ModelRef, Resolved, resolve

EXPORTERS = ("auto", "torchscript", "dynamo")
DEFAULT_OPSET = 17
DEFAULT_ATOL = 1e-4
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def _torchscript_export(model: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice and tracer warnings
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            do_constant_folding=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )


def _add_metadata(path: Path, metadata: dict[str, str]) -> None:
    """Add ``metadata`` to an .onnx file's ``metadata_props`` (kept by onnxruntime and its tools)."""
    import onnx

    proto = onnx.load(str(path))
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))


# metadata of the files export --int8 writes (the fp32 file, and the int8 one, which inherits it): the command
WRITTEN_BY = "edgeprune.written_by"


def fp32_path(target: str | Path) -> Path:
    """Where ``export --onnx FILE --int8`` puts the checked fp32 model: ``FILE-fp32.onnx``."""
    target = Path(target)
    return target.with_name(target.stem + "-fp32.onnx")


def check_fp32_path(target: str | Path, force: bool = False) -> dict[str, str]:
    """Refuse (one line) to overwrite ``FILE-fp32.onnx`` unless an earlier ``export --onnx FILE --int8`` wrote it
    (or ``force``); return the metadata that marks the new one as that command's."""
    target = Path(target)
    fp32 = fp32_path(target)
    if fp32.is_dir():
        raise EdgepruneError(f"{fp32}: is a folder (export --int8 writes the fp32 model there)")
    command = f"export --onnx {target.name} --int8"
    if (fp32.exists() or fp32.is_symlink()) and not force and _written_by(fp32) != command:
        raise EdgepruneError(
            f"{fp32} exists and an earlier '{command}' did not write it; move it away, or give --force to replace it"
        )
    return {WRITTEN_BY: command}


def _written_by(path: Path) -> str | None:
    """The edgeprune command an .onnx file says wrote it, or None (not ours, or not an .onnx file)."""
    try:
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # anything that does not parse is not ours
        return None
    return next((p.value for p in proto.metadata_props if p.key == WRITTEN_BY), None)


def _dynamo_export(model: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    try:
        import onnxscript  # noqa: F401
    except ImportError:
        raise EdgepruneError(
            "the dynamo ONNX exporter needs the 'onnxscript' package (pip install onnxscript)"
        ) from None
    opset = max(opset, 18)  # the dynamo exporter emits opset 18; converting down fails noisily
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),
            verbose=False,
        )
    program.save(str(path), external_data=False)


def ort_session(path: str | Path, threads: int | None = None) -> Any:
    """An onnxruntime CPU session of an .onnx file, quiet; a missing or unloadable file is one line."""
    import onnxruntime as ort

    if not Path(path).is_file():
        raise EdgepruneError(f"{path}: no such file")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        lines = [line for line in str(e).strip().splitlines() if line.strip()] or [type(e).__name__]
        raise EdgepruneError(f"{path}: onnxruntime cannot load it ({lines[0][:200]})") from None


def onnx_outputs(
    path: str | Path, x: np.ndarray, threads: int | None = None, first_only: bool = True
) -> np.ndarray | list[np.ndarray]:
    """Run an exported model in onnxruntime (CPUExecutionProvider) on ``x``: its first output, or all of them."""
    session = ort_session(path, threads)
    name = session.get_inputs()[0].name
    outputs = session.run(None, {name: x.astype(np.float32)})
    return outputs[0] if first_only else outputs


def check_onnx(model: nn.Module, path: str | Path, x: torch.Tensor) -> float:
    """Largest absolute difference between PyTorch's and onnxruntime's outputs on ``x``."""
    with torch.inference_mode():
        expected = [t.float().numpy() for t in _tensors(model.eval()(x))]
    got = onnx_outputs(path, x.numpy(), first_only=False)
    if [g.shape for g in got] != [e.shape for e in expected]:
        shapes = ([g.shape for g in got], [e.shape for e in expected])
        raise EdgepruneError(f"{path}: onnxruntime output shapes {shapes[0]} differ from PyTorch's {shapes[1]}")
    return max((float(np.max(np.abs(g - e))) for g, e in zip(got, expected, strict=True) if e.size), default=0.0)


def _tensors(out: object) -> list[torch.Tensor]:
    """A model's outputs flattened as the ONNX exporter flattens them (tuples, lists, dicts in order)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _tensors(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in _tensors(v)]
    return []


MIN_OPSET, MAX_OPSET = 7, 20  # what torch's torchscript exporter writes (the dynamo one writes 18 and up)


def check_export_args(opset: object, atol: object, exporter: str = "auto") -> None:
    """One-line errors for an opset the exporters cannot write, a tolerance that is not a finite number >= 0."""
    if exporter not in EXPORTERS:
        raise EdgepruneError(f"unknown exporter '{exporter}'; choose from: {', '.join(EXPORTERS)}")
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise EdgepruneError(f"opset must be an integer from {MIN_OPSET} to {MAX_OPSET}, got {opset!r}")
    if isinstance(atol, bool) or not isinstance(atol, (int, float)) or not math.isfinite(atol) or atol < 0:
        raise EdgepruneError(f"atol must be a finite number >= 0, got {atol!r}")


def _export_with(exporter: str, model: nn.Module, example: torch.Tensor, tmp: Path, opset: int) -> str:
    """Write ``tmp`` with ``exporter`` (``auto``: torchscript, dynamo when that fails); the exporter that wrote it."""
    used = exporter
    if exporter in ("auto", "torchscript"):
        try:
            _torchscript_export(model, example, tmp, opset)
            used = "torchscript"
        except OSError:
            raise  # the file could not be written (disk full): atomic_write says so; no other exporter helps
        except Exception as e:
            failed = f"ONNX export failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
            if exporter == "torchscript":
                raise EdgepruneError(failed) from e
            try:
                import onnxscript  # noqa: F401
            except ImportError:  # the torchscript failure is the news, not the missing fallback
                raise EdgepruneError(f"{failed} (the dynamo exporter, tried next, needs 'onnxscript')") from e
            used = "dynamo"
    if used == "dynamo":
        _dynamo_export(model, example, tmp, opset)
    return used


def export_onnx(
    model: nn.Module | str | Path | ModelRef | Resolved,
    path: str | Path,
    input_shape: tuple[int, ...] | None = None,
    *,
    opset: int = DEFAULT_OPSET,
    exporter: str = "auto",
    atol: float = DEFAULT_ATOL,
    check_batch: int = 2,
    seed: int = 0,
    pad_to: int | None = None,
    metadata: dict[str, str] | None = None,
) -> dict:
    """Export a model (module, folder, reference or ``ModelRef``) to ONNX, check it in onnxruntime, write it atomically.

    ``pad_to`` zero-pads the pruned layers' widths to that multiple first (``pad_channels``); the check
    still compares with the model as given. ``metadata`` is added to the file's ``metadata_props``.
    """
    check_export_args(opset, atol, exporter)
    if check_batch < 1:
        raise EdgepruneError(f"check batch must be positive, got {check_batch}")
    resolved = resolve(str(model) if isinstance(model, Path) else model)  # a module: its recorded input shape
    model, input_shape = resolved.model, tuple(input_shape or resolved.input_shape)
    model = model.eval()
    reference = model
    if pad_to:
        model = pad_channels(model, pad_to, input_shape)
    path = Path(path)
    if path.is_dir():
        raise EdgepruneError(f"{path}: is a folder; give the .onnx file name")
    gen = torch.Generator().manual_seed(seed)
    example = torch.randn(1, *input_shape, generator=gen)
    check_input = torch.randn(check_batch, *input_shape, generator=gen)
    result: dict = {}

    def write(tmp: Path) -> None:
        used = _export_with(exporter, model, example, tmp, opset)
        if metadata:
            _add_metadata(tmp, metadata)
        diff = check_onnx(reference, tmp, check_input)  # padded or not, compared with the model as given
        if not np.isfinite(diff) or diff > atol:
            raise EdgepruneError(f"ONNX export check failed: outputs differ from PyTorch by {diff:.3g} (> {atol:g})")
        result.update(exporter=used, max_abs_diff=diff, opset=max(opset, 18) if used == "dynamo" else opset)

    try:
        atomic_write(path, write)
    except OSError as e:
        raise EdgepruneError(f"{path}: cannot write ({e.strerror or e})") from None
    import onnxruntime as ort

    return {
        "path": str(path),
        "bytes": path.stat().st_size,
        "opset": result["opset"],
        "exporter": result["exporter"],
        "input_shape": list(input_shape),
        "pad_channels": pad_to,
        "check": {
            "max_abs_diff": result["max_abs_diff"],
            "atol": atol,
            "batch": check_batch,
            "runtime": f"onnxruntime {ort.__version__} CPUExecutionProvider",
        },
    }


# -- zero-padding channel counts to a SIMD-friendly multiple ---------------------------------


def _padded(module: nn.Module, dim: str, n: int) -> nn.Module:
    """A copy of a conv, linear or BatchNorm layer with ``n`` zero channels appended in ``dim`` (out or in)."""
    w = module.weight.detach()
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        new = type(module)(module.num_features + n, module.eps, module.momentum, module.affine, True)
        with torch.no_grad():
            # A padded channel holds 0 and must stay 0: mean 0, var 1, scale 0, shift 0.
            new.running_mean.copy_(torch.cat([module.running_mean, torch.zeros(n)]))
            new.running_var.copy_(torch.cat([module.running_var, torch.ones(n)]))
            if module.affine:
                new.weight.copy_(torch.cat([module.weight.detach(), torch.zeros(n)]))
                new.bias.copy_(torch.cat([module.bias.detach(), torch.zeros(n)]))
            if module.num_batches_tracked is not None:
                new.num_batches_tracked.copy_(module.num_batches_tracked)
        return new
    depthwise = isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels
    axis = 0 if dim == "out" else 1
    pad_shape = list(w.shape)
    pad_shape[axis] = n
    weight = torch.cat([w, torch.zeros(pad_shape, dtype=w.dtype)], dim=axis)
    bias = module.bias.detach() if module.bias is not None else None
    if bias is not None and dim == "out":
        bias = torch.cat([bias, torch.zeros(n, dtype=bias.dtype)])
    if isinstance(module, nn.Linear):
        new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    else:
        c_out = weight.shape[0]
        c_in = c_out if depthwise else weight.shape[1] * module.groups
        groups = c_out if depthwise else module.groups
        new = type(module)(
            c_in, c_out, module.kernel_size, module.stride, module.padding, module.dilation, groups,
            bias is not None, module.padding_mode,
        )  # fmt: skip
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new


def pad_channels(model: nn.Module, multiple: int = 16, input_shape: tuple[int, ...] = (3, 32, 32)) -> nn.Module:
    """A copy of ``model`` whose prunable channel groups are zero-padded to a multiple of ``multiple``; same outputs.

    Pruning leaves layer widths such as 37 or 101, which the CPU kernels of oneDNN and MLAS handle with
    slower generic paths (MLAS's blocked NCHWc convolutions need multiples of the SIMD width). Appending
    zero filters (with a zero BatchNorm channel) and matching zero input weights in the next layer keeps
    the function exactly and restores the fast paths, at the cost of the padded multiply-adds. Only
    prunable groups are padded (never the output layer, grouped convs or residual-tied channels).
    """
    from edgeprune.graph import profile

    if multiple < 1:
        raise EdgepruneError(f"channel multiple must be positive, got {multiple}")
    padded = copy.deepcopy(model).eval()
    prof = profile(padded, input_shape)
    bn_of = {layer.name: layer.bn for layer in prof.layers}

    def replace(name: str, dim: str, n: int) -> None:
        parent_name, _, child = name.rpartition(".")
        parent = padded.get_submodule(parent_name) if parent_name else padded
        setattr(parent, child, _padded(padded.get_submodule(name), dim, n))

    for group in prof.groups:
        n = (-group.width) % multiple
        if not group.prunable or n == 0 or group.unit > 1:  # grouped convs / GroupNorm: padding would shift groups
            continue
        for member in group.members:
            replace(member.layer, member.dim, n * member.per_channel)
            if member.dim == "out" and bn_of.get(member.layer):
                replace(bn_of[member.layer], "out", n)
    padded.eval()  # the new layers start in training mode
    x = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        diff = (padded(x) - model.eval()(x)).abs().max().item()
    if not diff <= 1e-4:
        raise EdgepruneError(f"channel padding changed the outputs by {diff:.3g}; this architecture cannot be padded")
    return padded


__all__ = [
    "EXPORTERS",
    "WRITTEN_BY",
    "check_fp32_path",
    "check_onnx",
    "export_onnx",
    "fp32_path",
    "onnx_outputs",
    "ort_session",
    "pad_channels",
]
