"""Fast, resumable CPU training of a (pruned) model on an in-memory image data set.

The whole training split stays in memory as uint8, stored channels-last (NHWC). Each step draws a
batch of indices from a seeded ``torch.Generator``; one gather reads the batch with a random
4-pixel-padded crop and horizontal flip already applied (index arithmetic, no per-image loop), the
result is converted to float and normalised on the fly, already in channels-last layout, which is
what the model is converted to as well. The optimiser is SGD with Nesterov momentum (or RMSprop,
lr 1e-3, as in the paper) with a per-step learning-rate schedule: linear warm-up, then linear
("onecycle"), cosine, or no ("constant") decay. The loss uses label smoothing.

After every epoch the test split is evaluated and, when an output folder is given, a checkpoint is
written atomically as one safetensors file: model and optimiser tensors plus both RNG states as
tensors, everything else (epoch, step, history, config) as JSON in its metadata; no pickle. The
metadata also holds SHA-256 checksums of the tensors and of the JSON state; resuming verifies them and
the state's schema before it changes or writes anything (a corrupt checkpoint is a one-line error), then
restores all of it, so an interrupted and resumed run ends with exactly the weights of an
uninterrupted one. ``metrics.jsonl`` gets one line per epoch, ``train.json`` the final summary
(including the normalisation the model expects), and the trained weights are saved with
:func:`edgeprune.io.save` as ``model.json`` + ``model.safetensors``.

Devices: ``train(..., device=...)`` runs on ``cpu`` (the default), ``cuda``, ``mps`` or ``auto`` (CUDA, else
MPS, else the CPU). The uint8 images go to the device once and crops, flips and normalisation run there; every
random draw still comes from the CPU generator, so the data order and augmentation do not depend on the device,
and on the CPU nothing changes.

Processes: launched by ``torchrun`` (RANK, WORLD_SIZE, LOCAL_RANK set; WORLD_SIZE > 1), ``train`` joins the job's
process group (nccl on CUDA, gloo otherwise) and trains with DistributedDataParallel. ``batch_size`` stays the
global batch: every process draws the same permutation and the same crop and flip parameters for the whole batch
and takes its contiguous share (:meth:`edgeprune.runtime.Ranks.part`), so images, order and augmentation are those of a
one-process run, and the generator state is the same in every process. Gradients are averaged (weighted by
share when the batch does not divide evenly); BatchNorm normalises each share on its own, and rank 0's running
statistics are given to all at every epoch end. Rank 0 alone writes the checkpoint (the unwrapped model's
weights, its RNG states, the world size), the metrics and the final model, and on resume verifies and restores
the checkpoint and sends the optimiser and generator state to the others (over the job's own process group).
A checkpoint resumes with any number of processes; a change is said.
"""

import sys
import types
from pathlib import Path

from torch import nn

from edgeprune.data import ImageDataset
from edgeprune.data.progress import Progress
from edgeprune.errors import EdgepruneError
from edgeprune.train.checkpoint import (
    CHECKPOINT_FILE,
    CHECKPOINT_FORMAT,
    Checkpoint,
    describe_difference,
    load_checkpoint,
    read_checkpoint,
    restore_checkpoint,
    save_checkpoint,
)
from edgeprune.train.distill import DEFAULT_ALPHA, DEFAULT_TEMPERATURE, Distill, Teacher, distill_loss, make_teacher
from edgeprune.train.loop import (
    DEFAULT_LR,
    METRICS_FILE,
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULES,
    SUMMARY_FILE,
    TrainConfig,
    TrainResult,
    TrainStep,
    data_signature,
    evaluate,
    lr_at,
    make_optimizer,
    train,
)
from edgeprune.train.source import train_user


def fit(
    model: nn.Module,
    data: object,
    test_data: object = None,
    config: TrainConfig | None = None,
    out_dir: str | Path | None = None,
    **options: object,
) -> TrainResult:
    """Train on an edgeprune data set (``test_data`` None) or a torch Dataset / DataLoader and its test data.

    ``edgeprune.train(model, train_data, test_data, config, out_dir, ...)`` calls this. The user's data go to
    :func:`edgeprune.train.source.train_user` (its own transforms; resume at epoch ends); an ImageDataset to
    :func:`train`. ``config`` defaults to ``TrainConfig(epochs=10)``; ``options`` are the keyword options of either.
    """
    config = config if config is not None else TrainConfig(epochs=10)
    if isinstance(test_data, TrainConfig):  # fit(model, image_dataset, config, ...)
        config, test_data = test_data, None
    if test_data is None:
        if isinstance(data, ImageDataset):
            return train(model, data, config, out_dir, **options)
        raise EdgepruneError(
            "training on your own Dataset or DataLoader needs test data too: train(model, train, test)"
        )
    return train_user(model, data, test_data, config, out_dir, **options)


class _CallableModule(types.ModuleType):
    """``edgeprune.train`` itself is callable: ``edgeprune.train(model, train_data, test_data, ...)`` is :func:`fit`."""

    def __call__(self, *args: object, **kwargs: object) -> TrainResult:
        """:func:`fit`."""
        return fit(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = [
    "CHECKPOINT_FILE",
    "CHECKPOINT_FORMAT",
    "DEFAULT_ALPHA",
    "DEFAULT_LR",
    "DEFAULT_TEMPERATURE",
    "METRICS_FILE",
    "OPTIMIZERS",
    "PRECISIONS",
    "SCHEDULES",
    "SUMMARY_FILE",
    "Checkpoint",
    "Distill",
    "Progress",
    "Teacher",
    "TrainConfig",
    "TrainResult",
    "TrainStep",
    "data_signature",
    "describe_difference",
    "distill_loss",
    "evaluate",
    "fit",
    "load_checkpoint",
    "lr_at",
    "make_optimizer",
    "make_teacher",
    "read_checkpoint",
    "restore_checkpoint",
    "save_checkpoint",
    "train",
    "train_user",
]
