"""Shared option groups (argparse parent parsers) and the number parsers every subcommand uses.

One option means one thing in every command: each group here is made by one function, so its spelling, its
range check and its help are the same wherever it appears. A factory takes the few settings a command really
changes (a default, whether the option is required) and nothing else.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from edgeprune import validate
from edgeprune.errors import EdgepruneError
from edgeprune.limits import MAX_CLASSES, MAX_INPUT_CHANNELS, MAX_INPUT_SIZE, MAX_THREADS
from edgeprune.validate import MAX_SEED

MAX_COUNT = 2**31 - 1  # train's --batch-size: torch takes it as a 32-bit int (more overflowed)
MAX_RATE = 1e6  # --lr, --weight-decay: float32 holds it (1e308 overflowed inside torch), far above any use

# -- number parsers (argparse types: a bad value is a one-line usage error at parse time) ----------------------


def integer(text: str, what: str, low: int, high: int | None = None, unit: str = "") -> int:
    """Parse an argparse integer in [low, high]; an ArgumentTypeError that names ``what`` otherwise."""
    span = unit if high is not None else None  # a closed range is named whole: "from 1 to 64"
    error = argparse.ArgumentTypeError
    return validate.parse_number(text, what.strip(), int, low=low, high=high, span=span, error=error)  # type: ignore[return-value]


def seed(text: str) -> int:
    """argparse type: a seed in [0, 2**32 - 1] (numpy refuses negatives; larger ones overflow)."""
    return integer(text, "seed ", 0, MAX_SEED)


def input_size(text: str) -> int:
    """argparse type: an input side in pixels, 1 to MAX_INPUT_SIZE."""
    return integer(text, "input size ", 1, MAX_INPUT_SIZE, " pixels")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return integer(text, "", 1)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0 (warm-up runs, steps below full width)."""
    return integer(text, "", 0)


def thread_count(text: str) -> int:
    """argparse type: a thread count, 1 to MAX_THREADS."""
    return integer(text, "", 1, MAX_THREADS)


def classes(text: str) -> int:
    """argparse type: a class count, 1 to MAX_CLASSES (a billion classes is a 768 GB linear layer)."""
    return integer(text, "", 1, MAX_CLASSES)


def channels(text: str) -> int:
    """argparse type: input channels, 1 to MAX_INPUT_CHANNELS."""
    return integer(text, "", 1, MAX_INPUT_CHANNELS)


def finite(text: str) -> float:
    """argparse type: a finite float (no nan, no inf)."""
    return validate.parse_number(text, "", float, error=argparse.ArgumentTypeError)


def non_negative_number(text: str) -> float:
    """argparse type: a finite number >= 0 (--gpus-per-run)."""
    return validate.parse_number(text, "", float, low=0, error=argparse.ArgumentTypeError)


