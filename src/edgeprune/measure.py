"""Edge measurements of a model: latency, CPU use, resident memory, size on disk, and energy.

``bench`` prepares a model (``prepare``: complexity counted, the artifact of each backend written, see
``edgeprune.backends``) and measures it on each backend in a fresh Python process of its own, so that
the memory figures are those of an inference process and not of the caller:

- ``torch``: eager PyTorch, channels-last weights and inputs, ``torch.inference_mode``;
- ``onnxruntime``: the model exported to ONNX (checked against PyTorch, see ``edgeprune.export``)
  and run with the CPUExecutionProvider; this process never imports torch.

Each process builds ``runs`` random inputs (seeded), records its resident set size (RSS) as the
baseline, loads the model, runs ``warmup`` untimed inferences and then times ``runs`` inferences
one by one. Reported: latency (median, p90, mean, min, max; ms per batch), CPU utilisation
(process CPU time of all threads / wall time of the timed loop, in % of one core, with the
intra-op thread count; a loop shorter than 0.5 s is extended with untimed inferences for this
figure, because other threads' CPU time is only accounted at scheduler ticks), the RSS peak of
the process (its high-water mark, ``VmHWM``) and its increase over the pre-model baseline (MB =
10^6 bytes), and the size of the model file on disk (the ``model.safetensors`` of the model folder
for torch, the ``.onnx`` file for onnxruntime).

Energy comes two ways, each labelled with its source (``edgeprune.energy``): the result's ``energy`` is
an *estimate* from the complexity counts (45 nm figures, Horowitz 2014; ``"source": "estimate"``), and
each backend's ``energy`` is a *measurement* from the CPU's RAPL counters over the same window as the
CPU figure (``"source": "rapl"``: whole-package energy, idle cores and other processes included), or
the reason there is none (no powercap interface, counters readable by root only, ...).

The text report, ``bench_table``, lives in ``edgeprune.report``.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeprune.backends import (
    BACKENDS,
    EDGE_BACKENDS,
    MB,
    check_backends,
    run_measurement,
    write_artifact,
)
from edgeprune.edge_runtime import format_of, is_edge_path
from edgeprune.energy import energy_estimate
from edgeprune.errors import EdgepruneError
from edgeprune.runtime import default_threads, resolve_device
from edgeprune.validate import check_count

# -- argument checks --------------------------------------------------------------------------


def _check_positive(pad_to: int | None = None, **values: int | None) -> None:
    """The counts of a bench call positive (warmup >= 0); pad_to named by its option too."""
    for name, value in {**values, "pad_to (--pad-channels)": pad_to}.items():
        if value is not None:
            check_count(value, name, zero=name == "warmup")


# -- model preparation (parent process) -------------------------------------------------------


@dataclass
class Prepared:
    """A model made ready for measuring: its folder, its checked .onnx file, complexity and energy."""

    source: str
    folder: Path
    input_shape: tuple[int, ...]
    totals: dict
    energy: dict
    onnx: Path | None = None
    export: dict | None = None
    counted_from: str = "the PyTorch model"

    graph: Path | None = None  # a torch.export program, for a module edgeprune cannot rebuild from model.json
    precision: str = "fp32"  # of the weights: fp32, or int8 / mixed for a quantized .onnx file
    edge: dict = field(default_factory=dict)  # executorch / litert -> (checked .pte / .tflite file, export details)

    def file_for(self, backend: str) -> Path:
        """The model file a backend loads: the folder (or exported program) for torch, the .onnx for onnxruntime."""
        if backend in self.edge:
            return self.edge[backend][0]
        if backend == "torch":
            return self.graph or self.folder
        return self.onnx  # type: ignore[return-value]

    def size(self, backend: str) -> dict:
        """Size on disk of the backend's model file."""
        file = (self.graph or self.folder / "model.safetensors") if backend == "torch" else self.onnx
        file = self.edge[backend][0] if backend in self.edge else file
        size = file.stat().st_size
        return {"file": file.name, "bytes": size, "mb": size / MB}


