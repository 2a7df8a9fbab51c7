"""The calling side of the measuring processes: write the artifacts, start a fresh process, read its result.

One abstraction serves ``edgeprune.measure.bench`` and the latency tables: for each backend, *write an
artifact* in the calling process (``write_artifact``, ``write_layer_spec``), then *load and run* it in a
fresh Python process of its own (``run_measurement``, ``time_artifacts``), so that the memory figures are
those of an inference process and not of the caller. That process runs ``edgeprune/backends/worker.py``,
loaded by path (see its docstring for the artifacts, the layer block spec format and the timing loops).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from edgeprune.backends.worker import (
    BACKENDS,
    EDGE_BACKENDS,
    LOADS,
    ORDERS,
    _is_positive,
    _load_spec,
    artifact_kind,
    normalize_layer_spec,
)
from edgeprune.errors import EdgepruneError, first_line
from edgeprune.validate import check_int

WORKER_FILE = Path(__file__).resolve().with_name("worker.py")  # what the measuring process runs
_WORKER_CODE = (
    "import importlib.util, sys\n"
    "spec = importlib.util.spec_from_file_location('_edgeprune_backends_worker', sys.argv[1])\n"
    "mod = importlib.util.module_from_spec(spec)\n"
    "sys.modules[spec.name] = mod\n"
    "spec.loader.exec_module(mod)\n"
    "mod._worker_main(sys.argv[2])\n"
)


# -- argument checks --------------------------------------------------------------------------


def check_backends(backends: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Validate backend names; a one-line error names the choices."""
    if isinstance(backends, str):
        backends = (backends,)
    backends = tuple(dict.fromkeys(backends))
    known = BACKENDS + EDGE_BACKENDS
    if not backends:
        raise EdgepruneError(f"no backend given; choose from: {', '.join(known)}")
    for b in backends:
        if b not in known:
            raise EdgepruneError(f"unknown backend '{b}'; choose from: {', '.join(known)}")
    return backends


def check_counts(**values: int | None) -> None:
    """Each value None or a positive integer (``warmup`` may be 0); the keyword names it in the error."""
    for name, value in values.items():
        if value is None:
            continue
        check_int(value, name)
        if value <= 0 and not (name == "warmup" and value == 0):
            raise EdgepruneError(f"{name} must be {'>= 0' if name == 'warmup' else 'positive'}, got {value}")


# -- layer block spec files -------------------------------------------------------------------


def read_layer_spec(path: str | Path) -> dict:
    """A layer block spec file, checked and normalised; a missing or bad file is one EdgepruneError line."""
    try:
        return _load_spec(str(path))
    except OSError as e:
        raise EdgepruneError(f"{path}: cannot read it ({e.strerror or e})") from None
    except ValueError as e:  # json.JSONDecodeError is a ValueError too
        raise EdgepruneError(f"{path}: not a layer block spec: {str(e).splitlines()[0]}") from None


def write_layer_spec(spec: dict, path: str | Path) -> Path:
    """Check a layer block spec and write it as the JSON artifact both backends load."""
    try:
        normalized = normalize_layer_spec(spec)
    except ValueError as e:
        raise EdgepruneError(f"not a layer block spec: {e}") from None
    path = Path(path)
    path.write_text(json.dumps(normalized))
    return path


# -- writing artifacts (calling process) ------------------------------------------------------


def write_artifact(backend: str, model: Any, workdir: str | Path, input_shape: tuple[int, ...]) -> tuple[Path, dict]:
    """Write the file ``backend``'s measuring process loads for a module into ``workdir``: its path and details.

    torch: the model folder (``workdir/model``; details ``{"kind": "folder"}``), or for a module without a
    builder its ``torch.export`` program (``workdir/model.pt2``, ``{"kind": "program"}``). onnxruntime: the
    .onnx file checked against PyTorch (``workdir/model.onnx``; details: opset, exporter and check).
    executorch / litert: the .pte / .tflite file checked against PyTorch in its runtime (``edgeprune.edge_export``).
    """
    (backend,) = check_backends(backend)
    workdir = Path(workdir)
    input_shape = tuple(input_shape)
    if backend in EDGE_BACKENDS:
        from edgeprune.edge_export import SUFFIXES, export_edge

        path = workdir / f"model{SUFFIXES[backend]}"
        info = export_edge(model, path, backend, input_shape)
        return path, {k: info[k] for k in ("format", "precision", "check")}
    if backend == "onnxruntime":
        from edgeprune.export import export_onnx

        path = workdir / "model.onnx"
        info = export_onnx(model, path, input_shape)
        return path, {k: info[k] for k in ("opset", "exporter", "check")}
    from edgeprune.io import save
    from edgeprune.refs import builder_of

    if builder_of(model) is not None:
        save(model, workdir / "model", input_shape)
        return workdir / "model", {"kind": "folder"}
    return _export_program(model, workdir / "model.pt2", input_shape), {"kind": "program"}


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
        raise EdgepruneError(
            f"this model has no builder and torch.export cannot trace it ({first_line(e)}); build it from a reference "
            "(edgeprune.builders.build_model) or record one with edgeprune.builders.set_builder"
        ) from None
    return path


