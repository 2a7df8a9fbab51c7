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
    p.add_argument(
        "--probe",
        metavar="DIR",
        default=None,
        help="measure on another device: write a bundle to DIR (the model and the --with models exported for the "
        "one --backend, onnxruntime, executorch or litert, and probe.py, which needs only Python, numpy and that "
        "runtime); run 'python probe.py --threads T' on the device, then --from-probe its measurements.json",
    )
    p.add_argument("--with", dest="variants", nargs="+", default=[], metavar="MODEL",
                   help="with --probe: pruned variants (model folders) timed interleaved beside the model")  # fmt: skip
    p.add_argument("--rounds", type=options.positive_int, default=3, help="with --probe: rounds on the device")
    p.add_argument("--from-probe", metavar="FILE", default=None,
                   help="print the device's latencies from a probe's measurements FILE (of --bundle DIR, default "
                   "FILE's folder)")  # fmt: skip
    p.add_argument("--bundle", metavar="DIR", default=None, help="the probe bundle --from-probe FILE measured")
    p.add_argument("--force", action="store_true", help="write into a non-empty --probe folder")


def _probe(args: argparse.Namespace) -> None:
    """Write a whole-model probe bundle, or print what the device measured of one."""
    import dataclasses
    from pathlib import Path

    from edgeprune.backends.probe import check_backend, models_from_probe, write_models_probe
    from edgeprune.errors import EdgepruneError
    from edgeprune.io import resolve
    from edgeprune.lut import ms_text

    if args.from_probe:
        result = models_from_probe(args.from_probe, args.bundle or Path(args.from_probe).resolve().parent)
        if args.json:
            return print(json.dumps(result, indent=2))
        d = result["device"]
        print(f"{result['backend']} {d['runtime_version']}, {d['threads']} thread(s), {d['cpu']} ({d['platform']})")
        for name, m in result["models"].items():
            print(f"  {name}: {ms_text(m['median_ms'])} ({m['ratio']:.3f} x the first)")
        return None
    backends = args.backends or ["onnxruntime"]
    if len(backends) != 1:
        raise EdgepruneError(f"--probe times one backend, got {len(backends)}: {' '.join(backends)}")
    check_backend(backends[0])
    main = resolve(options.model_ref(args))
    models = {args.model: main.model}
    for ref in args.variants:
        variant = resolve(dataclasses.replace(options.model_ref(args), ref=ref))
        if tuple(variant.input_shape) != tuple(main.input_shape):
            raise EdgepruneError(
                f"--with {ref}: takes {list(variant.input_shape)} inputs, not {list(main.input_shape)}"
            )
        models[ref] = variant.model
    timing = {"runs": args.runs, "warmup": args.warmup, "rounds": args.rounds}
    write_models_probe(models, tuple(main.input_shape), args.probe, backends[0], timing=timing, force=args.force)
    print(f"wrote {args.probe}: {len(models)} models for {backends[0]}, manifest.json and probe.py\non the device: "
          f"python probe.py --threads {args.threads or 1}; then here: edgeprune bench {args.model} --from-probe "
          f"measurements.json --bundle {args.probe}")  # fmt: skip


def run(args: argparse.Namespace) -> None:
    """Measure a model on the CPU."""
    from edgeprune.edge_runtime import is_edge_path
    from edgeprune.measure import bench, is_onnx_path
    from edgeprune.report import bench_table

    if args.probe or args.from_probe:
        return _probe(args)
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
