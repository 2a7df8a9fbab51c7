"""How much of a FLOPs saving reaches the wall clock: measured speed-up against the FLOPs ratio.

For each model (VGG-16 and MobileNetV2 by default), the unpruned parent is pruned at initialization
to 50% of its FLOPs in each mode: in ``flops`` mode with target 0.5, in ``params`` and ``memory``
mode with the target in that mode found by bisection so that the result has just under 50% of the
parent's FLOPs (the same seed follows the same pruning path, so FLOPs fall monotonically with the
target). To test whether odd channel counts hurt the oneDNN / MLAS kernels, each pruned model is also
timed with every pruned layer zero-padded to a multiple of 16 channels (the fp32 SIMD width of
AVX-512; ``edgeprune.export.pad_channels``, same outputs), and optionally (``--round``) the FLOPs-mode
model rebuilt with widths rounded up by keeping some of the removed filters.

The parent and all its pruned variants are timed interleaved, round-robin in one process per
backend (``edgeprune.measure.latency_interleaved``), so each sees the same machine conditions;
this is repeated ``--repeats`` times in fresh processes and the median is reported. Speed-up =
parent median latency / variant median latency; FLOPs speed-up = parent FLOPs / variant FLOPs;
realisation = speed-up / FLOPs speed-up (1.0: every saved FLOP saved its share of time).

    .venv/bin/python benchmarks/latency_realisation.py            # writes docs/results/latency_realisation.md
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import json_text, parser, write_text

import edgeprune
from edgeprune.export import pad_channels
from edgeprune.graph import build_graph, cut, profile
from edgeprune.measure import latency_interleaved, machine_info, prepare
from edgeprune.pruning import make_plan, prune
from edgeprune.report import table
from edgeprune.runtime import default_threads

ROOT = Path(__file__).resolve().parents[1]
MODES = ("params", "flops", "memory")


def prune_to_flops(base, mode, fraction, seed, shape):
    """(PruneResult, target fraction in ``mode``) with FLOPs just under ``fraction`` of the parent's."""
    if mode == "flops":
        return prune(base, "flops", fraction, seed=seed, input_shape=shape), fraction
    prof = profile(base, shape)
    goal = fraction * prof.total("flops")
    total = prof.total(mode)
    lo, hi, best = 0.0, 1.0, None
    for _ in range(20):
        t = (lo + hi) / 2
        try:
            flops = make_plan(prof, prof.groups, mode, int(t * total), seed=seed).after.total("flops")
        except edgeprune.EdgepruneError:  # below the smallest reachable
            lo = t
            continue
        if flops <= goal:
            best, lo = t, t
        else:
            hi = t
        if best is not None and hi - lo < 1e-4:
            break
    if best is None:
        raise SystemExit(f"{mode} mode cannot reach {fraction:.0%} FLOPs")
    return prune(base, mode, best, seed=seed, input_shape=shape), best


def round_widths(base, result, multiple, shape):
    """The plan's model with every pruned group's width rounded up to ``multiple`` (capped at the original)."""
    model = copy.deepcopy(base)
    graph = build_graph(model, torch.zeros(1, *shape))
    for group in result.plan.groups:
        kept = result.plan.keep[group.name]
        if len(kept) == group.width:
            continue
        width = min(group.width, math.ceil(len(kept) / multiple) * multiple)
        removed = [i for i in range(group.width) if i not in set(kept)]
        cut(graph, model, group.name, removed[width - len(kept) :])
    return model


def ort_layout(onnx_path, workdir):
    """How onnxruntime's graph optimiser lays out the convs: (blocked NCHWc convs, all convs, layout reorders)."""
    import collections

    import onnx
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(Path(workdir) / "optimised.onnx")
    opts.log_severity_level = 3
    ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    ops = collections.Counter(
        (n.domain or "ai.onnx") + ":" + n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node
    )
    nchwc = ops["com.microsoft.nchwc:Conv"]
    convs = nchwc + ops["ai.onnx:Conv"] + ops["com.microsoft:FusedConv"]
    reorders = ops["com.microsoft.nchwc:ReorderInput"] + ops["com.microsoft.nchwc:ReorderOutput"]
    return nchwc, convs, reorders