def prepare(
    model_or_dir: Any,
    workdir: str | Path,
    backends: tuple[str, ...] | list[str] = BACKENDS,
    input_shape: tuple[int, ...] | None = None,
    *,
    num_classes: int | None = None,
    in_channels: int | None = None,
    pad_to: int | None = None,
) -> Prepared:
    """Save and export (for onnxruntime) a model into ``workdir``; count its complexity.

    ``model_or_dir``: a module (one without a builder is measured on torch as its ``torch.export``
    program), a model folder, a reference (zoo name, ``package.module:factory``, ``file.py:factory``),
    an ``edgeprune.io.ModelRef`` or ``Resolved``, or an .onnx file. ``pad_to`` zero-pads pruned layer
    widths to that multiple first (``edgeprune.export.pad_channels``).
    """
    import torch
    from torch import nn

    from edgeprune.io import resolve
    from edgeprune.trace import record_shapes

    backends = check_backends(tuple(backends))
    if is_onnx_path(model_or_dir):
        return _prepare_onnx(Path(model_or_dir), backends, input_shape, pad_to)
    if is_edge_path(model_or_dir):
        return _prepare_edge_file(Path(model_or_dir), backends, pad_to)
    workdir = Path(workdir)
    if isinstance(model_or_dir, (str, Path)):
        resolved = resolve(str(model_or_dir), num_classes=num_classes, in_channels=in_channels)
    else:
        resolved = resolve(model_or_dir)
    model, source = resolved.model, resolved.source
    input_shape = tuple(input_shape or resolved.input_shape)
    was_training = model.training
    model = model.eval()
    if pad_to:
        from edgeprune.export import pad_channels

        model = pad_channels(model, pad_to, input_shape)
        source += f" (channels zero-padded to x{pad_to})"
    totals = record_shapes(model, torch.zeros(1, *input_shape)).totals()
    # saved again even from a model folder: the measuring process loads this copy
    prepared = Prepared(source, workdir / "model", input_shape, totals, energy_estimate(totals))
    if "torch" in backends:
        path, info = write_artifact("torch", model, workdir, input_shape)
        if info["kind"] == "program":
            prepared.graph = path
            prepared.source += " (no builder: measured as its torch.export program)"
    if "onnxruntime" in backends:
        prepared.onnx, prepared.export = write_artifact("onnxruntime", model, workdir, input_shape)
    for backend in EDGE_BACKENDS:
        if backend in backends:
            prepared.edge[backend] = write_artifact(backend, model, workdir, input_shape)
    if isinstance(model_or_dir, nn.Module):
        resolved.model.train(was_training)  # leave the caller's module as it was
    return prepared


def is_onnx_path(source: Any) -> bool:
    """True when ``source`` names an .onnx file (measured as it is, on onnxruntime)."""
    return isinstance(source, (str, Path)) and str(source).lower().endswith(".onnx")


def default_backends(source: Any) -> tuple[str, ...]:
    """The backends that can run ``source``: onnxruntime alone for an .onnx file, else all."""
    if is_edge_path(source):
        return (format_of(source),)
    return ("onnxruntime",) if is_onnx_path(source) else BACKENDS


def _prepare_edge_file(path: Path, backends: tuple[str, ...], pad_to: int | None) -> Prepared:
    """A .pte or .tflite file made ready for its own runtime: loaded once (its input shape), complexity not counted."""
    from edgeprune.edge_runtime import open_model

    fmt = format_of(path)
    if backends != (fmt,):
        raise EdgepruneError(f"{path}: a {path.suffix} file runs on {fmt} only (--backends {fmt})")
    if pad_to:
        raise EdgepruneError(f"{path}: --pad-channels needs a model folder or a zoo name, not a {path.suffix} file")
    shape = open_model(path).input_shape
    if shape[0] != 1:
        raise EdgepruneError(f"{path}: takes batches of {shape[0]}; edgeprune times batch-1 files")
    where = f"not counted for a {path.suffix} file: bench the model folder for params, FLOPs and the energy estimate"
    prepared = Prepared(str(path), path.parent, tuple(shape[1:]), {}, {}, counted_from=where)
    prepared.edge[fmt] = (path, None)
    return prepared


def _prepare_onnx(
    path: Path, backends: tuple[str, ...], input_shape: tuple[int, ...] | None, pad_to: int | None
) -> Prepared:
    """An .onnx file made ready for onnxruntime: its complexity counted from its graph, nothing written."""
    from edgeprune.onnx_graph import onnx_profile

    if "torch" in backends:
        raise EdgepruneError(f"{path}: an .onnx file runs on onnxruntime only (--backends onnxruntime)")
    if pad_to:
        raise EdgepruneError(f"{path}: --pad-channels needs a model folder or a zoo name, not an .onnx file")
    prof = onnx_profile(path, input_shape)
    totals = prof.totals()
    where = "the ONNX graph (a BatchNorm folded into a conv counts as its bias)"
    if prof.precision != "fp32":
        where = "the quantized ONNX graph (weights and activations at their stored width)"
    prepared = Prepared(str(path), path.parent, prof.input_shape, totals, energy_estimate(prof), path, None, where)
    prepared.precision = prof.precision
    return prepared


