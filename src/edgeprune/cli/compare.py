"""``edgeprune compare``: direct training of complexity-pruned models against train -> rank -> prune -> fine-tune."""

from __future__ import annotations

import argparse

from edgeprune.cli import options, targets
from edgeprune.cli import train as train_cli
from edgeprune.cli.options import number
from edgeprune.cli.outputs import prepare_out_dir
from edgeprune.errors import EdgepruneError


def add(sub: argparse._SubParsersAction) -> None:
    """Register ``edgeprune compare``."""

    p = sub.add_parser(
        "compare",
        parents=[
            targets.target(
                "the budget as a fraction of the full model (0.5) or an amount (2M, 4MB) for every mode, or per "
                "mode as MODE=T (params=0.1575 flops=0.1033 memory=0.0898): each mode is its own run (limits every "
                "run meets besides: --also)",
                several=True,
            ),
            options.data(required=True, help="data set: image folder, .tar.gz of one, or CIFAR python folder"),
            options.training(epochs=10),
            options.threads(None, "; with --ray, the run's --cpus-per-run"),
            options.device("training"),
            options.output(
                "folder for the tables, plot, records and trained models", force="write into a non-empty --out folder"
            ),
            options.also("network", "--also memory=4MB compares the methods among networks that fit 4 MB"),
            options.search(
                "one more method, 'searched': the direct pipeline on the kept plan, trained as direct is; the "
                "search's seconds count in its training time",
                ["weighted"],
            ),
        ],
        help="direct training of complexity-pruned models vs train -> rank -> prune -> fine-tune",
        description="Runs, for each seed: the full model trained --epochs (the baseline and the pre-training of "
        "the conventional pipelines); for each mode, Algorithm 1 at initialisation trained --epochs (direct) and "
        "the chosen baselines at the same target; then writes compare.md/.csv/.json, compare.png and curves.png to "
        "--out: accuracy change, reductions in FLOPs, memory and parameters, and total training time with its ratio "
        "to the l1 conventional pipeline, mean and std over seeds.",
    )
    p.add_argument(
        "model",
        help="a zoo model name (see 'edgeprune models') or your own package.module:factory or "
        "path/to/file.py:factory (edgeprune imports and runs that code); built fresh and trained from "
        "scratch for every run",
    )
    p.add_argument(
        "--model-args",
        metavar="JSON",
        default=None,
        help="keyword arguments of the factory (or zoo model) as a JSON object",
    )
    _add_methods(p)
    _add_runs(p)
    options.ray(p, "run", "a seed's full model, a direct or baseline run, a prune + fine-tune")


def _add_methods(p: argparse.ArgumentParser) -> None:
    """What is compared: the modes, the baselines and how each prunes."""
    p.add_argument("--modes", nargs="+", default=["params", "flops", "memory"], help="modes to compare (default all)")
    p.add_argument(
        "--baselines",
        nargs="*",
        default=["l1", "nuclear", "uniform", "unweighted"],
        help="l1 and nuclear (conventional: train, rank, prune, fine-tune), uniform (width scaling, trained "
        "from scratch), unweighted (Algorithm 1 with a uniform layer lottery); default all four",
    )
    p.add_argument(
        "--finetune-epochs",
        type=options.positive_int,
        default=5,
        help="fine-tuning epochs of the conventional pipelines (default 5)",
    )
    p.add_argument("--seeds", type=options.seed, nargs="+", default=[0], help="seeds; mean and std are over these")
    p.add_argument("--step", type=options.finite, default=0.1, help="Algorithm 1's step (default 0.1)")
    p.add_argument(
        "--calibration-images",
        type=options.positive_int,
        default=256,
        metavar="N",
        help="training images whose feature maps rank the filters for the nuclear criterion (default 256)",
    )
    p.add_argument(
        "--conventional-layers",
        choices=["weighted", "ratio"],
        default="weighted",
        help="layer choice of the conventional pipelines: Algorithm 1's weighted lottery (default) or one "
        "ratio for every layer",
    )
    p.add_argument(
        "--round-to",
        type=options.positive_int,
        default=None,
        metavar="N",
        help="not supported by compare: its pipelines plan at the paper's widths (use prune or sweep --round-to)",
    )
    p.add_argument(
        "--width",
        type=options.finite,
        default=1.0,
        help="the zoo's width multiplier: every conv and hidden linear layer at round(width x channels) (default 1)",
    )


