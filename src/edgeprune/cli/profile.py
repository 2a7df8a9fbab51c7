"""``edgeprune profile``: per-layer parameters, FLOPs and memory, and which layers are prunable."""

from __future__ import annotations

import argparse
import json
import sys

from edgeprune.cli import options


def add(sub: argparse._SubParsersAction) -> None:
    """Register ``edgeprune profile``."""
    p = sub.add_parser(
        "profile",
        parents=[
            options.model(onnx=True),
            options.json_output("print JSON (per-layer rows, groups and a 'total' object)"),
        ],
        help="per-layer parameters, FLOPs and memory, and which layers are prunable",
        description="Complexity profile (fp32, batch 1): per layer and in total, parameters, FLOPs (one "
        "multiply-add counted once, i.e. MACs) and memory (4 bytes x (parameters + output feature map)), "
        "each layer's share of each, and the channel groups that prune together. An .onnx file is counted "
        "from its graph (Conv, Gemm and MatMul layers; no channel groups), with its peak memory from the "
        "graph's tensors; a .tflite file from its flatbuffer (Conv2D, DepthwiseConv2D and FullyConnected; "
        "needs the litert extra).",
    )
    p.add_argument(
        "--plot", metavar="FILE.png", help="also save a bar chart of per-layer shares (like the paper's Fig. 1)"
    )
    p.add_argument("--prune-residual", action="store_true", help="count residual-tied channel groups as prunable")
    p.add_argument("--keep", action="append", default=[], metavar="LAYER", help=options.KEEP_HELP)


def run(args: argparse.Namespace) -> None:
    """Print a model's complexity profile."""
    import torch

    from edgeprune.costs import mcu_totals
    from edgeprune.files import check_writable_file
    from edgeprune.graph import profile
    from edgeprune.io import resolve
    from edgeprune.liveness import attach
    from edgeprune.measure import is_onnx_path
    from edgeprune.onnx_graph import onnx_profile
    from edgeprune.report import profile_table
    from edgeprune.tflite_graph import is_tflite_path, tflite_profile

    if args.plot:
        check_writable_file(args.plot, "--plot")
    from_onnx = is_onnx_path(args.model)
    from_tflite = is_tflite_path(args.model)
    if from_tflite:
        prof = tflite_profile(args.model)
    elif from_onnx:
        prof = onnx_profile(args.model, options.onnx_shape(args))
    else:
        resolved = resolve(options.model_ref(args))
        prof = profile(resolved.model, resolved.input_shape, prune_residual=args.prune_residual, keep=args.keep)
        attach(prof, resolved.model, torch.zeros(1, *resolved.input_shape))  # peak_memory's liveness
    if args.plot:
        from edgeprune.plots import plot_shares

        plot_shares(prof, args.plot, f"{args.model}: per-layer share of complexity")
    data = {**prof.to_dict(), "microcontroller": mcu_totals(prof)} if args.json else None
    print(json.dumps(data, indent=2) if args.json else profile_table(prof))
    if (from_onnx or from_tflite) and not args.json:
        graph = "ONNX graph" if from_onnx else "LiteRT flatbuffer"
        print(f"counted from the {graph}: a BatchNorm folded into a conv counts as its bias; prunable: unknown")
    if args.plot:  # on stderr with --json, so stdout stays one JSON document
        print(f"wrote {args.plot}", file=sys.stderr if args.json else sys.stdout)
