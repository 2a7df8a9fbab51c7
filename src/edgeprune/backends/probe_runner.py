"""edgeprune's probe runner: time a bundle's files on the device itself, with Python, numpy and one runtime only.

``edgeprune lut MODEL --backend B --probe DIR`` copies this file into DIR as ``probe.py`` beside ``manifest.json``
and the files it names (layer blocks and whole calibration networks, as .onnx, .pte or .tflite). On the device::

    python probe.py --threads T [--runs N --warmup W --rounds R --out measurements.json]

checks every file against the manifest's size and SHA-256, times each group's files interleaved (round-robin,
order rotated each run) in ``rounds`` rounds, each round loading them afresh, and writes the measurements file:
per file the median and p90 (ms) of each round, the device (platform, CPU model, runtime and its version,
threads) and the manifest's SHA-256, so ``edgeprune lut MODEL --from-probe FILE`` refuses another bundle's.

It imports the standard library, numpy and the runtime (onnxruntime, executorch.runtime or ai_edge_litert)
only: no edgeprune, and no torch but for ExecuTorch, whose Python bindings take torch tensors (and import torch
themselves).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

FORMAT = 1
BUNDLE_KIND = "edgeprune probe bundle"
KIND = "edgeprune probe measurements"
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 64 * 2**20
MAX_ARTIFACT_BYTES = 2 * 2**30
RUNTIMES = {"onnxruntime": "onnxruntime", "executorch": "executorch", "litert": "ai-edge-litert"}


def fail(message: str) -> None:
    """Stop with one line on stderr and exit status 2."""
    print(f"probe: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux and Android, else platform.processor or the machine)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Hardware", "Processor", "cpu model") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def runtime_version(backend: str) -> str:
    """The installed version of the backend's runtime distribution."""
    import importlib.metadata

    try:
        return importlib.metadata.version(RUNTIMES[backend])
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _onnxruntime_loader(threads: int) -> Any:
    """Load an .onnx file in onnxruntime (CPU, every graph optimisation, idle threads sleeping) -> run(x)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")

    def load(path: str) -> Any:
        session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: x})

    return load


def _executorch_loader(threads: int) -> Any:
    """Load a .pte file in ExecuTorch's runtime (XNNPACK delegate) -> run(x).

    ExecuTorch's Python bindings import torch themselves and take only torch tensors: this backend's probe needs
    the ``executorch`` package (which brings torch); a device without Python runs ExecuTorch from C++ instead.
    """
    import torch
    from executorch.runtime import Runtime

    try:
        from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

        _unsafe_reset_threadpool(threads)
    except ImportError:
        pass
    runtime = Runtime.get()

    def load(path: str) -> Any:
        method = runtime.load_program(path).load_method("forward")
        return lambda x: method.execute([torch.from_numpy(x)])

    return load


def _litert_loader(threads: int) -> Any:
    """Load a .tflite file in the LiteRT interpreter (default XNNPACK delegate) -> run(x)."""
    from ai_edge_litert.interpreter import Interpreter

    def load(path: str) -> Any:
        interpreter = Interpreter(model_path=path, num_threads=threads)
        interpreter.allocate_tensors()
        given = interpreter.get_input_details()[0]["index"]

        def run(x: Any) -> None:
            interpreter.set_tensor(given, x)
            interpreter.invoke()

        return run

    return load


LOADERS = {"onnxruntime": _onnxruntime_loader, "executorch": _executorch_loader, "litert": _litert_loader}


def loader(backend: str, threads: int) -> Any:
    """A function loading one file of this backend and returning its run(x) function; one line if it is missing."""
    try:
        return LOADERS[backend](threads)
    except ImportError as e:
        fail(f"the {backend} runtime does not import here ({e}); pip install {RUNTIMES[backend]}")


def read_manifest(folder: Path) -> tuple[dict, str]:
    """The bundle's manifest (size-checked, its kind and format checked) and its SHA-256."""
    path = folder / MANIFEST
    if not path.is_file():
        fail(f"{path}: no manifest; run probe.py from an edgeprune probe bundle")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        fail(f"{path}: too large for a manifest")
    raw = path.read_bytes()
    try:
        manifest = json.loads(raw)
    except ValueError as e:
        fail(f"{path}: not valid JSON ({str(e).splitlines()[0]})")
    if not isinstance(manifest, dict) or manifest.get("kind") != BUNDLE_KIND or manifest.get("format") != FORMAT:
        fail(f"{path}: not an edgeprune probe bundle manifest (format {FORMAT})")
    if manifest.get("backend") not in RUNTIMES or not isinstance(manifest.get("groups"), list):
        fail(f"{path}: malformed manifest (backend or groups)")
    return manifest, hashlib.sha256(raw).hexdigest()


