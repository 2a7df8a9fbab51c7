"""``edgeprune train``: train a (pruned) model on an image data set, with checkpoints and --resume."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edgeprune.cli import options
from edgeprune.cli.options import MAX_COUNT, MAX_RATE, number, parse_number
from edgeprune.cli.outputs import OUTPUTS, prepare_out_dir
from edgeprune.errors import EdgepruneError
from edgeprune.limits import MAX_EPOCHS

# train's numbers are parsed at parse time by options.number, whose messages name the option as before
# ("--epochs must be at least 1, got '-1'")


def add(sub: argparse._SubParsersAction) -> None:
    """Register ``edgeprune train``."""
    p = sub.add_parser(
        "train",
        parents=[
            options.code(zoo_sizes=False),
            options.data(required=True, validation=True),
            options.threads(None, "; shared by the processes of a torchrun", late=True),
            options.training_log(),
            options.device(
                "training",
                extra=". Several processes: launch with 'torchrun --nproc-per-node N [--nnodes M ...] -m "
                "edgeprune train ...' (DistributedDataParallel, gloo on CPU, nccl on CUDA); --batch-size is the "
                "global batch, shared by the processes; rank 0 writes the files",
            ),
            options.output(
                "output folder (default: the model folder itself; required for a reference)",
                required=False,
                metavar="DIR",
                force="write into a non-empty --out folder",
            ),
        ],
        help="train a (pruned) model on an image data set, with checkpoints and --resume",
        description="Train a model folder written by 'edgeprune prune' (or a model built from a zoo name or your "
        "own factory, sized for the data set's classes and channels) on an image data set held in memory: random "
        "crop (4-pixel padding) and flip, SGD with Nesterov momentum and a one-cycle schedule (or RMSprop, lr 1e-3, "
        "as in the paper), label smoothing, test accuracy every epoch. Classification models only: the output must "
        "be (N, classes). Writes a checkpoint after every epoch, metrics.jsonl, train.json and the trained "
        "model.json + model.safetensors. Tar shards too large for the cache folder's free disk (or with "
        "--data-storage stream) are streamed: decoded again every epoch, no cache, resumed at epoch boundaries.",
    )
    p.add_argument("model", help=options.MODEL_HELP)
    _add_schedule(p)
    _add_distill(p)
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the checkpoint in the output folder; a finished run given a larger --epochs N is "
        "extended to N epochs, its learning-rate schedule recomputed for N (epochs done keep their rates)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_schedule(p: argparse.ArgumentParser) -> None:
    """The training run's numbers and choices (text here, parsed in run())."""
    p.add_argument("--epochs", metavar="N", required=True, type=number("--epochs", int, 1, MAX_EPOCHS),
                   help="number of epochs")  # fmt: skip
    p.add_argument("--batch-size", metavar="N", default="128", type=number("--batch-size", int, 1, MAX_COUNT),
                   help="images per step (default 128)")  # fmt: skip
    p.add_argument(
        "--optimizer", metavar="NAME", default="sgd", help="sgd (Nesterov, default) or rmsprop (the paper's)"
    )
    p.add_argument(
        "--lr",
        metavar="LR",
        default=None,
        type=number("--lr", float, None, MAX_RATE),
        help="peak learning rate (default 0.05 for sgd, 1e-3 for rmsprop)",
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
        type=number("--warmup-epochs", float, 0, MAX_EPOCHS),
        help="linear warm-up length in epochs, at most 30%% of the run (default 1)",
    )
    p.add_argument("--momentum", metavar="M", default="0.9", type=number("--momentum", float),
                   help="SGD momentum (default 0.9)")  # fmt: skip
    p.add_argument(
        "--weight-decay",
        metavar="WD",
        default="5e-4",
        type=number("--weight-decay", float, None, MAX_RATE),
        help="L2 weight decay on conv and linear weights (default 5e-4)",
    )
    p.add_argument("--label-smoothing", metavar="S", default="0.1", type=number("--label-smoothing", float),
                   help="label smoothing of the loss (default 0.1)")  # fmt: skip
    p.add_argument(
        "--augment",
        choices=["cifar", "imagenet", "none"],
        default=None,
        help="cifar: 4-pixel pad, random crop and flip; imagenet: random-resized crop (area 0.35-1, aspect "
        "3/4-4/3) and flip; none (default: cifar for images at their own size, imagenet for resized ones)",
    )
    p.add_argument("--no-augment", dest="augment", action="store_const", const="none", help="--augment none")
    p.add_argument(
        "--precision",
        metavar="P",
        default="fp32",
        help="fp32 (default) or bf16: mixed precision, faster on CPUs with AMX",
    )
    p.add_argument(
        "--seed",
        metavar="N",
        default="0",
        type=options.parse_seed,
        help="random seed: the same seed gives the same weights (default 0)",
    )


