"""``edgeprune bench``: latency, CPU use, memory, size on disk and estimated energy on this CPU."""

from __future__ import annotations

import argparse
import json

from edgeprune.cli import options


def add(sub: argparse._SubParsersAction) -> None:
    """Register ``edgeprune bench``."""
    from edgeprune.backends import EDGE_BACKENDS
    from edgeprune.measure import BACKENDS

    p = sub.add_parser(
        "bench",
        parents=[
            options.model(onnx=True),
            options.timing(runs=100, warmup=10),
            options.threads(),
            options.device("torch", default="cpu", extra="; onnxruntime stays on the CPU"),
            options.json_output("print the full result as JSON"),
        ],
        help="measure latency, CPU use, memory, size on disk and estimated energy on this CPU",
        description="Measure a model on each backend (torch eager channels-last; onnxruntime CPU on an exported, "
        "checked .onnx; executorch and litert on a checked .pte / .tflite, on request), each in a fresh process: "
        "latency (median, p90, mean) of --runs random inputs after "
        "--warmup, CPU utilisation (process CPU time / wall time, % of one core), resident memory (peak, and "
        "increase over the pre-model baseline), model size on disk, and the energy estimate per inference "
        "(45 nm, Horowitz 2014: 4.6 pJ per multiply-add + 640 pJ per 32-bit DRAM word moved). An .onnx "
        "file runs on onnxruntime as it is, its complexity counted from its graph.",
    )
    p.add_argument(
        "--backends",
        "--backend",
        dest="backends",
        nargs="+",
        default=None,
        metavar="NAME",
        help=f"backends to measure: {', '.join(BACKENDS + EDGE_BACKENDS)} (default: {' and '.join(BACKENDS)}; "
        "for an .onnx, .pte or .tflite file its own runtime); executorch and litert run the model exported to "
        ".pte / .tflite (checked against PyTorch) at batch 1; --backend is the same option",
    )
    p.add_argument("--batch-size", type=options.positive_int, default=1, help="inputs per inference (default 1)")
    p.add_argument("--pad-channels", type=options.positive_int, default=None, metavar="N", help=options.PAD_HELP)


def run(args: argparse.Namespace) -> None:
    """Measure a model on the CPU."""
    from edgeprune.edge_runtime import is_edge_path
    from edgeprune.measure import bench, is_onnx_path
    from edgeprune.report import bench_table

    onnx = is_onnx_path(args.model)
    result = bench(
        args.model if onnx or is_edge_path(args.model) else options.model_ref(args),
        args.backends,
        runs=args.runs,
        warmup=args.warmup,
        batch_size=args.batch_size,
        threads=args.threads,
        input_shape=options.onnx_shape(args) if onnx else None,
        pad_to=args.pad_channels,
        spin=not args.no_spin,
        device=args.device,
    )
    print(json.dumps(result, indent=2) if args.json else bench_table(result))