def flops_of(model, shape):
    return profile(model, shape).total("flops")


def run(args):
    shape = (3, 32, 32)
    threads_list = args.threads or sorted({1, default_threads()})
    machine_before = machine_info()
    started = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="latency-realisation-") as tmp:
        for name in args.models:
            torch.manual_seed(args.seed)
            parent = edgeprune.create(name)
            f0 = flops_of(parent, shape)
            p0 = sum(p.numel() for p in parent.parameters())
            variants = {"unpruned": (parent, "-", 1.0)}
            flops_result = None
            for mode in MODES:
                result, target = prune_to_flops(parent, mode, args.fraction, args.seed, shape)
                variants[mode] = (result.model, mode, target)
                if mode == "flops":
                    flops_result = result
            for multiple in args.pad:
                for mode in MODES:
                    model, _, target = variants[mode]
                    variants[f"{mode} +pad{multiple}"] = (pad_channels(model, multiple, shape), mode, target)
            for multiple in args.round:
                variants[f"flops, widths x{multiple}"] = (
                    round_widths(parent, flops_result, multiple, shape),
                    "flops",
                    args.fraction,
                )
            info = {}
            for label, (model, mode, target) in variants.items():
                convs = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
                info[label] = {
                    "mode": mode,
                    "target": target,
                    "flops": flops_of(model, shape),  # as run (padded channels included)
                    "useful_flops": flops_of(variants[label.split(" +pad")[0]][0], shape),
                    "params": sum(p.numel() for p in model.parameters()),
                    "conv_widths_multiple_of_8": sum(c % 8 == 0 for c in convs) / len(convs),
                }
            for backend in args.backends:
                prepared = {
                    label: prepare(model, Path(tmp) / f"{name}-{i}-{backend}", (backend,), shape)
                    for i, (label, (model, _, _)) in enumerate(variants.items())
                }
                layout = {}
                if backend == "onnxruntime":
                    for label, prep in prepared.items():
                        layout[label] = ort_layout(prep.onnx, prep.onnx.parent)
                for threads in threads_list:
                    medians = {label: [] for label in variants}
                    for _ in range(args.repeats):
                        options = {"runs": args.runs, "warmup": args.warmup, "spin": not args.no_spin}
                        lat = latency_interleaved(prepared, backend, threads=threads, **options)
                        for label in variants:
                            medians[label].append(lat[label]["latency_ms"]["median"])
                    for label in variants:
                        speedups = [p / v for p, v in zip(medians["unpruned"], medians[label])]
                        flops_speedup = f0 / info[label]["useful_flops"]
                        speedup = statistics.median(speedups)
                        results.append(
                            {
                                "model": name,
                                "variant": label,
                                **info[label],
                                "flops_pct": 100 * info[label]["useful_flops"] / f0,
                                "flops_run_pct": 100 * info[label]["flops"] / f0,
                                "params_pct": 100 * info[label]["params"] / p0,
                                "backend": backend,
                                "threads": threads,
                                "latency_ms": statistics.median(medians[label]),
                                "latency_ms_repeats": medians[label],
                                "speedup": speedup,
                                "speedup_min": min(speedups),
                                "speedup_max": max(speedups),
                                "flops_speedup": flops_speedup,
                                "realisation": speedup / flops_speedup,
                                "ort_nchwc_convs": layout.get(label),
                            }
                        )
                        r = results[-1]
                        print(
                            f"{name:<11} {backend:<11} {threads}t {label:<20} {r['latency_ms']:8.2f} ms "
                            f"speed-up {speedup:5.2f} (FLOPs {flops_speedup:4.2f}) realisation {r['realisation']:.2f}",
                            flush=True,
                        )
    elapsed = time.perf_counter() - started
    return results, machine_before, machine_info(), elapsed


