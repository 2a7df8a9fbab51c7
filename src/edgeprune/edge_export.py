"""Exports to the edge runtimes, ExecuTorch (.pte) and LiteRT (.tflite), checked against PyTorch before they land.

- ``executorch``: ``torch.export`` of the model in eval mode, lowered by ``to_edge_transform_and_lower``
  with the ``XnnpackPartitioner`` (every supported op runs in the XNNPACK delegate, as on a phone)
  and serialised by ``to_executorch``.
- ``litert``: ``litert_torch.convert(model, example)`` (torch.export, then the LiteRT converter), written
  with ``.export(path)``; the interpreter runs it with its default XNNPACK delegate.

Both are written for batch 1 (an edge app's batch; ExecuTorch plans its memory statically). The written
file is then loaded in its own runtime (``edgeprune.edge_runtime``) and run on ``check_images`` random
inputs; when the largest absolute difference from PyTorch's outputs exceeds ``atol`` (1e-4 by default,
as for ONNX) the export fails with one line and nothing is left behind: the file is written through a
temporary file and renamed only after the check passes.

The int8 versions of both formats are in ``edgeprune.edge_quantize``; ``lower`` here writes either.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeprune.edge_runtime import FORMATS, open_model, quiet_stderr, require, runtime_name
from edgeprune.errors import EdgepruneError, first_line
from edgeprune.files import atomic_write
from edgeprune.io import ModelRef, Resolved, resolve

EXPORT_FORMATS = ("onnx", *FORMATS)  # what ``edgeprune export --format`` writes
SUFFIXES = {"onnx": ".onnx", **FORMATS}
DEFAULT_ATOL = 1e-4  # largest allowed |runtime - torch| of an fp32 export, as for ONNX
DEFAULT_CHECK_IMAGES = 2


def check_format(fmt: str, path: str | Path) -> str:
    """A known format whose suffix ``path`` carries; one line naming the choices or the suffix when not."""
    if fmt not in EXPORT_FORMATS:
        raise EdgepruneError(f"unknown format '{fmt}'; choose from: {', '.join(EXPORT_FORMATS)}")
    if Path(path).suffix.lower() != SUFFIXES[fmt]:
        raise EdgepruneError(f"{path}: a {fmt} file must end in {SUFFIXES[fmt]}")
    return fmt


def format_for(path: str | Path) -> str:
    """The export format a file name's suffix asks for (.onnx, .pte, .tflite); one line for any other."""
    suffix = Path(path).suffix.lower()
    for fmt, known in SUFFIXES.items():
        if suffix == known:
            return fmt
    raise EdgepruneError(f"{path}: give --format, or a name ending in {', '.join(SUFFIXES.values())}")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the exporters' warnings, Python log lines and C++ log lines; their errors still raise."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # litert_torch warns through the root logger
    try:
        with warnings.catch_warnings(), quiet_stderr():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def litert_env() -> None:
    """Quiet the LiteRT converter before it is imported: no progress bars, no TensorFlow start-up lines."""
    os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def lower(fmt: str, model: nn.Module, example: torch.Tensor, path: Path, quantizer: Any = None) -> None:
    """Write ``model`` (a module, or a PT2E-converted graph with its ``quantizer``) as a ``fmt`` file at ``path``."""
    try:
        with quiet():
            if fmt == "executorch":
                from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
                from executorch.exir import to_edge_transform_and_lower

                program = torch.export.export(model, (example,))
                lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch()
                path.write_bytes(lowered.buffer)
            else:
                litert_env()
                import litert_torch

                config = None
                if quantizer is not None:
                    from litert_torch.quantize.quant_config import QuantConfig

                    config = QuantConfig(pt2e_quantizer=quantizer)
                litert_torch.convert(model, (example,), quant_config=config).export(str(path))
    except (EdgepruneError, OSError):
        raise
    except Exception as e:  # torch.export and the converters raise many kinds of errors
        raise EdgepruneError(f"{fmt} export failed ({first_line(e)})") from None


