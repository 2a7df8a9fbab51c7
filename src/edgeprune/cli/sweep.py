"""``edgeprune sweep``: prune to every mode x target (x seed), measure each, plot the trade-offs."""

from __future__ import annotations

import argparse

from edgeprune.cli import options, targets
from edgeprune.cli.outputs import prepare_out_dir
from edgeprune.errors import EdgepruneError


def add(sub: argparse._SubParsersAction) -> None:
    """Register ``edgeprune sweep``."""
    from edgeprune.measure import BACKENDS

    p = sub.add_parser(
        "sweep",
        parents=[
            options.model(),
            options.data(required=False, help="data set for training (needs --epochs)"),
            options.timing(runs=30, warmup=5),
            options.threads(None, "; with --ray, a point's --cpus-per-run"),
            options.device("training"),
            options.output("folder for results.csv, results.json and the plots"),
            options.also("point", "--also memory=4MB sweeps FLOPs targets among networks that fit 4 MB"),
            options.search(
                "each pruned point is the kept plan (its candidate table and the search's seconds in results.json)",
                ["weighted"],
            ),
        ],
        help="prune to every mode x target (x seed), measure each, plot the trade-offs",
        description="Prune the model at initialization in each --modes to each --targets fraction (and seed), "
        "optionally train each once (--data and --epochs), bench each and the unpruned model, and write "
        "results.csv, results.json and trade-off plots (like the paper's Figs. 3-4) to --out. --runs and --warmup "
        "count inferences per model and backend.",
    )
    p.add_argument(
        "--modes",
        nargs="+",
        default=["params", "flops", "memory"],
        help="complexity modes (default: params flops memory)",
    )
    p.add_argument(
        "--targets",
        nargs="+",
        type=options.finite,
        default=[0.9, 0.7, 0.5, 0.3],
        help="the grid: fractions of the model's own complexity, each swept in every mode (default 0.9 0.7 0.5 0.3)",
    )
    p.add_argument("--seeds", nargs="+", type=options.seed, default=[0], help="random seeds (default 0)")
    p.add_argument("--step", type=options.finite, default=0.1, help="pruning step (default 0.1)")
    p.add_argument(
        "--epochs",
        type=options.positive_int,
        default=None,
        help="train every model for this many epochs (needs --data)",
    )
    p.add_argument(
        "--backends",
        "--backend",
        dest="backends",
        nargs="+",
        default=list(BACKENDS),
        metavar="NAME",
        help="as for bench (default: both)",
    )
    p.add_argument(
        "--y",
        default=None,
        help="plot y axis: accuracy, params, flops or memory (default: accuracy if trained, else params)",
    )
    p.add_argument(
        "--round-to",
        type=options.positive_int,
        default=1,
        metavar="N",
        help="every pruned width a multiple of N (default 1: the paper's widths)",
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="also quantize every point to int8 (as export --int8, calibrated on --data), one more row "
        "(mode 'MODE int8'): size, onnxruntime latency, energy and accuracy beside fp32",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines or bar (the files are written as ever)")
    options.ray(p, "point", "prune, train if asked, bench; timings from different nodes are not comparable")


def run(args: argparse.Namespace) -> None:
    """Run a sweep."""
    from edgeprune.runtime import resolve_device
    from edgeprune.sweep import SweepSettings, sweep

    ray = options.ray_options(args)
    resolve_device(args.device)  # a device that is not there: one line, before any work
    ref = options.model_ref(args)
    if (args.data is None) != (args.epochs is None):
        raise EdgepruneError("training needs both --data and --epochs (or neither, for an untrained sweep)")
    data = options.load_data(args, args.limit_train, args.limit_test, progress=False) if args.data else None
    out = prepare_out_dir(args.out, args.force, "sweep")
    settings = SweepSettings(
        out=out,
        modes=args.modes,
        targets=args.targets,
        seeds=args.seeds,
        backends=args.backends,
        runs=args.runs,
        warmup=args.warmup,
        threads=args.threads,
        step=args.step,
        epochs=args.epochs,
        data=data,
        y=args.y,
        spin=not args.no_spin,
        limit_train=args.limit_train,
        limit_test=args.limit_test,
        ray=ray,
        device=str(resolve_device(args.device)),
        int8=args.int8,
        also=targets.also_budget(args.also),
        round_to=args.round_to,
        candidates=args.candidates,
        candidate_kinds=tuple(args.candidate_kinds),
        proxy=args.proxy,
        proxy_holdout=args.proxy_holdout,
        **({"log": None} if args.quiet else {}),
    )
    sweep(ref, settings)
