"""``edgeprune lut``: a latency table (each layer at a grid of widths), for pruning to milliseconds."""

from __future__ import annotations

import argparse

from edgeprune.cli import options
from edgeprune.errors import EdgepruneError


def add(sub: argparse._SubParsersAction) -> None:
    """Register ``edgeprune lut``."""
    from edgeprune.lut import CALIBRATION, DEFAULT_ROUND_TO
    from edgeprune.measure import BACKENDS

    p = sub.add_parser(
        "lut",
        parents=[
            options.model(),
            options.timing(runs=20, warmup=3, spin=False),
            options.threads(1, ", as deployed: the table holds for this thread count only"),
            options.output("where to write the table", metavar="TABLE.json", force="replace an existing table"),
        ],
        help="measure a latency table (each layer at a grid of widths) for pruning to milliseconds",
        description="Time every conv and linear layer of the model, with its norm and activation as the backend runs "
        "them, in isolation at batch 1 at a grid of input x output widths (every --round-to step near full width, "
        "then geometric by --ratio), in fresh processes; then the whole model, whose latency minus its layers' is "
        "'the rest'; then whole models cut uniformly and the smallest network a plan can reach (--calibrate), which "
        "map the layers' sum to measured latency. 'edgeprune prune MODEL --target latency=3ms --lut TABLE' plans "
        "with it. The table records the CPU, backend version and threads; prune refuses it on a machine where they "
        "differ. --runs and --warmup count rounds per grid point.",
    )
    p.add_argument(
        "--backend",
        "--backends",
        dest="backend",
        default="onnxruntime",
        choices=BACKENDS,
        help="the backend the model will run on (default onnxruntime); --backends is the same option, one name",
    )
    p.add_argument(
        "--round-to",
        type=options.positive_int,
        default=DEFAULT_ROUND_TO,
        metavar="N",
        help=f"grid widths are multiples of N, and a latency prune keeps multiples of N (default {DEFAULT_ROUND_TO})",
    )
    p.add_argument(
        "--near",
        type=options.non_negative_int,
        default=2,
        help="round-to steps measured just below full width (default 2)",
    )
    p.add_argument("--ratio", type=options.finite, default=0.7, help="geometric grid ratio below those (default 0.7)")
    p.add_argument(
        "--processes", type=options.positive_int, default=3, help="fresh processes; medians over them (default 3)"
    )
    p.add_argument(
        "--order",
        default="round_robin",
        choices=("round_robin", "blocked"),
        help="grid points of a layer timed round-robin (default: equal conditions, cold caches) or each "
        "back to back (warm caches)",
    )
    p.add_argument(
        "--calibrate",
        nargs="*",
        type=options.fraction,
        default=list(CALIBRATION),
        metavar="F",
        help="uniform cuts at these fractions of the parent's table sum, and the smallest network, timed "
        "whole beside the parent: predictions are mapped through them and targets under the smallest "
        f"are refused (default {' '.join(f'{f:g}' for f in CALIBRATION)}; no F: none)",
    )
    p.add_argument(
        "--recalibrate",
        action="store_true",
        help="keep the layers of the --out table (made for this model on this machine) and measure only "
        "its calibration afresh (seconds, not minutes)",
    )
    p.add_argument("--quiet", action="store_true", help="no per-layer progress lines")


def _measure(args: argparse.Namespace, out: object):  # noqa: ANN202 - lut.LatencyTable
    """Build the table, or recalibrate the one at ``out``."""
    from edgeprune.io import resolve
    from edgeprune.latency import build_table, calibrate
    from edgeprune.lut import TableSettings, load_table

    if args.recalibrate:
        if not args.calibrate:
            raise EdgepruneError("--recalibrate needs calibration cuts: drop the empty --calibrate")
        table = load_table(out)
        table.check_machine()  # a calibration measured here would not fit layers measured elsewhere
        resolved = resolve(options.model_ref(args))
        return calibrate(table, resolved.model, tuple(args.calibrate), processes=args.processes)
    if out.exists() and not args.force:
        raise EdgepruneError(f"--out {out}: exists; give --force to replace it (or --recalibrate it)")
    resolved = resolve(options.model_ref(args))
    progress = None if args.quiet else (lambda line: print("  " + line, flush=True))
    settings = TableSettings(
        backend=args.backend,
        threads=args.threads,
        round_to=args.round_to,
        near=args.near,
        ratio=args.ratio,
        runs=args.runs,
        warmup=args.warmup,
        processes=args.processes,
        order=args.order,
        calibration=tuple(args.calibrate),
    )
    return build_table(resolved.model, tuple(resolved.input_shape), settings, source=args.model, progress=progress)


def run(args: argparse.Namespace) -> None:
    """Build (or recalibrate), save and summarise a latency table."""
    from edgeprune.files import check_writable_file

    out = check_writable_file(args.out, "--out")
    table = _measure(args, out)
    table.save(out)
    floor = ""
    if table.floor_ms is not None:
        cuts = ", ".join(f"{s:.3f}->{m:.3f}" for s, m in table.calibration)
        floor = f"\ncalibration: {cuts} ms (table sum -> measured); smallest network {table.floor_ms:.3f} ms"
    print(
        f"{args.model} on {table.backend} {table.backend_version}, {table.threads} thread(s), {table.cpu}: "
        f"{len(table.layers)} layers, {table.settings['points']} widths measured in {table.build_seconds:.0f} s; "
        f"parent {table.parent_ms:.3f} ms, layers alone {table.parent_ms - table.rest_ms:.3f} ms"
        + (f" (scaled by {table.scale:.2f} to the model)" if table.scale < 1 else f", rest {table.rest():.3f} ms")
        + floor
        + f"\nwrote {out}"
    )
