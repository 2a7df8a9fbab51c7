"""Latency tables timed round-robin against back to back: which predicts the pruned networks better?

Needs the tables and pruned networks of ``benchmarks/latency_budget.py`` (in runs/latency-budget, onnxruntime,
width 1). For each model named, builds a second table with every grid point timed back to back (``order=
"blocked"``: warm caches) with the same grid, rounds and processes (the parent's latency taken from the
round-robin table, so both share it), then measures every stored pruned network (``measure_latency``, 3 fresh
processes) and prints both tables' predictions and errors. Run it with nothing else on the CPU.

    .venv/bin/python benchmarks/lut_timing_order.py mobilenetv2 vgg16     # about 5 min
"""

from __future__ import annotations

import glob
import time

from common import parser

import edgeprune
from edgeprune.io import load
from edgeprune.latency import build_table, measure_latency
from edgeprune.lut import TableSettings, load_table

SHAPE = (3, 32, 32)


def compare(name: str) -> None:
    """Build the blocked table for ``name`` and print both tables' errors on its stored pruned networks."""
    folder = glob.glob(f"runs/latency-budget/{name}-w1-s0/onnxruntime-*")[0]
    rr = load_table(f"{folder}/table.json")
    t0 = time.time()
    settings = TableSettings(backend="onnxruntime", threads=1, round_to=rr.round_to, runs=10, warmup=2, processes=2,
                             order="blocked")  # fmt: skip
    bl = build_table(edgeprune.create(name), SHAPE, settings, parent_ms=rr.parent_ms, source=name)
    bl.save(f"runs/{name}-ort-blocked.json")
    print(f"{name}: blocked table {time.time() - t0:.0f} s; layers sum {bl.parent_ms - bl.rest_ms:.3f} ms vs "
          f"round-robin {rr.parent_ms - rr.rest_ms:.3f}, parent {rr.parent_ms:.3f}", flush=True)  # fmt: skip
    for sub in sorted(glob.glob(f"{folder}/*/model.json")):
        model = load(sub.rsplit("/", 1)[0]).eval()
        prof = edgeprune.profile(model)
        measured = measure_latency(model, SHAPE, "onnxruntime", threads=1, processes=3)
        p_rr, p_bl = rr.predict(prof), bl.predict(prof)
        print(f"  {sub.split('/')[-2]}: measured {measured:.3f} ms, round-robin {p_rr:.3f} "
              f"({100 * (p_rr - measured) / measured:+.0f}%), blocked {p_bl:.3f} "
              f"({100 * (p_bl - measured) / measured:+.0f}%)", flush=True)  # fmt: skip


if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("models", nargs="*", default=["mobilenetv2", "vgg16"], help="zoo names (default: mobilenetv2 vgg16)")
    for model_name in p.parse_args().models:
        compare(model_name)
