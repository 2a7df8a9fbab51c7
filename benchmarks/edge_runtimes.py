"""Edge runtimes: how torch, onnxruntime, ExecuTorch and LiteRT realise a FLOPs cut, fp32 and int8, at 1 thread.

For each model (VGG-16, MobileNetV2, ResNet-56; widths in ``--widths``, 1.0 by default), the unpruned model
and two FLOPs-mode prunings at 50% (``round_to`` 1 and 8, seed ``--seed``) are written as every runtime's file:
torch (model folder, eager, fp32 only: edgeprune has no int8 torch path), onnxruntime (checked .onnx, and an
int8 QDQ file from ``edgeprune.quantize.quantize_onnx``), ExecuTorch (.pte, XNNPACK; int8 by its PT2E
quantizer) and LiteRT (.tflite; int8 likewise), the int8 files calibrated on the data set's training images.

Timing: all of a model's files for one runtime (3 variants x fp32/int8) run round-robin in one fresh process
at 1 thread (``edgeprune.backends.time_artifacts``); the runtimes take turns, and the whole round is repeated
``--repeats`` times in fresh processes; a latency is the median over the repeats of each process's median.
The 1-minute load average is recorded around every timing process. Realisation of a FLOPs cut =
(1 - latency_pruned / latency_unpruned) / (1 - flops_pruned / flops_unpruned): 1.0 when every FLOP saved saves
its share of time. Cross-runtime prediction: runtime A's speed-up of each pruned variant applied to runtime B's
unpruned latency, against B's measurement, and Spearman's rank correlation of all latencies; with
``--lut MODEL=TABLE`` (``edgeprune lut`` tables) also each table's prediction against every runtime.

Accuracy (int8): the models are NOT trained (random init, seed ``--seed``), so top-1 is near chance and says
nothing; the figure reported is the agreement of each int8 file's top-1 class with the same runtime's fp32
file on the test images, and the top-1 difference (int8 - fp32) in points.

    .venv/bin/python benchmarks/edge_runtimes.py                     # -> docs/results/edge_runtimes.md/.json
    .venv/bin/python benchmarks/edge_runtimes.py --quick             # -> runs/edge_runtimes-quick.md/.json
"""

from __future__ import annotations

import itertools
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from common import ROOT, parser, provenance, write_report

MODELS = ("vgg16", "mobilenetv2", "resnet56")
RUNTIMES = ("torch", "onnxruntime", "executorch", "litert")
PRECISIONS = ("fp32", "int8")
DATA = ROOT.parent / "shared" / "data" / "cifar10-mini.tar.gz"
SHAPE = (3, 32, 32)


# -- the models and their files ----------------------------------------------------------------------------------


def build_variants(name: str, width: float, round_tos: list[int], fraction: float, seed: int) -> dict[str, dict]:
    """The unpruned model and its FLOPs-mode prunings: label -> {model, flops, params, round_to}."""
    import torch

    import edgeprune
    from edgeprune.graph import profile

    torch.manual_seed(seed)
    parent = edgeprune.create(name, width=width).eval()
    models = {"unpruned": (parent, None)}
    for r in round_tos:
        result = edgeprune.prune(parent, "flops", fraction, seed=seed, input_shape=SHAPE, round_to=r)
        models[f"FA {fraction:g} r{r}"] = (result.model.eval(), r)
    out = {}
    for label, (model, r) in models.items():
        totals = profile(model, SHAPE)
        out[label] = {"model": model, "flops": totals.total("flops"), "params": totals.total("params"), "round_to": r}
    return out


