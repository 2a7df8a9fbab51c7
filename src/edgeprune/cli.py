"""The ``edgeprune`` command line: a thin layer over the library, one subcommand per job."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from edgeprune.cpu import DEFAULT_TARGET as DEFAULT_CPU_TARGET
from edgeprune.cpu import TARGETS as CPU_TARGETS
from edgeprune.errors import EdgepruneError
from edgeprune.limits import MAX_CLASSES, MAX_EPOCHS, MAX_INPUT_CHANNELS, MAX_INPUT_SIZE, MAX_THREADS


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        """Print a one-line usage error and exit 2."""
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        raise SystemExit(2)


MAX_SEED = 2**32 - 1
# MAX_INPUT_SIZE and the other size caps are edgeprune.limits': the same for options and for files
MAX_COUNT = 2**31 - 1  # train's --batch-size: torch takes it as a 32-bit int (more overflowed)
MAX_RATE = 1e6  # --lr, --weight-decay: float32 holds it (1e308 overflowed inside torch), far above any use


def _integer(text: str, what: str, low: int, high: int | None = None, unit: str = "") -> int:
    """Parse an argparse integer in [low, high]; an ArgumentTypeError that names ``what`` otherwise."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what}must be an integer, got '{text}'") from None
    if high is None and value < low:
        raise argparse.ArgumentTypeError(f"{what}must be at least {low}, got {text}")
    if high is not None and not low <= value <= high:
        raise argparse.ArgumentTypeError(f"{what}must be from {low} to {high}{unit}, got {text}")
    return value


def _seed(text: str) -> int:
    """argparse type: a seed in [0, 2**32 - 1] (numpy refuses negatives; larger ones overflow)."""
    return _integer(text, "seed ", 0, MAX_SEED)


def _input_size(text: str) -> int:
    """argparse type: an input side in pixels, 1 to MAX_INPUT_SIZE."""
    return _integer(text, "input size ", 1, MAX_INPUT_SIZE, " pixels")


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _integer(text, "", 1)


def _classes(text: str) -> int:
    """argparse type: a class count, 1 to MAX_CLASSES (a billion classes is a 768 GB linear layer)."""
    return _integer(text, "", 1, MAX_CLASSES)


def _channels(text: str) -> int:
    """argparse type: input channels, 1 to MAX_INPUT_CHANNELS."""
    return _integer(text, "", 1, MAX_INPUT_CHANNELS)


def _finite(text: str) -> float:
    """argparse type: a finite float (no nan, no inf)."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got '{text}'") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got '{text}'")
    return value


def _also_argument(p: argparse.ArgumentParser, what: str, example: str) -> None:
    """``--also COST=VALUE`` (repeatable): a limit every pruned network meets besides its mode's target."""
    p.add_argument("--also", action="append", default=[], metavar="COST=VALUE",
                   help=f"a limit every pruned {what} also meets, in prune's --target form (repeatable): e.g. "
                   f"{example}")  # fmt: skip


