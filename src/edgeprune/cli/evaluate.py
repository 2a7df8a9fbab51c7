"""``edgeprune evaluate``: test-split accuracy of a model folder, a reference or an .onnx, .pte or .tflite file."""

from __future__ import annotations

import argparse
import json

from edgeprune.cli import options


def add(sub: argparse._SubParsersAction) -> None:
    """Register ``edgeprune evaluate``."""
    p = sub.add_parser(
        "evaluate",
        parents=[
            options.model(onnx=True),
            options.data(required=True, help="the data set (as for train)", limit_train=False),
            options.threads(),
            options.json_output(),
        ],
        help="test-split accuracy of a model folder, a reference or an .onnx (onnxruntime), .pte (ExecuTorch) or "
        ".tflite (LiteRT) file",
        description="Top-1 accuracy (and top-5 when there are more than 10 classes) on the test split of --data, "
        "with the preprocessing train uses (the data set's mean and std). An .onnx file runs in onnxruntime as it "
        "is (fp32 or int8), a .pte file in ExecuTorch, a .tflite file in LiteRT (both batch 1); a zoo name or a "
        "factory is built untrained, sized for the data set.",
    )
    p.add_argument("--batch-size", type=options.positive_int, default=256, help="images per forward pass (default 256)")


def run(args: argparse.Namespace) -> None:
    """Print a model's test accuracy."""
    from edgeprune.edge_runtime import is_edge_path
    from edgeprune.evaluate import evaluate
    from edgeprune.measure import is_onnx_path

    model = args.model if is_onnx_path(args.model) or is_edge_path(args.model) else options.model_ref(args)
    data = options.load_data(args, None, args.limit_test, progress=False)
    result = evaluate(model, data, batch_size=args.batch_size, threads=args.threads)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    top5 = f", top-5 {100 * result['top5']:.2f}%" if "top5" in result else ""
    print(
        f"{args.model}: top-1 {100 * result['top1']:.2f}%{top5} on {result['images']:,} test images of "
        f"{data.name} ({result['backend']})"
    )