def machine_info() -> dict:
    """Cores, load average and library versions of this machine, for the record."""
    import platform

    info: dict = {
        "cpu_count": os.cpu_count(),
        "usable_cores": default_threads(),
        "machine": platform.machine(),
        "processor": _cpu_model(),
        "python": platform.python_version(),
    }
    if hasattr(os, "getloadavg"):
        info["load_average_1m"] = os.getloadavg()[0]
    for lib in ("torch", "onnxruntime"):
        try:
            info[lib] = __import__(lib).__version__
        except ImportError:  # pragma: no cover
            pass
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor()


def measure_prepared(
    prepared: Prepared,
    backends: tuple[str, ...] | list[str] = BACKENDS,
    *,
    runs: int = 100,
    warmup: int = 10,
    batch_size: int = 1,
    threads: int | None = None,
    seed: int = 0,
    spin: bool = True,
    device: str = "cpu",
) -> dict:
    """``bench`` on a model already prepared: one fresh measuring process per backend.

    ``device`` (``auto``, ``cpu``, ``cuda``, ``mps``) is where the torch backend runs; onnxruntime stays on the CPU.
    """
    device = str(resolve_device(device))  # a device that is not there: one line, before any process starts
    backends = check_backends(tuple(backends))
    _check_positive(runs=runs, warmup=warmup, batch_size=batch_size, threads=threads)
    if prepared.totals:  # a .pte / .tflite file: not counted; its runtime holds batch 1 (checked below)
        _check_memory(prepared, batch_size)
    threads = threads or default_threads()
    out: dict = {
        "model": prepared.source,
        "input_shape": list(prepared.input_shape),
        "batch_size": batch_size,
        "runs": runs,
        "warmup": warmup,
        "threads": threads,
        "spin_wait": spin,
        "complexity": {
            **prepared.totals,
            "precision": prepared.precision,
            "conventions": _conventions(prepared.precision),
            "counted_from": prepared.counted_from,
        },
        "energy": prepared.energy,
        "machine": machine_info(),
        "units": {
            "latency": "ms per batch",
            "cpu": "% of one core",
            "rss": "MB (1e6 bytes)",
            "size": "bytes and MB (1e6 bytes)",
            "energy": "microjoules per inference",
        },
        "backends": {},
    }
    for backend in backends:
        if backend == "onnxruntime" and prepared.onnx is None:
            raise EdgepruneError("model was prepared without onnxruntime")
        if backend in EDGE_BACKENDS and backend not in prepared.edge:
            raise EdgepruneError(f"model was prepared without {backend}")
        _check_edge_batch((backend,), batch_size)
        artifact = {"model": (prepared.file_for(backend), prepared.input_shape)}
        options = {"runs": runs, "warmup": warmup, "batch_size": batch_size, "threads": threads, "seed": seed}
        # onnxruntime ignores the device
        result = run_measurement(artifact, backend, False, spin=spin, device=device, **options)["model"]
        result["size"] = prepared.size(backend)
        if backend == "onnxruntime" and prepared.export is not None:
            result["export"] = prepared.export
        if backend in prepared.edge and prepared.edge[backend][1]:
            result["export"] = prepared.edge[backend][1]
        out["backends"][backend] = result
    return out


def _check_edge_batch(backends: tuple[str, ...], batch_size: int) -> None:
    """ExecuTorch and LiteRT files are written for batch 1: one line for any other batch size."""
    edge = [b for b in backends if b in EDGE_BACKENDS]
    if edge and batch_size != 1:
        raise EdgepruneError(f"{edge[0]} files are exported for batch 1; give --batch-size 1 (the default)")