def _fraction(text: str) -> float:
    """argparse type: a number strictly between 0 and 1."""
    value = _finite(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got '{text}'")
    return value


_DEVICE_HELP = "where training runs: auto (default: CUDA, else MPS, else the CPU), cpu, cuda or mps"
_MODEL_HELP = (
    "the model: a zoo name (see 'edgeprune models'), a model folder written by edgeprune, or your own code as "
    "package.module:factory or path/to/file.py:factory (a function or class that returns an nn.Module: edgeprune "
    "imports and runs the code you name, as torch.hub and uvicorn's module:app do)"
)
_WIDTH_HELP = (
    "the zoo's width multiplier: every conv and hidden linear layer at round(width x channels) (default 1); a "
    "factory with a width parameter gets it"
)


def _code_args(p: argparse.ArgumentParser, zoo_sizes: bool = True) -> None:
    """The options of a model argument that may name user code: its arguments, and vouching for a folder's code."""
    p.add_argument(
        "--model-args",
        metavar="JSON",
        default=None,
        help="keyword arguments of the factory (or zoo model) as a JSON object, e.g. '{\"num_classes\": 100}'",
    )
    if zoo_sizes:
        p.add_argument(
            "--num-classes",
            type=_classes,
            default=None,
            help="classes of a zoo model (default 10), or of a factory with a num_classes parameter",
        )
        p.add_argument(
            "--in-channels",
            type=_channels,
            default=None,
            help="input channels (default 3 for a zoo model, else the first conv's); also given to a factory "
            "with an in_channels parameter",
        )
    p.add_argument("--width", type=_finite, default=None, help=_WIDTH_HELP)
    p.add_argument(
        "--model",
        dest="vouch",
        metavar="REF",
        default=None,
        help="for a model folder built by your code: name its builder (package.module:factory, looked up in the "
        "current folder first, or file.py:factory) to vouch for that code as it is now, or to point at a file that "
        "moved; later commands need no flag",
    )
    p.add_argument(
        "--trust-code",
        action="store_true",
        help="run a model folder's code builder although you never vouched for it on this machine (a folder cannot "
        "vouch for itself: without this, such a folder is refused); it is still never imported from the current "
        "folder or the model folder",
    )
    p.add_argument(
        "--allow-changed-code",
        action="store_true",
        help="vouch again for your own builder file that changed since you vouched for it or saved the model (you "
        "edited it); recorded, so later commands need no flag",
    )


def _model_args(p: argparse.ArgumentParser, onnx: bool = False) -> None:
    also = "; or an .onnx file from any exporter" if onnx else ""
    p.add_argument("model", help=_MODEL_HELP + also)
    p.add_argument(
        "--input-size",
        type=_input_size,
        default=None,
        help=f"input height and width in pixels, 1 to {MAX_INPUT_SIZE} (default 32, the size a model folder or an "
        ".onnx file records)",
    )
    _code_args(p)


def _model_ref(args: argparse.Namespace, **overrides: object):  # noqa: ANN202 - returns edgeprune.io.ModelRef
    """The model a command names, with its options; the library decides what it is (folder or reference)."""
    from edgeprune.builders import parse_model_args
    from edgeprune.io import ModelRef

    fields = {
        "model_args": parse_model_args(args.model_args),
        "num_classes": getattr(args, "num_classes", None),
        "in_channels": getattr(args, "in_channels", None),
        "width": args.width,
        "input_size": getattr(args, "input_size", None),
        "trust_code": args.trust_code,
        "allow_changed": args.allow_changed_code,
        "builder": args.vouch,
        **overrides,
    }
    return ModelRef(args.model, **fields)


def _onnx_shape(args: argparse.Namespace) -> tuple[int, int, int] | None:
    """The input shape for an .onnx file: its own unless --input-size is given."""
    if args.input_size is None:
        return None
    if args.input_size < 1:
        raise EdgepruneError(f"--input-size must be positive, got {args.input_size}")
    return (args.in_channels or 3, args.input_size, args.input_size)


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP, raised where the command is, as Ctrl-C is: the same clean-up runs (the files
    --force set aside go back, temporary files and the folders the command created go, locks are released)."""

    def __init__(self, signum: int) -> None:
        """The signal ``signum`` stopped the command."""
        super().__init__(signum)
        self.signum = signum


_STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")
_DEFERRED: dict = {"depth": 0, "pending": None}  # inside _signals_deferred: the first signal waits there


def _on_signal(signum: int, frame: object) -> None:
    """Stop the command by raising :class:`Interrupted`, unless files are being moved: then once they are."""
    if _DEFERRED["depth"]:
        _DEFERRED["pending"] = _DEFERRED["pending"] or signum
        return
    raise Interrupted(signum)


class _signals_deferred:  # lower case: used as a function would be, in `with _signals_deferred():`
    """Hold a stop signal until the block ends (then raise it, if ``raise_after``)."""

    def __init__(self, raise_after: bool = True) -> None:
        self.raise_after = raise_after

    def __enter__(self) -> None:
        _DEFERRED["depth"] += 1

    def __exit__(self, kind: object, *exc: object) -> None:
        _DEFERRED["depth"] -= 1
        if kind is None and self.raise_after and not _DEFERRED["depth"] and _DEFERRED["pending"]:
            raise Interrupted(_DEFERRED["pending"])


def _catch_signals() -> dict:
    """Install the stop-signal handlers (and ignore SIGXFSZ); return the handlers they replace."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        return {}
    previous = {}
    for name in _STOP_SIGNALS:
        num = getattr(signal, name, None)
        if num is not None and signal.getsignal(num) is not signal.SIG_IGN:  # nohup's ignored SIGHUP stays so
            previous[num] = signal.signal(num, _on_signal)
    if hasattr(signal, "SIGXFSZ"):  # over 'ulimit -f' a write then fails (EFBIG, one line) instead of killing us
        previous[signal.SIGXFSZ] = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    return previous


def _restore_signals(previous: dict) -> None:
    import signal

    for num, handler in previous.items():
        signal.signal(num, handler)


def _signal_name(signum: int) -> str:
    import signal

    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class _Outputs:
    """The folders a command writes: each locked while it runs (one writer per folder and its subtree); a folder
    the command created (and the parents it created) is removed again if it fails before writing anything
    resumable (a training checkpoint); files that --force replaces come back if it fails; every file it writes is
    listed in the folder's manifest, which is all a later --force removes (see edgeprune.files.OutputFolder)."""

    def __init__(self) -> None:
        self.locks: list = []
        self.created: list[list[Path]] = []  # per --out, deepest first: the folder, then the parents made for it
        self.folders: list = []  # edgeprune.files.OutputFolder

    def lock(self, path: Path, command: str) -> None:
        """Hold ``path``'s writer lock until the command ends; say so when a dead run's lock is taken over."""
        from edgeprune.files import FolderLock

        lock = FolderLock(path, command).acquire()
        self.locks.append(lock)
        if lock.note:
            sys.stderr.write(f"edgeprune {command}: note: {lock.note}\n")

    def adopt(self, path: Path, command: str) -> None:
        """Lock a folder the command continues in place (training a model folder); list what it writes there."""
        self.lock(path, command)
        self._open(path, command, str(path), force=False, keep=True)

    def _open(self, path: Path, command: str, label: str, force: bool, keep: bool) -> None:
        from edgeprune.files import OutputFolder

        folder = OutputFolder(path, command, label)
        self.folders.append(folder)  # before it moves anything: close() finishes whatever open() did
        with _signals_deferred():  # files moving in and out of the stash: never stopped half-way
            folder.open(force=force, keep=keep)
        for note in folder.notes:
            sys.stderr.write(f"edgeprune {command}: note: {note}\n")
        folder.notes = []

    def prepare(self, out: str, force: bool, command: str, keep: bool = False) -> Path:
        """Create or lock ``out``; it must be empty unless ``force`` (the files an earlier edgeprune command listed
        in its manifest are set aside, removed when the command succeeds and put back if it fails) or ``keep``
        (resume: its files are continued)."""
        import os

        path = Path(out)
        if path.exists() and not path.is_dir():
            raise EdgepruneError(f"--out {out}: exists and is not a folder")
        if not path.exists():
            missing = [p for p in (path, *path.parents) if not p.exists()]
            try:
                path.mkdir(parents=True)
            except OSError as e:
                raise EdgepruneError(f"--out {out}: cannot create folder ({e.strerror})") from None
            self.created.append(missing)
        if not os.access(path, os.W_OK):
            raise EdgepruneError(f"--out {out}: folder is not writable")
        self.lock(path, command)
        self._open(path, command, f"--out {out}", force=force, keep=keep)
        return path

    def close(self, failed: bool) -> None:
        """Release the locks; after a failure, put back what --force set aside and remove the folders this command
        created that hold nothing resumable."""
        from edgeprune.files import remove_tree

        with _signals_deferred(raise_after=False):  # a signal must not stop the files going back; main() reports it
            for folder in self.folders:
                for note in folder.close(failed):
                    sys.stderr.write(f"edgeprune: note: {note}\n")
            for path, *parents in self.created if failed else []:
                if path.is_dir() and not any(path.rglob("checkpoint.safetensors")):
                    remove_tree(path)
                for parent in parents:
                    try:
                        parent.rmdir()  # only while empty: something else may have been put there meanwhile
                    except OSError:
                        break
            for lock in reversed(self.locks):
                lock.release()
            self.locks, self.created, self.folders = [], [], []


_OUTPUTS = _Outputs()


def prepare_out_dir(out: str, force: bool, command: str = "edgeprune", keep: bool = False) -> Path:
    """Check, create and lock ``out`` for this command (see :class:`_Outputs`)."""
    return _OUTPUTS.prepare(out, force, command, keep)


_KEEP_HELP = "never prune this layer's filters (repeatable); the output layers are always kept"


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
        "each layer's share of each, and the channel groups that prune together. An .onnx file is counted "
        "from its graph (Conv, Gemm and MatMul layers; no channel groups).",
    )
    _model_args(p, onnx=True)
    p.add_argument("--json", action="store_true", help="print JSON (per-layer rows, groups and a 'total' object)")
    p.add_argument(
        "--plot", metavar="FILE.png", help="also save a bar chart of per-layer shares (like the paper's Fig. 1)"
    )
    p.add_argument("--prune-residual", action="store_true", help="count residual-tied channel groups as prunable")
    p.add_argument("--keep", action="append", default=[], metavar="LAYER", help=_KEEP_HELP)


