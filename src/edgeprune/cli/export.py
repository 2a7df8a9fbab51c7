"""``edgeprune export``: ONNX (checked against PyTorch in onnxruntime), and int8 on a calibration data set."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgeprune.cli import options
from edgeprune.errors import EdgepruneError


def add(sub: argparse._SubParsersAction) -> None:
    """Register ``edgeprune export``."""
    p = sub.add_parser(
        "export",
        parents=[options.model()],
        help="export a model to ONNX, ExecuTorch (.pte) or LiteRT (.tflite), checked against PyTorch in its runtime",
        description="Export to ONNX (dynamic batch; onnxruntime), ExecuTorch (.pte, XNNPACK delegate) or LiteRT "
        "(.tflite), both at batch 1; run the file in its runtime on random inputs and fail if the outputs differ "
        "from PyTorch's by more than --atol; the file is written atomically. --int8 quantizes with each format's "
        "own tool chain, calibrated on training images, and checks test accuracy against fp32 (--max-drop).",
    )
    p.add_argument("--onnx", default=None, metavar="FILE", help="the .onnx file to write (as --format onnx --out FILE)")
    p.add_argument(
        "--format",
        default=None,
        metavar="NAME",
        help="onnx, executorch (.pte) or litert (.tflite); default: from the --out file's suffix",
    )
    p.add_argument("--out", default=None, metavar="FILE", help="the file to write (.onnx, .pte or .tflite)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, 7 to 20 (default 17)")
    p.add_argument(
        "--exporter",
        default="auto",
        help="torchscript, dynamo (needs onnxscript) or auto (default: torchscript, else dynamo)",
    )
    p.add_argument("--atol", type=options.finite, default=1e-4, help="largest allowed |onnx - torch| (default 1e-4)")
    p.add_argument("--pad-channels", type=options.positive_int, default=None, metavar="N", help=options.PAD_HELP)
    _add_int8(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _add_int8(p: argparse.ArgumentParser) -> None:
    """The options of --int8: the calibration data set, how it calibrates, and the accuracy it must keep."""
    from edgeprune.cpu import DEFAULT_TARGET, TARGETS

    p.add_argument(
        "--int8",
        action="store_true",
        help="also quantize to int8, per-channel int8 weights, int8 activations calibrated on --calibration: "
        "onnx: onnxruntime static quantization (QDQ), FILE gets the int8 model, FILE-fp32.onnx the checked fp32 "
        "one; executorch: PT2E with the XNNPACK quantizer; litert: PT2E with litert_torch's quantizer",
    )
    p.add_argument(
        "--calibration",
        "--data",
        dest="calibration",
        metavar="PATH",
        default=None,
        help="data set for --int8: training images calibrate, the test split checks accuracy (--data is "
        "the same option, as in the other commands)",
    )
    p.add_argument(
        "--calibration-images",
        type=options.positive_int,
        default=256,
        metavar="N",
        help="training images calibrating activation ranges, chosen by --seed (default 256)",
    )
    p.add_argument(
        "--calibration-method",
        default="minmax",
        metavar="NAME",
        help="minmax (default: measured best here), entropy or percentile",
    )
    p.add_argument(
        "--max-drop",
        type=options.finite,
        default=1.0,
        metavar="POINTS",
        help="largest allowed fall in test top-1 accuracy from fp32 to int8, in points (default 1.0); "
        "over it the file is kept and the command exits 2 with the numbers",
    )
    p.add_argument(
        "--limit-test",
        type=options.positive_int,
        default=None,
        metavar="N",
        help="check the int8 accuracy on this many test images only",
    )
    p.add_argument("--seed", type=options.seed, default=0, help="seed of the calibration images (default 0)")
    p.add_argument(
        "--target-cpu",
        choices=TARGETS,
        default=DEFAULT_TARGET,
        help="CPU the int8 file must hold its accuracy on: any (default: every x86 and ARM CPU; 7-bit "
        "weights, which x86 CPUs without VNNI need), native (this CPU), vnni (VNNI/AMX x86 or ARM "
        "only: full 8-bit weights), avx2 (x86 without VNNI)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="with --int8, replace a FILE-fp32.onnx that no earlier export of FILE wrote",
    )


def _export_int8(args: argparse.Namespace, fp32: Path) -> dict:
    """Quantize the checked fp32 export to ``args.onnx`` and check its test accuracy against fp32."""
    from edgeprune.data import load_dataset
    from edgeprune.quantize import int8_check, quantize_onnx

    data = load_dataset(args.calibration, None, args.limit_test, progress=False)
    info = quantize_onnx(
        fp32,
        args.onnx,
        data,
        images=args.calibration_images,
        seed=args.seed,
        method=args.calibration_method,
        target_cpu=args.target_cpu,
    )
    info["check"] = int8_check(fp32, args.onnx, data, args.max_drop)
    return info


def _target_cpu_line(target: dict, cpu: dict) -> str:
    """Which CPUs the int8 file is for, and which CPU checked its accuracy."""
    weights = "7-bit weights" if target["reduce_range"] else "8-bit weights"
    holds = "every x86 and ARM CPU" if target["reduce_range"] else "VNNI/AMX x86 and ARM CPUs (not AVX2-only x86)"
    return (
        f"target CPU: {target['target']} ({weights}: for {holds}); accuracy checked on {cpu['model']} ({cpu['class']})"
    )


def _check_int8_args(args: argparse.Namespace) -> None:
    """--int8 and --calibration together, the data set there and the method known: before the export runs."""
    if args.int8 != (args.calibration is not None):
        raise EdgepruneError("--int8 needs --calibration PATH (a data set), and --calibration is only for --int8")
    if args.int8:
        from edgeprune.quantize import METHODS

        if not Path(args.calibration).expanduser().exists():  # before the export, not after it
            raise EdgepruneError(f"--calibration {args.calibration}: no such data set")
        if args.calibration_method not in METHODS:
            raise EdgepruneError(
                f"unknown calibration method '{args.calibration_method}'; choose from: {', '.join(METHODS)}"
            )


def _int8_lines(info: dict, onnx: str) -> str:
    """What the int8 step wrote and how its accuracy compares with fp32."""
    check = info["int8"]["check"]
    line = (
        f"\nwrote {onnx} (int8 QDQ, {check['int8']['bytes'] / 1e6:.2f} MB, "
        f"{info['int8']['method']} calibration on {info['int8']['calibration']['images']} images); test top-1 "
        f"fp32 {100 * check['fp32']['top1']:.2f}%, int8 {100 * check['int8']['top1']:.2f}% "
        f"(drop {check['drop_points']:+.2f} points, limit {check['max_drop_points']:g}) on {check['images']} images"
        f"\n{_target_cpu_line(info['int8']['target_cpu'], check['cpu'])}"
    )
    if check["int8"]["bytes"] >= info["fp32"]["bytes"]:  # per-channel scales outweigh the bytes saved
        line += (
            f"\nnote: the int8 file is not smaller than the fp32 one ({info['fp32']['bytes'] / 1e6:.2f} MB): at "
            "a few channels per layer the per-channel scales and zero points outweigh the weights saved"
        )
    return line


def _target(args: argparse.Namespace) -> tuple[str, str]:
    """The format and file to write, from --onnx FILE or --out FILE [--format NAME]; one line when they disagree."""
    from edgeprune.edge_export import check_format, format_for

    if args.onnx is not None:
        if args.out is not None:
            raise EdgepruneError("give --onnx FILE or --out FILE, not both")
        if args.format not in (None, "onnx"):
            raise EdgepruneError(f"--onnx writes ONNX; for --format {args.format} give --out FILE")
        return check_format("onnx", args.onnx), args.onnx
    if args.out is None:
        raise EdgepruneError("give the file to write: --out FILE (.onnx, .pte or .tflite), or --onnx FILE")
    fmt = args.format if args.format is not None else format_for(args.out)
    return check_format(fmt, args.out), args.out


def _check_edge_args(args: argparse.Namespace, fmt: str) -> None:
    """Refuse the ONNX-only options with an ExecuTorch or LiteRT export (they would be silently ignored)."""
    from edgeprune.cpu import DEFAULT_TARGET

    onnx_only = {
        "--opset": args.opset != 17,
        "--exporter": args.exporter != "auto",
        "--calibration-method": args.calibration_method != "minmax",
        "--target-cpu": args.target_cpu != DEFAULT_TARGET,
        "--force": args.force,
    }
    given = [name for name, set_ in onnx_only.items() if set_]
    if given:
        raise EdgepruneError(f"{', '.join(given)}: only for --format onnx, not {fmt}")


def _run_edge(args: argparse.Namespace, fmt: str, out: str) -> None:
    """Export (or quantize) to ExecuTorch or LiteRT, check it, print what was written."""
    from edgeprune.edge_export import export_edge
    from edgeprune.io import resolve

    model = resolve(options.model_ref(args))
    if not args.int8:
        info = export_edge(model, out, fmt, atol=args.atol, pad_to=args.pad_channels, seed=args.seed)
        check = info["check"]
        line = (
            f"wrote {out} ({fmt}, fp32, batch 1, {info['bytes'] / 1e6:.2f} MB); max |{fmt} - torch| = "
            f"{check['max_abs_diff']:.2e} on {check['images']} random inputs (limit {check['atol']:g}; "
            f"{check['runtime']})"
        )
        print(json.dumps(info, indent=2) if args.json else line)
        return
    from edgeprune.data import load_dataset
    from edgeprune.edge_quantize import edge_int8_check, quantize_edge

    data = load_dataset(args.calibration, None, args.limit_test, progress=False)
    info = quantize_edge(
        model, out, fmt, data, images=args.calibration_images, seed=args.seed, pad_to=args.pad_channels
    )
    check = info["check"] = edge_int8_check(model, out, data, args.max_drop)
    line = (
        f"wrote {out} ({fmt}, int8, batch 1, {info['bytes'] / 1e6:.2f} MB; {info['scheme']}; calibrated on "
        f"{info['calibration']['images']} training images); test top-1 torch fp32 {100 * check['fp32']['top1']:.2f}%, "
        f"{fmt} int8 {100 * check['int8']['top1']:.2f}% (drop {check['drop_points']:+.2f} points, limit "
        f"{check['max_drop_points']:g}) on {check['images']} images"
    )
    print(json.dumps(info, indent=2) if args.json else line)
    if not check["passed"]:
        raise EdgepruneError(
            f"int8 accuracy fell {check['drop_points']:.2f} points, over --max-drop {check['max_drop_points']:g} "
            f"(file kept: {out}; try more --calibration-images)"
        )


def run(args: argparse.Namespace) -> None:
    """Export and check."""
    from edgeprune.export import check_export_args, check_fp32_path, export_onnx, fp32_path
    from edgeprune.files import check_writable_file

    fmt, out = _target(args)
    check_export_args(args.opset, args.atol, args.exporter)
    check_writable_file(out, "--onnx" if args.onnx is not None else "--out")
    _check_int8_args(args)
    if fmt != "onnx":
        _check_edge_args(args, fmt)
        _run_edge(args, fmt, out)
        return
    args.onnx = out
    target = Path(args.onnx)
    fp32, mark = target, None
    if args.int8:  # FILE-fp32.onnx is a name the user never gave: never overwrite another file there
        fp32, mark = fp32_path(target), check_fp32_path(target, args.force)
    info = export_onnx(
        options.model_ref(args),
        fp32,
        None,
        opset=args.opset,
        exporter=args.exporter,
        atol=args.atol,
        pad_to=args.pad_channels,
        metadata=mark,
    )
    line = (
        f"wrote {info['path']} ({info['bytes'] / 1e6:.2f} MB, opset {info['opset']}, {info['exporter']} exporter); "
        f"max |onnxruntime - torch| = {info['check']['max_abs_diff']:.2e} (limit {info['check']['atol']:g})"
    )
    if args.int8:
        info = {"fp32": info, "int8": _export_int8(args, fp32)}
        line += _int8_lines(info, args.onnx)
    print(json.dumps(info, indent=2) if args.json else line)
    if args.int8 and not info["int8"]["check"]["passed"]:
        check = info["int8"]["check"]
        raise EdgepruneError(
            f"int8 accuracy fell {check['drop_points']:.2f} points, over --max-drop {check['max_drop_points']:g} "
            f"(file kept: {args.onnx}; try --calibration-method entropy or percentile, or more --calibration-images)"
        )