# the library's defaults (edgeprune.train.distill; a test checks they agree): that module imports torch
DEFAULT_ALPHA, DEFAULT_TEMPERATURE, MAX_TEMPERATURE = 0.9, 4.0, 100.0


def parse_temperature(text: str) -> float:
    """``--distill-temperature``: a number above 0, at most MAX_TEMPERATURE (one line naming the option)."""
    value = parse_number(text, "--distill-temperature", float, None, MAX_TEMPERATURE)
    if not value > 0:
        raise EdgepruneError(f"--distill-temperature must be above 0, got '{text}'")
    return float(value)


def _add_distill(p: argparse.ArgumentParser) -> None:
    """Distillation from a trained teacher (SPEC, "Distillation")."""
    p.add_argument(
        "--teacher",
        metavar="MODEL",
        default=None,
        help="distil from this trained model: a model folder (e.g. written by 'edgeprune train') or a reference "
        "whose code loads trained weights, with the same classes; its softened outputs on the same augmented batch "
        "join the loss: (1 - A) CE + A T^2 KL(teacher || student)",
    )
    p.add_argument(
        "--distill-alpha",
        metavar="A",
        default=None,
        type=number("--distill-alpha", float, 0, 1),
        help=f"weight of the distillation term, 0 to 1 (default {DEFAULT_ALPHA:g}, chosen by a small measurement: "
        "docs/results/distill_defaults.md)",
    )
    p.add_argument(
        "--distill-temperature",
        metavar="T",
        default=None,
        type=parse_temperature,
        help=f"softening temperature, above 0 and at most {MAX_TEMPERATURE:g} (default {DEFAULT_TEMPERATURE:g})",
    )


def _teacher(args: argparse.Namespace, data):  # noqa: ANN001, ANN202 - ImageDataset -> edgeprune.train.Teacher
    """The run's teacher checked against the data set (same classes), or None without --teacher."""
    from edgeprune.train import Distill, make_teacher

    if args.teacher is None:
        return None
    given = {"alpha": args.distill_alpha, "temperature": args.distill_temperature}
    settings = Distill(**{k: v for k, v in given.items() if v is not None})
    return make_teacher(args.teacher, data, settings, trust_code=args.trust_code)


def _config(args: argparse.Namespace):  # noqa: ANN202 - edgeprune.train.TrainConfig
    """The run's TrainConfig from the options' text, checked."""
    from edgeprune.train import TrainConfig

    return TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        optimizer=args.optimizer,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        warmup_epochs=args.warmup_epochs,
        label_smoothing=args.label_smoothing,
        seed=args.seed,
        augment=args.augment or True,  # True: the data set's default (cifar, or imagenet when resized)
        precision=args.precision,
    ).validate()


def _output(args: argparse.Namespace, model_dir: bool, main: bool) -> Path:
    """The folder the run writes: --out (prepared and locked), or the model folder itself (adopted)."""
    out = Path(args.out) if args.out else Path(args.model)
    if not main:
        return out  # rank 0 prepares the folder; the others never write to it
    if args.out and not (model_dir and out.resolve() == Path(args.model).resolve()):
        return prepare_out_dir(args.out, args.force, "train", keep=args.resume)
    OUTPUTS.adopt(out, "train")  # training in place: the model folder is the output
    return out


def _data(args: argparse.Namespace, limits: tuple[int | None, int | None], out: Path, ranks):  # noqa: ANN001, ANN202
    """The data set ``--data`` names (an ImageDataset), or a StreamSet when tar shards stream
    (:func:`edgeprune.data.stream.training_data` decides)."""
    from edgeprune.data.stream import stream_caps, training_data
    from edgeprune.train.checkpoint import recorded_stream_normalization

    refused = [
        ("--limit-train", limits[0] is not None),
        ("--limit-test", limits[1] is not None),
        ("--val-fraction", args.val_fraction is not None),
        ("--teacher", args.teacher is not None),
        (f"--device {args.device}", args.device not in ("auto", "cpu")),
        ("torchrun", ranks.distributed),
    ]
    return training_data(
        lambda: options.load_data(args, *limits, progress=not args.quiet and ranks.main),
        args.data,
        args.test_data,
        args.data_storage,
        stream_caps(args.max_image_pixels, args.max_file_bytes, args.max_data_bytes),
        normalize=recorded_stream_normalization(out) if args.resume else None,  # a resumed run keeps its numbers
        given=refused,
    )


