"""Backends: the files a measuring process loads, and that process (fresh, one per job) with its timing loops.

``artifacts`` is the calling side (write artifacts, start the measuring process, read its result);
``worker`` is the measuring process's own file, loaded by path, torch-free but for the torch backend.
"""

from edgeprune.backends.artifacts import (
    check_backends,
    check_counts,
    read_layer_spec,
    run_measurement,
    time_artifacts,
    write_artifact,
    write_layer_spec,
)
from edgeprune.backends.worker import (
    ACTIVATIONS,
    BACKENDS,
    CPU_WINDOW_S,
    EDGE_BACKENDS,
    LOADS,
    MB,
    ORDERS,
    artifact_kind,
    latency_stats,
    layer_output_shape,
    normalize_layer_spec,
    onnx_block,
    torch_block,
)

__all__ = [
    "ACTIVATIONS",
    "BACKENDS",
    "CPU_WINDOW_S",
    "EDGE_BACKENDS",
    "LOADS",
    "MB",
    "ORDERS",
    "artifact_kind",
    "check_backends",
    "check_counts",
    "latency_stats",
    "layer_output_shape",
    "normalize_layer_spec",
    "onnx_block",
    "read_layer_spec",
    "run_measurement",
    "time_artifacts",
    "torch_block",
    "write_artifact",
    "write_layer_spec",
]