def cmd_profile(args: argparse.Namespace) -> None:
    """Print a model's complexity profile."""
    from edgeprune.graph import profile
    from edgeprune.measure import is_onnx_path
    from edgeprune.onnx_graph import onnx_profile
    from edgeprune.report import profile_table

    if args.plot:
        from edgeprune.files import check_writable_file

        check_writable_file(args.plot, "--plot")
    from_onnx = is_onnx_path(args.model)
    if from_onnx:
        prof = onnx_profile(args.model, _onnx_shape(args))
    else:
        from edgeprune.io import resolve

        resolved = resolve(_model_ref(args))
        prof = profile(resolved.model, resolved.input_shape, prune_residual=args.prune_residual, keep=args.keep)
    if args.plot:
        from edgeprune.plots import plot_shares

        plot_shares(prof, args.plot, f"{args.model}: per-layer share of complexity")
    print(json.dumps(prof.to_dict(), indent=2) if args.json else profile_table(prof))
    if from_onnx and not args.json:
        print("counted from the ONNX graph: a BatchNorm folded into a conv counts as its bias; prunable: unknown")


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
    from edgeprune.costs import cost_help

    p.add_argument(
        "--mode",
        default=None,
        help="the cost a single --target limits: params (PA), flops (FA), memory (MA), energy or latency",
    )
    p.add_argument(
        "--target",
        required=True,
        action="append",
        metavar="[COST=]VALUE",
        help="with --mode: one limit; else COST=VALUE, repeatable, every limit met at once (--target flops=0.5 "
        "--target memory=4MB --target latency=3ms). A VALUE is a fraction of the model's own cost (0.5) or an "
        f"amount in the cost's unit. Costs: {cost_help()}",
    )
    p.add_argument(
        "--lut",
        metavar="TABLE",
        help="latency table from 'edgeprune lut' (needed by a latency target): plans with it, then measures the "
        "pruned model on the table's backend and threads and re-plans if it misses",
    )
    p.add_argument(
        "--accept-table",
        action="store_true",
        help="use a latency table made on another CPU or backend version (its predictions may be off)",
    )
    p.add_argument(
        "--attempts",
        type=_positive_int,
        default=4,
        help="with a latency target: cut and measure at most this many times (default 4)",
    )
    p.add_argument(
        "--round-to",
        type=_positive_int,
        default=None,
        metavar="N",
        help="every pruned layer keeps a multiple of N filters (fast CPU kernels like 8 or 16); the budget is met on "
        "the rounded widths (default 1: the paper's widths; with a latency target, the table's)",
    )
    p.add_argument(
        "--step", type=_finite, default=0.1, help="fraction of a picked layer's filters removed per step (default 0.1)"
    )
    p.add_argument("--seed", type=_seed, default=0, help="random seed; the same seed gives the same result (default 0)")
    p.add_argument(
        "--criterion",
        default="random",
        help="which filters go: random (default, the paper's), l1 or l2 (weight norms, for trained models)",
    )
    p.add_argument(
        "--min-filters", type=_positive_int, default=1, help="no layer keeps fewer filters than this (default 1)"
    )
    p.add_argument(
        "--selection",
        default="weighted",
        help="how layers are chosen: weighted by their complexity share (default, Algorithm 1), uniform "
        "(Algorithm 1 with an unweighted lottery), or ratio (the same fraction of every layer: width scaling)",
    )
    p.add_argument("--prune-residual", action="store_true", help="also prune channels tied to residual additions")
    p.add_argument("--keep", action="append", default=[], metavar="LAYER", help=_KEEP_HELP)
    p.add_argument("--out", required=True, help="folder for model.json, model.safetensors and report.json")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out folder, replacing its files")
    p.add_argument("--json", action="store_true", help="print report.json instead of the table")


def cmd_prune(args: argparse.Namespace) -> int:
    """Prune, save and report."""
    from edgeprune.io import resolve, save, write_json
    from edgeprune.pruning import prune
    from edgeprune.report import prune_summary

    if args.criterion == "nuclear":
        raise EdgepruneError(
            "criterion 'nuclear' needs data: use 'edgeprune compare' (or the Python API with calibration)"
        )
    budget = prune_budget(args.mode, args.target)
    table = _latency_table(args, budget)
    import torch

    torch.manual_seed(args.seed)  # a built model's initial weights come from the same seed as the pruning
    resolved = resolve(_model_ref(args))
    model, shape = resolved.model, resolved.input_shape
    out = prepare_out_dir(args.out, args.force, "prune")
    result = prune(
        model, step=args.step, seed=args.seed, criterion=args.criterion, input_shape=shape,
        min_filters=args.min_filters, prune_residual=args.prune_residual, selection=args.selection, keep=args.keep,
        budget=budget, round_to=args.round_to, table=table, attempts=args.attempts,
    )  # fmt: skip
    report = result.report()
    report["source"] = args.model
    if table is not None:
        report["latency_table"] = {"file": str(args.lut), "backend": table.backend, "threads": table.threads,
                                   "cpu": table.cpu, "backend_version": table.backend_version}  # fmt: skip
    save(result.model, out, shape)
    write_json(out / "report.json", report)
    print(json.dumps(report, indent=2) if args.json else prune_summary(report) + f"\n\nwrote {out}/")
    latency = report.get("latency")
    if latency and not latency["met"]:  # the files stay: a user may still want the nearest model
        sys.stderr.write(
            f"edgeprune prune: latency target missed after {len(latency['attempts'])} attempt(s): measured "
            f"{latency['measured_ms']:.3f} ms > {latency['limit_ms']:.3f} ms (model kept in {out})\n"
        )
        return 1
    return 0


def _latency_table(args: argparse.Namespace, budget: dict[str, str]):  # noqa: ANN202 - lut.LatencyTable | None
    """The --lut table when a latency target needs it, checked against this machine (unless --accept-table)."""
    if args.lut is None:
        return None
    from edgeprune.lut import load_table

    if "latency" not in budget:
        raise EdgepruneError("--lut is for a latency target (--target latency=3ms)")
    table = load_table(args.lut)
    if not args.accept_table:
        table.check_machine()
    return table


# -- bench / export / sweep (edge measurements) -----------------------------------------------

_SPIN_HELP = (
    "idle worker threads sleep instead of spin-waiting (torch OMP_WAIT_POLICY=PASSIVE, onnxruntime "
    "allow_spinning=0): much steadier latency on a machine shared with other work"
)
_PAD_HELP = (
    "zero-pad pruned layer widths to a multiple of N (e.g. 16) first: same outputs, and the fast CPU "
    "kernels that odd channel counts miss"
)


def add_bench(sub: argparse._SubParsersAction) -> None:
    """Register ``edgeprune bench``."""
    from edgeprune.measure import BACKENDS

    p = sub.add_parser(
        "bench",
        help="measure latency, CPU use, memory, size on disk and estimated energy on this CPU",
        description="Measure a model on each backend (torch eager channels-last; onnxruntime CPU on an exported, "
        "checked .onnx), each in a fresh process: latency (median, p90, mean) of --runs random inputs after "
        "--warmup, CPU utilisation (process CPU time / wall time, % of one core), resident memory (peak, and "
        "increase over the pre-model baseline), model size on disk, and the energy estimate per inference "
        "(45 nm, Horowitz 2014: 4.6 pJ per multiply-add + 640 pJ per 32-bit DRAM word moved). An .onnx "
        "file runs on onnxruntime as it is, its complexity counted from its graph.",
    )
    _model_args(p, onnx=True)
    p.add_argument("--backends", nargs="+", default=None, metavar="NAME",
                   help=f"backends to measure: {', '.join(BACKENDS)} (default: both; onnxruntime for an .onnx "
                   "file)")  # fmt: skip
    p.add_argument("--runs", type=_positive_int, default=100, help="timed inferences (default 100)")
    p.add_argument("--warmup", type=int, default=10, help="untimed inferences first (default 10)")
    p.add_argument("--batch-size", type=_positive_int, default=1, help="inputs per inference (default 1)")
    p.add_argument("--threads", type=_positive_int, default=None, help="intra-op threads (default: all cores)")
    p.add_argument("--pad-channels", type=_positive_int, default=None, metavar="N", help=_PAD_HELP)
    p.add_argument("--no-spin", action="store_true", help=_SPIN_HELP)
    p.add_argument("--device", default="cpu", metavar="NAME",
                   help="where torch runs: cpu (default), cuda, mps or auto; onnxruntime stays on the CPU")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the full result as JSON")


def cmd_bench(args: argparse.Namespace) -> None:
    """Measure a model on the CPU."""
    from edgeprune.measure import bench, bench_table, is_onnx_path

    onnx = is_onnx_path(args.model)
    result = bench(
        args.model if onnx else _model_ref(args), args.backends, args.runs, args.warmup, args.batch_size,
        args.threads, input_shape=_onnx_shape(args) if onnx else None, pad_to=args.pad_channels,
        spin=not args.no_spin, device=args.device,
    )  # fmt: skip
    print(json.dumps(result, indent=2) if args.json else bench_table(result))


