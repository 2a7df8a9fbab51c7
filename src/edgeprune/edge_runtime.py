"""Run an ExecuTorch (.pte) or LiteRT (.tflite) file on numpy batches, in the runtime a device would use.

``open_model`` loads a file in its runtime and returns an ``EdgeModel`` whose ``run`` takes a float32
batch (N, C, H, W) and returns float32 scores, whatever the file stores:

- ``executorch``: ``executorch.runtime`` (the portable runtime with the XNNPACK delegate that
  ``edgeprune export --format executorch`` lowers to); inputs pass as CPU tensors (the Python
  bindings take torch tensors; the runtime itself needs no torch on a device).
- ``litert``: ``ai_edge_litert.interpreter.Interpreter`` with its default XNNPACK delegate. An int8
  file converted from a PT2E-quantized model takes and gives int8 tensors: inputs are quantized with
  the input tensor's scale and zero point and outputs dequantized with the output's, as an app does.

Both formats are written for batch 1 (what a device runs; ExecuTorch's memory plan is static), so a
batch of N images runs as N inferences. The runtimes' own start-up lines (cpuinfo probes, "Created
TensorFlow Lite XNNPACK delegate") go to file descriptor 2 from C++; they are silenced while a file
loads. This module imports no torch itself and nothing of edgeprune but ``errors``: the measuring
process (``edgeprune/backends/worker.py``) loads it by path.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeprune.errors import EdgepruneError, first_line

FORMATS = {"executorch": ".pte", "litert": ".tflite"}  # format -> the suffix of its files
# format -> (module that must import, pip distribution whose version is recorded)
_RUNTIMES = {
    "executorch": ("executorch.runtime", "executorch"),
    "litert": ("ai_edge_litert.interpreter", "ai-edge-litert"),
}
_INT8_RANGE = (-128, 127)

if TYPE_CHECKING:  # numpy loads with a runtime, not with this module: `edgeprune --help` reads the names above
    import numpy as np


def format_of(path: Any) -> str | None:
    """The edge format a path's suffix names (``executorch`` for .pte, ``litert`` for .tflite), else None."""
    if not isinstance(path, (str, Path)):
        return None
    suffix = Path(path).suffix.lower()
    return next((f for f, s in FORMATS.items() if s == suffix), None)


def is_edge_path(source: Any) -> bool:
    """True when ``source`` names a .pte or .tflite file."""
    return format_of(source) is not None


def require(fmt: str) -> Any:
    """Import the runtime of ``fmt``; one line naming the extra to install when it is missing."""
    if fmt not in FORMATS:
        raise EdgepruneError(f"unknown format '{fmt}'; choose from: {', '.join(FORMATS)}")
    try:
        with quiet_stderr():  # torchao, pulled in by executorch, prints lines about its optional kernels
            return importlib.import_module(_RUNTIMES[fmt][0])
    except ImportError as e:
        raise EdgepruneError(
            f"the {fmt} runtime is not installed ({first_line(e)}); pip install 'edgeprune[{fmt}]'"
        ) from None


def available(fmt: str) -> bool:
    """Whether the runtime of ``fmt`` imports here."""
    try:
        require(fmt)
    except EdgepruneError:
        return False
    return True


def runtime_name(fmt: str) -> str:
    """The runtime of a format with its installed version, for the record."""
    module, dist = _RUNTIMES[fmt]
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        version = "?"
    return f"{dist} {version} ({'XNNPACK delegate' if fmt == 'executorch' else 'Interpreter, XNNPACK delegate'})"


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 and sys.stderr (the runtimes' C++ and pybind log lines) for the duration.

    Python errors still raise.
    """
    try:
        saved = os.dup(2)
    except OSError:  # no descriptor 2 (a detached process): nothing to silence
        with contextlib.redirect_stderr(io.StringIO()):
            yield
        return
    try:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(io.StringIO()):
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class EdgeModel:
    """A loaded .pte or .tflite file: ``input_shape`` (with the batch dimension) and ``run`` (float32 in and out)."""

    def __init__(self, path: Path, fmt: str, input_shape: tuple[int, ...], run_one: Any, precision: str) -> None:
        self.path, self.format, self.input_shape, self._run_one, self.precision = (
            path, fmt, input_shape, run_one, precision,
        )  # fmt: skip

    def run_batch(self, x: np.ndarray) -> np.ndarray:
        """One inference on a float32 batch of exactly the file's input shape, unchecked (the timing loops' call)."""
        return self._run_one(x)

    def run(self, x: np.ndarray) -> np.ndarray:
        """Scores of a float32 batch, one inference per batch of the file's own size (1)."""
        import numpy as np

        x = np.ascontiguousarray(x, dtype=np.float32)
        if tuple(x.shape[1:]) != self.input_shape[1:]:
            raise EdgepruneError(
                f"{self.path}: the model takes {_shown(self.input_shape[1:])} inputs, got {_shown(x.shape[1:])}"
            )
        step = self.input_shape[0]
        outs = []
        for start in range(0, len(x), step):
            part = x[start : start + step]
            n = len(part)
            if n < step:  # the last, short batch: zero-padded, the padding dropped
                part = np.concatenate([part, np.zeros((step - n, *part.shape[1:]), dtype=np.float32)])
            try:
                outs.append(np.asarray(self._run_one(part), dtype=np.float32)[:n])
            except EdgepruneError:
                raise
            except Exception as e:  # the runtimes raise their own error types
                raise EdgepruneError(f"{self.path}: {self.format} failed to run it ({first_line(e)})") from None
        return np.concatenate(outs) if outs else np.zeros((0,), dtype=np.float32)