def write_files(model: Any, work: Path, runtimes: list[str], data: Any, images: int, seed: int) -> dict:
    """Every runtime's fp32 and int8 file of one model in ``work``: (runtime, precision) -> path."""
    from edgeprune.backends import write_artifact
    from edgeprune.edge_quantize import quantize_edge
    from edgeprune.quantize import quantize_onnx

    work.mkdir(parents=True, exist_ok=True)
    files = {}
    for runtime in runtimes:
        sub = work / runtime
        path, _ = write_artifact(runtime, model, sub, SHAPE)
        files[(runtime, "fp32")] = path
        if runtime == "onnxruntime":
            int8 = sub / "model-int8.onnx"
            quantize_onnx(path, int8, data, images=images, seed=seed)
            files[(runtime, "int8")] = int8
        elif runtime in ("executorch", "litert"):
            int8 = sub / f"model-int8{path.suffix}"
            quantize_edge(model, int8, runtime, data, images=images, seed=seed)
            files[(runtime, "int8")] = int8
    return files


def file_bytes(path: Path) -> int:
    """Bytes on disk of a runtime's file (a model folder counts its weights file)."""
    return (path / "model.safetensors").stat().st_size if path.is_dir() else path.stat().st_size


# -- timing ------------------------------------------------------------------------------------------------------


def time_model(files: dict, runtimes: list[str], args: Any) -> tuple[dict, list[dict]]:
    """Median latency (ms) per (variant, runtime, precision) over ``args.repeats`` rounds, and the load log.

    In each round every runtime times all of the model's files round-robin in one fresh 1-thread process."""
    from edgeprune.backends import time_artifacts

    samples: dict[tuple, list[float]] = {}
    loads = []
    for repeat, runtime in itertools.product(range(args.repeats), runtimes):
        artifacts = {f"{label}|{prec}": (path, SHAPE) for (label, rt, prec), path in files.items() if rt == runtime}
        before = os.getloadavg()[0]
        started = time.perf_counter()
        lat = time_artifacts(artifacts, runtime, threads=1, runs=args.runs, warmup=args.warmup, seed=repeat)
        loads.append(
            {"repeat": repeat, "runtime": runtime, "load_1m_before": before, "load_1m_after": os.getloadavg()[0],
             "seconds": time.perf_counter() - started}
        )  # fmt: skip
        for key, stats in lat.items():
            label, prec = key.split("|")
            samples.setdefault((label, runtime, prec), []).append(stats["median"])
    return {k: {"median_ms": statistics.median(v), "repeats_ms": v} for k, v in samples.items()}, loads


# -- accuracy ----------------------------------------------------------------------------------------------------


def scores(path: Path, runtime: str, model: Any, x: Any) -> Any:
    """Float32 scores (N, classes) of normalised float32 NCHW images: per image (torch: one batch), 1 thread."""
    import numpy as np

    if runtime == "torch":
        import torch

        torch.set_num_threads(1)
        with torch.inference_mode():
            return model(torch.from_numpy(x)).float().numpy()
    if runtime == "onnxruntime":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = 1, 1, 3
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return np.concatenate([session.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))]).astype("float32")
    from edgeprune.edge_runtime import open_model

    return np.asarray(open_model(path, threads=1).run(x), dtype="float32")


def test_images(data: Any, limit: int | None, seed: int) -> tuple[Any, Any]:
    """The test images (normalised float32 NCHW) and labels: all, or ``limit`` drawn at random with ``seed``."""
    import torch

    from edgeprune.data import Normalizer

    n = len(data.test_y) if limit is None else min(limit, len(data.test_y))
    order = torch.randperm(len(data.test_y), generator=torch.Generator().manual_seed(seed))[:n]
    x = Normalizer(data.mean, data.std)(data.test_x[order]).numpy().astype("float32")
    return x, data.test_y[order].numpy()


def accuracy(files: dict, variants: dict, data: Any, limit: int | None, seed: int) -> dict:
    """Top-1 per (variant, runtime, precision); for int8, agreement with and relative error from the fp32 file."""
    import numpy as np

    x, y = test_images(data, limit, seed)
    out_of = {key: scores(path, key[1], variants[key[0]]["model"], x) for key, path in files.items()}
    result = {}
    for (label, runtime, prec), out in out_of.items():
        top = out.argmax(1)
        entry = {"top1": float((top == y).mean()), "images": len(y), "classes_predicted": len(set(top.tolist()))}
        fp32 = out_of.get((label, runtime, "fp32"))
        if prec == "int8" and fp32 is not None:
            entry["agreement_with_fp32"] = float((top == fp32.argmax(1)).mean())
            entry["relative_error_vs_fp32"] = float(np.linalg.norm(out - fp32) / np.linalg.norm(fp32))
        result[(label, runtime, prec)] = entry
    return result