def add_export(sub: argparse._SubParsersAction) -> None:
    """Register ``edgeprune export``."""
    p = sub.add_parser(
        "export",
        help="export a model to ONNX, checked against PyTorch in onnxruntime",
        description="Export to ONNX (dynamic batch), run the file in onnxruntime on the same random input as "
        "PyTorch and fail if the outputs differ by more than --atol; the file is written atomically.",
    )
    _model_args(p)
    p.add_argument("--onnx", required=True, metavar="FILE", help="the .onnx file to write")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, 7 to 20 (default 17)")
    p.add_argument("--exporter", default="auto", help="torchscript, dynamo (needs onnxscript) or auto (default: "
                   "torchscript, else dynamo)")  # fmt: skip
    p.add_argument("--atol", type=_finite, default=1e-4, help="largest allowed |onnx - torch| (default 1e-4)")
    p.add_argument("--pad-channels", type=_positive_int, default=None, metavar="N", help=_PAD_HELP)
    p.add_argument(
        "--int8",
        action="store_true",
        help="also quantize to int8 (onnxruntime static quantization, QDQ, per-channel int8 weights, int8 "
        "activations calibrated on --calibration): --onnx gets the int8 model, FILE-fp32.onnx the checked fp32 one",
    )
    p.add_argument("--calibration", metavar="PATH", default=None,
                   help="data set for --int8: training images calibrate, the test split checks accuracy")  # fmt: skip
    p.add_argument("--calibration-images", type=_positive_int, default=256, metavar="N",
                   help="training images calibrating activation ranges, chosen by --seed (default 256)")  # fmt: skip
    p.add_argument("--calibration-method", default="minmax", metavar="NAME",
                   help="minmax (default: measured best here), entropy or percentile")  # fmt: skip
    p.add_argument("--max-drop", type=_finite, default=1.0, metavar="POINTS",
                   help="largest allowed fall in test top-1 accuracy from fp32 to int8, in points (default 1.0); "
                   "over it the file is kept and the command exits 2 with the numbers")  # fmt: skip
    p.add_argument("--limit-test", type=_positive_int, default=None, metavar="N",
                   help="check the int8 accuracy on this many test images only")  # fmt: skip
    p.add_argument("--seed", type=_seed, default=0, help="seed of the calibration images (default 0)")
    p.add_argument("--target-cpu", choices=CPU_TARGETS, default=DEFAULT_CPU_TARGET,
                   help="CPU the int8 file must hold its accuracy on: any (default: every x86 and ARM CPU; 7-bit "
                   "weights, which x86 CPUs without VNNI need), native (this CPU), vnni (VNNI/AMX x86 or ARM "
                   "only: full 8-bit weights), avx2 (x86 without VNNI)")  # fmt: skip
    p.add_argument("--force", action="store_true",
                   help="with --int8, replace a FILE-fp32.onnx that no earlier export of FILE wrote")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _export_int8(args: argparse.Namespace, fp32: Path) -> dict:
    """Quantize the checked fp32 export to ``args.onnx`` and check its test accuracy against fp32."""
    from edgeprune.data import load_dataset
    from edgeprune.quantize import int8_check, quantize_onnx

    data = load_dataset(args.calibration, None, args.limit_test, progress=False)
    info = quantize_onnx(
        fp32,
        args.onnx,
        data,
        images=args.calibration_images,
        seed=args.seed,
        method=args.calibration_method,
        target_cpu=args.target_cpu,
    )
    info["check"] = int8_check(fp32, args.onnx, data, args.max_drop)
    return info


def _target_cpu_line(target: dict, cpu: dict) -> str:
    """Which CPUs the int8 file is for, and which CPU checked its accuracy."""
    weights = "7-bit weights" if target["reduce_range"] else "8-bit weights"
    holds = "every x86 and ARM CPU" if target["reduce_range"] else "VNNI/AMX x86 and ARM CPUs (not AVX2-only x86)"
    return (
        f"target CPU: {target['target']} ({weights}: for {holds}); accuracy checked on {cpu['model']} ({cpu['class']})"
    )


def cmd_export(args: argparse.Namespace) -> None:
    """Export and check."""
    from edgeprune.export import check_export_args, export_onnx
    from edgeprune.files import check_writable_file

    check_export_args(args.opset, args.atol, args.exporter)
    check_writable_file(args.onnx, "--onnx")
    if args.int8 != (args.calibration is not None):
        raise EdgepruneError("--int8 needs --calibration PATH (a data set), and --calibration is only for --int8")
    if args.int8:
        from edgeprune.quantize import METHODS

        if not Path(args.calibration).expanduser().exists():  # before the export, not after it
            raise EdgepruneError(f"--calibration {args.calibration}: no such data set")
        if args.calibration_method not in METHODS:
            raise EdgepruneError(f"unknown calibration method '{args.calibration_method}'; choose from: "
                                 f"{', '.join(METHODS)}")  # fmt: skip
    target = Path(args.onnx)
    fp32, mark = target, None
    if args.int8:  # FILE-fp32.onnx is a name the user never gave: never overwrite another file there
        from edgeprune.export import check_fp32_path, fp32_path

        fp32, mark = fp32_path(target), check_fp32_path(target, args.force)
    info = export_onnx(_model_ref(args), fp32, None, args.opset, args.exporter, args.atol, pad_to=args.pad_channels,
                       metadata=mark)  # fmt: skip
    line = (
        f"wrote {info['path']} ({info['bytes'] / 1e6:.2f} MB, opset {info['opset']}, {info['exporter']} exporter); "
        f"max |onnxruntime - torch| = {info['check']['max_abs_diff']:.2e} (limit {info['check']['atol']:g})"
    )
    if args.int8:
        info = {"fp32": info, "int8": _export_int8(args, fp32)}
        check = info["int8"]["check"]
        line += (
            f"\nwrote {args.onnx} (int8 QDQ, {check['int8']['bytes'] / 1e6:.2f} MB, "
            f"{info['int8']['method']} calibration on {info['int8']['calibration']['images']} images); test top-1 "
            f"fp32 {100 * check['fp32']['top1']:.2f}%, int8 {100 * check['int8']['top1']:.2f}% "
            f"(drop {check['drop_points']:+.2f} points, limit {check['max_drop_points']:g}) on {check['images']} images"
            f"\n{_target_cpu_line(info['int8']['target_cpu'], check['cpu'])}"
        )
        if check["int8"]["bytes"] >= info["fp32"]["bytes"]:  # per-channel scales outweigh the bytes saved
            line += (
                f"\nnote: the int8 file is not smaller than the fp32 one ({info['fp32']['bytes'] / 1e6:.2f} MB): at "
                "a few channels per layer the per-channel scales and zero points outweigh the weights saved"
            )
    print(json.dumps(info, indent=2) if args.json else line)
    if args.int8 and not info["int8"]["check"]["passed"]:
        check = info["int8"]["check"]
        raise EdgepruneError(
            f"int8 accuracy fell {check['drop_points']:.2f} points, over --max-drop {check['max_drop_points']:g} "
            f"(file kept: {args.onnx}; try --calibration-method entropy or percentile, or more --calibration-images)"
        )