# -- running a measuring process (calling process) --------------------------------------------


def time_artifacts(
    artifacts: dict[str, tuple[Path, tuple[int, ...]]],
    backend: str,
    *,
    threads: int = 1,
    runs: int = 20,
    warmup: int = 3,
    seed: int = 0,
    spin: bool = False,
    device: str = "cpu",
    order: str = "round_robin",
) -> dict[str, dict]:
    """Latency (ms: median, p90, mean, min, max, n) of each artifact, all timed in one fresh process.

    ``artifacts``: name -> (file, input shape without the batch dimension); each takes its own shape.
    Files: what ``LOADS[backend]`` lists, layer block specs (.json) on either backend. ``order``:
    ``round_robin`` (every artifact sees the same conditions, caches cold between runs) or ``blocked``
    (each artifact's runs back to back, caches warm as in a model run again and again).
    """
    if order not in ORDERS:
        raise EdgepruneError(f"unknown timing order '{order}'; choose from: {', '.join(ORDERS)}")
    (backend,) = check_backends(backend)
    check_counts(threads=threads, runs=runs, warmup=warmup)
    if not artifacts:
        raise EdgepruneError("no artifacts given")
    checked = {str(name): _check_artifact(Path(path), shape, backend) for name, (path, shape) in artifacts.items()}
    if backend == "torch" and device != "cpu":
        from edgeprune.runtime import resolve_device

        device = str(resolve_device(device))
    result = run_measurement(
        checked,
        backend,
        True,
        runs=runs,
        warmup=warmup,
        threads=threads,
        seed=seed,
        spin=spin,
        device=device,
        order=order,
    )
    return {name: r["latency_ms"] for name, r in result.items()}


def _check_artifact(path: Path, shape: Any, backend: str) -> tuple[Path, tuple[int, ...]]:
    """An artifact this backend loads, with a valid input shape (a spec's own); one line when not."""
    kind = artifact_kind(path)
    if kind not in LOADS[backend]:
        raise EdgepruneError(f"{path}: {backend} loads {', '.join(LOADS[backend])} artifacts, not a {kind}")
    if not path.exists():
        raise EdgepruneError(f"{path}: no such file or folder")
    if not isinstance(shape, (tuple, list)) or not shape or not all(_is_positive(d) for d in shape):
        raise EdgepruneError(f"{path}: input shape must be positive integers (no batch dimension), got {shape!r}")
    if kind == "layer" and list(shape) != read_layer_spec(path)["input_shape"]:
        raise EdgepruneError(
            f"{path}: the spec's input_shape is {read_layer_spec(path)['input_shape']}, not {list(shape)}"
        )
    return path, tuple(shape)


def run_measurement(
    artifacts: dict[str, tuple[Path, tuple[int, ...]]],
    backend: str,
    interleaved: bool,
    *,
    runs: int,
    warmup: int,
    batch_size: int = 1,
    threads: int = 1,
    seed: int = 0,
    spin: bool = True,
    device: str = "cpu",
    order: str = "round_robin",
) -> dict:
    """One fresh measuring process over ``artifacts`` (name -> (file, input shape)): its JSON result per name.

    Not interleaved: one artifact, with latency, throughput, CPU, RSS and RAPL energy. Interleaved: latency
    and runtime of each, timed round-robin. Arguments are trusted (checked by the public callers).
    """
    job = {
        "backend": backend,
        "interleaved": interleaved,
        "artifacts": {n: {"path": str(p), "input_shape": list(s)} for n, (p, s) in artifacts.items()},
        "runs": runs,
        "warmup": warmup,
        "batch_size": batch_size,
        "threads": threads,
        "seed": seed,
        "spin": spin,
        "device": device,
        "order": order,
        "sys_path": [p for p in sys.path if p],  # the worker imports a py: builder's module from the same places
    }
    return _run_worker(job, threads)


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
            [sys.executable, "-c", _WORKER_CODE, str(WORKER_FILE), str(job_file)],
            capture_output=True,
            text=True,
            env=env,
        )
        result_path = Path(job["result_file"])
        if proc.returncode != 0 or not result_path.is_file():
            lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
            last = lines[-1] if lines else f"exit {proc.returncode}"
            raise EdgepruneError(f"{job['backend']} measurement process failed: {last}")
        return json.loads(result_path.read_text())


__all__ = [
    "check_backends",
    "check_counts",
    "read_layer_spec",
    "run_measurement",
    "time_artifacts",
    "write_artifact",
    "write_layer_spec",
]