# -- analysis ----------------------------------------------------------------------------------------------------


def realisation(lat_pruned: float, lat_full: float, flops_pruned: float, flops_full: float) -> float:
    """Share of the FLOPs cut that the latency realises: (1 - lat ratio) / (1 - FLOPs ratio)."""
    return (1 - lat_pruned / lat_full) / (1 - flops_pruned / flops_full)


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman's rank correlation of two equally long lists (average ranks for ties); None under 3 points."""
    if len(a) < 3:
        return None

    def ranks(v: list[float]) -> list[float]:
        """Each value's rank from 0, ties given their average rank."""
        order = sorted(range(len(v)), key=v.__getitem__)
        r = [0.0] * len(v)
        i = 0
        while i < len(v):
            j = i
            while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    ra, rb = ranks(a), ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    cov = sum((p - ma) * (q - mb) for p, q in zip(ra, rb))
    var = (sum((p - ma) ** 2 for p in ra) * sum((q - mb) ** 2 for q in rb)) ** 0.5
    return cov / var if var else None


def cross_runtime(rows: list[dict]) -> list[dict]:
    """For each ordered runtime pair (A -> B) and precision: Spearman of all latencies, and the error of B's
    pruned latencies predicted as B's unpruned latency x A's speed-up."""
    lat = {(r["model"], r["variant"], r["runtime"], r["precision"]): r for r in rows}
    out = []
    runtimes = list(dict.fromkeys(r["runtime"] for r in rows))
    for prec, a, b in itertools.product(PRECISIONS, runtimes, runtimes):
        if a == b:
            continue
        keys = [(m, v) for (m, v, rt, p) in lat if rt == a and p == prec and (m, v, b, prec) in lat]
        if not keys:
            continue
        xs = [lat[(m, v, a, prec)]["latency_ms"] for m, v in keys]
        ys = [lat[(m, v, b, prec)]["latency_ms"] for m, v in keys]
        errors = []
        for m, v in keys:
            if v == "unpruned" or (m, "unpruned", a, prec) not in lat or (m, "unpruned", b, prec) not in lat:
                continue
            speedup_a = lat[(m, "unpruned", a, prec)]["latency_ms"] / lat[(m, v, a, prec)]["latency_ms"]
            predicted = lat[(m, "unpruned", b, prec)]["latency_ms"] / speedup_a
            errors.append(predicted / lat[(m, v, b, prec)]["latency_ms"] - 1)
        out.append(
            {"precision": prec, "from": a, "to": b, "points": len(keys), "spearman": spearman(xs, ys),
             "speedup_transfer_errors": errors,
             "mean_abs_error": statistics.fmean(map(abs, errors)) if errors else None}
        )  # fmt: skip
    return out


def lut_rows(tables: dict[str, str], variants: dict[str, dict], rows: list[dict]) -> list[dict]:
    """Each ``--lut`` table's predicted latency of each fp32 variant of its model, against every runtime's."""
    from edgeprune.graph import profile
    from edgeprune.lut import load_table

    out = []
    for name, path in tables.items():
        if name not in variants:
            continue
        table = load_table(path)
        for label, info in variants[name].items():
            predicted = table.predict(profile(info["model"], SHAPE))
            for r in rows:
                if (r["model"], r["variant"], r["precision"]) == (name, label, "fp32"):
                    out.append(
                        {"model": name, "variant": label, "table": str(path), "table_backend": table.backend,
                         "runtime": r["runtime"], "predicted_ms": predicted, "measured_ms": r["latency_ms"],
                         "error": predicted / r["latency_ms"] - 1}
                    )  # fmt: skip
    return out