def add_lut(sub: argparse._SubParsersAction) -> None:
    """Register ``edgeprune lut``."""
    from edgeprune.lut import CALIBRATION, DEFAULT_ROUND_TO
    from edgeprune.measure import BACKENDS  # light

    p = sub.add_parser(
        "lut",
        help="measure a latency table (each layer at a grid of widths) for pruning to milliseconds",
        description="Time every conv and linear layer of the model, with its norm and activation as the backend runs "
        "them, in isolation at batch 1 at a grid of input x output widths (every --round-to step near full width, "
        "then geometric by --ratio), in fresh processes; then the whole model, whose latency minus its layers' is "
        "'the rest'; then whole models cut uniformly and the smallest network a plan can reach (--calibrate), which "
        "map the layers' sum to measured latency. 'edgeprune prune MODEL --target latency=3ms --lut TABLE' plans "
        "with it. The table records the CPU, backend version and threads; prune refuses it on a machine where they "
        "differ.",
    )
    _model_args(p)
    p.add_argument("--backend", default="onnxruntime", choices=BACKENDS, help="the backend the model will run on "
                   "(default onnxruntime)")  # fmt: skip
    p.add_argument("--threads", type=_positive_int, default=1, help="intra-op threads, as deployed (default 1)")
    p.add_argument("--round-to", type=_positive_int, default=DEFAULT_ROUND_TO, metavar="N",
                   help=f"grid widths are multiples of N, and a latency prune keeps multiples of N (default "
                   f"{DEFAULT_ROUND_TO})")  # fmt: skip
    p.add_argument("--near", type=int, default=2, help="round-to steps measured just below full width (default 2)")
    p.add_argument("--ratio", type=_finite, default=0.7, help="geometric grid ratio below those (default 0.7)")
    p.add_argument("--runs", type=_positive_int, default=20, help="timed rounds per grid point (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds first (default 3)")
    p.add_argument("--processes", type=_positive_int, default=3, help="fresh processes; medians over them (default 3)")
    p.add_argument("--order", default="round_robin", choices=("round_robin", "blocked"),
                   help="grid points of a layer timed round-robin (default: equal conditions, cold caches) or each "
                   "back to back (warm caches)")  # fmt: skip
    p.add_argument("--calibrate", nargs="*", type=_fraction, default=list(CALIBRATION), metavar="F",
                   help="uniform cuts at these fractions of the parent's table sum, and the smallest network, timed "
                   "whole beside the parent: predictions are mapped through them and targets under the smallest "
                   f"are refused (default {' '.join(f'{f:g}' for f in CALIBRATION)}; no F: none)")  # fmt: skip
    p.add_argument("--out", required=True, metavar="TABLE.json", help="where to write the table")
    p.add_argument("--force", action="store_true", help="replace an existing table")
    p.add_argument("--recalibrate", action="store_true",
                   help="keep the layers of the --out table (made for this model on this machine) and measure only "
                   "its calibration afresh (seconds, not minutes)")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no per-layer progress lines")


def cmd_lut(args: argparse.Namespace) -> None:
    """Build (or recalibrate), save and summarise a latency table."""
    from edgeprune.files import check_writable_file
    from edgeprune.io import resolve
    from edgeprune.lut import build_table, calibrate, load_table

    out = check_writable_file(args.out, "--out")
    if args.recalibrate:
        if not args.calibrate:
            raise EdgepruneError("--recalibrate needs calibration cuts: drop the empty --calibrate")
        table = load_table(out)
        table.check_machine()  # a calibration measured here would not fit layers measured elsewhere
        resolved = resolve(_model_ref(args))
        table = calibrate(table, resolved.model, tuple(args.calibrate), processes=args.processes)
    else:
        if out.exists() and not args.force:
            raise EdgepruneError(f"--out {out}: exists; give --force to replace it (or --recalibrate it)")
        resolved = resolve(_model_ref(args))
        progress = None if args.quiet else (lambda line: print("  " + line, flush=True))
        table = build_table(
            resolved.model, tuple(resolved.input_shape), args.backend, args.threads, args.round_to, args.near,
            args.ratio, args.runs, args.warmup, args.processes, source=args.model, progress=progress,
            order=args.order, calibration=tuple(args.calibrate),
        )  # fmt: skip
    table.save(out)
    floor = "" if table.floor_ms is None else (
        f"\ncalibration: {', '.join(f'{s:.3f}->{m:.3f}' for s, m in table.calibration)} ms (table sum -> measured); "
        f"smallest network {table.floor_ms:.3f} ms"
    )  # fmt: skip
    print(
        f"{args.model} on {table.backend} {table.backend_version}, {table.threads} thread(s), {table.cpu}: "
        f"{len(table.layers)} layers, {table.settings['points']} widths measured in {table.build_seconds:.0f} s; "
        f"parent {table.parent_ms:.3f} ms, layers alone {table.parent_ms - table.rest_ms:.3f} ms"
        + (f" (scaled by {table.scale:.2f} to the model)" if table.scale < 1 else f", rest {table.rest():.3f} ms")
        + floor
        + f"\nwrote {out}"
    )


