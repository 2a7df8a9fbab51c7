"""Reports: profile tables, before/after pruning summaries, as text and JSON-ready dicts."""

from __future__ import annotations

from edgeprune.complexity import MODES, QUANTIZED_CONVENTIONS, Profile

MODE_LABEL = {"params": "params", "flops": "FLOPs (MACs)", "memory": "memory"}


def human(value: float, mode: str) -> str:
    """Format a count (params, FLOPs) or a byte amount (memory) with a unit."""
    if mode == "memory":
        for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
            if value >= scale:
                return f"{value / scale:.2f} {unit}"
        return f"{value:.0f} B"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain fixed-width text table, first column left-aligned, the rest right-aligned."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def profile_table(prof: Profile) -> str:
    """Per-layer parameters, FLOPs and memory with shares, prunability, and totals."""
    totals = {m: prof.total(m) for m in MODES}
    group_of = {name: g for g in prof.groups for name in g.out_layers}
    rows = []
    for layer in prof.layers:
        g = group_of.get(layer.name)
        status = ("yes" if g.prunable else f"no ({g.reason})") if g else ("no" if prof.groups else "-")
        shape = f"{layer.c_in}->{layer.c_out}" + (f" g{layer.groups}" if layer.groups > 1 else "")
        shape += f" x{layer.calls} calls" if layer.calls > 1 else ""
        rows.append(
            [layer.name, layer.kind, shape]
            + [f"{human(layer.measure(m), m)} {100 * layer.measure(m) / totals[m]:5.1f}%" for m in MODES]
            + [status, g.name if g else ""]
        )
    rows.append(["TOTAL", "", ""] + [human(totals[m], m) for m in MODES] + ["", ""])
    headers = ["layer", "kind", "channels", "params", "FLOPs (MACs)", "memory", "prunable", "group"]
    note = "fp32, batch 1; FLOPs count a multiply-add once; memory = 4 B x (params + output map)"
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
    keys = {"params": "params", "flops": "flops", "memory": "memory_bytes"}
    totals = [
        [
            MODE_LABEL[m],
            human(report["before"][k], m),
            human(report["after"][k], m),
            f"{report['reduction_pct'][k]:.1f}%",
        ]
        for m, k in keys.items()
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
    return "\n\n".join([head, layer_table, table(["total", "before", "after", "reduction"], totals)])