def reference_outputs(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """PyTorch's scores for ``x`` (the model's first output), as float32."""
    from edgeprune.export import _tensors

    with torch.inference_mode():
        outs = _tensors(model(x))
    if not outs:
        raise EdgepruneError("the model returns no tensor")
    return outs[0].float().numpy()


def write_checked(
    path: Path, fmt: str, module: Any, inputs: tuple, *, atol: float = math.inf, quantizer: Any = None
) -> float:
    """Lower ``module`` to ``path`` atomically, run it in the format's runtime and return the largest difference.

    ``inputs`` is (the example for tracing, the check batch, the outputs expected for it); a non-finite
    difference, or one above ``atol``, leaves nothing at ``path`` and raises one line.
    """
    example, check, expected = inputs
    result: dict = {}

    def write(tmp: Path) -> None:
        lower(fmt, module, example, tmp, quantizer)
        diff = runtime_diff(tmp, fmt, check, expected)
        if not np.isfinite(diff):
            raise EdgepruneError(f"{path.name}: the {fmt} model gives non-finite outputs")
        if diff > atol:
            raise EdgepruneError(f"{fmt} export check failed: outputs differ from PyTorch by {diff:.3g} (> {atol:g})")
        result["diff"] = diff

    atomic_write(path, write)
    return result["diff"]


def runtime_diff(path: Path, fmt: str, x: torch.Tensor, expected: np.ndarray) -> float:
    """Largest absolute difference between the file's outputs in its runtime and ``expected``."""
    got = open_model(path, fmt=fmt).run(x.numpy())
    if got.shape != expected.shape:
        raise EdgepruneError(f"{fmt} output shape {got.shape} differs from PyTorch's {expected.shape}")
    return float(np.max(np.abs(got - expected))) if expected.size else 0.0


def prepare_model(
    model: nn.Module | str | Path | ModelRef | Resolved, input_shape: tuple[int, ...] | None, pad_to: int | None
) -> tuple[nn.Module, nn.Module, tuple[int, ...]]:
    """The module to export (channels zero-padded when ``pad_to``), the one to compare with, and the input shape."""
    resolved = resolve(str(model) if isinstance(model, Path) else model)
    module, input_shape = resolved.model.eval(), tuple(input_shape or resolved.input_shape)
    exported = module
    if pad_to:
        from edgeprune.export import pad_channels

        exported = pad_channels(module, pad_to, input_shape)
    return exported, module, input_shape


def export_edge(
    model: nn.Module | str | Path | ModelRef | Resolved,
    path: str | Path,
    fmt: str,
    input_shape: tuple[int, ...] | None = None,
    *,
    atol: float = DEFAULT_ATOL,
    check_images: int = DEFAULT_CHECK_IMAGES,
    seed: int = 0,
    pad_to: int | None = None,
) -> dict:
    """Export a model to ExecuTorch (.pte) or LiteRT (.tflite), check it in its runtime, write it atomically."""
    from edgeprune.export import check_export_args

    check_export_args(17, atol)
    if fmt not in FORMATS:
        raise EdgepruneError(f"unknown edge format '{fmt}'; choose from: {', '.join(FORMATS)}")
    if isinstance(check_images, bool) or not isinstance(check_images, int) or check_images < 1:
        raise EdgepruneError(f"check images must be a positive integer, got {check_images!r}")
    path = Path(path)
    if path.is_dir():
        raise EdgepruneError(f"{path}: is a folder; give the {FORMATS[fmt]} file name")
    require(fmt)  # before any work: a missing runtime is one line naming the extra
    module, reference, input_shape = prepare_model(model, input_shape, pad_to)
    gen = torch.Generator().manual_seed(seed)
    example = torch.randn(1, *input_shape, generator=gen)
    check_input = torch.randn(check_images, *input_shape, generator=gen)
    expected = reference_outputs(reference, check_input)
    diff = write_checked(path, fmt, module, (example, check_input, expected), atol=atol)
    return {
        "path": str(path),
        "format": fmt,
        "bytes": path.stat().st_size,
        "precision": "fp32",
        "input_shape": [1, *input_shape],
        "pad_channels": pad_to,
        "check": {"max_abs_diff": diff, "atol": atol, "images": check_images, "runtime": runtime_name(fmt)},
    }


__all__ = [
    "DEFAULT_ATOL",
    "EXPORT_FORMATS",
    "SUFFIXES",
    "check_format",
    "export_edge",
    "format_for",
    "litert_env",
    "lower",
    "prepare_model",
    "quiet",
    "reference_outputs",
    "runtime_diff",
    "write_checked",
]