def markdown(results, before, after, elapsed, args, command, date):
    lines = [
        "# Latency realisation: how much of the FLOPs saving reaches the wall clock",
        "",
        f"Generated by `{command}` on {date} ({elapsed / 60:.1f} min).",
        "",
        f"Machine: `nproc` = {subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()}, "
        f"{before['processor']} ({before['machine']}), Python {before['python']}, torch {before['torch']}, "
        f"onnxruntime {before['onnxruntime']}; load average (1 min) {before.get('load_average_1m', 0):.2f} "
        f"before and {after.get('load_average_1m', 0):.2f} after the run (other jobs shared the machine).",
        "",
        f"Method: each model is pruned at initialization (seed {args.seed}) to {args.fraction:.0%} of its FLOPs in "
        "each mode (FLOPs mode: target 0.5; params and memory modes: their own target found by bisection so "
        "that the FLOPs land just under 50%). `<mode> +padN` is that model with every pruned layer zero-padded "
        "to a multiple of N channels (`edgeprune.export.pad_channels`: same outputs, more FLOPs, counted in the "
        "FLOPs column); `flops, widths xN` (if present) keeps the first removed filters to round widths up. "
        "The parent and its variants are timed interleaved "
        f"(round-robin, one inference each per round) in one process per backend: {args.runs} rounds after "
        f"{args.warmup} warm-up, batch 1, random 3x32x32 inputs, repeated {args.repeats} times in fresh "
        "processes. torch = eager, channels-last, `inference_mode`; onnxruntime = CPUExecutionProvider on the "
        "exported, checked .onnx (BatchNorm folded). Idle worker threads "
        + (
            "sleep instead of spin-waiting (`--no-spin`: torch `OMP_WAIT_POLICY=PASSIVE`, onnxruntime "
            "`allow_spinning=0`), which keeps multi-threaded timings steady on a shared machine."
            if getattr(args, "no_spin", False)
            else "spin-wait (the frameworks' default)."
        ),
        "",
        "Speed-up = parent median latency / variant median latency (median over the repeats, min-max in "
        "brackets); FLOPs speed-up = parent FLOPs / pruned FLOPs (MACs, before any padding: the saving pruning "
        "promises); realisation = speed-up / FLOPs speed-up. FLOPs column: pruned FLOPs as % of the parent "
        "(for +pad variants, in brackets: the FLOPs actually run, padding included). `conv widths %8`: share "
        "of conv layers whose filter count is a multiple of 8. `NCHWc convs (reorders)` (onnxruntime): how many "
        "convs onnxruntime's graph optimiser turned into its blocked NCHWc kernels (MLAS) out of all convs, "
        "and how many layout reorder nodes it had to insert between blocked and plain convs.",
        "",
    ]
    for name in dict.fromkeys(r["model"] for r in results):
        lines += [f"## {name}", "", "```"]
        rows = [
            [
                r["variant"],
                r["backend"],
                str(r["threads"]),
                f"{r['target']:.3f}" if isinstance(r["target"], float) else r["target"],
                f"{r['flops_pct']:.1f}%" + (f" ({r['flops_run_pct']:.1f}%)" if "+pad" in r["variant"] else ""),
                f"{r['params_pct']:.1f}%",
                f"{100 * r['conv_widths_multiple_of_8']:.0f}%",
                f"{r['latency_ms']:.2f}",
                f"{r['speedup']:.2f} ({r['speedup_min']:.2f}-{r['speedup_max']:.2f})",
                f"{r['flops_speedup']:.2f}",
                f"{r['realisation']:.2f}",
                "{}/{} ({})".format(*r["ort_nchwc_convs"]) if r["ort_nchwc_convs"] else "",
            ]
            for r in results
            if r["model"] == name
        ]
        headers = ["variant", "backend", "threads", "mode target", "FLOPs", "params", "conv widths %8",
                   "median ms", "speed-up", "FLOPs speed-up", "realisation", "NCHWc convs (reorders)"]  # fmt: skip
        lines += [table(headers, rows), "```", ""]
    slower = [r for r in results if r["variant"] != "unpruned" and r["speedup"] < 1.0]
    lines += ["## Findings (computed)", ""]
    for r in slower:
        lines.append(
            f"- SLOWER than its parent: {r['model']} {r['variant']} on {r['backend']} with {r['threads']} "
            f"thread(s): speed-up {r['speedup']:.3f} (repeats {r['speedup_min']:.2f}-{r['speedup_max']:.2f})"
        )
    if not slower:
        lines.append("- No pruned variant was slower than its unpruned parent on the same backend and thread count.")
    key = {(r["model"], r["backend"], r["threads"], r["variant"]): r for r in results}
    for model, backend, threads in dict.fromkeys((r["model"], r["backend"], r["threads"]) for r in results):
        plain = [key[(model, backend, threads, m)] for m in MODES if (model, backend, threads, m) in key]
        text = ", ".join(f"{r['variant']} {r['realisation']:.2f}" for r in plain)
        pads = [r for r in results if (r["model"], r["backend"], r["threads"]) == (model, backend, threads)]
        pads = [r for r in pads if "+pad" in r["variant"]]
        if pads:
            gains = []
            for r in pads:
                unpadded = key[(model, backend, threads, r["variant"].split(" +")[0])]
                gains.append(f"{unpadded['variant']} x{unpadded['latency_ms'] / r['latency_ms']:.2f}")
            text += f"; zero-padding to x{pads[0]['variant'].split('+pad')[1]} changes speed by {', '.join(gains)}"
        lines.append(f"- {model}, {backend}, {threads} thread(s): realisation {text}.")
    lines.append("")
    return "\n".join(lines)


