"""Reports: profile tables, before/after pruning summaries, as text and JSON-ready dicts."""

from __future__ import annotations

import textwrap
from pathlib import Path

from edgeprune.complexity import QUANTIZED_CONVENTIONS, Profile
from edgeprune.costs import NAMES, STATIC, by_key, label, mcu_line
from edgeprune.costs import human as cost_human
from edgeprune.energy import estimate_lines, measured_lines

MODE_LABEL = {name: label(name) for name in NAMES}
WIDTH = 100  # columns a printed report fits in (a terminal's default is 80-120)


def human(value: float, mode: str) -> str:
    """Format a value of a cost (params, FLOPs, memory bytes, energy, latency) with its unit."""
    return cost_human(value, mode)


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain fixed-width text table, first column left-aligned, the rest right-aligned."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def wrapped(text: str, width: int = WIDTH) -> str:
    """``text`` with every line longer than ``width`` columns broken at spaces, continuation lines indented."""
    return "\n".join(
        textwrap.fill(line, width, subsequent_indent="  ", break_long_words=False, break_on_hyphens=False)
        if len(line) > width
        else line
        for line in text.splitlines()
    )


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
    return table(headers, rows) + "\n" + note + "\n" + mcu_line(prof)


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
                    _PREDICTED_LABEL if c == "latency" and report.get("latency") else MODE_LABEL[c],
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
        head += "\n" + latency_lines(report)
        totals = [[_PREDICTED_LABEL if r[0] == MODE_LABEL["latency"] else r[0], *r[1:]] for r in totals]
    return "\n\n".join([head, layer_table, table(["total", "before", "after", "reduction"], totals)])


_PREDICTED_LABEL = "latency predicted (ms, table)"
FAR_UNDER = 0.1  # a measured cut more than 10% under its latency limit gets a line saying why it was kept


def latency_lines(report: dict) -> str:
    """The latency limit, prediction and measurement on labelled lines, and why a cut far under was kept."""
    lat = report["latency"]
    where = report.get("latency_table") or {}
    on = f"{where['backend']}, {where['threads']} thread(s)" if where else "the table's backend"
    device = where.get("device")
    if device:  # a probe's table: the device is elsewhere, nothing here can measure the cut
        return "\n".join([
            f"latency limit:              {lat['limit_ms']:.3f} ms",
            f"latency predicted (device table, {device['cpu']}, {on}): {lat['predicted_ms']:.3f} ms, "
            f"{'met' if lat['met'] else 'MISSED'} by prediction",
            f"latency measured: not here (the table is the device's); on the device: {device['check']}",
        ])  # fmt: skip
    lines = [
        f"latency limit:              {lat['limit_ms']:.3f} ms",
        f"latency predicted (table):  {lat['predicted_ms']:.3f} ms (table error {lat['prediction_error_pct']:+.1f}%)",
        f"latency measured ({on}): {lat['measured_ms']:.3f} ms, {'met' if lat['met'] else 'MISSED'} after "
        f"{len(lat['attempts'])} cut(s)",
    ]
    under = 1 - lat["measured_ms"] / lat["limit_ms"] if lat["limit_ms"] > 0 else 0.0
    if lat["met"] and under > FAR_UNDER:
        lines.append(f"kept {100 * under:.0f}% under the limit: {_far_under_reason(report)}")
    return "\n".join(lines)


def _far_under_reason(report: dict) -> str:
    """Why the kept cut is far under the latency limit, from the re-plans it logged and the plan's settings."""
    attempts = report["latency"]["attempts"]
    errors = [a["error"] for a in attempts if "error" in a]
    if errors:
        return f"a wider re-plan was out of reach ({errors[-1]})"
    others = [c for c in report.get("bound_last") or [] if c != "latency"]
    if others:
        return f"giving filters back would break the {', '.join(others)} limit"
    round_to = report.get("settings", {}).get("round_to", 1)
    if round_to > 1:
        return f"widths move in steps of {round_to} filters (--round-to); the next step up measured over the limit"
    met = [a for a in attempts if "measured_ms" in a and a["measured_ms"] > report["latency"]["limit_ms"]]
    if met:
        return f"the nearest wider cut measured {min(a['measured_ms'] for a in met):.3f} ms, over the limit"
    return "the next filter slot would break a limit (widths move in whole filters)"


# -- bench ------------------------------------------------------------------------------------


