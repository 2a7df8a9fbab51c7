"""``edgeprune lut``: a latency table (each layer at a grid of widths), for pruning to milliseconds."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from edgeprune.cli import options
from edgeprune.errors import EdgepruneError


def add(sub: argparse._SubParsersAction) -> None:
    """Register ``edgeprune lut``."""
    from edgeprune.backends import BACKENDS, EDGE_BACKENDS
    from edgeprune.lut import CALIBRATION, DEFAULT_ROUND_TO

    p = sub.add_parser(
        "lut",
        parents=[
            options.model(),
            options.timing(runs=20, warmup=3, spin=False),
            options.threads(1, ", as deployed: the table holds for this thread count only"),
            options.output(
                "where to write the table (not with --probe)",
                required=False,
                metavar="TABLE.json",
                force="replace an existing table (or write into a non-empty --probe folder)",
            ),
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
        choices=BACKENDS + EDGE_BACKENDS,
        help="the backend the model will run on (default onnxruntime; executorch and litert time each grid point "
        "exported to .pte / .tflite, checked against PyTorch: minutes); --backends is the same option, one name",
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
    _add_probe(p)
    p.add_argument("--quiet", action="store_true", help="no per-layer progress lines, no progress bar")


def _add_probe(p: argparse.ArgumentParser) -> None:
    """The probe's options: write a bundle for another device, or read its measurements back."""
    p.add_argument(
        "--probe",
        metavar="DIR",
        default=None,
        help="measure on another device: write a bundle to DIR instead (the grid's layer files and the calibration "
        "networks for --backend onnxruntime, executorch or litert, a manifest, and probe.py, which needs only Python, "
        "numpy and that runtime); copy DIR to the device, run 'python probe.py --threads T' there, and bring "
        "its measurements.json back to --from-probe",
    )
    p.add_argument(
        "--from-probe",
        metavar="FILE",
        default=None,
        help="build the table from a probe's measurements FILE (of the bundle in --bundle, default FILE's folder), "
        "recording the device's CPU, runtime version and threads",
    )
    p.add_argument("--bundle", metavar="DIR", default=None, help="the probe bundle --from-probe FILE measured")


def _measure(args: argparse.Namespace, out: object):  # noqa: ANN202 - lut.LatencyTable
    """Build the table, or recalibrate the one at ``out``."""
    from edgeprune.io import resolve
    from edgeprune.latency import calibrate
    from edgeprune.lut import load_table

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
    return build_with_bar(resolved.model, tuple(resolved.input_shape), _settings(args), source=args.model,
                          quiet=args.quiet)  # fmt: skip


def build_with_bar(model: Any, input_shape: tuple[int, ...], settings: Any, *, source: str = "",
                   quiet: bool = False, **build: Any) -> Any:  # fmt: skip
    """``build_table`` with its per-layer lines on stdout and, on a terminal, a bar over the grid's points."""
    from edgeprune.data.progress import echo
    from edgeprune.latency import build_table

    lines = None if quiet else (lambda line: echo("  " + line))
    stages = {"whole model": "the whole model", "calibration": "calibration"}
    with _grid_bar(model, input_shape, settings, quiet, "lut", stages) as on_point:
        return build_table(model, input_shape, settings, source=source, progress=lines, on_point=on_point, **build)


@contextmanager
def _grid_bar(model: Any, input_shape: tuple[int, ...], settings: Any, quiet: bool, label: str,
              stages: dict[str, str]) -> Iterator[Callable[[str, str], None] | None]:  # fmt: skip
    """The ``on_point`` hook (``edgeprune.latency.OnPoint``) of a bar over the table's grid points
    (``edgeprune.data.progress.Counter``, open while in the block), naming the layer under way, then what ``stages``
    says of each later stage (its first once the grid is done); None, without the grid's cost, when no bar is
    drawn (``quiet``, or stderr not a terminal)."""
    import sys
    from bisect import bisect_right
    from itertools import accumulate

    from edgeprune.data.progress import Counter, is_terminal
    from edgeprune.latency import grid_points

    sizes = grid_points(model, input_shape, settings) if not quiet and is_terminal(sys.stderr) else {}
    names, ends = list(sizes), list(accumulate(sizes.values()))
    after = next(iter(stages.values()))
    with Counter(sum(sizes.values()), label, enabled=bool(sizes), unit="point") as bar:
        if not bar.enabled:
            yield None
            return
        bar.describe(names[0])

        def on_point(layer: str, stage: str) -> None:
            if stage != "layer":
                bar.describe(stages.get(stage, stage))
                return
            bar.advance()
            done = bisect_right(ends, bar.n)  # the layers whose points are all counted
            bar.describe(names[done] if done < len(names) else after)

        yield on_point