def main():
    p = parser(
        __doc__,
        threads={"nargs": "+", "default": None, "help": "default: 1 and all cores"},
        out={"default": str(ROOT / "docs/results/latency_realisation.md")},
    )
    p.add_argument("--models", nargs="+", default=["vgg16", "mobilenetv2"])
    p.add_argument("--backends", nargs="+", default=["torch", "onnxruntime"])
    p.add_argument("--fraction", type=float, default=0.5, help="FLOPs fraction to prune to (default 0.5)")
    p.add_argument(
        "--pad", nargs="*", type=int, default=[16], help="also time each pruned model zero-padded to these multiples"
    )
    p.add_argument(
        "--round",
        nargs="*",
        type=int,
        default=[],
        help="also time the FLOPs model with widths rounded up (more filters)",
    )
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-spin", action="store_true", help="worker threads sleep instead of spin-waiting")
    p.add_argument("--json", default=None, help="also write the raw results as JSON here")
    p.add_argument("--from-json", default=None, help="re-render the report from a --json file of an earlier run")
    args = p.parse_args()
    command = " ".join(["python", os.path.relpath(__file__, ROOT), *sys.argv[1:]])
    date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    if args.from_json:  # re-render the report of an earlier run without measuring again
        saved = json.loads(Path(args.from_json).read_text())
        results, before, after = saved["results"], saved["machine_before"], saved["machine_after"]
        elapsed, command, date = saved["elapsed_s"], saved["command"], saved["date"]
        args = argparse.Namespace(**{**vars(args), **saved["args"], "out": args.out, "json": None})
    else:
        results, before, after, elapsed = run(args)
    text = markdown(results, before, after, elapsed, args, command, date)
    print()
    print(text)
    write_text(Path(args.out), text)
    if args.json:
        payload = {
            "results": results,
            "machine_before": before,
            "machine_after": after,
            "args": vars(args),
            "elapsed_s": elapsed,
            "command": command,
            "date": date,
        }
        write_text(Path(args.json), json_text(payload, newline=False))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
