"""Reports: profile tables, before/after pruning summaries, as text and JSON-ready dicts."""

from __future__ import annotations

from edgeprune.complexity import QUANTIZED_CONVENTIONS, Profile
from edgeprune.costs import NAMES, STATIC, by_key, label
from edgeprune.costs import human as cost_human
from edgeprune.energy import estimate_lines, measured_lines

MODE_LABEL = {name: label(name) for name in NAMES}


def human(value: float, mode: str) -> str:
    """Format a value of a cost (params, FLOPs, memory bytes, energy, latency) with its unit."""
    return cost_human(value, mode)


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain fixed-width text table, first column left-aligned, the rest right-aligned."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def profile_table(prof: Profile) -> str:
    """Per-layer parameters, FLOPs and memory with shares, prunability, and totals."""
    costs = dict(STATIC)  # every cost that needs no table: params, flops, memory, energy
    totals = {m: c.total(prof) for m, c in costs.items()}
    group_of = {name: g for g in prof.groups for name in g.out_layers}
    rows = []
    for layer in prof.layers:
        g = group_of.get(layer.name)
        status = ("yes" if g.prunable else f"no ({g.reason})") if g else ("no" if prof.groups else "-")
        shape = f"{layer.c_in}->{layer.c_out}" + (f" g{layer.groups}" if layer.groups > 1 else "")
        shape += f" x{layer.calls} calls" if layer.calls > 1 else ""
        rows.append(
            [layer.name, layer.kind, shape]
            + [f"{c.human(c.layer(layer))} {100 * c.layer(layer) / totals[m]:5.1f}%" for m, c in costs.items()]
            + [status, g.name if g else ""]
        )
    rows.append(["TOTAL", "", ""] + [c.human(totals[m]) for m, c in costs.items()] + ["", ""])
    headers = ["layer", "kind", "channels", *(c.label for c in costs.values()), "prunable", "group"]
    note = (
        "fp32, batch 1; FLOPs count a multiply-add once; memory = 4 B x (params + output map); "
        "energy = 45 nm estimate, 4.6 pJ x MACs + 640 pJ x memory / 4 B"
    )
    if prof.precision != "fp32":
        note = f"{prof.precision}: {QUANTIZED_CONVENTIONS}"
    if prof.other_params:
        note += f"; {prof.other_params:,} params outside conv/linear layers counted in the totals"
    if prof.functional:
        note += (f"\nused outside their modules (functional calls), counted as layers of their own and not prunable: "
                 f"{', '.join(prof.functional)}")  # fmt: skip
    return table(headers, rows) + "\n" + note


def prune_summary(report: dict) -> str:
    """The before/after table printed by ``edgeprune prune``."""
    rows = [
        [
            r["name"],
            str(r["filters_before"]),
            str(r["filters_after"]),
            f"{100 * r['filters_after'] / r['filters_before']:.0f}%",
        ]
        for r in report["layers"]
    ]
    layer_table = table(["layer", "filters before", "after", "kept"], rows)
    names = by_key()
    totals = [
        [
            MODE_LABEL[names[k]],
            human(report["before"][k], names[k]),
            human(report["after"][k], names[k]),
            f"{report['reduction_pct'][k]:.1f}%",
        ]
        for k in report["before"]
        if k in names
    ]
    budget = report.get("budget") or {}
    if len(budget) > 1:
        head = f"{len(budget)} limits, criterion {report['criterion']}, {len(report['steps'])} steps"
        bound = ", ".join(report.get("bound_last") or []) or "-"
        limits = table(
            ["cost", "limit", "before", "after", "met"],
            [
                [
                    MODE_LABEL[c],
                    f"{human(b['limit'], c)} ({100 * b['fraction']:.1f}%)",
                    human(b["before"], c),
                    human(b["after"], c),
                    "yes" if b["met"] else "NO",
                ]
                for c, b in budget.items()
            ],  # fmt: skip
        )
        head += f"\n\n{limits}\nbound last: {bound}"
    else:
        head = (
            f"mode {report['mode']}, target {human(report['target'], report['mode'])} "
            f"({100 * report['target_fraction']:.1f}% of the original), criterion {report['criterion']}, "
            f"{len(report['steps'])} steps"
        )
    if report.get("settings", {}).get("round_to", 1) > 1:
        head += f"\nwidths rounded to multiples of {report['settings']['round_to']} filters"
    lat = report.get("latency")
    if lat:
        head += (
            f"\nlatency: limit {lat['limit_ms']:.3f} ms, predicted {lat['predicted_ms']:.3f} ms, measured "
            f"{lat['measured_ms']:.3f} ms ({'met' if lat['met'] else 'MISSED'}; table error "
            f"{lat['prediction_error_pct']:+.1f}%) after {len(lat['attempts'])} cut(s)"
        )
    return "\n\n".join([head, layer_table, table(["total", "before", "after", "reduction"], totals)])