def add_sweep(sub: argparse._SubParsersAction) -> None:
    """Register ``edgeprune sweep``."""
    from edgeprune.measure import BACKENDS  # light: no torch import (keeps --help fast)

    p = sub.add_parser(
        "sweep",
        help="prune to every mode x target (x seed), measure each, plot the trade-offs",
        description="Prune the model at initialization in each --modes to each --targets fraction (and seed), "
        "optionally train each once (--data and --epochs), bench each and the unpruned model, and write "
        "results.csv, results.json and trade-off plots (like the paper's Figs. 3-4) to --out.",
    )
    _model_args(p)
    p.add_argument(
        "--modes",
        nargs="+",
        default=["params", "flops", "memory"],
        help="complexity modes (default: params flops memory)",
    )
    p.add_argument("--targets", nargs="+", type=_finite, default=[0.9, 0.7, 0.5, 0.3],
                   help="fractions of the model's own complexity (default 0.9 0.7 0.5 0.3)")  # fmt: skip
    p.add_argument("--seeds", nargs="+", type=_seed, default=[0], help="random seeds (default 0)")
    p.add_argument("--step", type=_finite, default=0.1, help="pruning step (default 0.1)")
    p.add_argument(
        "--epochs", type=_positive_int, default=None, help="train every model for this many epochs (needs --data)"
    )
    p.add_argument("--data", default=None, help="data set for training (needs --epochs)")
    p.add_argument(
        "--limit-train", type=_positive_int, default=None, metavar="N", help="train on this many images only"
    )
    p.add_argument("--limit-test", type=_positive_int, default=None, metavar="N", help="test on this many images only")
    _data_caps(p)
    p.add_argument("--backends", nargs="+", default=list(BACKENDS), metavar="NAME", help="as for bench (default: both)")
    p.add_argument("--runs", type=_positive_int, default=30, help="timed runs per model and backend (default 30)")
    p.add_argument("--warmup", type=int, default=5, help="warm-up runs (default 5)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="intra-op threads (default: all cores; with --ray, a point's --cpus-per-run)")  # fmt: skip
    p.add_argument("--no-spin", action="store_true", help=_SPIN_HELP)
    p.add_argument(
        "--y",
        default=None,
        help="plot y axis: accuracy, params, flops or memory (default: accuracy if trained, else params)",
    )
    p.add_argument("--out", required=True, help="folder for results.csv, results.json and the plots")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out folder, replacing its files")
    p.add_argument("--device", default="auto", metavar="NAME", help=_DEVICE_HELP)
    _also_argument(p, "point", "--also memory=4MB sweeps FLOPs targets among networks that fit 4 MB")
    p.add_argument(
        "--round-to",
        type=_positive_int,
        default=1,
        metavar="N",
        help="every pruned width a multiple of N (default 1: the paper's widths)",
    )
    p.add_argument("--int8", action="store_true",
                   help="also quantize every point to int8 (as export --int8, calibrated on --data), one more row "
                   "(mode 'MODE int8'): size, onnxruntime latency, energy and accuracy beside fp32")  # fmt: skip
    from edgeprune.cluster import add_ray_arguments  # light: Ray itself is imported only when --ray is given

    add_ray_arguments(p, "point", "prune, train if asked, bench; timings from different nodes are not comparable")


def cmd_sweep(args: argparse.Namespace) -> None:
    """Run a sweep."""
    from edgeprune.cluster import options_from_args
    from edgeprune.sweep import sweep
    from edgeprune.train import resolve_device

    ray = options_from_args(args)
    resolve_device(args.device)  # a device that is not there: one line, before any work
    if args.threads is not None and args.threads < 1:
        raise EdgepruneError(f"--threads must be positive, got {args.threads}")
    ref = _model_ref(args)
    if (args.data is None) != (args.epochs is None):
        raise EdgepruneError("training needs both --data and --epochs (or neither, for an untrained sweep)")
    data = _load_data(args, args.limit_train, args.limit_test, progress=False) if args.data else None
    out = prepare_out_dir(args.out, args.force, "sweep")
    sweep(
        ref, out, args.modes, args.targets, args.seeds, args.backends, args.runs, args.warmup, args.threads,
        args.step, args.epochs, data, args.y, spin=not args.no_spin, limit_train=args.limit_train,
        limit_test=args.limit_test, ray=ray, device=str(resolve_device(args.device)), int8=args.int8,
        also=prune_budget(None, args.also) if args.also else None, round_to=args.round_to,
    )  # fmt: skip


# -- train ------------------------------------------------------------------------------------


def add_train(sub: argparse._SubParsersAction) -> None:
    """Register ``edgeprune train``."""
    p = sub.add_parser(
        "train",
        help="train a (pruned) model on an image data set, with checkpoints and --resume",
        description="Train a model folder written by 'edgeprune prune' (or a model built from a zoo name or your "
        "own factory, sized for the data set's classes and channels) on an image data set held in memory: random "
        "crop (4-pixel padding) and flip, SGD with Nesterov momentum and a one-cycle schedule (or RMSprop, lr 1e-3, "
        "as in the paper), label smoothing, test accuracy every epoch. Classification models only: the output must "
        "be (N, classes). Writes a checkpoint after every epoch, metrics.jsonl, train.json and the trained "
        "model.json + model.safetensors.",
    )
    p.add_argument("model", help=_MODEL_HELP)
    _code_args(p, zoo_sizes=False)
    p.add_argument(
        "--data",
        metavar="PATH",
        required=True,
        help="image folders (root/{train,test}/<class>/*.png|jpg|webp...), a .tar.gz of them, "
        "or an official cifar-10-batches-py / cifar-100-python folder",
    )
    p.add_argument("--epochs", metavar="N", required=True, help="number of epochs")
    p.add_argument("--batch-size", metavar="N", default="128", help="images per step (default 128)")
    p.add_argument(
        "--optimizer", metavar="NAME", default="sgd", help="sgd (Nesterov, default) or rmsprop (the paper's)"
    )
    p.add_argument(
        "--lr", metavar="LR", default=None, help="peak learning rate (default 0.05 for sgd, 1e-3 for rmsprop)"
    )
    p.add_argument(
        "--schedule",
        metavar="NAME",
        default="onecycle",
        help="after warm-up: onecycle (linear decay, default), cosine, constant",
    )
    p.add_argument(
        "--warmup-epochs",
        metavar="E",
        default="1",
        help="linear warm-up length in epochs, at most 30%% of the run (default 1)",
    )
    p.add_argument("--momentum", metavar="M", default="0.9", help="SGD momentum (default 0.9)")
    p.add_argument(
        "--weight-decay", metavar="WD", default="5e-4", help="L2 weight decay on conv and linear weights (default 5e-4)"
    )
    p.add_argument("--label-smoothing", metavar="S", default="0.1", help="label smoothing of the loss (default 0.1)")
    p.add_argument("--no-augment", action="store_true", help="no random crop and flip")
    p.add_argument(
        "--precision",
        metavar="P",
        default="fp32",
        help="fp32 (default) or bf16: mixed precision, faster on CPUs with AMX",
    )
    p.add_argument(
        "--seed", metavar="N", default="0", help="random seed: the same seed gives the same weights (default 0)"
    )
    p.add_argument(
        "--limit-train", metavar="N", default=None, help="use only this many training images (stratified subset)"
    )
    p.add_argument("--limit-test", metavar="N", default=None, help="use only this many test images (stratified subset)")
    _data_caps(p)
    p.add_argument(
        "--out", metavar="DIR", help="output folder (default: the model folder itself; required for a reference)"
    )
    p.add_argument("--force", action="store_true", help="write into a non-empty --out folder")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in the output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--threads", metavar="N", default=None, help="CPU threads per process (default: the cores, shared by processes)"
    )
    p.add_argument(
        "--device",
        metavar="D",
        default="auto",
        help="auto (default: CUDA, else Apple MPS, else CPU), cpu, cuda or mps. Several processes: launch with "
        "'torchrun --nproc-per-node N [--nnodes M ...] -m edgeprune train ...' (DistributedDataParallel, gloo on "
        "CPU, nccl on CUDA); --batch-size is the global batch, shared by the processes; rank 0 writes the files",
    )


def _data_caps(p: argparse.ArgumentParser) -> None:
    """Options that cap what a data set may make edgeprune read (checked from headers, before decoding)."""
    p.add_argument("--max-image-pixels", type=_positive_int, default=None, metavar="N",
                   help="refuse an image of more than N pixels, from its header (default 4096x4096)")  # fmt: skip
    p.add_argument("--max-file-bytes", type=_positive_int, default=None, metavar="N",
                   help="refuse an image file (or archive member) over N bytes, unread (default 64 MiB)")  # fmt: skip
    p.add_argument("--max-data-bytes", type=_positive_int, default=None, metavar="N",
                   help="refuse a data set whose files, or whose decoded images, come to over N bytes, before "
                   "reading or decoding them (default: half the memory available)")  # fmt: skip


def _load_data(args: argparse.Namespace, limit_train: int | None, limit_test: int | None, progress: bool):  # noqa: ANN202
    """The data set ``--data`` names, with the size caps the options set."""
    from edgeprune.data import load_dataset

    caps = {"max_image_pixels": args.max_image_pixels, "max_file_bytes": args.max_file_bytes,
            "max_data_bytes": args.max_data_bytes}  # fmt: skip
    return load_dataset(args.data, limit_train, limit_test, progress=progress, **{k: v for k, v in caps.items() if v})


def _parse_number(
    text: str | None, option: str, kind: type, minimum: float | None = None, maximum: float | None = None
) -> float | int | None:
    """Parse a numeric option: finite and within [minimum, maximum], else a one-line EdgepruneError."""
    import math

    if text is None:
        return None
    try:
        value = kind(text)
    except ValueError:  # also an integer of more than 4,300 digits
        what = "an integer" if kind is int else "a number"
        raise EdgepruneError(f"{option} must be {what}, got '{text}'") from None
    if kind is float and not math.isfinite(value):
        raise EdgepruneError(f"{option} must be a finite number, got '{text}'")
    if minimum is not None and not value >= minimum:
        raise EdgepruneError(f"{option} must be at least {minimum}, got '{text}'")
    if maximum is not None and not value <= maximum:  # 1e308 warm-up epochs overflowed the schedule's step count
        raise EdgepruneError(f"{option} must be at most {maximum:g}, got '{text}'")
    return value


def _parse_seed(text: str) -> int:
    """``--seed`` of train (parsed late, as its other numbers are): an integer in [0, 2**32 - 1]."""
    try:
        return _seed(text)
    except argparse.ArgumentTypeError as e:
        raise EdgepruneError(f"--seed: {e}") from None


def cmd_train(args: argparse.Namespace) -> None:
    """Train a model and print its test accuracy."""
    import shutil

    import torch

    from edgeprune.io import classify, resolve_for_data
    from edgeprune.train import TrainConfig, process_ranks, resolve_device, train

    config = TrainConfig(
        epochs=_parse_number(args.epochs, "--epochs", int, 1, MAX_EPOCHS),
        batch_size=_parse_number(args.batch_size, "--batch-size", int, 1, MAX_COUNT),
        lr=_parse_number(args.lr, "--lr", float, None, MAX_RATE),
        optimizer=args.optimizer,
        momentum=_parse_number(args.momentum, "--momentum", float),
        weight_decay=_parse_number(args.weight_decay, "--weight-decay", float, None, MAX_RATE),
        schedule=args.schedule,
        warmup_epochs=_parse_number(args.warmup_epochs, "--warmup-epochs", float, 0, MAX_EPOCHS),
        label_smoothing=_parse_number(args.label_smoothing, "--label-smoothing", float),
        seed=_parse_seed(args.seed),
        augment=not args.no_augment,
        precision=args.precision,
    ).validate()
    limit_train = _parse_number(args.limit_train, "--limit-train", int, 1)
    limit_test = _parse_number(args.limit_test, "--limit-test", int, 1)
    threads = _parse_number(args.threads, "--threads", int, 1, MAX_THREADS)
    ranks = process_ranks()  # torchrun's; rank 0 alone prepares, locks, writes and prints
    resolve_device(args.device, ranks.local_rank)  # an unknown or absent device fails before the data loads
    ref = _model_ref(args)
    named = classify(args.model)  # None for a model folder; checked before the data set loads, runs no code
    model_dir = named is None
    if named is not None and not args.out:
        what = f"a model built by {named.short}" if named.is_code else "a zoo model by name"
        raise EdgepruneError(f"--out is required when training {what}")
    out = Path(args.out) if args.out else Path(args.model)
    if not ranks.main:
        pass  # rank 0 prepares the folder; the others never write to it
    elif args.out and not (model_dir and out.resolve() == Path(args.model).resolve()):
        out = prepare_out_dir(args.out, args.force, "train", keep=args.resume)
    else:
        _OUTPUTS.adopt(out, "train")  # training in place: the model folder is the output
    data = _load_data(args, limit_train, limit_test, progress=not args.quiet and ranks.main)
    if ranks.main:
        print(data.summary(), flush=True)
    torch.manual_seed(config.seed)  # a built model's initial weights
    model = resolve_for_data(ref, data.num_classes, data.input_shape(), data.name).model
    report = Path(args.model) / "report.json"
    if ranks.main and model_dir and report.is_file() and not args.resume and not (out / "report.json").exists():
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy2(report, out / "report.json")
    try:
        result = train(model, data, config, out, args.resume, not args.quiet, threads=threads, device=args.device)
    except KeyboardInterrupt:
        if ranks.main:
            sys.stderr.write(
                f"edgeprune train: stopped; continue with the same command and --resume (checkpoint in {out}/)\n"
            )
        raise
    if ranks.main:
        print(
            f"test accuracy {100 * result.test_accuracy:.2f}% after {len(result.history)} epochs "
            f"({result.train_seconds:.1f} s of training); wrote {out}/"
        )


# -- evaluate ---------------------------------------------------------------------------------


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    """Register ``edgeprune evaluate``."""
    p = sub.add_parser(
        "evaluate",
        help="test-split accuracy of a model folder, a reference or an .onnx file (onnxruntime)",
        description="Top-1 accuracy (and top-5 when there are more than 10 classes) on the test split of --data, "
        "with the preprocessing train uses (the data set's mean and std). An .onnx file runs in onnxruntime as it "
        "is (fp32 or int8); a zoo name or a factory is built untrained, sized for the data set.",
    )
    _model_args(p, onnx=True)
    p.add_argument("--data", required=True, metavar="PATH", help="the data set (as for train)")
    p.add_argument("--limit-test", type=_positive_int, default=None, metavar="N", help="use this many test images")
    p.add_argument("--batch-size", type=_positive_int, default=256, help="images per forward pass (default 256)")
    p.add_argument("--threads", type=_positive_int, default=None, help="CPU threads (default: all cores)")
    _data_caps(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def cmd_evaluate(args: argparse.Namespace) -> None:
    """Print a model's test accuracy."""
    from edgeprune.evaluate import evaluate
    from edgeprune.measure import is_onnx_path

    model = args.model if is_onnx_path(args.model) else _model_ref(args)
    data = _load_data(args, None, args.limit_test, progress=False)
    result = evaluate(model, data, batch_size=args.batch_size, threads=args.threads)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    top5 = f", top-5 {100 * result['top5']:.2f}%" if "top5" in result else ""
    print(
        f"{args.model}: top-1 {100 * result['top1']:.2f}%{top5} on {result['images']:,} test images of "
        f"{data.name} ({result['backend']})"
    )


# -- compare ----------------------------------------------------------------------------------


def add_compare(sub: argparse._SubParsersAction) -> None:
    """Register ``edgeprune compare``."""
    p = sub.add_parser(
        "compare",
        help="direct training of complexity-pruned models vs train -> rank -> prune -> fine-tune",
        description="Runs, for each seed: the full model trained --epochs (the baseline and the pre-training of "
        "the conventional pipelines); for each mode, Algorithm 1 at initialisation trained --epochs (direct) and "
        "the chosen baselines at the same target; then writes compare.md/.csv/.json, compare.png and curves.png to "
        "--out: accuracy change, reductions in FLOPs, memory and parameters, and total training time with its ratio "
        "to the l1 conventional pipeline, mean and std over seeds.",
    )
    p.add_argument("model", help="a zoo model name (see 'edgeprune models') or your own package.module:factory or "
                   "path/to/file.py:factory (edgeprune imports and runs that code); built fresh and trained from "
                   "scratch for every run")  # fmt: skip
    p.add_argument("--model-args", metavar="JSON", default=None,
                   help="keyword arguments of the factory (or zoo model) as a JSON object")  # fmt: skip
    p.add_argument("--data", required=True, help="data set: image folder, .tar.gz of one, or CIFAR python folder")
    p.add_argument(
        "--target",
        nargs="+",
        required=True,
        help="the budget as a fraction of the full model (0.5) or an amount (2M, 4MB) for every mode, or per "
        "mode as MODE=T (params=0.1575 flops=0.1033 memory=0.0898)",
    )
    p.add_argument("--modes", nargs="+", default=["params", "flops", "memory"], help="modes to compare (default all)")
    p.add_argument(
        "--baselines",
        nargs="*",
        default=["l1", "nuclear", "uniform", "unweighted"],
        help="l1 and nuclear (conventional: train, rank, prune, fine-tune), uniform (width scaling, trained from "
        "scratch), unweighted (Algorithm 1 with a uniform layer lottery); default all four",
    )
    p.add_argument(
        "--epochs", type=_positive_int, default=10, help="epochs of from-scratch training (and pre-training)"
    )
    p.add_argument(
        "--finetune-epochs", type=_positive_int, default=5, help="fine-tuning epochs of the conventional pipelines"
    )
    p.add_argument("--seeds", type=_seed, nargs="+", default=[0], help="seeds; mean and std are over these")
    p.add_argument("--step", type=_finite, default=0.1, help="Algorithm 1's step (default 0.1)")
    p.add_argument(
        "--calibration-images", type=_positive_int, default=256, metavar="N",
        help="training images whose feature maps rank the filters for the nuclear criterion (default 256)",
    )  # fmt: skip
    p.add_argument(
        "--conventional-layers",
        choices=["weighted", "ratio"],
        default="weighted",
        help="layer choice of the conventional pipelines: Algorithm 1's weighted lottery (default) or one "
        "ratio for every layer",
    )
    p.add_argument("--optimizer", choices=["sgd", "rmsprop"], default="sgd", help="optimiser (rmsprop = the paper's)")
    p.add_argument("--lr", type=_finite, default=None, help="peak learning rate (default per optimiser)")
    p.add_argument("--batch-size", type=_positive_int, default=128, help="training batch size (default 128)")
    p.add_argument("--limit-train", type=_positive_int, default=None, help="use only this many training images")
    p.add_argument("--limit-test", type=_positive_int, default=None, help="use only this many test images")
    _data_caps(p)
    p.add_argument("--out", required=True, help="folder for the tables, plot, records and trained models")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out folder")
    p.add_argument(
        "--time-matched",
        action="store_true",
        help="also train the direct pipeline's network for as many epochs as fit in the conventional pipeline's "
        "measured training time (method direct-matched): the accuracy each gets for the same training cost",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted comparison in --out: finished runs are read back from their checkpoints "
        "(measured times included), an unfinished one continues from its last epoch; same settings needed",
    )
    p.add_argument("--width", type=_finite, default=1.0, help="the zoo's width multiplier: every conv and hidden "
                   "linear layer at round(width x channels) (default 1)")  # fmt: skip
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="CPU threads per training run (default: all cores; with --ray, the run's --cpus-per-run)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--device", default="auto", metavar="NAME", help=_DEVICE_HELP)
    _also_argument(p, "network", "--also memory=4MB compares the methods among networks that fit 4 MB")
    from edgeprune.cluster import add_ray_arguments  # light: Ray itself is imported only when --ray is given

    add_ray_arguments(p, "run", "a seed's full model, a direct or baseline run, a prune + fine-tune")


def prune_budget(mode: str | None, items: list[str]) -> dict[str, str]:
    """``--mode M --target T`` or repeated ``--target COST=VALUE`` -> {cost: limit}."""
    from edgeprune.costs import check_cost

    if mode is not None:
        check_cost(mode)
        if len(items) != 1 or "=" in items[0]:
            raise EdgepruneError("--mode takes one plain --target; for several limits drop --mode and use COST=VALUE")
        return {mode: items[0]}
    budget: dict[str, str] = {}
    for item in items:
        cost, sep, value = item.partition("=")
        if not sep:
            raise EdgepruneError(f"--target {item}: name its cost (flops={item}) or give --mode")
        check_cost(cost)
        if cost in budget:
            raise EdgepruneError(f"--target gives {cost} twice")
        budget[cost] = value
    return budget


def parse_targets(items: list[str], modes: list[str]) -> dict[str, str]:
    """``['0.5']`` or ``['params=0.2', 'flops=0.1']`` -> a target per mode."""
    from edgeprune.costs import check_cost as check_mode

    for mode in modes:
        check_mode(mode)
    if len(items) == 1 and "=" not in items[0]:
        return {mode: items[0] for mode in modes}
    targets = {}
    for item in items:
        mode, sep, value = item.partition("=")
        if not sep:
            raise EdgepruneError(f"--target '{item}': give one value for all modes, or MODE=T for each")
        check_mode(mode)
        targets[mode] = value
    missing = [m for m in modes if m not in targets]
    if missing:
        raise EdgepruneError(f"--target gives no value for mode(s) {', '.join(missing)}")
    return {m: targets[m] for m in modes}


def cmd_compare(args: argparse.Namespace) -> None:
    """Run the comparison and print its table."""
    from edgeprune.builders import parse_model_args
    from edgeprune.cluster import options_from_args
    from edgeprune.io import classify
    from edgeprune.pipelines import CompareSettings, markdown_table, run_comparison
    from edgeprune.train import resolve_device

    ray = options_from_args(args)
    resolve_device(args.device)  # a device that is not there: one line, before the data loads
    targets = parse_targets(args.target, args.modes)
    model_args = parse_model_args(args.model_args)
    if classify(args.model) is None:
        raise EdgepruneError(f"{args.model}: compare trains from scratch; give a zoo name or a model reference")
    for name in ("epochs", "finetune_epochs"):
        if getattr(args, name) < 1:
            raise EdgepruneError(f"--{name.replace('_', '-')} must be a positive integer")
    out = prepare_out_dir(args.out, args.force and not args.resume, "compare", keep=args.resume)
    data = _load_data(args, args.limit_train, args.limit_test, progress=not args.quiet)
    settings = CompareSettings(
        model=args.model, targets=targets, baselines=tuple(args.baselines), epochs=args.epochs,
        finetune_epochs=args.finetune_epochs, seeds=tuple(args.seeds), step=args.step,
        calibration_images=args.calibration_images, conventional_layers=args.conventional_layers,
        optimizer=args.optimizer, lr=args.lr, batch_size=args.batch_size,
        time_matched=args.time_matched, width=args.width, threads=args.threads, model_args=model_args,
        device=str(resolve_device(args.device)), also=prune_budget(None, args.also) if args.also else {},
    )  # fmt: skip
    summary = run_comparison(settings, data, out, progress=not args.quiet, resume=args.resume, ray=ray)
    print(markdown_table(summary) + f"\nwrote {out}/compare.md, compare.csv, compare.json, compare.png, curves.png")


# -- entry point ------------------------------------------------------------------------------

COMMANDS: dict[str, tuple[Callable, Callable]] = {
    "models": (add_models, cmd_models),
    "profile": (add_profile, cmd_profile),
    "prune": (add_prune, cmd_prune),
    "bench": (add_bench, cmd_bench),
    "export": (add_export, cmd_export),
    "lut": (add_lut, cmd_lut),
    "sweep": (add_sweep, cmd_sweep),
    "train": (add_train, cmd_train),
    "evaluate": (add_evaluate, cmd_evaluate),
    "compare": (add_compare, cmd_compare),
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
    failed = True
    _DEFERRED.update(depth=0, pending=None)
    previous = _catch_signals()  # SIGTERM and SIGHUP clean up as Ctrl-C does; exit status 128 + the signal
    try:
        try:
            code = COMMANDS[args.command][1](args) or 0  # 1: written, but short of what was asked
            failed = False
        except EdgepruneError as e:
            sys.stderr.write(f"edgeprune {args.command}: error: {e}\n")
            return 2
        except KeyboardInterrupt as e:
            signum = getattr(e, "signum", 2)
            by = f" ({_signal_name(signum)})" if signum != 2 else ""
            sys.stderr.write(f"edgeprune {args.command}: interrupted{by}\n")
            return 128 + signum
        except OSError as e:  # a file the library did not expect to fail (disk full, a folder vanished): one line
            where = f": {e.filename}" if e.filename else ""
            sys.stderr.write(f"edgeprune {args.command}: error: {e.strerror or e}{where}\n")
            return 2
        finally:
            _OUTPUTS.close(failed)
    finally:
        _restore_signals(previous)
    if _DEFERRED["pending"]:  # it came as the command finished: its output is complete, but it was asked to stop
        sys.stderr.write(f"edgeprune {args.command}: {_signal_name(_DEFERRED['pending'])} as it finished\n")
        return 128 + _DEFERRED["pending"]
    return code


if __name__ == "__main__":
    raise SystemExit(main())
