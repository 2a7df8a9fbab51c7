"""Probe bundles, the host's side: write the files a device times, and read back what it measured, checked.

A bundle (``edgeprune lut MODEL --backend B --probe DIR``) is a folder: ``manifest.json`` (the backend, the model,
the grid, and the groups of files timed together, each file with its size, SHA-256 and input shape), the files,
and ``probe.py`` (``probe_runner.py`` here, which needs only Python, numpy and the runtime). Run on the device it
writes a measurements file that ``read_measurements`` checks against the bundle before a number of it is used.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from edgeprune import limits
from edgeprune.backends import probe_runner as runner
from edgeprune.backends.worker import EDGE_BACKENDS, onnx_block, torch_block
from edgeprune.errors import EdgepruneError
from edgeprune.files import atomic_write, sha256_file, write_json

PROBE_BACKENDS = ("onnxruntime", *EDGE_BACKENDS)  # runtimes a device runs without torch
SUFFIX = {"onnxruntime": ".onnx", "executorch": ".pte", "litert": ".tflite"}
RUNNER = Path(runner.__file__).resolve()
MAX_MS = 1e9


def check_backend(backend: str) -> str:
    """A backend a probe can time (not torch: a device runs a runtime without it)."""
    if backend not in PROBE_BACKENDS:
        raise EdgepruneError(f"a probe times {', '.join(PROBE_BACKENDS)}, not '{backend}'")
    return backend


def export_file(backend: str, model: Any, path: Path, input_shape: tuple[int, ...]) -> Path:
    """A module exported to ``backend``'s file at ``path`` (checked against PyTorch, as ``bench`` exports it)."""
    from edgeprune.backends.artifacts import write_artifact

    with tempfile.TemporaryDirectory(prefix="edgeprune-probe-") as tmp:
        written, _ = write_artifact(backend, model.eval(), tmp, input_shape)
        atomic_write(path, lambda p: shutil.copyfile(written, p))
    return path


def write_block(backend: str, block: dict, path: Path) -> Path:
    """A layer block spec as ``backend``'s file: its ONNX graph, or its torch block exported to .pte / .tflite."""
    if backend == "onnxruntime":
        data = onnx_block(block, seed=0)
        atomic_write(path, lambda p: p.write_bytes(data))
        return path
    import torch

    module = torch_block(block, seed=0).to(memory_format=torch.contiguous_format)  # the exporters take NCHW weights
    return export_file(backend, module, path, tuple(block["input_shape"]))


class Bundle:
    """A bundle being written into ``folder``: files added by group, then the manifest and the runner."""

    def __init__(self, folder: str | Path, backend: str, force: bool = False) -> None:
        self.folder, self.backend = Path(folder), check_backend(backend)
        if self.folder.exists() and any(self.folder.iterdir()) and not force:
            raise EdgepruneError(f"--probe {self.folder}: not empty; give --force to write into it")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.groups: list[dict] = []

    def group(self, name: str) -> dict:
        """A new group of files timed together (interleaved) on the device."""
        self.groups.append({"name": name, "artifacts": {}})
        return self.groups[-1]["artifacts"]

    def _add(self, group: dict, key: str, path: Path, input_shape: list[int]) -> None:
        group[key] = {"file": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path),
                      "input_shape": list(input_shape)}  # fmt: skip

    def add_block(self, group: dict, key: str, block: dict) -> None:
        """A layer block spec as the backend's file (ONNX graph, or the torch block exported to .pte/.tflite)."""
        path = self.folder / f"b{sum(len(g['artifacts']) for g in self.groups):05d}{SUFFIX[self.backend]}"
        write_block(self.backend, block, path)
        self._add(group, key, path, block["input_shape"])

    def add_model(self, group: dict, key: str, model: Any, input_shape: tuple[int, ...]) -> None:
        """A whole model, exported and checked against PyTorch as ``bench`` exports it."""
        path = self.folder / f"m{sum(len(g['artifacts']) for g in self.groups):05d}{SUFFIX[self.backend]}"
        export_file(self.backend, model, path, input_shape)
        self._add(group, key, path, list(input_shape))

    def finish(self, **manifest: Any) -> dict:
        """Write manifest.json (with the groups) and probe.py; the manifest."""
        import importlib.metadata

        try:  # the distribution's version (edgeprune/__init__ is above this layer)
            version = importlib.metadata.version("edgeprune")
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
        data = {"format": runner.FORMAT, "kind": runner.BUNDLE_KIND, "edgeprune": version,
                "backend": self.backend, **manifest, "groups": self.groups}  # fmt: skip
        write_json(self.folder / runner.MANIFEST, data)
        atomic_write(self.folder / "probe.py", lambda p: shutil.copyfile(RUNNER, p))
        return data