def _fit(args: argparse.Namespace, model, data, config, out: Path, teacher):  # noqa: ANN001, ANN202
    """Train on an ImageDataset (:func:`edgeprune.train.train`) or stream a StreamSet (``train_user``)."""
    import torch

    from edgeprune.data import augment_mode, check_compatible
    from edgeprune.data.stream import StreamSet
    from edgeprune.runtime import default_threads
    from edgeprune.train import train, train_user

    common = {"resume": args.resume, "progress": not args.quiet, "log": args.log}
    if not isinstance(data, StreamSet):
        return train(model, data, config, out, threads=args.threads, device=args.device, teacher=teacher, **common)
    check_compatible(model, data)
    if not args.quiet:
        print(f"data: {data.note()}", file=sys.stderr, flush=True)
    torch.set_num_threads(args.threads or default_threads())
    loaders = data.loaders(config.batch_size, config.seed, augment_mode(config.augment, False))
    return train_user(model, *loaders, config, out, **common)


def run(args: argparse.Namespace) -> None:
    """Train a model and print its test accuracy."""
    import shutil

    import torch

    from edgeprune.io import classify, resolve_for_data
    from edgeprune.runtime import process_ranks, resolve_device
    from edgeprune.train.checkpoint import plural
    from edgeprune.train.distill import check_teacher_ref
    from edgeprune.train.logs import chance_note

    config = _config(args)
    limit_train = parse_number(args.limit_train, "--limit-train", int, 1)
    limit_test = parse_number(args.limit_test, "--limit-test", int, 1)
    ranks = process_ranks()  # torchrun's; rank 0 alone prepares, locks, writes and prints
    resolve_device(args.device, ranks.local_rank)  # an unknown or absent device fails before the data loads
    ref = options.model_ref(args)
    if args.teacher is None and (args.distill_alpha is not None or args.distill_temperature is not None):
        raise EdgepruneError("--distill-alpha and --distill-temperature need --teacher")
    if args.teacher is not None:
        check_teacher_ref(args.teacher)  # before the data set loads: a zoo name would be an untrained teacher
    named = classify(args.model)  # None for a model folder; checked before the data set loads, runs no code
    model_dir = named is None
    if named is not None and not args.out:
        what = f"a model built by {named.short}" if named.is_code else "a zoo model by name"
        raise EdgepruneError(f"--out is required when training {what}")
    out = _output(args, model_dir, ranks.main)
    data = _data(args, (limit_train, limit_test), out, ranks)  # an ImageDataset, or a StreamSet of tar shards
    if ranks.main:
        print(data.summary(), flush=True)
        if len(data.test_y) == 0:
            print("no test split (a folder of train/ alone): validation accuracy only", flush=True)
    torch.manual_seed(config.seed)  # a built model's initial weights
    model = resolve_for_data(ref, data.num_classes, data.input_shape(), data.name).model
    teacher = _teacher(args, data)  # after the model: its initial weights do not depend on a teacher
    if teacher is not None and ranks.main:
        d = teacher.settings
        print(f"distilling from {teacher.reference} (alpha {d.alpha:g}, temperature {d.temperature:g})", flush=True)
    report = Path(args.model) / "report.json"
    if ranks.main and model_dir and report.is_file() and not args.resume and not (out / "report.json").exists():
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy2(report, out / "report.json")
    try:
        result = _fit(args, model, data, config, out, teacher)
    except KeyboardInterrupt:
        if ranks.main:
            epoch = "; a stream resumes at the start of the epoch it was in" if not hasattr(data, "train_x") else ""
            sys.stderr.write(
                f"edgeprune train: stopped; continue with the same command and --resume (checkpoint in {out}/){epoch}\n"
            )
        raise
    if ranks.main:
        scores = (("validation", result.val_accuracy), ("test", result.test_accuracy))
        shown = ", ".join(f"{name} accuracy {100 * acc:.2f}%" for name, acc in scores if acc is not None)
        epochs = plural(len(result.history), "epoch")
        print(f"{shown} after {epochs} ({result.train_seconds:.1f} s of training); wrote {out}/")
        if result.test_accuracy is not None:
            note = chance_note(result.test_accuracy, data.num_classes, len(data.test_y))
        else:
            note = chance_note(result.val_accuracy, data.num_classes, len(data.val_y), "validation")
        if note is not None:
            print(note)