def open_model(path: str | Path, threads: int | None = None, fmt: str | None = None) -> EdgeModel:
    """Load a .pte or .tflite file in its runtime; a missing, unloadable or multi-input file is one line.

    ``fmt`` names the format of a file whose name does not (a temporary file being checked).
    """
    path = Path(path)
    fmt = fmt or format_of(path)
    if fmt is None:
        raise EdgepruneError(f"{path}: not a .pte (ExecuTorch) or .tflite (LiteRT) file")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise EdgepruneError(f"threads must be a positive integer, got {threads!r}")
    require(fmt)
    if not path.is_file():
        raise EdgepruneError(f"{path}: no such file")
    try:
        with quiet_stderr():
            return (_open_executorch if fmt == "executorch" else _open_litert)(path, threads)
    except EdgepruneError:
        raise
    except Exception as e:  # the runtimes raise their own error types for a file they cannot load
        raise EdgepruneError(f"{path}: {fmt} cannot load it ({first_line(e)})") from None


def _open_executorch(path: Path, threads: int | None) -> EdgeModel:
    """An ExecuTorch program's ``forward`` method, run with the XNNPACK threadpool at ``threads``."""
    import torch
    from executorch.runtime import Runtime

    if threads:
        from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

        _unsafe_reset_threadpool(threads)
    method = Runtime.get().load_program(path).load_method("forward")
    meta = method.metadata
    if meta.num_inputs() != 1:
        raise EdgepruneError(f"{path}: has {meta.num_inputs()} inputs; only single-input models run here")
    shape = tuple(int(d) for d in meta.input_tensor_meta(0).sizes())

    def run_one(x: np.ndarray) -> np.ndarray:
        return method.execute([torch.from_numpy(x)])[0].float().numpy()

    return EdgeModel(path, "executorch", shape, run_one, "fp32")


def _open_litert(path: Path, threads: int | None) -> EdgeModel:
    """A LiteRT interpreter over the file, (de)quantizing int8 inputs and outputs with their own parameters."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    if len(inputs) != 1:
        raise EdgepruneError(f"{path}: has {len(inputs)} inputs; only single-input models run here")
    given, out = inputs[0], outputs[0]
    shape = tuple(int(d) for d in given["shape"])

    def run_one(x: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(given["index"], _to_stored(x, given))
        interpreter.invoke()
        return _from_stored(interpreter.get_tensor(out["index"]), out)

    precision = "int8" if np.dtype(given["dtype"]) == np.int8 else "fp32"
    return EdgeModel(path, "litert", shape, run_one, precision)


def _to_stored(x: np.ndarray, detail: dict) -> np.ndarray:
    """A float batch as the tensor stores it: int8 quantized with its scale and zero point, else float32."""
    import numpy as np

    if np.dtype(detail["dtype"]) != np.int8:
        return x
    scale, zero = detail["quantization"]
    return np.clip(np.round(x / scale) + zero, *_INT8_RANGE).astype(np.int8)


def _from_stored(y: np.ndarray, detail: dict) -> np.ndarray:
    """An output tensor as float32 scores (dequantized when it stores int8)."""
    import numpy as np

    if np.dtype(detail["dtype"]) != np.int8:
        return y.astype(np.float32, copy=True)  # the interpreter reuses its buffer on the next invoke
    scale, zero = detail["quantization"]
    return (y.astype(np.float32) - zero) * scale


def _shown(shape: Any) -> str:
    return "x".join(str(d) for d in shape)


__all__ = ["FORMATS", "EdgeModel", "available", "format_of", "is_edge_path", "open_model", "require", "runtime_name"]
