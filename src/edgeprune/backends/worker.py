"""The measuring process's own file: layer block specs, the blocks they describe, and the timing loops.

``edgeprune.backends.artifacts`` (the calling side) writes a job file and starts a fresh Python process that
loads this very file by path and runs ``_worker_main(job_file)``; for each backend that process *loads and
runs* the artifacts, so that the memory figures are those of an inference process and not of the caller.

- ``torch``: eager PyTorch, channels-last weights and inputs, ``torch.inference_mode``. Artifacts: a
  model folder (``edgeprune.io.save``), or a ``torch.export`` program (``.pt2``) for a module that has
  no builder.
- ``onnxruntime``: CPUExecutionProvider, every graph optimisation on. Artifact: an .onnx file (edgeprune
  writes it checked against PyTorch, see ``edgeprune.export``); this process never imports torch.
- ``executorch`` / ``litert``: a .pte file (XNNPACK delegate) or a .tflite file (LiteRT interpreter), run
  at batch 1 through ``edgeprune/edge_runtime.py`` (loaded by path); no layer specs.
- both: a *layer block spec*, a small JSON file describing one layer and what follows it, so that a
  latency table can time hundreds of layer shapes without exporting anything::

      {"kind": "conv" | "linear", "c_in": 32, "c_out": 64, "kernel": [3, 3], "stride": [1, 1],
       "padding": [1, 1], "dilation": [1, 1], "groups": 1, "bias": false, "norm": true,
       "act": null | "relu" | "relu6" | "silu" | "hardswish" | "sigmoid" | "gelu" | "leaky_relu",
       "input_shape": [32, 56, 56]}          # [C] for linear

  ``kind``, ``c_in``, ``c_out``, ``input_shape`` (and ``kernel`` for conv) are required; the rest default
  to stride 1, padding 0, dilation 1, groups 1, bias true, norm false, no activation; ``padding`` may also be
  torch's ``"same"`` (stride 1) or ``"valid"``, and a pair may be one integer for both. torch builds
  ``nn.Sequential(Conv2d | Linear, BatchNorm2d | BatchNorm1d if norm, activation)`` in eval mode with
  seeded random weights; onnxruntime builds the graph a torch export would give after BatchNorm folding
  (Conv or Gemm with a bias when ``bias`` or ``norm``, then the activation as torch exports it) and
  creates its session from bytes with the same options as for a model file, so it fuses the block as
  it would in a whole model.

The measuring process builds random inputs (seeded; at most ``runs`` distinct ones per input shape,
fewer when they would pass INPUT_POOL_BYTES), records its resident set size (RSS) as the baseline,
loads the artifacts, runs ``warmup`` untimed inferences of each and then times them: one model alone
(latency, CPU utilisation, RSS peak, RAPL energy: see ``_time_single``) or several round-robin
(``_time_interleaved``), each taking its own input shape.

This module imports neither torch nor edgeprune at load time (torch only inside the torch backend's
loader): the onnxruntime process has only onnxruntime, onnx, numpy and psutil.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BACKENDS = ("torch", "onnxruntime")  # what bench, sweep and lut use by default
EDGE_BACKENDS = ("executorch", "litert")  # mobile runtimes, on request (optional extras): whole-model files only
ORDERS = ("round_robin", "blocked")  # how several artifacts of one measuring process are timed
MB = 1e6
CPU_WINDOW_S = 0.5  # CPU utilisation (and RAPL energy) is measured over at least this much wall time
INPUT_POOL_BYTES = 256e6  # all of a job's distinct random inputs together
ONNX_OPSET = 17  # what edgeprune.export writes by default
ONNX_IR_VERSION = 8  # the IR of opset 17: loads in every onnxruntime that runs opset 17
ACTIVATIONS = ("relu", "relu6", "silu", "hardswish", "sigmoid", "gelu", "leaky_relu")
LAYER_KINDS = ("conv", "linear")
LEAKY_SLOPE = 0.01  # torch's default negative slope
MAX_SPEC_ELEMENTS = 1 << 28  # weights or input values of one block: 1 GiB of fp32, far above any layer
# which artifact kinds each backend's measuring process loads
LOADS = {
    "torch": ("folder", "program", "layer"),
    "onnxruntime": ("onnx", "layer"),
    "executorch": ("pte",),
    "litert": ("tflite",),
}

_PAIRS = ("kernel", "stride", "padding", "dilation")
_SPEC_KEYS = ("kind", "c_in", "c_out", *_PAIRS, "groups", "bias", "norm", "act", "input_shape")
# torch's defaults; a linear spec's kernel is [1, 1] so that the conv-only keys can be checked alike
_SPEC_DEFAULTS = {"kernel": [1, 1], "stride": [1, 1], "padding": [0, 0], "dilation": [1, 1], "groups": 1}
_SPEC_DEFAULTS.update(bias=True, norm=False, act=None)


# -- layer block specs ------------------------------------------------------------------------


def normalize_layer_spec(spec: object) -> dict:
    """A layer block spec with its defaults filled in; ValueError (one line) names what is wrong."""
    if not isinstance(spec, dict):
        raise ValueError(f"a layer block spec is a JSON object, got {type(spec).__name__}")
    unknown = sorted(set(spec) - set(_SPEC_KEYS))
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(map(str, unknown))}; a spec takes {', '.join(_SPEC_KEYS)}")
    kind = spec.get("kind")
    if kind not in LAYER_KINDS:
        raise ValueError(f"kind must be one of {', '.join(LAYER_KINDS)}, got {kind!r}")
    missing = [k for k in ("c_in", "c_out", "input_shape", *(["kernel"] if kind == "conv" else [])) if k not in spec]
    if missing:
        raise ValueError(f"a {kind} spec needs {', '.join(missing)}")
    out = {**_SPEC_DEFAULTS, **spec}
    for key in ("c_in", "c_out", "groups"):
        out[key] = _count(key, out[key])
    for key in _PAIRS:
        if key == "padding" and out[key] in ("same", "valid"):
            continue  # torch's padding modes, kept as they are: onnx_block writes them as auto_pad
        out[key] = _pair(key, out[key], low=0 if key == "padding" else 1)
    for key in ("bias", "norm"):
        if not isinstance(out[key], bool):
            raise ValueError(f"{key} must be true or false, got {out[key]!r}")
    if out["act"] is not None and out["act"] not in ACTIVATIONS:
        raise ValueError(f"act must be null or one of {', '.join(ACTIVATIONS)}, got {out['act']!r}")
    _check_geometry(out)
    return out


def _count(key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{key} must be a positive integer, got {value!r}")
    return value


def _pair(key: str, value: object, low: int) -> list[int]:
    """[h, w] from a pair or one integer for both."""
    pair = [value, value] if isinstance(value, int) and not isinstance(value, bool) else value
    ok = isinstance(pair, list) and len(pair) == 2
    if not ok or any(isinstance(v, bool) or not isinstance(v, int) or v < low for v in pair):  # type: ignore[union-attr]
        raise ValueError(f"{key} must be [h, w] of integers >= {low}, got {value!r}")
    return list(pair)  # type: ignore[arg-type]


def _check_geometry(s: dict) -> None:
    """Input shape, channel and group counts, and output size consistent with each other."""
    shape, c_in, c_out, groups = s["input_shape"], s["c_in"], s["c_out"], s["groups"]
    dims = 3 if s["kind"] == "conv" else 1
    if not isinstance(shape, list) or len(shape) != dims or not all(_is_positive(d) for d in shape):
        layout = "[C, H, W]" if dims == 3 else "[C]"
        raise ValueError(f"input_shape of a {s['kind']} spec must be {layout} of positive integers, got {shape!r}")
    if shape[0] != c_in:
        raise ValueError(f"input_shape {shape} has {shape[0]} channels but c_in is {c_in}")
    if s["kind"] == "linear":
        conv_only = [k for k in ("kernel", "stride", "dilation") if s[k] != [1, 1]]
        conv_only += ["padding"] * (s["padding"] not in ([0, 0], "valid")) + ["groups"] * (groups != 1)
        if conv_only:
            raise ValueError(f"a linear spec takes no {', '.join(conv_only)} (a conv's)")
    if c_in % groups or c_out % groups:
        raise ValueError(f"groups {groups} must divide c_in {c_in} and c_out {c_out}")
    weights = c_out * (c_in // groups) * s["kernel"][0] * s["kernel"][1]
    if max(weights, math.prod(shape)) > MAX_SPEC_ELEMENTS:
        raise ValueError(f"block too large: {weights:,} weights, {math.prod(shape):,} input values per image")
    if s["padding"] == "same" and s["stride"] != [1, 1]:
        raise ValueError(f"padding 'same' needs stride [1, 1], got {s['stride']} (as in torch)")
    if dims == 3 and min(layer_output_shape(s)[1:]) < 1:
        raise ValueError(f"kernel {s['kernel']} (dilation {s['dilation']}) is larger than the padded input {shape}")


def _is_positive(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def layer_output_shape(spec: dict) -> tuple[int, ...]:
    """The output shape (no batch dimension) of a normalised layer block spec."""
    if spec["kind"] == "linear":
        return (spec["c_out"],)
    if spec["padding"] == "same":
        return (spec["c_out"], *spec["input_shape"][1:])
    padding = [0, 0] if spec["padding"] == "valid" else spec["padding"]
    geometry = (spec["kernel"], spec["stride"], padding, spec["dilation"])
    sizes = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, k, s, p, d in zip(spec["input_shape"][1:], *geometry)]
    return (spec["c_out"], *sizes)


def _load_spec(path: str) -> dict:
    return normalize_layer_spec(json.loads(Path(path).read_text()))


def torch_block(spec: dict, seed: int = 0) -> Any:
    """The ``nn.Sequential`` a layer block spec describes: eval mode, seeded random weights, conv channels-last."""
    import torch
    from torch import nn

    s = normalize_layer_spec(spec)
    acts = {"relu": nn.ReLU, "relu6": nn.ReLU6, "silu": nn.SiLU, "hardswish": nn.Hardswish}
    acts.update(sigmoid=nn.Sigmoid, gelu=nn.GELU, leaky_relu=lambda: nn.LeakyReLU(LEAKY_SLOPE))
    with torch.random.fork_rng(devices=[]):  # seeded without moving the caller's random stream
        torch.manual_seed(seed)
        if s["kind"] == "conv":
            # kernel, stride, padding, dilation: Conv2d's order
            geometry = [s[key] if isinstance(s[key], str) else tuple(s[key]) for key in _PAIRS]
            layers: list[Any] = [nn.Conv2d(s["c_in"], s["c_out"], *geometry, groups=s["groups"], bias=s["bias"])]
            layers += [nn.BatchNorm2d(s["c_out"])] if s["norm"] else []
        else:
            layers = [nn.Linear(s["c_in"], s["c_out"], s["bias"])] + ([nn.BatchNorm1d(s["c_out"])] if s["norm"] else [])
        layers += [acts[s["act"]]()] if s["act"] else []
    block = nn.Sequential(*layers).eval()
    return block.to(memory_format=torch.channels_last) if s["kind"] == "conv" else block


def onnx_block(spec: dict, seed: int = 0) -> bytes:
    """The serialized ONNX model of a layer block spec: Conv or Gemm (BatchNorm folded into its bias), activation."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    s = normalize_layer_spec(spec)
    rng = np.random.default_rng(seed)
    conv = s["kind"] == "conv"
    fan_in = s["c_in"] // s["groups"] * s["kernel"][0] * s["kernel"][1]
    w_shape = (s["c_out"], s["c_in"] // s["groups"], *s["kernel"]) if conv else (s["c_out"], s["c_in"])
    # unit-variance outputs: no overflow, and no denormals (which are slow) in the activations
    weight = (rng.standard_normal(w_shape, dtype=np.float32) / np.float32(math.sqrt(fan_in))).astype(np.float32)
    inits = [numpy_helper.from_array(weight, "weight")]
    inputs = ["input", "weight"]
    if s["bias"] or s["norm"]:  # onnxruntime folds a BatchNorm into the layer's bias, so a norm is a bias here
        inits.append(numpy_helper.from_array(rng.standard_normal(s["c_out"]).astype(np.float32) * 0.1, "bias"))
        inputs.append("bias")
    out = "output" if s["act"] is None else "linear_out"
    if conv:
        node = helper.make_node("Conv", inputs, [out], kernel_shape=s["kernel"], strides=s["stride"],
                                dilations=s["dilation"], group=s["groups"], pads=_onnx_padding(s))  # fmt: skip
    else:
        node = helper.make_node("Gemm", inputs, [out], transB=1)
    act_nodes, act_inits = _onnx_activation(s["act"], out, "output")
    graph = helper.make_graph(
        [node, *act_nodes],
        "edgeprune_layer_block",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *s["input_shape"]])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", *layer_output_shape(s)])],
        inits + act_inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)], producer_name="edgeprune")
    model.ir_version = ONNX_IR_VERSION
    return model.SerializeToString()