# -- bench ------------------------------------------------------------------------------------


def bench_table(result: dict) -> str:
    """The human-readable report of ``bench``."""
    c = result["complexity"]
    shape = "x".join(str(d) for d in [result["batch_size"], *result["input_shape"]])
    head = (
        f"{result['model']}: input {shape}, {result['runs']} timed runs after {result['warmup']} warm-up, "
        f"{result['threads']} thread(s){'' if result.get('spin_wait', True) else ' (no spin-waiting)'}, "
        "each backend in its own process\n"
        f"complexity: {human(c['params'], 'params')} params, {human(c['flops'], 'flops')} FLOPs (MACs), "
        f"memory {human(c['memory_bytes'], 'memory')} (weights + output maps, {_width_note(c)})"
    )
    headers = [
        "backend",
        "median ms",
        "p90 ms",
        "mean ms",
        "CPU % (1 core=100)",
        "threads",
        "RSS peak MB",
        "RSS +MB",
        "size on disk",
    ]
    rows = []
    for name, b in result["backends"].items():
        lat = b["latency_ms"]
        rows.append(
            [
                name,
                f"{lat['median']:.3f}",
                f"{lat['p90']:.3f}",
                f"{lat['mean']:.3f}",
                f"{b['cpu']['utilisation_pct']:.0f}",
                str(b["cpu"]["threads"]),
                f"{b['memory']['rss_peak_mb']:.1f}",
                f"{b['memory']['rss_increase_mb']:.1f}",
                f"{b['size']['mb']:.2f} MB ({b['size']['file']})",
            ]
        )
    energy = [estimate_lines(result["energy"])]
    energy += measured_lines({n: b["energy"] for n, b in result["backends"].items() if "energy" in b})
    notes = (
        "CPU % = process CPU time of all threads / wall time of the timed loop; RSS peak = process "
        "high-water mark; RSS + = peak minus the RSS before the model was loaded"
    )
    source = c.get("counted_from", "the PyTorch model")
    counted = [] if source == "the PyTorch model" else [f"complexity counted from {source}"]
    export = [
        f"onnx export: {b['export']['exporter']}, opset {b['export']['opset']}, max |onnx - torch| = "
        f"{b['export']['check']['max_abs_diff']:.2e}"
        for b in result["backends"].values()
        if b.get("export")
    ]
    m = result.get("machine", {})
    busy = []
    if m.get("load_average_1m", 0) > m.get("usable_cores", 1):
        busy = [
            f"note: load average {m['load_average_1m']:.1f} on {m['usable_cores']} cores when measured: other "
            "processes shared the CPU, so latencies are noisy (try --no-spin or --threads 1)"
        ]
    return "\n".join([head, "", table(headers, rows), "", *energy, notes, *counted, *export, *busy])


def _width_note(complexity: dict) -> str:
    """How the memory of a bench result is counted, in a few words."""
    if complexity.get("precision", "fp32") == "fp32":
        return "fp32"
    return f"{complexity['precision']}: values at their stored width"