# -- the run -----------------------------------------------------------------------------------------------------


def measure_model(name: str, width: float, args: Any, data: Any, work: Path) -> tuple[list[dict], dict, list]:
    """Build, write, time and score one model's variants: result rows, the variants, and the load log."""
    variants = build_variants(name, width, args.round_to, args.fraction, args.seed)
    files = {}
    for i, (label, info) in enumerate(variants.items()):
        print(f"{name}: writing files of {label}", flush=True)
        written = write_files(info["model"], work / name / f"v{i}", args.runtimes, data, args.calib_images, args.seed)
        files.update({(label, rt, prec): path for (rt, prec), path in written.items()})
    print(f"{name}: timing {len(files)} files, {args.repeats} round(s)", flush=True)
    latency, loads = time_model(files, args.runtimes, args)
    print(f"{name}: scoring on the test images", flush=True)
    scored = accuracy(files, variants, data, args.limit_test, args.seed)
    full = variants["unpruned"]
    rows = []
    for (label, runtime, prec), path in files.items():
        info, lat = variants[label], latency[(label, runtime, prec)]
        base = latency[("unpruned", runtime, prec)]["median_ms"]
        row = {
            "model": name, "width": width, "variant": label, "round_to": info["round_to"], "runtime": runtime,
            "precision": prec, "flops": info["flops"], "params": info["params"],
            "flops_pct": 100 * info["flops"] / full["flops"], "latency_ms": lat["median_ms"],
            "latency_repeats_ms": lat["repeats_ms"], "file": path.name, "bytes": file_bytes(path),
            **scored[(label, runtime, prec)],
            "realisation": None if label == "unpruned"
            else realisation(lat["median_ms"], base, info["flops"], full["flops"]),
        }  # fmt: skip
        rows.append(row)
    return rows, variants, loads