def bench_table(result: dict) -> str:
    """The human-readable report of ``bench``."""
    c = result["complexity"]
    shape = "x".join(str(d) for d in [result["batch_size"], *result["input_shape"]])
    head = (
        f"{result['model']}: input {shape}, {result['runs']} timed runs after {result['warmup']} warm-up, "
        f"{result['threads']} thread(s){'' if result.get('spin_wait', True) else ' (no spin-waiting)'}, "
        "each backend in its own process\n"
        + (
            f"complexity: {human(c['params'], 'params')} params, {human(c['flops'], 'flops')} FLOPs (MACs), "
            f"memory {human(c['memory_bytes'], 'memory')} (weights + output maps, {_width_note(c)})"
            if "params" in c
            else f"complexity: not counted ({c.get('counted_from', 'unknown')})"
        )
    )
    headers = [
        "backend",
        "median ms",
        "p90 ms",
        "mean ms",
        "CPU %",
        "threads",
        "RSS peak MB",
        "RSS +MB",
        "size MB",
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
                f"{b['size']['mb']:.2f}",
            ]
        )
    energy = [estimate_lines(result["energy"])] if result.get("energy") else []
    energy += measured_lines({n: b["energy"] for n, b in result["backends"].items() if "energy" in b})
    notes = (
        "CPU % = process CPU time of all threads / wall time of the timed loop (one busy core = 100); RSS peak = "
        "process high-water mark; RSS + = peak minus the RSS before the model was loaded; size = the file timed ("
        + ", ".join(f"{n}: {b['size']['file']}" for n, b in result["backends"].items())
        + ")"
    )
    source = c.get("counted_from", "the PyTorch model")
    counted = [] if source == "the PyTorch model" or "params" not in c else [f"complexity counted from {source}"]
    export = [
        f"onnx export: {b['export']['exporter']}, opset {b['export']['opset']}, max |onnx - torch| = "
        f"{b['export']['check']['max_abs_diff']:.2e}"
        if "exporter" in b["export"]
        else f"{n} export: batch 1, max |{n} - torch| = {b['export']['check']['max_abs_diff']:.2e}"
        for n, b in result["backends"].items()
        if b.get("export")
    ]
    m = result.get("machine", {})
    busy = []
    if m.get("load_average_1m", 0) > m.get("usable_cores", 1):
        busy = [
            f"note: load average {m['load_average_1m']:.1f} on {m['usable_cores']} cores when measured: other "
            "processes shared the CPU, so latencies are noisy (try --no-spin or --threads 1)"
        ]
    notes_wrapped = [wrapped(line) for line in [*energy, notes, *counted, *export, *busy]]
    return "\n".join([wrapped(head), "", table(headers, rows), "", *notes_wrapped])


def _width_note(complexity: dict) -> str:
    """How the memory of a bench result is counted, in a few words."""
    if complexity.get("precision", "fp32") == "fp32":
        return "fp32"
    return f"{complexity['precision']}: values at their stored width"


# -- compare --------------------------------------------------------------------------------------------------

LOADED = "†"  # after a time taken under load (edgeprune.train.busy)


def _machines(figure: dict) -> str:
    """' (N machines)' after a training time whose runs ran on N > 1 machines, else nothing."""
    n = len(figure.get("train_hosts", []))
    return f" ({n} machines)" if n > 1 else ""


def _pm(pair: tuple[float, float] | list[float], digits: int = 2, n: int = 2, sign: bool = True) -> str:
    """Mean ± std of ``n`` seeds; with one seed the value alone (a std of one value is no spread)."""
    mean, std = pair
    value = f"{mean:{'+' if sign and digits else ''}.{digits}f}"
    return value if n < 2 else f"{value} ± {std:.{digits}f}"


def _seeds(figure: dict, summary: dict) -> int:
    """How many seeds a row or the baseline averages (an older summary's baseline: the settings' seeds)."""
    return len(figure.get("seeds") or summary.get("settings", {}).get("seeds") or [0, 1])


def _loaded(figure: dict) -> str:
    """The mark after a time taken under load, else nothing."""
    return LOADED if figure.get("under_load") else ""


def load_note(summary: dict) -> str:
    """The footnote of the marked times: what the mark means and the highest load seen ('' when none is marked)."""
    figures = [summary["baseline"], *summary["rows"]]
    peaks = [f["peak_load"] for f in figures if f.get("under_load") and f.get("peak_load")]
    if not peaks:
        return ""
    load, cores = max(peaks, key=lambda p: p[0] - p[1])
    return (
        f"{LOADED} taken under load: in at least one epoch the machine's 1-minute load average exceeded the cores the "
        f"run could use (highest {load:.1f} on {cores} cores), so other processes took CPU time from it; these times "
        "and ratios are not comparable with the others (run again on a quiet machine, or use --resume elsewhere)"
    )