def positive_number(text: str) -> float:
    """argparse type: a finite number > 0 (--cpus-per-run)."""
    value = non_negative_number(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got '{text}'")
    return value


def fraction(text: str) -> float:
    """argparse type: a number strictly between 0 and 1."""
    value = finite(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got '{text}'")
    return value


def parse_number(
    text: str | None, option: str, kind: type, minimum: float | None = None, maximum: float | None = None
) -> float | int | None:
    """Parse a numeric option given as text: finite and within [minimum, maximum], else a one-line EdgepruneError."""
    if text is None:
        return None
    return validate.parse_number(text, option, kind, low=minimum, high=maximum)


def number(option: str, kind: type, minimum: float | None = None, maximum: float | None = None) -> Callable:
    """An argparse ``type`` parsing ``option`` at parse time with ``parse_number``'s one-line messages.

    It raises EdgepruneError (not argparse's error), so the message names the option as the library's do
    ("--epochs must be at least 1, got '-1'"); ``main`` prints it in one line with exit status 2.
    """

    def parse(text: str) -> float | int | None:
        return parse_number(text, option, kind, minimum, maximum)

    return parse


def val_fraction(text: str) -> float:
    """argparse type for ``--val-fraction``: a number strictly between 0 and 1 (one-line EdgepruneError otherwise)."""
    value = parse_number(text, "--val-fraction", float)
    if not 0 < value < 1:
        raise EdgepruneError(f"--val-fraction must be between 0 and 1 (not 0 or 1), got '{text}'")
    return value


def parse_seed(text: str) -> int:
    """A ``--seed`` given as text (train's numbers are parsed after the parser): an integer in [0, 2**32 - 1]."""
    try:
        return seed(text)
    except argparse.ArgumentTypeError as e:
        raise EdgepruneError(f"--seed: {e}") from None


# -- help texts shared by several groups ---------------------------------------------------------------------

MODEL_HELP = (
    "the model: a zoo name (see 'edgeprune models'), a model folder written by edgeprune, or your own code as "
    "package.module:factory or path/to/file.py:factory (a function or class that returns an nn.Module: edgeprune "
    "imports and runs the code you name, as torch.hub and uvicorn's module:app do)"
)
WIDTH_HELP = (
    "the zoo's width multiplier: every conv and hidden linear layer at round(width x channels) (default 1); a "
    "factory with a width parameter gets it"
)
KEEP_HELP = "never prune this layer's filters (repeatable); the output layers are always kept"
SPIN_HELP = (
    "idle worker threads sleep instead of spin-waiting (torch OMP_WAIT_POLICY=PASSIVE, onnxruntime "
    "allow_spinning=0): much steadier latency on a machine shared with other work"
)
PAD_HELP = (
    "zero-pad pruned layer widths to a multiple of N (e.g. 16) first: same outputs, and the fast CPU "
    "kernels that odd channel counts miss"
)
THREADS_HELP = "intra-op CPU threads, 1 to {high} (default: {default})"
DEVICE_HELP = "where {what} runs: auto (CUDA, else MPS, else the CPU), cpu, cuda or mps (default {default}){extra}"
DATA_HELP = (
    "image folders (root/{train,test}/<class>/*.png|jpg|webp...), a .tar.gz of them, an official "
    "cifar-10-batches-py / cifar-100-python folder, or WebDataset tar shards ('shards/train-{000..099}.tar': "
    "KEY.png|jpg|webp + KEY.cls members)"
)


def _parent() -> argparse.ArgumentParser:
    """An empty parent parser (no -h of its own: the subcommand has one)."""
    return argparse.ArgumentParser(add_help=False)


# -- the groups ----------------------------------------------------------------------------------------------


def code(zoo_sizes: bool = True) -> argparse.ArgumentParser:
    """The options of a model argument that may name user code: its arguments, and vouching for a folder's code."""
    p = _parent()
    p.add_argument(
        "--model-args",
        metavar="JSON",
        default=None,
        help="keyword arguments of the factory (or zoo model) as a JSON object, e.g. '{\"num_classes\": 100}'",
    )
    if zoo_sizes:
        p.add_argument(
            "--num-classes",
            type=classes,
            default=None,
            help="classes of a zoo model (default 10), or of a factory with a num_classes parameter",
        )
        p.add_argument(
            "--in-channels",
            type=channels,
            default=None,
            help="input channels (default 3 for a zoo model, else the first conv's); also given to a "
            "factory with an in_channels parameter",
        )
    p.add_argument("--width", type=finite, default=None, help=WIDTH_HELP)
    p.add_argument(
        "--model",
        dest="vouch",
        metavar="REF",
        default=None,
        help="for a model folder built by your code: name its builder (package.module:factory, looked up "
        "in the current folder first, or file.py:factory) to vouch for that code as it is now, or to "
        "point at a file that moved; later commands need no flag",
    )
    p.add_argument(
        "--trust-code",
        action="store_true",
        help="run a model folder's code builder although you never vouched for it on this machine (a "
        "folder cannot vouch for itself: without this, such a folder is refused); it is still never "
        "imported from the current folder or the model folder",
    )
    p.add_argument(
        "--allow-changed-code",
        action="store_true",
        help="vouch again for your own builder file that changed since you vouched for it or saved the "
        "model (you edited it); recorded, so later commands need no flag",
    )
    return p


def model(onnx: bool = False) -> argparse.ArgumentParser:
    """The model argument with its input size and code options (``onnx``: an .onnx file is accepted too)."""
    p = _parent()
    also = "; or an .onnx file from any exporter" if onnx else ""
    p.add_argument("model", help=MODEL_HELP + also)
    p.add_argument(
        "--input-size",
        type=input_size,
        default=None,
        help=f"input height and width in pixels, 1 to {MAX_INPUT_SIZE} (default 32, the size a model "
        "folder or an .onnx file records)",
    )
    for action in code()._actions:
        p._add_action(action)
    return p


def output(
    help: str, *, required: bool = True, metavar: str | None = None, force: str | None = None
) -> argparse.ArgumentParser:
    """``--out`` (where the command writes) and ``--force`` (replace what an earlier run wrote there)."""
    p = _parent()
    p.add_argument("--out", required=required, metavar=metavar, help=help)
    p.add_argument(
        "--force", action="store_true", help=force or "write into a non-empty --out folder, replacing its files"
    )
    return p


def json_output(help: str = "print the result as JSON") -> argparse.ArgumentParser:
    """``--json``: print the machine-readable result instead of the table."""
    p = _parent()
    p.add_argument("--json", action="store_true", help=help)
    return p


def threads(default: int | None = None, detail: str = "", *, late: bool = False) -> argparse.ArgumentParser:
    """``--threads N``: intra-op CPU threads, 1 to MAX_THREADS; None means all cores (runtime.default_threads).

    ``late``: kept as text for the command to parse with its other numbers (train's one-line messages).
    """
    p = _parent()
    shown = "all cores" if default is None else str(default)
    p.add_argument(
        "--threads",
        type=number("--threads", int, 1, MAX_THREADS) if late else thread_count,
        default=default,
        metavar="N",
        help=THREADS_HELP.format(high=MAX_THREADS, default=shown + detail),
    )
    return p


def device(what: str = "torch", default: str = "auto", extra: str = "") -> argparse.ArgumentParser:
    """``--device NAME``: where torch runs."""
    p = _parent()
    p.add_argument(
        "--device", default=default, metavar="NAME", help=DEVICE_HELP.format(what=what, default=default, extra=extra)
    )
    return p


def timing(runs: int, warmup: int, *, spin: bool = True) -> argparse.ArgumentParser:
    """``--runs``, ``--warmup`` (and ``--no-spin``): how a latency is timed."""
    p = _parent()
    p.add_argument("--runs", type=positive_int, default=runs, help=f"timed inferences (default {runs})")
    p.add_argument(
        "--warmup", type=non_negative_int, default=warmup, help=f"untimed inferences first (default {warmup})"
    )
    if spin:
        p.add_argument("--no-spin", action="store_true", help=SPIN_HELP)
    return p


def data(
    *,
    required: bool,
    help: str = DATA_HELP,
    limit_train: bool = True,
    limit_test: bool = True,
    validation: bool = False,
) -> argparse.ArgumentParser:
    """``--data PATH``, ``--image-size``, the test (and training) subsets, the caps on what a data set may make
    edgeprune read, and (``validation``) ``--val-fraction``."""
    p = _parent()
    p.add_argument("--data", metavar="PATH", required=required, default=None, help=help)
    p.add_argument(
        "--test-data",
        metavar="PATTERN",
        default=None,
        help="for tar shards: the test split's shards, e.g. 'shards/test-{000..009}.tar' (default: the test-* "
        "shards beside the training shards)",
    )
    p.add_argument(
        "--data-storage",
        choices=["auto", "memory", "mapped", "stream"],
        default="auto",
        help="where a cached data set's images are held: in memory, or memory-mapped from the cache file and read "
        "batch by batch (default auto: in memory when they fit half the memory available); stream (tar shards, "
        "train only): no cache, the shards decoded again every epoch, as auto does for a set larger than the cache "
        "folder's free disk",
    )
    p.add_argument(
        "--image-size",
        type=number("--image-size", int, 1, MAX_INPUT_SIZE),
        default=None,
        metavar="N",
        help="resize images to N x N (evaluation: shorter side round(N*8/7), centre crop N; training images kept "
        "at that shorter side, centre square, for random-resized crops); default: the images' one size, "
        "required when their sizes differ",
    )
    if validation:
        p.add_argument(
            "--val-fraction",
            type=val_fraction,
            default=None,
            metavar="F",
            help="hold out this share of the training images (0 < F < 1, stratified per class, by --seed) as a "
            "validation split, scored every epoch beside test; a val/ folder next to test/ is used otherwise",
        )
    if limit_train:
        p.add_argument(
            "--limit-train",
            type=positive_int,
            default=None,
            metavar="N",
            help="use only this many training images (stratified subset)",
        )
    if limit_test:
        p.add_argument(
            "--limit-test",
            type=positive_int,
            default=None,
            metavar="N",
            help="use only this many test images (stratified subset)",
        )
    for action in data_caps()._actions:
        p._add_action(action)
    return p


def data_caps() -> argparse.ArgumentParser:
    """Options that cap what a data set may make edgeprune read (checked from headers, before decoding)."""
    p = _parent()
    p.add_argument(
        "--max-image-pixels",
        type=positive_int,
        default=None,
        metavar="N",
        help="refuse an image of more than N pixels, from its header (default 4096x4096)",
    )
    p.add_argument(
        "--max-file-bytes",
        type=positive_int,
        default=None,
        metavar="N",
        help="refuse an image file (or archive member) over N bytes, unread (default 64 MiB)",
    )
    p.add_argument(
        "--max-data-bytes",
        type=positive_int,
        default=None,
        metavar="N",
        help="refuse a data set whose files, or whose decoded images, come to over N bytes, before "
        "reading or decoding them; a stream of tar shards, what it holds at once: its shuffle buffer "
        "and a batch (default: half the memory available)",
    )
    return p


def training(epochs: int = 10) -> argparse.ArgumentParser:
    """The training options a study sets for every run: epochs, optimiser, learning rate and batch size."""
    p = _parent()
    p.add_argument(
        "--epochs",
        type=positive_int,
        default=epochs,
        help=f"epochs of from-scratch training (and pre-training) (default {epochs})",
    )
    p.add_argument(
        "--optimizer",
        choices=["sgd", "rmsprop"],
        default="sgd",
        help="optimiser: sgd (Nesterov, default) or rmsprop (the paper's)",
    )
    p.add_argument("--lr", type=finite, default=None, help="peak learning rate (default per optimiser)")
    p.add_argument("--batch-size", type=positive_int, default=128, help="training batch size (default 128)")
    return p


def training_log() -> argparse.ArgumentParser:
    """``--log csv|tensorboard|mlflow`` (repeatable): where a training's per-epoch numbers go besides metrics.jsonl."""
    p = _parent()
    p.add_argument(
        "--log",
        action="append",
        default=[],
        choices=["csv", "tensorboard", "mlflow"],
        help="also log each epoch's loss, accuracy, learning rate and images/s, and the run's settings, to: csv "
        "(metrics.csv), tensorboard (event files in tensorboard/; pip install 'edgeprune[tensorboard]') or mlflow "
        "(a local file store, mlruns/; pip install 'edgeprune[mlflow]'); repeat for several",
    )
    return p


def also(what: str, example: str) -> argparse.ArgumentParser:
    """``--also COST=VALUE`` (repeatable): a limit every pruned network meets besides its mode's target."""
    p = _parent()
    p.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="COST=VALUE",
        help=f"a limit every pruned {what} also meets, in prune's --target form (repeatable): e.g. {example}",
    )
    return p


# edgeprune.search's names and default, spelled here so --help imports no torch (tests/test_search.py compares)
KINDS = ("weighted", "uniform", "ratio")  # edgeprune.search.KINDS
PROXIES = "flops, params, synflow, naswot, gradnorm or train:STEPS"  # edgeprune.search.proxy_names()
DEFAULT_HOLDOUT = 0.1  # edgeprune.search.search's holdout default


def search(
    what: str, kinds: list[str] | None = None, kinds_default: str = "weighted: Algorithm 1's"
) -> argparse.ArgumentParser:
    """``--candidates K``, ``--candidate-kinds``, ``--proxy``, ``--proxy-holdout``: the candidate search of prune,
    compare and sweep (``edgeprune.search``); ``what`` the searched plan becomes, ``kinds`` the default kinds."""
    p = _parent()
    p.add_argument("--candidates", type=positive_int, default=1, metavar="K",
                   help=f"draw K budget-meeting plans per --candidate-kinds (seeds SEED .. SEED+K-1; ratio draws one) "
                   f"and keep the one --proxy ranks best: {what} (default 1: no search)")  # fmt: skip
    p.add_argument("--candidate-kinds", nargs="+", choices=KINDS, default=kinds, metavar="KIND",
                   help=f"the lotteries candidates are drawn by: {', '.join(KINDS)} "
                   f"(default {kinds_default})")  # fmt: skip
    p.add_argument("--proxy", default="flops", metavar="NAME",
                   help=f"how candidates are ranked: {PROXIES} (default flops: the most FLOPs kept; train:STEPS "
                   "trains each candidate STEPS steps on the training split)")  # fmt: skip
    p.add_argument("--proxy-holdout", type=fraction, default=DEFAULT_HOLDOUT, metavar="F",
                   help=f"the training split's share train:STEPS ranks on (default {DEFAULT_HOLDOUT:g})")  # fmt: skip
    return p


def ray(p: argparse.ArgumentParser, what: str, detail: str) -> None:
    """Add ``--ray [ADDRESS]``, ``--cpus-per-run`` and ``--gpus-per-run`` to ``p`` (compare, sweep: where they were,
    after the command's own options); ``what`` a Ray task is, and a word more about it."""
    from edgeprune.cluster import LOCAL, MAX_RETRIES  # light: Ray itself is imported only when --ray is given

    p.add_argument(
        "--ray",
        nargs="?",
        const=LOCAL,
        default=None,
        metavar="ADDRESS",
        help=f"one Ray task per {what} ({detail}), on a local Ray instance started for this command, or on the "
        "running cluster at ADDRESS ('auto', 'ray://head:10001'); --out must be a folder every node sees; a task "
        f"whose worker dies is retried {MAX_RETRIES} times, from its last checkpoint; needs "
        "pip install 'edgeprune[ray]'",
    )
    p.add_argument(
        "--cpus-per-run",
        type=positive_number,
        default=None,
        metavar="N",
        help=f"CPUs Ray reserves for each {what} (default 1; its threads too, unless --threads)",
    )
    p.add_argument(
        "--gpus-per-run",
        type=non_negative_number,
        default=None,
        metavar="N",
        help=f"GPUs Ray reserves for each {what} (default 0; scheduling only: edgeprune trains on the CPU)",
    )


# -- what the options name ---------------------------------------------------------------------------------------


def ray_options(args: argparse.Namespace):  # noqa: ANN201 - returns edgeprune.cluster.RayOptions | None
    """The Ray options the command line asks for (Ray imported to check it is there), or None without ``--ray``."""
    from edgeprune.cluster import LOCAL, RayOptions, import_ray

    if args.ray is None:
        if args.cpus_per_run is not None or args.gpus_per_run is not None:
            raise EdgepruneError("--cpus-per-run and --gpus-per-run need --ray")
        return None
    import_ray()
    cpus = 1.0 if args.cpus_per_run is None else args.cpus_per_run
    gpus = 0.0 if args.gpus_per_run is None else args.gpus_per_run
    return RayOptions(args.ray or LOCAL, cpus, gpus)


def model_ref(args: argparse.Namespace, **overrides: object):  # noqa: ANN201 - returns edgeprune.io.ModelRef
    """The model a command names, with its options; the library decides what it is (folder or reference)."""
    from edgeprune.io import ModelRef
    from edgeprune.refs import parse_model_args

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


def onnx_shape(args: argparse.Namespace) -> tuple[int, int, int] | None:
    """The input shape for an .onnx file: its own unless --input-size is given."""
    if args.input_size is None:
        return None
    return (args.in_channels or 3, args.input_size, args.input_size)


def load_data(args: argparse.Namespace, limit_train: int | None, limit_test: int | None, progress: bool):  # noqa: ANN201
    """The data set ``--data`` names, with the size caps, image size and validation split the options set."""
    from edgeprune.data import load_dataset

    caps = {
        "max_image_pixels": args.max_image_pixels,
        "max_file_bytes": args.max_file_bytes,
        "max_data_bytes": args.max_data_bytes,
    }
    split = {"val_fraction": getattr(args, "val_fraction", None), "seed": getattr(args, "seed", None) or 0}
    if getattr(args, "data_storage", None) == "stream":
        raise EdgepruneError(
            "--data-storage stream: only 'edgeprune train' streams tar shards; use auto, memory or mapped"
        )
    return load_dataset(
        args.data,
        limit_train,
        limit_test,
        progress=progress,
        image_size=getattr(args, "image_size", None),
        test_data=getattr(args, "test_data", None),
        storage=getattr(args, "data_storage", None) or "auto",
        **split,
        **{k: v for k, v in caps.items() if v},
    )