def run(args: Any) -> dict:
    """Measure every model; the record (provenance, settings, rows, analyses)."""
    from edgeprune.cpu import cpu_flags, cpu_summary
    from edgeprune.data import load_dataset

    record = {"provenance": provenance(), "settings": settings(args)}
    record["provenance"]["machine"]["cpu"] = cpu_summary()  # model, int8 class, VNNI / AMX flags
    isa = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimd", "asimddp")
    record["provenance"]["machine"]["isa_flags"] = sorted(set(isa) & cpu_flags())
    data = load_dataset(args.data, None, None, progress=False)
    rows, loads, all_variants = [], [], {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edge-runtimes-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        for name in args.models:
            width = args.widths.get(name, 1.0)
            model_rows, variants, model_loads = measure_model(name, width, args, data, work)
            rows += model_rows
            loads += [{"model": name, **e} for e in model_loads]
            all_variants[name] = variants
        record["lut"] = lut_rows(args.lut, all_variants, rows)
    record.update(rows=rows, load_log=loads, cross_runtime=cross_runtime(rows))
    record["elapsed_s"] = time.perf_counter() - started
    return record


def settings(args: Any) -> dict:
    """The run's settings, as recorded."""
    keys = ("models", "runtimes", "round_to", "fraction", "seed", "repeats", "runs", "warmup", "calib_images")
    return {
        **{k: getattr(args, k) for k in keys},
        "widths": {m: args.widths.get(m, 1.0) for m in args.models},
        "threads": 1,
        "data": str(args.data),
        "limit_test": args.limit_test,
        "trained": False,
        "quick": args.quick,
    }


# -- the report --------------------------------------------------------------------------------------------------


def fmt(value: float | None, spec: str) -> str:
    """A number as ``spec`` writes it, or a dash for none."""
    return "-" if value is None else format(value, spec)


def result_tables(rows: list[dict]) -> list[str]:
    """One markdown table per model: latency, realisation, size and int8 accuracy per variant and runtime."""
    lines = []
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == name]
        lines += [f"### {name} (width {mine[0]['width']:g})", "",
                  "| variant | FLOPs | runtime | precision | median ms (repeats) | realisation | file MB "
                  "| top-1 (classes predicted) | int8 agrees with fp32 | int8 relative error |",
                  "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in mine:
            reps = ", ".join(f"{v:.2f}" for v in r["latency_repeats_ms"])
            lines.append(
                f"| {r['variant']} | {r['flops'] / 1e6:.1f}M ({r['flops_pct']:.0f}%) | {r['runtime']} | "
                f"{r['precision']} | {r['latency_ms']:.2f} ({reps}) | {fmt(r['realisation'], '.2f')} | "
                f"{r['bytes'] / 1e6:.2f} | {100 * r['top1']:.1f}% ({r['classes_predicted']}) | "
                f"{fmt(r.get('agreement_with_fp32') and 100 * r['agreement_with_fp32'], '.1f')}"
                f"{'%' if 'agreement_with_fp32' in r else ''} | {fmt(r.get('relative_error_vs_fp32'), '.3f')} |"
            )
        lines.append("")
    return lines


def findings(record: dict) -> list[str]:
    """Computed findings: the best-realising runtime per model and precision, and cross-runtime prediction."""
    rows = record["rows"]
    lines = ["## Findings (computed)", ""]
    for name, prec in dict.fromkeys((r["model"], r["precision"]) for r in rows):
        pruned = [r for r in rows if (r["model"], r["precision"]) == (name, prec) and r["realisation"] is not None]
        by_rt: dict[str, list[float]] = {}
        for r in pruned:
            by_rt.setdefault(r["runtime"], []).append(r["realisation"])
        if by_rt:
            ranked = sorted(by_rt.items(), key=lambda kv: -statistics.fmean(kv[1]))
            text = ", ".join(f"{rt} {statistics.fmean(v):.2f}" for rt, v in ranked)
            lines.append(f"- {name} {prec}: mean realisation over the pruned variants, best first: {text}.")
    lines += ["", "Cross-runtime prediction (A -> B: B's pruned latency predicted as B's unpruned latency / A's "
              "speed-up; error = predicted / measured - 1; Spearman over every model and variant):", "",
              "| precision | A | B | points | Spearman | mean abs error of the speed-up transfer |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for c in record["cross_runtime"]:
        lines.append(
            f"| {c['precision']} | {c['from']} | {c['to']} | {c['points']} | {fmt(c['spearman'], '.2f')} | "
            f"{fmt(c['mean_abs_error'] and 100 * c['mean_abs_error'], '.1f')}% |"
        )
    if record["lut"]:
        lines += ["", "Latency-table predictions (`edgeprune lut`) against each runtime's fp32 measurement:", "",
                  "| model | variant | table backend | runtime | predicted ms | measured ms | error |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for e in record["lut"]:
            lines.append(
                f"| {e['model']} | {e['variant']} | {e['table_backend']} | {e['runtime']} | "
                f"{e['predicted_ms']:.2f} | {e['measured_ms']:.2f} | {100 * e['error']:+.1f}% |"
            )
    return lines + [""]


def markdown(record: dict) -> str:
    """The report: provenance, method, the tables, the findings."""
    p, s = record["provenance"], record["settings"]
    m = p["machine"]
    loads = [e["load_1m_before"] for e in record["load_log"]] + [e["load_1m_after"] for e in record["load_log"]]
    flags = " ".join(m.get("isa_flags", [])) or "unknown"
    cpu = m.get("cpu", {})
    lines = [
        "# Edge runtimes: which runtime realises a FLOPs cut, fp32 and int8, at 1 thread",
        "",
        *(["**Smoke run (`--quick`): too few repeats to be a result.**", ""] if s["quick"] else []),
        f"Generated by `{p['command']}` on {p['date']} at commit {p['commit']}{' (dirty tree)' if p['dirty'] else ''}"
        f" in {record['elapsed_s'] / 60:.1f} min. CPU: {cpu.get('model') or m.get('processor', '?')} "
        f"(int8 class {cpu.get('class', '?')}, {m.get('cpu_count', '?')} cores); ISA flags: {flags}. 1-minute load "
        f"average during timing: {min(loads):.2f} to {max(loads):.2f} (per timing process in the JSON's load_log).",
        "",
        f"Method: models {', '.join(f'{k} width {v:g}' for k, v in s['widths'].items())}, random init (seed "
        f"{s['seed']}), pruned in FLOPs mode to {s['fraction']:g} of their FLOPs at round_to "
        f"{', '.join(map(str, s['round_to']))}. Each runtime times all of a model's files (variants x fp32/int8) "
        f"round-robin in one fresh 1-thread process, {s['runs']} runs after {s['warmup']} warm-up, batch 1; the "
        f"runtimes take turns, {s['repeats']} round(s); latency = median over rounds of each round's median. "
        "torch: eager, channels-last (fp32 only); onnxruntime: CPUExecutionProvider, int8 QDQ (S8S8, per-channel); "
        "ExecuTorch: XNNPACK delegate, int8 by its PT2E XNNPACK quantizer; LiteRT: interpreter with XNNPACK, int8 "
        f"PT2E. int8 calibrated on {s['calib_images']} training images of {Path(s['data']).name}. Realisation = "
        "(1 - latency ratio) / (1 - FLOPs ratio). File MB: the runtime's file (torch: model.safetensors).",
        "",
        "Accuracy: the models are untrained, so top-1 is near chance (10%) and means nothing by itself; the int8 "
        "columns that matter compare each int8 file with the same runtime's fp32 file on "
        f"{record['rows'][0]['images']} test images (drawn at random, seed {s['seed']}): agreement of the top-1 "
        "class, and the relative error of the scores, ||int8 - fp32|| / ||fp32||. An untrained network often "
        "predicts few classes (the count is in brackets), which makes agreement easy; the relative error is the "
        "figure to read. Neither is the accuracy drop of a trained network.",
        "",
        *result_tables(record["rows"]),
        *findings(record),
    ]
    return "\n".join(lines)


def main() -> None:
    """Parse the options, run, write the report pair."""
    p = parser(
        __doc__,
        out={"default": None, "help": "report stem (default docs/results/edge_runtimes; --quick: runs/...-quick)"},
        quick="one model (resnet56, width 1), 2 rounds of 20 runs, 100 test images: a smoke test",
    )
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--widths", nargs="*", default=[], help="MODEL=WIDTH, e.g. resnet56=1.0 (default 1.0 each)")
    p.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=RUNTIMES)
    p.add_argument("--round-to", nargs="+", type=int, default=[1, 8])
    p.add_argument("--fraction", type=float, default=0.5, help="FLOPs fraction of the pruned variants")
    p.add_argument("--repeats", type=int, default=5, help="rounds of fresh timing processes")
    p.add_argument("--runs", type=int, default=100, help="timed runs of each file per process")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=str(DATA), help="calibration and test data (default cifar10-mini)")
    p.add_argument("--calib-images", type=int, default=256)
    p.add_argument("--limit-test", type=int, default=None, help="score on this many test images (default all)")
    p.add_argument("--lut", nargs="*", default=[], help="MODEL=TABLE.json latency tables to compare")
    p.add_argument("--work", default=None, help="keep the exported files here (default a temporary folder)")
    args = p.parse_args()
    args.widths = dict((k, float(v)) for k, v in (w.split("=", 1) for w in args.widths))
    args.lut = dict(e.split("=", 1) for e in args.lut)
    if args.quick:
        args.models, args.repeats, args.runs, args.warmup = ["resnet56"], 2, 20, 3
        args.widths.setdefault("resnet56", 1.0)
        args.limit_test = args.limit_test or 100
    out = Path(args.out or (ROOT / ("runs/edge_runtimes-quick" if args.quick else "docs/results/edge_runtimes")))
    record = run(args)
    write_report(out, markdown(record), record, echo=True)
    print(f"wrote {out}.md and {out}.json")


if __name__ == "__main__":
    main()