def markdown_table(summary: dict) -> str:
    """The comparison as a Markdown table in the paper's form; times taken under load marked, with a footnote."""
    b = summary["baseline"]
    spread = f" ± {b['accuracy_pct'][1]:.2f}" if _seeds(b, summary) > 1 else ""  # none of one seed
    lines = [
        f"Baseline (full model, {b['epochs']} epoch{'' if b['epochs'] == 1 else 's'}): "
        f"accuracy {b['accuracy_pct'][0]:.2f}%{spread}, "
        f"FLOPs {b['flops'] / 1e6:.1f}M (MACs), memory {b['memory_mb']:.2f} MB, parameters {b['params_m']:.3f}M, "
        f"training {b['train_seconds'][0]:.0f} s{_loaded(b)}{_machines(b)}",
        "",
        "| method | mode | target | accuracy (%) | Δ accuracy (pts) | FLOPs ↓ (%) | memory ↓ (%) | params ↓ (%) "
        "| epochs | training time (s) | steady time (s) | time / conventional |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["rows"]:
        n, mark = _seeds(r, summary), _loaded(r)
        ratio = r["time_ratio_to_conventional"]
        ratio = f"{ratio:.2f}{LOADED if r.get('ratio_under_load') else ''}" if ratio is not None else "-"
        lines.append(
            f"| {r['method']} | {r['mode']} | {r['target']} | {_pm(r['accuracy_pct'], 2, n, False)} "
            f"| {_pm(r['accuracy_change_pts'], 2, n)} | {r['flops_reduction_pct'][0]:.2f} "
            f"| {r['memory_reduction_pct'][0]:.2f} | {r['params_reduction_pct'][0]:.2f} | {r['epochs']} "
            f"| {_pm(r['train_seconds'], 0, n)}{mark}{_machines(r)} | {_pm(r['steady_seconds'], 0, n)}{mark} "
            f"| {ratio} |"
        )
    note = load_note(summary)
    return "\n".join(lines) + "\n\n" + summary["conventions"] + "\n" + (f"\n{note}\n" if note else "")


TERMINAL_COLUMNS = ("method", "mode", "target", "accuracy (%)", "Δ accuracy (pts)", "FLOPs ↓ (%)", "epochs",
                    "time / conventional")  # fmt: skip


def terminal_table(summary: dict, full: str = "compare.md") -> str:
    """The comparison as printed: ``markdown_table``'s main columns as a text table within 100 columns."""
    lines = markdown_table(summary).splitlines()
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines if line.startswith("| ")]
    header, rows = cells[0], cells[1:]
    keep = [header.index(c) for c in TERMINAL_COLUMNS if c in header]
    text = table([header[i] for i in keep], [[r[i] for i in keep] for r in rows])
    rest = [wrapped(line) for line in lines if line.strip() and not line.startswith("|")]
    dropped = [c for c in header if c not in TERMINAL_COLUMNS]
    return "\n".join([rest[0], "", text, "", *rest[1:], wrapped(f"{', '.join(dropped)}: in {full}")]).rstrip()


CSV_COLUMNS = (
    "method", "mode", "target", "accuracy_pct", "accuracy_pct_std", "accuracy_change_pts", "accuracy_change_pts_std",
    "flops_reduction_pct", "memory_reduction_pct", "params_reduction_pct", "epochs", "train_seconds",
    "train_seconds_std", "time_ratio_to_conventional", "steady_seconds", "steady_seconds_std", "under_load",
)  # fmt: skip


def csv_rows(summary: dict) -> list[list]:
    """The rows of the CSV, means and standard deviations in separate columns (no std of one seed: blank);
    ``under_load``: the row's times, or its ratio's reference, were taken under load."""
    rows = []
    for r in summary["rows"]:
        one = _seeds(r, summary) < 2
        acc, delta, seconds, steady = ([r[k][0], "" if one else r[k][1]] for k in (
            "accuracy_pct", "accuracy_change_pts", "train_seconds", "steady_seconds"))  # fmt: skip
        loaded = bool(r.get("under_load") or r.get("ratio_under_load"))
        rows.append(
            [r["method"], r["mode"], r["target"], *acc, *delta, r["flops_reduction_pct"][0],
             r["memory_reduction_pct"][0], r["params_reduction_pct"][0], r["epochs"], *seconds,
             r["time_ratio_to_conventional"], *steady, loaded]
        )  # fmt: skip
    return rows


def write_compare(summary: dict, runs: list[dict], out: Path) -> None:
    """compare.md, compare.csv, compare.json (the summary with every run's record, ``runs``), compare.png and
    curves.png (``runs`` holds more than the baselines)."""
    import csv
    import io

    from edgeprune.files import atomic_write, write_json
    from edgeprune.plots import plot_accuracy_vs_time, plot_learning_curves

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(CSV_COLUMNS)
    writer.writerows(csv_rows(summary))
    atomic_write(out / "compare.csv", lambda p: p.write_text(buf.getvalue()))
    atomic_write(out / "compare.md", lambda p: p.write_text(markdown_table(summary)))
    write_json(out / "compare.json", {**summary, "runs": runs})
    plot_accuracy_vs_time(summary, out / "compare.png")
    if any(r["method"] != "full" for r in runs):
        plot_learning_curves(runs, out / "curves.png", summary["settings"]["model"])
