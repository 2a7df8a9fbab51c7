"""Knowledge distillation (Hinton et al. 2015): a trained teacher's softened outputs join the student's loss.

loss = (1 - a) CE(student, y) + a T^2 KL(softmax(teacher / T) || softmax(student / T))  (SPEC, "Distillation").

The teacher runs in eval mode under ``torch.inference_mode`` on the same augmented, normalised batch as the
student, on the same device (and autocast precision); it is never trained and never changes the random streams,
so a distilled run resumes bit-identically. A run records a, T, the teacher's reference and the SHA-256 of its
weights (checkpoint, ``train.json``, a comparison's run records), and a resume with another teacher or other
settings is refused. CE is the run's own loss (its label smoothing included; with none, the formula exactly).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from edgeprune.data import ImageDataset
from edgeprune.errors import EdgepruneError, first_line
from edgeprune.files import tensors_digest
from edgeprune.validate import check_finite

# chosen by a small measurement on cifar10-mini (docs/results/distill_defaults.md)
DEFAULT_ALPHA = 0.9
DEFAULT_TEMPERATURE = 4.0
MAX_TEMPERATURE = 100.0  # far above any use (Hinton et al. used 1-20); T^2 stays a sane factor
TEACHER_NEEDS_WEIGHTS = (
    "a teacher needs trained weights and a zoo name builds an untrained model: give a model folder (written by "
    "'edgeprune train') or a reference whose code loads trained weights"
)


@dataclass(frozen=True)
class Distill:
    """The distillation settings: ``alpha`` (the KL term's share, 0..1) and ``temperature`` (T > 0)."""

    alpha: float = DEFAULT_ALPHA
    temperature: float = DEFAULT_TEMPERATURE

    def validate(self) -> Distill:
        """Check both numbers; a one-line EdgepruneError names the first bad one."""
        check_finite(self.alpha, "distillation alpha", low=0.0, high=1.0)
        check_finite(self.temperature, "distillation temperature", high=MAX_TEMPERATURE)
        if not self.temperature > 0:
            raise EdgepruneError(f"distillation temperature must be above 0, got {self.temperature:g}")
        return self


def distill_loss(
    student: torch.Tensor, teacher: torch.Tensor, ce: torch.Tensor, alpha: float, temperature: float
) -> torch.Tensor:
    """``(1 - alpha) ce + alpha T^2 KL(softmax(teacher / T) || softmax(student / T))``, the KL averaged per image."""
    t = float(temperature)
    log_p_student = F.log_softmax(student / t, dim=1)
    log_p_teacher = F.log_softmax(teacher / t, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return (1.0 - alpha) * ce + alpha * t * t * kl


def check_teacher_ref(text: str | Path) -> None:
    """Refuse, before anything loads, a teacher named by a zoo name (it would be untrained) or that names nothing."""
    from edgeprune.io import classify

    parsed = classify(text)
    if parsed is not None and not parsed.is_code:
        raise EdgepruneError(f"--teacher {text}: {TEACHER_NEEDS_WEIGHTS}")


class Teacher:
    """A frozen teacher: its module (eval mode), what named it, its weights' SHA-256, and the settings."""

    def __init__(self, model: nn.Module, reference: str, distill: Distill):
        self.model = model.eval()
        self.reference = reference
        self.settings = distill
        self.sha256 = tensors_digest(model.state_dict())
        self.home = next((t.device for t in model.parameters()), torch.device("cpu"))

    def signature(self) -> dict:
        """What a run records of its distillation: a, T, the teacher's reference and weights' SHA-256."""
        return {
            "alpha": self.settings.alpha,
            "temperature": self.settings.temperature,
            "teacher": self.reference,
            "teacher_sha256": self.sha256,
        }

    def to(self, device: torch.device) -> Teacher:
        """The teacher on ``device``, channels-last as the student (moved in place)."""
        self.model.to(device, memory_format=torch.channels_last).eval()
        return self

    def release(self) -> None:
        """Move the teacher back to the device it came from, in the default memory layout."""
        self.model.to(self.home, memory_format=torch.contiguous_format)

    def loss(self, student: torch.Tensor, x: torch.Tensor, ce: torch.Tensor, bf16: bool = False) -> torch.Tensor:
        """The distillation loss of ``student``'s logits on batch ``x`` whose cross-entropy is ``ce``."""
        with torch.inference_mode(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = self.model(x).float()
        # an inference tensor cannot be saved for backward: a plain copy is, and it carries no graph
        return distill_loss(student, logits.clone(), ce, self.settings.alpha, self.settings.temperature)


def _check_outputs(model: nn.Module, data: ImageDataset) -> None:
    """The teacher takes the data's images and gives one output per class, else one line."""
    c, h, w = data.input_shape()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        with torch.inference_mode():
            out = model.eval()(torch.zeros(2, c, h, w, device=device))
    except RuntimeError as e:
        raise EdgepruneError(f"the teacher cannot take the data set's {c}x{h}x{w} images ({first_line(e)})") from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise EdgepruneError(f"the teacher must return (N, classes) logits, it returns {shape}")
    if out.shape[1] != data.num_classes:
        raise EdgepruneError(
            f"the teacher has {out.shape[1]} outputs, the data set '{data.name}' has {data.num_classes} classes: "
            "a teacher must have the same classes"
        )


def make_teacher(
    teacher: nn.Module | str | Path, data: ImageDataset, distill: Distill | None = None, trust_code: bool = False
) -> Teacher:
    """The teacher a run names (a module, a model folder or a code reference), checked against ``data``."""
    from edgeprune.io import ModelRef, resolve_for_data

    settings = (distill or Distill()).validate()
    if isinstance(teacher, nn.Module):
        model, reference = teacher, f"a {type(teacher).__name__} module"
    else:
        check_teacher_ref(teacher)
        ref = ModelRef(str(teacher), trust_code=trust_code)
        model, reference = resolve_for_data(ref, data.num_classes, data.input_shape(), data.name).model, str(teacher)
    _check_outputs(model, data)
    return Teacher(model, reference, settings)


def teacher_for(
    teacher: nn.Module | str | Path | Teacher | None, data: ImageDataset, distill: Distill | None = None
) -> Teacher | None:
    """What ``train(..., teacher=, distill=)`` distils from: None without a teacher, a :class:`Teacher` as given
    (it carries its own settings), else :func:`make_teacher` of the module or reference with ``distill``."""
    if teacher is None:
        if distill is not None:
            raise EdgepruneError("distillation settings need a teacher")
        return None
    if isinstance(teacher, Teacher):
        if distill is not None and distill != teacher.settings:
            raise EdgepruneError("a Teacher carries its own distillation settings; give distill with a module or path")
        return teacher
    return make_teacher(teacher, data, distill)


def check_same_teacher(path: Path, saved: dict, now: dict | None) -> None:
    """Refuse to resume checkpoint ``path`` (its JSON state ``saved``) with another teacher or other settings."""
    before = saved.get("distill")
    if before is None and now is None:
        return
    if before is None or now is None:
        made = "without a teacher" if before is None else f"distilled from {before.get('teacher')!r}"
        this = "has one" if now is not None else "has none"
        raise EdgepruneError(f"{path}: made {made}, this run {this}; resume with the same teacher or start over")
    if not isinstance(before, dict):
        raise EdgepruneError(f"{path}: checkpoint 'distill' must be an object; delete it or train without --resume")
    for key, what in (("teacher_sha256", "teacher weights"), ("alpha", "alpha"), ("temperature", "temperature")):
        if before.get(key) != now[key]:
            raise EdgepruneError(
                f"{path}: made with other distillation {what} ({str(before.get(key))[:16]} then, "
                f"{str(now[key])[:16]} now); resume with the same teacher and settings or start over"
            )


__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_TEMPERATURE",
    "MAX_TEMPERATURE",
    "Distill",
    "Teacher",
    "check_same_teacher",
    "check_teacher_ref",
    "distill_loss",
    "make_teacher",
    "teacher_for",
]