def read_bundle(folder: str | Path) -> tuple[dict, str]:
    """A bundle's manifest (size-checked) and its SHA-256; one line when it is not one."""
    path = Path(folder) / runner.MANIFEST
    manifest = limits.read_json(path, "a probe manifest")
    if not isinstance(manifest, dict) or manifest.get("kind") != runner.BUNDLE_KIND:
        raise EdgepruneError(f"{path}: not an edgeprune probe bundle manifest")
    if manifest.get("format") != runner.FORMAT or manifest.get("backend") not in PROBE_BACKENDS:
        raise EdgepruneError(f"{path}: a probe manifest of another format or backend")
    groups = manifest.get("groups")
    fields = {"file": str, "bytes": int, "sha256": str, "input_shape": list}
    good = isinstance(groups, list) and all(
        isinstance(g, dict) and isinstance(g.get("name"), str) and isinstance(g.get("artifacts"), dict)
        and all(isinstance(e, dict) and all(isinstance(e.get(k), t) for k, t in fields.items())
                for e in g["artifacts"].values())
        for g in groups
    )  # fmt: skip
    if not good:
        raise EdgepruneError(f"{path}: malformed probe manifest (its groups of files)")
    return manifest, sha256_file(path)


def _positive(value: object, what: str) -> float:
    if not limits.is_number(value, 0, MAX_MS) or value <= 0:  # type: ignore[operator]
        raise EdgepruneError(f"probe measurements: {what} must be a finite positive number of ms, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def read_measurements(path: str | Path, manifest: dict, digest: str) -> dict:
    """The measurements of this bundle, every number checked: {"device", "timing", "groups": {g: {key: [ms]}}}.

    Each file's list holds its round medians (finite, positive); one line for another bundle's measurements.
    """
    data = limits.read_json(path, "probe measurements")
    if not isinstance(data, dict) or data.get("kind") != runner.KIND or data.get("format") != runner.FORMAT:
        raise EdgepruneError(f"{path}: not edgeprune probe measurements (format {runner.FORMAT})")
    if data.get("manifest_sha256") != digest:
        raise EdgepruneError(f"{path}: measurements of another bundle (its manifest hash differs from this one's)")
    device, groups = data.get("device"), data.get("groups")
    if not isinstance(device, dict) or not isinstance(groups, dict):
        raise EdgepruneError(f"{path}: malformed probe measurements (device or groups)")
    threads = device.get("threads")
    if not limits.is_int(threads, 1, limits.MAX_THREADS):
        raise EdgepruneError(f"{path}: malformed probe measurements (threads {threads!r})")
    facts = {k: str(device.get(k, ""))[:200] for k in ("platform", "machine", "cpu", "python", "runtime_version")}
    out: dict[str, dict[str, list[float]]] = {}
    for group in manifest["groups"]:
        timed = groups.get(group["name"])
        if not isinstance(timed, dict) or set(timed) != set(group["artifacts"]):
            raise EdgepruneError(f"{path}: group {group['name']!r} is missing or has other files than the bundle's")
        out[group["name"]] = {}
        for key, entry in timed.items():
            rounds = entry.get("median") if isinstance(entry, dict) else None
            if not isinstance(rounds, list) or not 1 <= len(rounds) <= limits.MAX_CLASSES:
                raise EdgepruneError(f"{path}: {group['name']} {key}: no round medians")
            out[group["name"]][key] = [_positive(v, f"{group['name']} {key}") for v in rounds]
        if len({len(v) for v in out[group["name"]].values()}) != 1:
            raise EdgepruneError(f"{path}: group {group['name']!r} has files timed in different numbers of rounds")
    seconds = data.get("seconds", 0.0)
    seconds = float(seconds) if limits.is_number(seconds, 0, MAX_MS) else 0.0
    return {"device": {**facts, "threads": int(threads)}, "groups": out, "seconds": seconds}


def write_models_probe(models: dict[str, Any], input_shape: tuple[int, ...], folder: str | Path, backend: str, *,
                       timing: dict, force: bool = False) -> dict:  # fmt: skip
    """A bundle of whole models (a model and its pruned variants, by name) timed interleaved on the device."""
    bundle = Bundle(folder, backend, force=force)
    group = bundle.group("models")
    for name, model in models.items():
        bundle.add_model(group, name, model, tuple(input_shape))
    return bundle.finish(model=next(iter(models)), input_shape=list(input_shape), timing=timing)


def models_from_probe(measurements: str | Path, folder: str | Path) -> dict:
    """Each model's latency from a models bundle's measurements: median ms, and its median ratio to the first model
    (timed beside it in the same rounds), with the device facts."""
    import statistics

    manifest, digest = read_bundle(folder)
    if [g["name"] for g in manifest["groups"]] != ["models"]:
        raise EdgepruneError(f"{folder}: a latency table's probe bundle, not bench's: read it with 'edgeprune lut'")
    measured = read_measurements(measurements, manifest, digest)
    rounds = measured["groups"]["models"]
    first = rounds[next(iter(manifest["groups"][0]["artifacts"]))]
    models = {
        name: {"median_ms": statistics.median(r), "round_medians_ms": r,
               "ratio": statistics.median(a / b for a, b in zip(r, first))}
        for name, r in rounds.items()
    }  # fmt: skip
    return {"backend": manifest["backend"], "device": measured["device"], "models": models}


__all__ = ["PROBE_BACKENDS", "Bundle", "check_backend", "export_file", "models_from_probe", "read_bundle",
           "read_measurements", "write_block", "write_models_probe"]  # fmt: skip