def _onnx_padding(spec: dict) -> list[int]:
    """Conv's pads (top, left, bottom, right); torch's 'same' pads an odd extra row or column at the end."""
    if spec["padding"] == "valid":
        return [0, 0, 0, 0]
    if spec["padding"] == "same":  # explicit, as torch exports it: onnxruntime's auto_pad takes no dilation
        total = [d * (k - 1) for k, d in zip(spec["kernel"], spec["dilation"])]
        return [t // 2 for t in total] + [t - t // 2 for t in total]
    return spec["padding"] * 2


def _onnx_activation(act: str | None, x: str, y: str) -> tuple[list, list]:
    """The nodes (and constants) of an activation from ``x`` to ``y``, as torch's exporter writes them."""
    import numpy as np
    from onnx import helper, numpy_helper

    def const(name: str, value: float) -> Any:
        return numpy_helper.from_array(np.array(value, dtype=np.float32), name)

    if act is None:
        return [], []
    single = {"relu": "Relu", "hardswish": "HardSwish", "sigmoid": "Sigmoid"}
    if act in single:
        return [helper.make_node(single[act], [x], [y])], []
    if act == "leaky_relu":
        return [helper.make_node("LeakyRelu", [x], [y], alpha=LEAKY_SLOPE)], []
    if act == "relu6":
        bounds = [const("clip_min", 0.0), const("clip_max", 6.0)]
        return [helper.make_node("Clip", [x, "clip_min", "clip_max"], [y])], bounds
    if act == "silu":
        return [helper.make_node("Sigmoid", [x], ["sig"]), helper.make_node("Mul", [x, "sig"], [y])], []
    # gelu, exact: 0.5 x (1 + erf(x / sqrt 2)), the pattern onnxruntime fuses into one Gelu kernel
    nodes = [
        helper.make_node("Div", [x, "sqrt2"], ["scaled"]),
        helper.make_node("Erf", ["scaled"], ["erf"]),
        helper.make_node("Add", ["erf", "one"], ["erf1"]),
        helper.make_node("Mul", [x, "erf1"], ["gated"]),
        helper.make_node("Mul", ["gated", "half"], [y]),
    ]
    return nodes, [const("sqrt2", math.sqrt(2)), const("one", 1.0), const("half", 0.5)]


# -- what a measuring process finds at a path ---------------------------------------------------


def artifact_kind(path: str | Path) -> str:
    """What a measuring process finds at ``path``: layer (.json spec), program (.pt2), onnx, pte, tflite or a folder."""
    suffix = Path(path).suffix.lower()
    kinds = {".json": "layer", ".pt2": "program", ".onnx": "onnx", ".pte": "pte", ".tflite": "tflite"}
    return kinds.get(suffix, "folder")


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


def _sibling(name: str) -> Any:
    """A module of edgeprune's top folder, loaded by path: the onnxruntime process cannot import edgeprune (torch)."""
    import importlib.util

    full = f"_edgeprune_{name}_worker"
    if full not in sys.modules:
        path = Path(__file__).resolve().parent.parent / f"{name}.py"
        spec = importlib.util.spec_from_file_location(full, path)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules[full] = module  # before running it: its dataclasses look their module up
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    return sys.modules[full]


Runner = Callable[[Any], None]
Loader = Callable[[str, int], Runner]


def _torch_kit(job: dict) -> tuple[Loader, Callable[[Any], Any], dict]:
    """The torch loader (folder, .pt2 program or layer spec -> run function), input conversion and runtime."""
    import torch

    sys.path.extend(p for p in job.get("sys_path", []) if p not in sys.path)
    torch.set_num_threads(job["threads"])
    device = torch.device(job.get("device", "cpu"))
    # an accelerator runs asynchronously: wait for each inference, or the timer sees only the launch
    sync = {"cuda": torch.cuda.synchronize, "mps": torch.mps.synchronize}.get(device.type)

    def to_input(array: Any) -> Any:
        x = torch.from_numpy(array)
        return (x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x).to(device)

    def load(path: str, seed: int) -> Runner:
        kind = artifact_kind(path)
        if kind == "layer":
            model = torch_block(_load_spec(path), seed)
        elif kind == "program":  # written by write_artifact for a module without a builder; our own file
            model = torch.export.load(path).module()
        else:  # written by write_artifact after the user vouched for its builder (trust list, --model, ...)
            from edgeprune.io import load as load_folder

            model = load_folder(path, trust_code=True, allow_changed=True).eval()
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
    return load, to_input, runtime


def _ort_kit(job: dict) -> tuple[Loader, Callable[[Any], Any], dict]:
    """The onnxruntime loader (.onnx file or layer spec -> run function), input conversion and runtime."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = job["threads"]
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if job["spin"] else "0")

    def load(path: str, seed: int) -> Runner:
        # a spec's graph is built here, in memory: no file, and the same options as a model file's
        source = onnx_block(_load_spec(path), seed) if artifact_kind(path) == "layer" else path
        session = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def run(x: Any) -> None:
            session.run(None, {name: x})

        return run

    runtime = {
        "runtime": f"onnxruntime {ort.__version__} CPUExecutionProvider",
        "spin_wait": f"session.intra_op.allow_spinning={int(job['spin'])}",
    }
    return load, lambda array: array, runtime


def _edge_kit(job: dict) -> tuple[Loader, Callable[[Any], Any], dict]:
    """The ExecuTorch or LiteRT loader (.pte / .tflite file -> run function; edgeprune.edge_runtime), and runtime."""
    edge = _sibling("edge_runtime")

    def load(path: str, seed: int) -> Runner:
        return edge.open_model(path, job["threads"]).run_batch

    runtime = {"runtime": edge.runtime_name(job["backend"]), "spin_wait": "runtime default"}
    return load, lambda array: array, runtime


def _input_pools(job: dict, to_input: Callable[[Any], Any]) -> dict[tuple[int, ...], list]:
    """Seeded random inputs per input shape: ``runs`` distinct ones, fewer when they would pass INPUT_POOL_BYTES."""
    import numpy as np

    rng = np.random.default_rng(job["seed"])
    shapes = list(dict.fromkeys(tuple(a["input_shape"]) for a in job["artifacts"].values()))
    per_round = sum(4 * job["batch_size"] * math.prod(shape) for shape in shapes)
    count = max(1, min(job["runs"], int(INPUT_POOL_BYTES // max(per_round, 1))))  # a shape with a 0: no division
    return {
        shape: [to_input(rng.standard_normal((job["batch_size"], *shape), dtype=np.float32)) for _ in range(count)]
        for shape in shapes
    }


def _worker_main(job_file: str) -> None:
    """Entry point of the measuring process: read the job, measure, write the result JSON."""
    import gc

    import psutil

    job = json.loads(Path(job_file).read_text())
    kits = {"torch": _torch_kit, "onnxruntime": _ort_kit}
    load, to_input, runtime = kits.get(job["backend"], _edge_kit)(job)
    pools = _input_pools(job, to_input)
    proc = psutil.Process()
    gc.collect()
    baseline = proc.memory_info().rss
    runners, inputs = {}, {}
    for name, artifact in job["artifacts"].items():
        runners[name] = load(artifact["path"], job["seed"])
        inputs[name] = pools[tuple(artifact["input_shape"])]
    for name, run in runners.items():
        for i in range(job["warmup"]):
            run(inputs[name][i % len(inputs[name])])
    if job["interleaved"]:
        blocked = job.get("order") == "blocked"
        times = (_time_blocked if blocked else _time_interleaved)(runners, inputs, job["runs"])
        results = {n: {"latency_ms": latency_stats(t), "threads": job["threads"], **runtime} for n, t in times.items()}
    else:
        ((name, run),) = runners.items()
        results = {name: {**_time_single(run, inputs[name], job, proc, baseline), **runtime}}
    Path(job["result_file"]).write_text(json.dumps(results))


def _time_interleaved(runners: dict[str, Runner], inputs: dict[str, list], runs: int) -> dict[str, list[float]]:
    """Per-run seconds of each model, timed round-robin so that all see the same machine conditions."""
    names = list(runners)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(runs):
        shift = r % len(names)  # rotate the order so no model always runs first
        for name in names[shift:] + names[:shift]:
            x = inputs[name][r % len(inputs[name])]
            t0 = time.perf_counter()
            runners[name](x)
            times[name].append(time.perf_counter() - t0)
    return times


def _time_blocked(runners: dict[str, Runner], inputs: dict[str, list], runs: int) -> dict[str, list[float]]:
    """Per-run seconds of each model, its runs back to back (warm caches, as a model served in a loop)."""
    times: dict[str, list[float]] = {}
    for name, run in runners.items():
        times[name] = []
        for r in range(runs):
            x = inputs[name][r % len(inputs[name])]
            t0 = time.perf_counter()
            run(x)
            times[name].append(time.perf_counter() - t0)
    return times


def _time_single(run: Runner, inputs: list, job: dict, proc: Any, baseline: int) -> dict:
    """Latency, throughput, CPU use, RSS and RAPL energy of one model's timed loop."""
    meter = _sibling("energy").RaplMeter()  # the root: $EDGEPRUNE_POWERCAP, else /sys/class/powercap
    times, window = _timed_loop(run, inputs, job["runs"], meter)
    loop_wall = window["wall"]
    if loop_wall < CPU_WINDOW_S:
        # The kernel updates other threads' CPU time at scheduler ticks (a few ms) and RAPL its counters
        # about every ms: over a short loop both are meaningless, so measure them over more (untimed)
        # inferences, >= CPU_WINDOW_S.
        window = _untimed_window(run, inputs, meter)
    after = proc.memory_info().rss
    peak = max(_peak_rss_bytes(), after)
    cpu, wall = window["cpu"], window["wall"]
    return {
        "latency_ms": latency_stats(times),
        "throughput_per_s": len(times) * job["batch_size"] / loop_wall,
        "cpu": {
            "utilisation_pct": 100.0 * cpu / wall if wall > 0 else 0.0,
            "cpu_seconds": cpu,
            "wall_seconds": wall,
            "inferences": window["inferences"],
            "threads": job["threads"],
            "os_threads": proc.num_threads(),
        },
        "memory": {
            "rss_baseline_mb": baseline / MB,
            "rss_peak_mb": peak / MB,
            "rss_increase_mb": (peak - baseline) / MB,
            "rss_after_mb": after / MB,
        },
        "energy": _sibling("energy").rapl_record(window["energy"], window["inferences"] * job["batch_size"]),
    }


def _timed_loop(run: Runner, inputs: list, runs: int, meter: Any) -> tuple[list[float], dict]:
    """Seconds of each of ``runs`` inferences, and the loop's wall time, CPU time and RAPL reading."""
    times = []
    meter.start()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for r in range(runs):
        x = inputs[r % len(inputs)]
        t0 = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - t0)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return times, {"wall": wall, "cpu": cpu, "inferences": runs, "energy": meter.stop()}


def _untimed_window(run: Runner, inputs: list, meter: Any) -> dict:
    """Wall time, CPU time and RAPL reading of as many inferences as fill CPU_WINDOW_S."""
    n = 0
    meter.start()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    while time.perf_counter() - wall0 < CPU_WINDOW_S:
        run(inputs[n % len(inputs)])
        n += 1
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return {"wall": wall, "cpu": cpu, "inferences": n, "energy": meter.stop()}


__all__ = [
    "ACTIVATIONS",
    "BACKENDS",
    "EDGE_BACKENDS",
    "LOADS",
    "ORDERS",
    "artifact_kind",
    "latency_stats",
    "layer_output_shape",
    "normalize_layer_spec",
    "onnx_block",
    "torch_block",
]


if __name__ == "__main__":  # python -m edgeprune.backends.worker JOB_FILE, or this file run by path
    _worker_main(sys.argv[1])