def _add_runs(p: argparse.ArgumentParser) -> None:
    """How the runs go: time matching, resuming, progress."""
    p.add_argument(
        "--time-matched",
        action="store_true",
        help="also train the direct pipeline's network for as many epochs as fit in the conventional "
        "pipeline's measured training time (method direct-matched; with --candidates, the searched network too, "
        "its search charged: searched-matched): the accuracy each gets for the same training cost",
    )
    p.add_argument(
        "--time-matched-also",
        nargs="+",
        default=[],
        metavar="METHOD",
        help="with --time-matched: these baselines pruned at initialisation (uniform, unweighted) trained as long "
        "too (uniform-matched, unweighted-matched): width scaling, the best FLOPs-budget network we know, at equal "
        "time",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted comparison in --out: finished runs are read back from their "
        "checkpoints (measured times included), an unfinished one continues from its last epoch; same "
        "settings needed",
    )
    p.add_argument(
        "--distill",
        action="store_true",
        help="also distil from each seed's trained full model: l1+kd / nuclear+kd (the conventional fine-tuning "
        "distilled from its own pre-trained full model) and direct+kd (the direct network trained from scratch "
        "with that full model as teacher: a user who already has a trained model)",
    )
    p.add_argument("--distill-alpha", metavar="A", default=None, type=number("--distill-alpha", float, 0, 1),
                   help="with --distill: weight of the distillation term, 0 to 1 (default: train's)")  # fmt: skip
    p.add_argument("--distill-temperature", metavar="T", default=None, type=train_cli.parse_temperature,
                   help="with --distill: softening temperature, above 0 (default: train's)")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> None:
    """Run the comparison and print its table."""
    from edgeprune.io import classify
    from edgeprune.pipelines import CompareSettings, run_comparison
    from edgeprune.refs import parse_model_args
    from edgeprune.report import terminal_table
    from edgeprune.runtime import resolve_device

    if args.round_to is not None:
        raise EdgepruneError(
            "--round-to: compare does not support it yet (its pipelines plan at the paper's widths, CompareSettings "
            "has no round_to); use prune --round-to or sweep --round-to"
        )
    ray = options.ray_options(args)
    if not args.distill and (args.distill_alpha is not None or args.distill_temperature is not None):
        raise EdgepruneError("--distill-alpha and --distill-temperature need --distill")
    distill = {"distill_alpha": args.distill_alpha, "distill_temperature": args.distill_temperature}
    resolve_device(args.device)  # a device that is not there: one line, before the data loads
    mode_targets = targets.mode_targets(args.target, args.modes)
    model_args = parse_model_args(args.model_args)
    if classify(args.model) is None:
        raise EdgepruneError(f"{args.model}: compare trains from scratch; give a zoo name or a model reference")
    out = prepare_out_dir(args.out, args.force and not args.resume, "compare", keep=args.resume)
    data = options.load_data(args, args.limit_train, args.limit_test, progress=not args.quiet)
    settings = CompareSettings(
        model=args.model,
        targets=mode_targets,
        baselines=tuple(args.baselines),
        epochs=args.epochs,
        finetune_epochs=args.finetune_epochs,
        seeds=tuple(args.seeds),
        step=args.step,
        calibration_images=args.calibration_images,
        conventional_layers=args.conventional_layers,
        optimizer=args.optimizer,
        lr=args.lr,
        batch_size=args.batch_size,
        time_matched=args.time_matched,
        matched_also=tuple(dict.fromkeys(args.time_matched_also)),
        width=args.width,
        threads=args.threads,
        model_args=model_args,
        device=str(resolve_device(args.device)),
        also=targets.also_budget(args.also),
        distill=args.distill,
        candidates=args.candidates,
        candidate_kinds=tuple(args.candidate_kinds),
        proxy=args.proxy,
        proxy_holdout=args.proxy_holdout,
        **{k: v for k, v in distill.items() if v is not None},
    )
    summary = run_comparison(settings, data, out, progress=not args.quiet, resume=args.resume, ray=ray)
    print(terminal_table(summary, f"{out}/compare.md"))
    print(f"wrote {out}/compare.md, compare.csv, compare.json, compare.png, curves.png")
