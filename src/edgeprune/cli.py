"""The ``edgeprune`` command line: a thin layer over the library, one subcommand per job."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from edgeprune.errors import EdgepruneError


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        """Print a one-line usage error and exit 2."""
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        raise SystemExit(2)


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a zoo model name (see 'edgeprune models') or a model folder written by edgeprune")
    p.add_argument("--num-classes", type=int, default=10, help="classes of a zoo model built by name (default 10)")
    p.add_argument("--in-channels", type=int, default=3, help="input channels of a zoo model built by name (default 3)")
    p.add_argument(
        "--input-size", type=int, default=32, help="input height and width in pixels for complexity (default 32)"
    )


def _input_shape(args: argparse.Namespace) -> tuple[int, int, int]:
    from edgeprune.io import input_shape_of, is_model_dir

    if is_model_dir(args.model):
        return input_shape_of(args.model)  # type: ignore[return-value]
    if args.input_size < 1:
        raise EdgepruneError(f"--input-size must be positive, got {args.input_size}")
    return (args.in_channels, args.input_size, args.input_size)


def _load_model(args: argparse.Namespace):  # noqa: ANN202 - returns nn.Module
    from edgeprune.io import resolve_model

    return resolve_model(args.model, args.num_classes, args.in_channels)


def prepare_out_dir(out: str, force: bool) -> Path:
    """Check that ``out`` can take new files: writable, and empty unless ``force``."""
    import os

    path = Path(out)
    if path.exists() and not path.is_dir():
        raise EdgepruneError(f"--out {out}: exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise EdgepruneError(f"--out {out}: folder is not empty (use --force to overwrite its files)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EdgepruneError(f"--out {out}: cannot create folder ({e.strerror})") from None
    if not os.access(path, os.W_OK):
        raise EdgepruneError(f"--out {out}: folder is not writable")
    return path


# -- models -----------------------------------------------------------------------------------


def add_models(sub: argparse._SubParsersAction) -> None:
    """Register ``edgeprune models``."""
    sub.add_parser("models", help="list the model zoo", description="List the models that can be built by name.")


def cmd_models(args: argparse.Namespace) -> None:
    """Print the zoo."""
    from edgeprune.models import describe, list_models

    for name in list_models():
        print(f"{name:<12} {describe(name)}")


# -- profile ----------------------------------------------------------------------------------


def add_profile(sub: argparse._SubParsersAction) -> None:
    """Register ``edgeprune profile``."""
    p = sub.add_parser(
        "profile",
        help="per-layer parameters, FLOPs and memory, and which layers are prunable",
        description="Complexity profile (fp32, batch 1): per layer and in total, parameters, FLOPs (one "
        "multiply-add counted once, i.e. MACs) and memory (4 bytes x (parameters + output feature map)), "
        "each layer's share of each, and the channel groups that prune together.",
    )
    _model_args(p)
    p.add_argument("--json", action="store_true", help="print JSON (per-layer rows, groups and a 'total' object)")
    p.add_argument("--plot", metavar="FILE.png", help="also save a bar chart of per-layer shares (like the paper's Fig. 1)")
    p.add_argument("--prune-residual", action="store_true", help="count residual-tied channel groups as prunable")


def cmd_profile(args: argparse.Namespace) -> None:
    """Print a model's complexity profile."""
    from edgeprune.complexity import profile
    from edgeprune.report import profile_table

    model = _load_model(args)
    prof = profile(model, _input_shape(args), prune_residual=args.prune_residual)
    if args.plot:
        from edgeprune.plots import plot_shares

        plot_shares(prof, args.plot, f"{args.model}: per-layer share of complexity")
    print(json.dumps(prof.to_dict(), indent=2) if args.json else profile_table(prof))


# -- prune ------------------------------------------------------------------------------------


def add_prune(sub: argparse._SubParsersAction) -> None:
    """Register ``edgeprune prune``."""
    p = sub.add_parser(
        "prune",
        help="prune a model to a complexity budget with Algorithm 1",
        description="Complexity-driven pruning (Zawish et al. 2022, Algorithm 1): repeatedly pick a layer at "
        "random with probability proportional to its share of the model's complexity in --mode, remove "
        "--step of its filters by --criterion, until the model fits --target. Writes model.json, "
        "model.safetensors and report.json to --out and prints a before/after table.",
    )
    _model_args(p)
    p.add_argument("--mode", required=True, help="what the budget counts: params (PA), flops (FA) or memory (MA)")
    p.add_argument(
        "--target",
        required=True,
        help="a fraction of the model's own complexity (0.5), or an amount: a count with K/M/G for params "
        "and flops (2M, 150M), bytes with B/KB/MB/GB/KiB/MiB/GiB for memory (4MB)",
    )
    p.add_argument("--step", type=float, default=0.1, help="fraction of a picked layer's filters removed per step (default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same result (default 0)")
    p.add_argument(
        "--criterion",
        default="random",
        help="which filters go: random (default, the paper's), l1 or l2 (weight norms, for trained models)",
    )
    p.add_argument("--min-filters", type=int, default=1, help="no layer keeps fewer filters than this (default 1)")
    p.add_argument(
        "--selection",
        default="weighted",
        help="layer lottery: weighted by complexity share (default, Algorithm 1) or uniform (a baseline)",
    )
    p.add_argument("--prune-residual", action="store_true", help="also prune channels tied to residual additions")
    p.add_argument("--out", required=True, help="folder for model.json, model.safetensors and report.json")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out folder, replacing its files")
    p.add_argument("--json", action="store_true", help="print report.json instead of the table")


def cmd_prune(args: argparse.Namespace) -> None:
    """Prune, save and report."""
    from edgeprune.io import save, write_json
    from edgeprune.pruning import prune
    from edgeprune.report import prune_summary

    if args.criterion == "nuclear":
        raise EdgepruneError("criterion 'nuclear' needs data: use 'edgeprune compare' (or the Python API with calibration)")
    model = _load_model(args)
    shape = _input_shape(args)
    out = prepare_out_dir(args.out, args.force)
    result = prune(
        model, args.mode, args.target, args.step, args.seed, args.criterion, input_shape=shape,
        min_filters=args.min_filters, prune_residual=args.prune_residual, selection=args.selection,
    )  # fmt: skip
    report = result.report()
    report["source"] = args.model
    save(result.model, out, shape)
    write_json(out / "report.json", report)
    print(json.dumps(report, indent=2) if args.json else prune_summary(report) + f"\n\nwrote {out}/")


# -- entry point ------------------------------------------------------------------------------

COMMANDS: dict[str, tuple[Callable, Callable]] = {
    "models": (add_models, cmd_models),
    "profile": (add_profile, cmd_profile),
    "prune": (add_prune, cmd_prune),
}


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    parser = _Parser(
        prog="edgeprune",
        description="Compress CNNs to fit a parameter, FLOP or memory budget, train them, and measure them on a CPU.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; user errors print one line and return a non-zero status."""
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command][1](args)
    except EdgepruneError as e:
        sys.stderr.write(f"edgeprune {args.command}: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"edgeprune {args.command}: interrupted\n")
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
