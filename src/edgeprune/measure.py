"""Edge measurements: latency, CPU use, resident memory, size on disk and an energy estimate.

``bench`` measures a model on each backend in a fresh Python process of its own, so that the
memory figures are those of an inference process and not of the caller:

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

The energy per inference (batch 1) is an estimate from 45 nm figures (Horowitz 2014, as used by
Han et al. 2015), not a measurement: 4.6 pJ per fp32 multiply-add (3.7 pJ multiply + 0.9 pJ add)
and 640 pJ per 32-bit DRAM access, with every weight and activation word moved once, i.e.
``memory_bytes / 4`` words of the SPEC complexity totals:

    E = 4.6 pJ x MACs + 640 pJ x (params + output activations)

An int8 model (an .onnx file quantized by ``edgeprune.quantize``, counted by ``edgeprune.onnx_graph``)
takes the 8-bit figures of the same table: 0.2 pJ per 8-bit integer multiply + 0.03 pJ per 8-bit add
= 0.23 pJ per MAC, and DRAM traffic per byte actually stored, 640 pJ / 4 = 160 pJ per byte, with
weights at 1 byte, biases at 4 and quantized activations at 1 (``memory_bytes`` of its profile):

    E = 0.23 pJ x MACs + 160 pJ x memory_bytes

The DRAM term is the same formula in both cases (640 pJ per 4 bytes); a graph with both kinds of
layers ("mixed") prices each layer's MACs at its own figure.

This module imports neither torch nor edgeprune at load time: the onnxruntime worker runs this
very file in a process that only has onnxruntime, numpy and psutil.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BACKENDS = ("torch", "onnxruntime")
PJ_PER_MAC = 4.6  # 3.7 pJ fp32 multiply + 0.9 pJ fp32 add, 45 nm
PJ_PER_DRAM_WORD = 640.0  # one 32-bit DRAM access, 45 nm
ENERGY_SOURCE = "45 nm, Horowitz 2014"
PJ_PER_INT8_MAC = 0.23  # 0.2 pJ 8-bit integer multiply + 0.03 pJ 8-bit add, 45 nm
PJ_PER_DRAM_BYTE = PJ_PER_DRAM_WORD / 4  # 160 pJ: the same DRAM figure per byte stored
ENERGY_NOTE = (
    f"estimate ({ENERGY_SOURCE}): {PJ_PER_MAC} pJ per fp32 multiply-add + {PJ_PER_DRAM_WORD:g} pJ per "
    "32-bit DRAM word, every weight and activation moved once (memory_bytes / 4 words), batch 1"
)
INT8_ENERGY_NOTE = (
    f"estimate ({ENERGY_SOURCE}): {PJ_PER_INT8_MAC} pJ per int8 multiply-add (0.2 pJ multiply + 0.03 pJ add) + "
    f"{PJ_PER_DRAM_BYTE:g} pJ per DRAM byte (640 pJ per 32-bit word), every weight and activation moved once "
    "at its stored width (memory_bytes), batch 1"
)
MB = 1e6
CPU_WINDOW_S = 0.5  # CPU utilisation is measured over at least this much wall time

_WORKER_CODE = (
    "import importlib.util, sys\n"
    "spec = importlib.util.spec_from_file_location('_edgeprune_measure_worker', sys.argv[1])\n"
    "mod = importlib.util.module_from_spec(spec)\n"
    "sys.modules[spec.name] = mod\n"
    "spec.loader.exec_module(mod)\n"
    "mod._worker_main(sys.argv[2])\n"
)


def _error(message: str) -> Exception:
    from edgeprune.errors import EdgepruneError

    return EdgepruneError(message)


# -- energy -----------------------------------------------------------------------------------


def energy_estimate(profile: Any, precision: str | None = None) -> dict:
    """Energy per inference in microjoules from a Profile (or a totals dict): compute + DRAM, fp32 or int8 figures.

    A Profile's layers with 1-byte weights are priced as int8 MACs, the rest as fp32; a totals dict is
    all one ``precision`` (its "precision" key, else fp32). ``precision`` overrides either.
    """
    totals = profile.totals() if hasattr(profile, "totals") else dict(profile)
    macs = int(totals["flops"])
    precision = precision or getattr(profile, "precision", None) or totals.get("precision", "fp32")
    if precision not in ("fp32", "int8", "mixed"):
        raise _error(f"unknown precision '{precision}'; choose from: fp32, int8")
    if precision == "mixed":
        if not hasattr(profile, "layers"):
            raise _error("a mixed-precision energy estimate needs the profile's layers, not its totals")
        int8_macs = sum(layer.flops for layer in profile.layers if layer.weight_bytes == 1)
    else:
        int8_macs = macs if precision == "int8" else 0
    memory_bytes = int(totals["memory_bytes"])
    compute_uj = (PJ_PER_MAC * (macs - int8_macs) + PJ_PER_INT8_MAC * int8_macs) * 1e-6
    dram_uj = PJ_PER_DRAM_WORD * (memory_bytes / 4) * 1e-6
    out = {
        "total_uj": compute_uj + dram_uj,
        "compute_uj": compute_uj,
        "dram_uj": dram_uj,
        "macs": macs,
        "int8_macs": int8_macs,
        "fp32_macs": macs - int8_macs,
        "dram_words": memory_bytes / 4,
        "dram_bytes": memory_bytes,
        "precision": precision,
        "source": "estimate",
    }
    if precision == "fp32":
        constants = {"pj_per_mac": PJ_PER_MAC, "pj_per_dram_word": PJ_PER_DRAM_WORD, "source": ENERGY_SOURCE}
        return {**out, "constants": constants, "model": ENERGY_NOTE}
    constants = {"pj_per_mac": PJ_PER_INT8_MAC, "pj_per_dram_byte": PJ_PER_DRAM_BYTE, "source": ENERGY_SOURCE}
    if precision == "mixed":
        constants["pj_per_fp32_mac"] = PJ_PER_MAC
    note = INT8_ENERGY_NOTE + ("; fp32 layers at 4.6 pJ per MAC" if precision == "mixed" else "")
    return {**out, "constants": constants, "model": note}


# -- argument checks --------------------------------------------------------------------------


def default_threads() -> int:
    """All the cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def check_backends(backends: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Validate backend names; a one-line error names the choices."""
    if isinstance(backends, str):
        backends = (backends,)
    backends = tuple(dict.fromkeys(backends))
    if not backends:
        raise _error(f"no backend given; choose from: {', '.join(BACKENDS)}")
    for b in backends:
        if b not in BACKENDS:
            raise _error(f"unknown backend '{b}'; choose from: {', '.join(BACKENDS)}")
    return backends


def _check_positive(**values: int | None) -> None:
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise _error(f"{name} must be an integer, got {value!r}")
        if value <= 0 and not (name == "warmup" and value == 0):
            shown = "pad_to (--pad-channels)" if name == "pad_to" else name
            raise _error(f"{shown} must be {'>= 0' if name == 'warmup' else 'positive'}, got {value}")


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

    def file_for(self, backend: str) -> Path:
        """The model file a backend loads: the folder (or exported program) for torch, the .onnx for onnxruntime."""
        if backend == "torch":
            return self.graph or self.folder
        return self.onnx  # type: ignore[return-value]

    def size(self, backend: str) -> dict:
        """Size on disk of the backend's model file."""
        file = (self.graph or self.folder / "model.safetensors") if backend == "torch" else self.onnx
        size = file.stat().st_size
        return {"file": file.name, "bytes": size, "mb": size / MB}


def prepare(
    model_or_dir: Any,
    workdir: str | Path,
    backends: tuple[str, ...] | list[str] = BACKENDS,
    input_shape: tuple[int, ...] | None = None,
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

    from edgeprune.builders import builder_of
    from edgeprune.io import resolve, save
    from edgeprune.trace import record_shapes

    backends = check_backends(tuple(backends))
    if is_onnx_path(model_or_dir):
        return _prepare_onnx(Path(model_or_dir), backends, input_shape, pad_to)
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
    folder = workdir / "model"  # saved again even from a model folder: the measuring process loads this copy
    totals = record_shapes(model, torch.zeros(1, *input_shape)).totals()
    prepared = Prepared(source, folder, input_shape, totals, energy_estimate(totals))
    if builder_of(model) is not None:
        save(model, folder, input_shape)
    elif "torch" in backends:
        prepared.graph = _export_program(model, workdir / "model.pt2", input_shape)
        prepared.source += " (no builder: measured as its torch.export program)"
    if "onnxruntime" in backends:
        from edgeprune.export import export_onnx

        prepared.onnx = workdir / "model.onnx"
        info = export_onnx(model, prepared.onnx, input_shape)
        prepared.export = {k: info[k] for k in ("opset", "exporter", "check")}
    if isinstance(model_or_dir, nn.Module):
        resolved.model.train(was_training)  # leave the caller's module as it was
    return prepared


def _export_program(model: Any, path: Path, input_shape: tuple[int, ...]) -> Path:
    """Save a module that has no builder as a ``torch.export`` program the measuring process can load.

    A plain ``nn.Module`` (built in a notebook, say) cannot be rebuilt from model.json in another
    process; its exported graph runs the same aten operators eagerly, with its weights, and needs
    none of the user's code. The file is ours, written here and read once by our own worker.
    """
    import torch

    try:
        program = torch.export.export(model, (torch.zeros(1, *input_shape),))
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.export.save(program, str(path))
    except Exception as e:  # torch.export raises many kinds of errors for code it cannot trace
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise _error(
            f"this model has no builder and torch.export cannot trace it ({first}); build it from a reference "
            "(edgeprune.builders.build_model) or record one with edgeprune.builders.set_builder"
        ) from None
    return path


def is_onnx_path(source: Any) -> bool:
    """True when ``source`` names an .onnx file (measured as it is, on onnxruntime)."""
    return isinstance(source, (str, Path)) and str(source).lower().endswith(".onnx")


def default_backends(source: Any) -> tuple[str, ...]:
    """The backends that can run ``source``: onnxruntime alone for an .onnx file, else all."""
    return ("onnxruntime",) if is_onnx_path(source) else BACKENDS


def _prepare_onnx(
    path: Path, backends: tuple[str, ...], input_shape: tuple[int, ...] | None, pad_to: int | None
) -> Prepared:
    """An .onnx file made ready for onnxruntime: its complexity counted from its graph, nothing written."""
    from edgeprune.onnx_graph import onnx_profile

    if "torch" in backends:
        raise _error(f"{path}: an .onnx file runs on onnxruntime only (--backends onnxruntime)")
    if pad_to:
        raise _error(f"{path}: --pad-channels needs a model folder or a zoo name, not an .onnx file")
    prof = onnx_profile(path, input_shape)
    totals = prof.totals()
    where = "the ONNX graph (a BatchNorm folded into a conv counts as its bias)"
    if prof.precision != "fp32":
        where = "the quantized ONNX graph (weights and activations at their stored width)"
    prepared = Prepared(str(path), path.parent, prof.input_shape, totals, energy_estimate(prof), path, None, where)
    prepared.precision = prof.precision
    return prepared


def _run_worker(job: dict, threads: int) -> dict:
    """Run one measurement job in a fresh Python process and return its JSON result."""
    with tempfile.TemporaryDirectory(prefix="edgeprune-worker-") as tmp:
        job_file = Path(tmp) / "job.json"
        job["result_file"] = str(Path(tmp) / "result.json")
        job_file.write_text(json.dumps(job))
        env = dict(os.environ)
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(threads)
        if not job["spin"]:
            env["OMP_WAIT_POLICY"] = "PASSIVE"  # torch's OpenMP threads sleep at once instead of spinning
        proc = subprocess.run(
            [sys.executable, "-c", _WORKER_CODE, str(Path(__file__).resolve()), str(job_file)],
            capture_output=True,
            text=True,
            env=env,
        )
        result_path = Path(job["result_file"])
        if proc.returncode != 0 or not result_path.is_file():
            lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
            last = lines[-1] if lines else f"exit {proc.returncode}"
            raise _error(f"{job['backend']} measurement process failed: {last}")
        return json.loads(result_path.read_text())


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


def _job(
    backend: str, runs: int, warmup: int, batch_size: int, threads: int, shape: tuple, seed: int, spin: bool
) -> dict:
    # sys_path: the measuring process imports a py: builder's module from the same places
    return {"backend": backend, "runs": runs, "warmup": warmup, "batch_size": batch_size, "threads": threads,
            "input_shape": list(shape), "seed": seed, "spin": spin, "sys_path": [p for p in sys.path if p]}  # fmt: skip


def measure_prepared(
    prepared: Prepared,
    backends: tuple[str, ...] | list[str] = BACKENDS,
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
    from edgeprune.train import resolve_device

    device = str(resolve_device(device))  # a device that is not there: one line, before any process starts
    backends = check_backends(tuple(backends))
    _check_positive(runs=runs, warmup=warmup, batch_size=batch_size, threads=threads)
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
            raise _error("model was prepared without onnxruntime")
        job = _job(backend, runs, warmup, batch_size, threads, prepared.input_shape, seed, spin)
        job.update(interleaved=False, models={"model": str(prepared.file_for(backend))}, device=device)
        result = _run_worker(job, threads)["model"]
        result["size"] = prepared.size(backend)
        if backend == "onnxruntime" and prepared.export is not None:
            result["export"] = prepared.export
        out["backends"][backend] = result
    return out


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
    """Measure latency, CPU, RSS, size on disk and estimated energy of a model on each backend.

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
    with tempfile.TemporaryDirectory(prefix="edgeprune-bench-") as tmp:
        prepared = prepare(model_or_dir, tmp, backends, input_shape, num_classes, in_channels, pad_to)
        return measure_prepared(prepared, backends, runs, warmup, batch_size, threads, seed, spin, device)


def latency_interleaved(
    models: dict[str, Any],
    backend: str,
    runs: int = 100,
    warmup: int = 10,
    batch_size: int = 1,
    threads: int | None = None,
    input_shape: tuple[int, ...] | None = None,
    seed: int = 0,
    spin: bool = True,
) -> dict[str, dict]:
    """Latency of several models (Prepared, modules, folders or names) timed round-robin in one process."""
    (backend,) = check_backends(backend)
    _check_positive(runs=runs, warmup=warmup, batch_size=batch_size, threads=threads)
    if not models:
        raise _error("no models given")
    threads = threads or default_threads()
    with tempfile.TemporaryDirectory(prefix="edgeprune-interleave-") as tmp:
        ready = {}
        for i, (name, m) in enumerate(models.items()):
            ready[name] = m if isinstance(m, Prepared) else prepare(m, Path(tmp) / f"m{i}", (backend,), input_shape)
        shapes = {p.input_shape for p in ready.values()}
        if len(shapes) > 1:
            raise _error(f"models to compare take different input shapes: {sorted(shapes)}")
        job = _job(backend, runs, warmup, batch_size, threads, shapes.pop(), seed, spin)
        job.update(interleaved=True, models={n: str(p.file_for(backend)) for n, p in ready.items()})
        return _run_worker(job, threads)


# -- text output ------------------------------------------------------------------------------


def bench_table(result: dict) -> str:
    """The human-readable report of ``bench``."""
    from edgeprune.report import human, table

    c = result["complexity"]
    shape = "x".join(str(d) for d in [result["batch_size"], *result["input_shape"]])
    head = (
        f"{result['model']}: input {shape}, {result['runs']} timed runs after {result['warmup']} warm-up, "
        f"{result['threads']} thread(s){'' if result.get('spin_wait', True) else ' (no spin-waiting)'}, "
        "each backend in its own process\n"
        f"complexity: {human(c['params'], 'params')} params, {human(c['flops'], 'flops')} FLOPs (MACs), "
        f"memory {human(c['memory_bytes'], 'memory')} (weights + output maps, {_width_note(c)})"
    )
    headers = [
        "backend",
        "median ms",
        "p90 ms",
        "mean ms",
        "CPU % (1 core=100)",
        "threads",
        "RSS peak MB",
        "RSS +MB",
        "size on disk",
    ]
    rows = []
    for name, b in result["backends"].items():
        lat = b["latency_ms"]
        rows.append(
            [
                name,
                f"{lat['median']:.3f}",
                f"{lat['p90']:.3f}",
                f"{lat['mean']:.3f}",
                f"{b['cpu']['utilisation_pct']:.0f}",
                str(b["cpu"]["threads"]),
                f"{b['memory']['rss_peak_mb']:.1f}",
                f"{b['memory']['rss_increase_mb']:.1f}",
                f"{b['size']['mb']:.2f} MB ({b['size']['file']})",
            ]
        )
    energy = _energy_lines(result["energy"])
    notes = (
        "CPU % = process CPU time of all threads / wall time of the timed loop; RSS peak = process "
        "high-water mark; RSS + = peak minus the RSS before the model was loaded"
    )
    source = c.get("counted_from", "the PyTorch model")
    counted = [] if source == "the PyTorch model" else [f"complexity counted from {source}"]
    export = [
        f"onnx export: {b['export']['exporter']}, opset {b['export']['opset']}, max |onnx - torch| = "
        f"{b['export']['check']['max_abs_diff']:.2e}"
        for b in result["backends"].values()
        if b.get("export")
    ]
    m = result.get("machine", {})
    busy = []
    if m.get("load_average_1m", 0) > m.get("usable_cores", 1):
        busy = [
            f"note: load average {m['load_average_1m']:.1f} on {m['usable_cores']} cores when measured: other "
            "processes shared the CPU, so latencies are noisy (try --no-spin or --threads 1)"
        ]
    return "\n".join([head, "", table(headers, rows), "", energy, notes, *counted, *export, *busy])


def _width_note(complexity: dict) -> str:
    """How the memory of a bench result is counted, in a few words."""
    if complexity.get("precision", "fp32") == "fp32":
        return "fp32"
    return f"{complexity['precision']}: values at their stored width"


def _energy_lines(e: dict) -> str:
    """The energy estimate of a bench result, with its constants, as two lines of text."""
    if e.get("precision", "fp32") == "fp32":
        return (
            f"energy per inference: {e['total_uj']:.1f} uJ = compute {e['compute_uj']:.1f} uJ "
            f"({e['macs']:,} MACs x {PJ_PER_MAC} pJ) + DRAM {e['dram_uj']:.1f} uJ "
            f"({e['dram_words']:,.0f} 32-bit words x {PJ_PER_DRAM_WORD:g} pJ)\n"
            f"  estimate, not a measurement: {ENERGY_SOURCE} figures (fp32 multiply 3.7 pJ + add 0.9 pJ; "
            "DRAM 640 pJ per 32-bit word), every weight and activation moved once, batch 1"
        )
    fp32 = f" + {e['fp32_macs']:,} fp32 MACs x {PJ_PER_MAC} pJ" if e["fp32_macs"] else ""
    return (
        f"energy per inference ({e['precision']}): {e['total_uj']:.1f} uJ = compute {e['compute_uj']:.1f} uJ "
        f"({e['int8_macs']:,} int8 MACs x {PJ_PER_INT8_MAC} pJ{fp32}) + DRAM {e['dram_uj']:.1f} uJ "
        f"({e['dram_bytes']:,} bytes x {PJ_PER_DRAM_BYTE:g} pJ)\n"
        f"  estimate, not a measurement: {ENERGY_SOURCE} figures (8-bit multiply 0.2 pJ + add 0.03 pJ; "
        "DRAM 640 pJ per 32-bit word = 160 pJ per byte), every weight and activation moved once at its "
        "stored width, batch 1"
    )


# -- the measuring process --------------------------------------------------------------------


def _percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default) of sorted values."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = (len(sorted_values) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def latency_stats(seconds: list[float]) -> dict:
    """Median, p90, mean, min and max of per-run times, in milliseconds."""
    ms = sorted(1e3 * s for s in seconds)
    return {
        "median": _percentile(ms, 50),
        "p90": _percentile(ms, 90),
        "mean": sum(ms) / len(ms),
        "min": ms[0],
        "max": ms[-1],
        "n": len(ms),
    }


def _peak_rss_bytes() -> int:
    """This process's RSS high-water mark: VmHWM on Linux (getrusage's ru_maxrss survives exec and
    so can report the parent's peak), ru_maxrss elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _worker_main(job_file: str) -> None:
    """Entry point of the measuring process: read the job, measure, write the result JSON."""
    import gc

    import numpy as np
    import psutil

    job = json.loads(Path(job_file).read_text())
    backend, threads, runs, warmup = job["backend"], job["threads"], job["runs"], job["warmup"]
    rng = np.random.default_rng(job["seed"])
    shape = (job["batch_size"], *job["input_shape"])
    arrays = [rng.standard_normal(shape, dtype=np.float32) for _ in range(runs)]

    if backend == "torch":
        import torch

        from edgeprune.io import load

        sys.path.extend(p for p in job.get("sys_path", []) if p not in sys.path)
        torch.set_num_threads(threads)
        device = torch.device(job.get("device", "cpu"))
        inputs = [torch.from_numpy(a).contiguous(memory_format=torch.channels_last).to(device) for a in arrays]
        # an accelerator runs asynchronously: wait for each inference, or the timer sees only the launch
        sync = {"cuda": torch.cuda.synchronize, "mps": torch.mps.synchronize}.get(device.type)

        def loader(path: str):  # noqa: ANN202
            if path.endswith(".pt2"):  # prepare() exported a module without a builder; our own file
                model = torch.export.load(path).module()
            else:  # prepare() wrote this folder after the user vouched for its builder (trust list, --model, ...)
                model = load(path, trust_code=True, allow_changed=True).eval()
            model = model.to(device, memory_format=torch.channels_last)

            def run(x: Any) -> None:
                with torch.inference_mode():
                    model(x)
                if sync is not None:
                    sync()

            return run

        policy = os.environ.get("OMP_WAIT_POLICY", "unset (libgomp default: spin, then sleep)")
        runtime = {
            "runtime": f"torch {torch.__version__} eager on {device}, channels-last, inference_mode",
            "spin_wait": f"OMP_WAIT_POLICY={policy}",
        }
    else:
        import onnxruntime as ort

        inputs = arrays

        def loader(path: str):  # noqa: ANN202
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            opts.log_severity_level = 3
            opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if job["spin"] else "0")
            session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
            name = session.get_inputs()[0].name

            def run(x: Any) -> None:
                session.run(None, {name: x})

            return run

        runtime = {
            "runtime": f"onnxruntime {ort.__version__} CPUExecutionProvider",
            "spin_wait": f"session.intra_op.allow_spinning={int(job['spin'])}",
        }

    proc = psutil.Process()
    gc.collect()
    baseline = proc.memory_info().rss
    runners = {name: loader(path) for name, path in job["models"].items()}
    for run in runners.values():
        for i in range(warmup):
            run(inputs[i % runs])

    results: dict = {}
    if job["interleaved"]:
        names = list(runners)
        times: dict[str, list[float]] = {n: [] for n in names}
        for r in range(runs):
            shift = r % len(names)  # rotate the order so no model always runs first
            for name in names[shift:] + names[:shift]:
                t0 = time.perf_counter()
                runners[name](inputs[r])
                times[name].append(time.perf_counter() - t0)
        results = {n: {"latency_ms": latency_stats(times[n]), "threads": threads, **runtime} for n in names}
    else:
        (run,) = runners.values()
        times = []
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for x in inputs:
            t0 = time.perf_counter()
            run(x)
            times.append(time.perf_counter() - t0)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        loop_wall, cpu_runs = wall, runs
        if wall < CPU_WINDOW_S:
            # The kernel updates other threads' CPU time at scheduler ticks (a few ms): over a short loop
            # the ratio is meaningless, so measure it over more (untimed) inferences, >= CPU_WINDOW_S.
            cpu_runs = 0
            cpu0, wall0 = time.process_time(), time.perf_counter()
            while time.perf_counter() - wall0 < CPU_WINDOW_S:
                run(inputs[cpu_runs % runs])
                cpu_runs += 1
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        after = proc.memory_info().rss
        peak = max(_peak_rss_bytes(), after)
        results["model"] = {
            "latency_ms": latency_stats(times),
            "throughput_per_s": len(times) * job["batch_size"] / loop_wall,
            "cpu": {
                "utilisation_pct": 100.0 * cpu / wall if wall > 0 else 0.0,
                "cpu_seconds": cpu,
                "wall_seconds": wall,
                "inferences": cpu_runs,
                "threads": threads,
                "os_threads": proc.num_threads(),
            },
            "memory": {
                "rss_baseline_mb": baseline / MB,
                "rss_peak_mb": peak / MB,
                "rss_increase_mb": (peak - baseline) / MB,
                "rss_after_mb": after / MB,
            },
            **runtime,
        }
    Path(job["result_file"]).write_text(json.dumps(results))


__all__ = [
    "BACKENDS",
    "bench",
    "bench_table",
    "check_backends",
    "default_backends",
    "energy_estimate",
    "latency_interleaved",
    "latency_stats",
]