def _probe(args: argparse.Namespace) -> None:
    """Write a probe bundle for the device."""
    from edgeprune.backends.probe import check_backend
    from edgeprune.io import resolve
    from edgeprune.latency import write_probe

    check_backend(args.backend)
    if args.out or args.from_probe or args.recalibrate:
        raise EdgepruneError("--probe writes a bundle: give --out, --from-probe or --recalibrate on another run")
    resolved = resolve(options.model_ref(args))
    model, shape, settings = resolved.model, tuple(resolved.input_shape), _settings(args)
    stages = {"calibration": "calibration networks"}
    with _grid_bar(model, shape, settings, args.quiet, "probe", stages) as on_point:
        manifest = write_probe(model, shape, args.probe, settings, source=args.model, force=args.force,
                               on_point=on_point)  # fmt: skip
    files = sum(len(g["artifacts"]) for g in manifest["groups"])
    print(
        f"wrote {args.probe}: {files} {args.backend} files in {len(manifest['groups'])} groups, manifest.json and "
        f"probe.py\non the device: python probe.py --threads {args.threads}; then here: edgeprune lut {args.model} "
        f"--from-probe measurements.json --bundle {args.probe} --out TABLE.json"
    )


def _settings(args: argparse.Namespace):  # noqa: ANN202 - lut.TableSettings
    """The table settings the options give."""
    from edgeprune.lut import TableSettings

    return TableSettings(backend=args.backend, threads=args.threads, round_to=args.round_to, near=args.near,
                         ratio=args.ratio, runs=args.runs, warmup=args.warmup, processes=args.processes,
                         order=args.order, calibration=tuple(args.calibrate))  # fmt: skip


def run(args: argparse.Namespace) -> None:
    """Build (or recalibrate), save and summarise a latency table; or write a probe bundle, or read one back."""
    from pathlib import Path

    from edgeprune.files import check_writable_file
    from edgeprune.lut import ms_text

    if args.probe:
        return _probe(args)
    if not args.out:
        raise EdgepruneError("--out TABLE.json is required (or --probe DIR to measure on another device)")
    out = check_writable_file(args.out, "--out")
    if args.from_probe:
        from edgeprune.io import resolve
        from edgeprune.latency import table_from_probe

        if out.exists() and not args.force:
            raise EdgepruneError(f"--out {out}: exists; give --force to replace it")
        bundle = args.bundle or Path(args.from_probe).resolve().parent
        table = table_from_probe(resolve(options.model_ref(args)).model, args.from_probe, bundle, source=args.model)
    else:
        table = _measure(args, out)
    table.save(out)
    floor = ""
    if table.floor_ms is not None:
        cuts = ", ".join(f"{ms_text(s)} -> {ms_text(m)}" for s, m in table.calibration)
        floor = f"\ncalibration: {cuts} (table sum -> measured); smallest network {ms_text(table.floor_ms)}"
    print(
        f"{args.model} on {table.backend} {table.backend_version}, {table.threads} thread(s), {table.cpu}: "
        f"{len(table.layers)} layers, {table.settings['points']} widths measured in {table.build_seconds:.0f} s; "
        f"parent {ms_text(table.parent_ms)}, layers alone {ms_text(table.parent_ms - table.rest_ms)}"
        + (f" (scaled by {table.scale:.2f} to the model)" if table.scale < 1 else f", rest {ms_text(table.rest())}")
        + floor
        + f"\nwrote {out}"
    )