def check_files(folder: Path, manifest: dict) -> None:
    """Every file the manifest names is in the bundle, of its size and SHA-256."""
    for group in manifest["groups"]:
        for entry in group["artifacts"].values():
            path = folder / Path(entry["file"]).name
            if not path.is_file():
                fail(f"{path}: missing from the bundle")
            size = path.stat().st_size
            if size > MAX_ARTIFACT_BYTES or size != entry["bytes"]:
                fail(f"{path}: {size} bytes, the manifest says {entry['bytes']}")
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
            if digest.hexdigest() != entry["sha256"]:
                fail(f"{path}: its SHA-256 differs from the manifest's (a changed or damaged file)")


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile of values."""
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def time_group(folder: Path, group: dict, load: Any, args: argparse.Namespace, seed: int) -> dict[str, list]:
    """One round of a group: its files loaded afresh, warmed up, timed interleaved; ms per run by file key."""
    import numpy as np

    rng = np.random.default_rng(seed)
    runs, inputs = {}, {}
    for key, entry in group["artifacts"].items():
        runs[key] = load(str(folder / Path(entry["file"]).name))
        shape = (1, *entry["input_shape"])
        inputs[key] = [rng.standard_normal(shape, dtype=np.float32) for _ in range(min(args.runs, 8))]
    keys = list(runs)
    for key in keys:
        for i in range(args.warmup):
            runs[key](inputs[key][i % len(inputs[key])])
    times: dict[str, list] = {k: [] for k in keys}
    for r in range(args.runs):
        shift = r % len(keys)
        for key in keys[shift:] + keys[:shift]:
            x = inputs[key][r % len(inputs[key])]
            t0 = time.perf_counter()
            runs[key](x)
            times[key].append(1e3 * (time.perf_counter() - t0))
    return times


def measure(folder: Path, manifest: dict, args: argparse.Namespace) -> dict:
    """Every group timed in ``args.rounds`` rounds: per file, each round's median and p90 (ms)."""
    load = loader(manifest["backend"], args.threads)
    out: dict[str, dict] = {}
    for g, group in enumerate(manifest["groups"]):
        rounds = [time_group(folder, group, load, args, seed=1000 * g + r) for r in range(args.rounds)]
        out[group["name"]] = {
            key: {"median": [percentile(t[key], 50) for t in rounds], "p90": [percentile(t[key], 90) for t in rounds]}
            for key in group["artifacts"]
        }
        if not args.quiet:
            print(f"  {group['name']}: {len(group['artifacts'])} files", flush=True)
    return out


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The runner's options."""
    p = argparse.ArgumentParser(prog="probe.py", description="Time an edgeprune probe bundle on this device.")
    p.add_argument("--threads", type=int, default=1, help="the runtime's threads, as deployed (default 1)")
    p.add_argument("--runs", type=int, default=None, help="timed runs per file and round (default: the manifest's)")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs first (default: the manifest's)")
    p.add_argument("--rounds", type=int, default=None, help="rounds, each loading afresh (default: the manifest's)")
    p.add_argument("--out", default="measurements.json", help="the measurements file (default measurements.json)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Check the bundle, time it, write the measurements atomically."""
    args = parse(argv)
    folder = Path(__file__).resolve().parent
    manifest, digest = read_manifest(folder)
    timing = manifest.get("timing", {})
    args.runs = timing.get("runs", 20) if args.runs is None else args.runs
    args.warmup = timing.get("warmup", 3) if args.warmup is None else args.warmup
    args.rounds = timing.get("rounds", 3) if args.rounds is None else args.rounds
    for name in ("threads", "runs", "rounds"):
        if not isinstance(getattr(args, name), int) or not 1 <= getattr(args, name) <= 100000:
            fail(f"--{name} must be an integer from 1 to 100000")
    if not 0 <= args.warmup <= 100000:
        fail("--warmup must be an integer from 0 to 100000")
    check_files(folder, manifest)
    started = time.perf_counter()
    groups = measure(folder, manifest, args)
    result = {
        "format": FORMAT, "kind": KIND, "manifest_sha256": digest,
        "device": {"platform": platform.platform(), "machine": platform.machine(), "cpu": cpu_model(),
                   "python": platform.python_version(), "backend": manifest["backend"],
                   "runtime_version": runtime_version(manifest["backend"]), "threads": args.threads},
        "timing": {"runs": args.runs, "warmup": args.warmup, "rounds": args.rounds},
        "seconds": time.perf_counter() - started, "groups": groups,
    }  # fmt: skip
    out = Path(args.out)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out}: {sum(len(g) for g in groups.values())} files timed in {result['seconds']:.0f} s")


if __name__ == "__main__":
    main()