def _check_memory(prepared: Prepared, batch_size: int) -> None:
    """Refuse a model whose weights plus ``batch_size`` x (input + layer outputs) exceed the memory available, before
    a measuring process allocates them (an .onnx file's input and widths come from the file, --batch-size from the
    user). Estimated from the complexity counts: 4 B per parameter, the rest of ``memory_bytes`` being outputs."""
    from edgeprune import limits

    params = 4 * prepared.totals["params"]
    outputs = 4 * math.prod(prepared.input_shape) + max(0, prepared.totals["memory_bytes"] - params)
    limits.check_memory(prepared.source, params, outputs, batch_size)


def _conventions(precision: str) -> str:
    """How the complexity figures of a bench result are counted."""
    if precision == "fp32":
        return "fp32, batch 1; flops = multiply-adds counted once (MACs); memory_bytes = 4 B x (params + output maps)"
    return (
        f"{precision}, batch 1; flops = multiply-adds counted once (MACs); params = values; memory_bytes = weights "
        "at their stored width (int8: 1 B) + biases (4 B) + output maps at their stored width (quantized: 1 B)"
    )


def bench(
    model_or_dir: Any,
    backends: tuple[str, ...] | list[str] | None = None,
    *,
    runs: int = 100,
    warmup: int = 10,
    batch_size: int = 1,
    threads: int | None = None,
    input_shape: tuple[int, ...] | None = None,
    num_classes: int | None = None,
    in_channels: int | None = None,
    seed: int = 0,
    pad_to: int | None = None,
    spin: bool = True,
    device: str = "cpu",
) -> dict:
    """Measure latency, CPU, RSS, size on disk and energy (estimated; RAPL where readable) of a model on each backend.

    ``model_or_dir``: a model reference (zoo name, ``package.module:factory``, ``file.py:factory``), a
    model folder, an ``nn.Module`` (with or without a builder), an ``edgeprune.io.ModelRef`` or ``Resolved``,
    or an .onnx file (onnxruntime only; its complexity is counted from the graph). ``backends=None``
    means all that can run it.

    ``spin=False`` makes idle worker threads sleep at once (torch: ``OMP_WAIT_POLICY=PASSIVE``;
    onnxruntime: ``session.intra_op.allow_spinning=0``) instead of busy-waiting: on a machine shared
    with other work, spinning threads steal the cores the busy ones need and latency can grow tenfold.
    """
    backends = check_backends(default_backends(model_or_dir) if backends is None else backends)
    _check_positive(runs=runs, warmup=warmup, batch_size=batch_size, threads=threads, pad_to=pad_to)
    _check_edge_batch(backends, batch_size)  # before the exports, which take seconds
    with tempfile.TemporaryDirectory(prefix="edgeprune-bench-") as tmp:
        prepared = prepare(
            model_or_dir, tmp, backends, input_shape, num_classes=num_classes, in_channels=in_channels, pad_to=pad_to
        )
        return measure_prepared(
            prepared, backends, runs=runs, warmup=warmup, batch_size=batch_size, threads=threads, seed=seed,
            spin=spin, device=device,
        )  # fmt: skip


def latency_interleaved(
    models: dict[str, Any],
    backend: str,
    *,
    runs: int = 100,
    warmup: int = 10,
    batch_size: int = 1,
    threads: int | None = None,
    input_shape: tuple[int, ...] | None = None,
    seed: int = 0,
    spin: bool = True,
) -> dict[str, dict]:
    """Latency of several models (Prepared, modules, folders or names) timed round-robin in one process.

    Each model takes its own input shape (``input_shape``, when given, is what the unprepared ones are prepared for).
    """
    (backend,) = check_backends(backend)
    _check_positive(runs=runs, warmup=warmup, batch_size=batch_size, threads=threads)
    if not models:
        raise EdgepruneError("no models given")
    threads = threads or default_threads()
    with tempfile.TemporaryDirectory(prefix="edgeprune-interleave-") as tmp:
        ready = {}
        for i, (name, m) in enumerate(models.items()):
            ready[name] = m if isinstance(m, Prepared) else prepare(m, Path(tmp) / f"m{i}", (backend,), input_shape)
        artifacts = {str(n): (p.file_for(backend), p.input_shape) for n, p in ready.items()}
        return run_measurement(
            artifacts, backend, True, runs=runs, warmup=warmup, batch_size=batch_size, threads=threads, seed=seed,
            spin=spin,
        )  # fmt: skip


__all__ = [
    "Prepared",
    "bench",
    "default_backends",
    "is_onnx_path",
    "latency_interleaved",
    "machine_info",
    "measure_prepared",
    "prepare",
]
