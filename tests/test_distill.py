"""Distillation (train --teacher, compare --distill) and honest times (load marks, no '± 0.00' of one seed)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import MINI
from helpers import assert_one_line_error, graded_dataset, one_line_error, run_cli, small_model
from safetensors import safe_open
from torch import nn

from edgeprune import pipelines
from edgeprune.cli import train as train_cli
from edgeprune.errors import EdgepruneError
from edgeprune.files import tensors_digest
from edgeprune.io import load, save
from edgeprune.records import RunRecord, check_record
from edgeprune.train import (
    CHECKPOINT_FILE,
    Distill,
    TrainConfig,
    TrainStep,
    busy,
    distill,
    distill_loss,
    make_teacher,
    train,
)
from edgeprune.train import loop as train_loop

CLASSES = 4


@pytest.fixture(scope="module")
def data():
    """A small data set a net can partly learn (brightness by class)."""
    return graded_dataset(n_train=64, n_test=32, classes=CLASSES)


@pytest.fixture(scope="module")
def teacher_dir(data, tmp_path_factory):
    """A tiny CNN trained a few epochs on ``data``, saved as a model folder."""
    model = small_model(seed=1, num_classes=CLASSES)
    train(model, data, quick(epochs=4), progress=False, threads=1)
    path = tmp_path_factory.mktemp("teacher") / "model"
    save(model, path, data.input_shape())
    return path


def quick(**kwargs) -> TrainConfig:
    return TrainConfig(**{"epochs": 3, "batch_size": 16, "seed": 0, **kwargs})


def weights_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# -- the loss ------------------------------------------------------------------------------------------------------


def _by_hand(student: np.ndarray, teacher: np.ndarray, y: np.ndarray, alpha: float, t: float) -> float:
    """(1 - a) CE + a T^2 KL(softmax(teacher / T) || softmax(student / T)), in float64 numpy, from the SPEC."""

    def softmax(z):
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    ce = -np.mean(np.log(softmax(student)[np.arange(len(y)), y]))
    p_t, p_s = softmax(teacher / t), softmax(student / t)
    kl = np.mean(np.sum(p_t * (np.log(p_t) - np.log(p_s)), axis=1))
    return (1 - alpha) * ce + alpha * t * t * kl


@pytest.mark.parametrize(("alpha", "temperature"), [(0.0, 1.0), (0.5, 4.0), (0.9, 2.0), (1.0, 7.5)])
def test_loss_matches_a_hand_computation_of_the_formula(alpha, temperature):
    g = torch.Generator().manual_seed(3)
    student = torch.randn(6, 5, generator=g, dtype=torch.float64) * 3
    teacher = torch.randn(6, 5, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, 5, (6,), generator=g)
    got = distill_loss(student, teacher, F.cross_entropy(student, y), alpha, temperature)
    expected = _by_hand(student.numpy(), teacher.numpy(), y.numpy(), alpha, temperature)
    assert float(got) == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_loss_is_the_cross_entropy_when_teacher_and_student_agree():
    logits = torch.randn(4, 3)
    y = torch.tensor([0, 1, 2, 0])
    ce = F.cross_entropy(logits, y)
    assert float(distill_loss(logits, logits.clone(), ce, 0.7, 3.0)) == pytest.approx(0.3 * float(ce), abs=1e-6)


class Recorder(nn.Module):
    """A model wrapper that keeps the inputs of its forward passes."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.seen = inner, []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.inner(x)


@pytest.mark.slow
def test_a_step_uses_the_formula_with_the_teacher_on_the_same_augmented_batch(data):
    """The step's loss is the SPEC's formula of the student's and teacher's logits on the student's very batch."""
    config = quick(label_smoothing=0.0)
    student = Recorder(small_model(seed=2, num_classes=CLASSES))
    before = Recorder(small_model(seed=2, num_classes=CLASSES))
    before.load_state_dict(student.state_dict())
    guide = make_teacher(Recorder(small_model(seed=1, num_classes=CLASSES)), data, Distill(0.6, 3.0))
    guide.model.seen.clear()  # the class check's forward pass
    step = TrainStep(student, data, config, torch.Generator().manual_seed(0), teacher=guide)
    index = torch.arange(16)
    loss, _ = step(index, 0.01)
    x = student.seen[0]
    assert len(guide.model.seen) == 1 and torch.equal(guide.model.seen[0], x)  # the same augmented batch
    assert not guide.model.training  # inference: eval mode
    with torch.no_grad():
        s = before.train()(x).double().numpy()  # the student's logits before the update, in training mode
        t = guide.model.inner(x).double().numpy()
    y = data.train_y[index].numpy()
    assert float(loss) == pytest.approx(_by_hand(s, t, y, 0.6, 3.0), rel=1e-4)


# -- training with a teacher ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_loss_falls_with_a_teacher_which_stays_untouched(data, teacher_dir, tmp_path):
    teacher = load(teacher_dir)
    digest = tensors_digest(teacher.state_dict())
    student = small_model(seed=2, num_classes=CLASSES)
    result = train(student, data, quick(epochs=6), tmp_path / "run", progress=False, threads=1, teacher=teacher)
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < 0.8 * losses[0], losses
    assert tensors_digest(teacher.state_dict()) == digest and not teacher.training  # never trained
    summary = json.loads((tmp_path / "run" / "train.json").read_text())
    assert summary["distill"] == {"alpha": distill.DEFAULT_ALPHA, "temperature": distill.DEFAULT_TEMPERATURE,
                                  "teacher": "a TinyCNN module", "teacher_sha256": digest}  # fmt: skip


@pytest.mark.slow
def test_interrupted_distilled_run_resumes_bit_identically(data, teacher_dir, tmp_path):
    settings = Distill(0.7, 3.0)
    config = quick()
    whole = small_model(seed=2, num_classes=CLASSES)
    train(whole, data, config, tmp_path / "whole", progress=False, threads=1, teacher=str(teacher_dir),
          distill=settings)  # fmt: skip

    def stop_after_first(record):
        if record["epoch"] == 1:
            raise KeyboardInterrupt

    part = small_model(seed=2, num_classes=CLASSES)
    with pytest.raises(KeyboardInterrupt):
        train(part, data, config, tmp_path / "part", progress=False, threads=1, teacher=str(teacher_dir),
              distill=settings, callback=stop_after_first)  # fmt: skip
    with safe_open(str(tmp_path / "part" / CHECKPOINT_FILE), "pt") as f:
        state = json.loads(f.metadata()["state"])
    assert state["distill"]["teacher_sha256"] == tensors_digest(load(teacher_dir).state_dict())
    assert (state["distill"]["alpha"], state["distill"]["temperature"]) == (0.7, 3.0)
    resumed = small_model(seed=99, num_classes=CLASSES)  # all state comes from the checkpoint
    result = train(resumed, data, config, tmp_path / "part", resume=True, progress=False, threads=1,
                   teacher=str(teacher_dir), distill=settings)  # fmt: skip
    assert weights_equal(whole, resumed) and [h["epoch"] for h in result.history] == [1, 2, 3]


def test_resume_with_another_teacher_or_settings_is_refused(data, teacher_dir, tmp_path):
    out = tmp_path / "run"
    first = small_model(seed=2, num_classes=CLASSES)
    train(first, data, quick(epochs=1), out, progress=False, threads=1, teacher=str(teacher_dir))
    other = small_model(seed=7, num_classes=CLASSES)

    def resume(**kwargs):
        return lambda: train(small_model(seed=2, num_classes=CLASSES), data, quick(epochs=1), out, resume=True,
                             progress=False, threads=1, **kwargs)  # fmt: skip

    assert_one_line_error(resume(teacher=other), "other distillation teacher weights", "start over")
    assert_one_line_error(resume(teacher=str(teacher_dir), distill=Distill(0.3)), "other distillation alpha")
    assert_one_line_error(resume(), "made distilled from", "this run has none")
    assert_one_line_error(lambda: train(other, data, quick(), distill=Distill()), "need a teacher")
    given = make_teacher(other, data, Distill(0.3, 2.0))
    assert_one_line_error(lambda: train(other, data, quick(), teacher=given, distill=Distill(0.9)), "its own")


def test_a_teacher_with_other_classes_is_refused_in_one_line_before_training(data, tmp_path):
    wide = small_model(seed=1, num_classes=CLASSES + 3)
    out = tmp_path / "run"
    student = small_model(seed=2, num_classes=CLASSES)
    assert_one_line_error(lambda: train(student, data, quick(), out, progress=False, teacher=wide),
                          f"the teacher has {CLASSES + 3} outputs", f"has {CLASSES} classes")  # fmt: skip
    assert not out.exists()  # nothing trained, nothing written
    assert_one_line_error(lambda: make_teacher("vgg16", data), "needs trained weights")


@pytest.mark.parametrize(("alpha", "temperature", "message"), [
    (1.5, 4.0, "alpha must be at most 1"), (-0.1, 4.0, "alpha must be at least 0"), (float("nan"), 4.0, "finite"),
    (0.5, 0.0, "temperature must be above 0"), (0.5, -2.0, "above 0"), (0.5, 1e9, "at most 100"),
])  # fmt: skip
def test_bad_distillation_settings(alpha, temperature, message):
    assert_one_line_error(lambda: Distill(alpha, temperature).validate(), message)


# -- the command line ----------------------------------------------------------------------------------------------


def test_cli_defaults_are_the_library_s():
    assert (train_cli.DEFAULT_ALPHA, train_cli.DEFAULT_TEMPERATURE, train_cli.MAX_TEMPERATURE) == (
        distill.DEFAULT_ALPHA, distill.DEFAULT_TEMPERATURE, distill.MAX_TEMPERATURE)  # fmt: skip


@pytest.mark.parametrize(("args", "message"), [
    (["--teacher", "T", "--distill-alpha", "1.5"], "--distill-alpha must be at most 1, got '1.5'"),
    (["--teacher", "T", "--distill-alpha", "x"], "--distill-alpha must be a number, got 'x'"),
    (["--teacher", "T", "--distill-temperature", "0"], "--distill-temperature must be above 0, got '0'"),
    (["--teacher", "T", "--distill-temperature", "inf"], "--distill-temperature must be a finite number"),
    (["--distill-alpha", "0.5"], "--distill-alpha and --distill-temperature need --teacher"),
    (["--teacher", "vgg16"], "--teacher vgg16: a teacher needs trained weights"),
])  # fmt: skip
def test_cli_distillation_options_are_checked(capsys, tmp_path, teacher_dir, args, message):
    args = [str(teacher_dir) if a == "T" else a for a in args]
    code, _, err = run_cli(capsys, "train", "tiny", "--data", MINI, "--epochs", "1", "--out", tmp_path / "o", *args)
    assert message in one_line_error(err, code)
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_cli_trains_with_a_teacher_and_refuses_one_of_other_classes(capsys, tmp_path):
    base = ["--data", MINI, "--limit-train", 64, "--limit-test", 32, "--batch-size", 32, "--quiet", "--threads", 1]
    code, _, err = run_cli(capsys, "train", "tiny", "--epochs", 1, "--out", tmp_path / "t", *base)
    assert code == 0, err
    code, out, err = run_cli(capsys, "train", "tiny", "--epochs", 1, "--out", tmp_path / "s", "--teacher",
                             tmp_path / "t", "--distill-alpha", 0.3, "--distill-temperature", 2, *base)  # fmt: skip
    assert code == 0, err
    assert f"distilling from {tmp_path / 't'} (alpha 0.3, temperature 2)" in out
    recorded = json.loads((tmp_path / "s" / "train.json").read_text())["distill"]
    assert recorded["teacher_sha256"] == tensors_digest(load(tmp_path / "t").state_dict())
    save(small_model(num_classes=3), tmp_path / "three")
    code, _, err = run_cli(capsys, "train", "tiny", "--epochs", 1, "--out", tmp_path / "x", "--teacher",
                           tmp_path / "three", *base)  # fmt: skip
    assert "the teacher has 3 outputs, the data set 'cifar10-mini' has 10 classes" in one_line_error(err, code)


# -- compare --distill, and honest times -------------------------------------------------------------------------


def _loaded_after_first(monkeypatch) -> None:
    """A fake machine: quiet for the first epoch trained (the full model), 7.5 load on 2 cores after it."""
    calls = []

    def fake() -> dict:
        calls.append(1)
        return {"load_1m": 0.4 if len(calls) == 1 else 7.5, "cores": 2}

    monkeypatch.setattr(train_loop, "machine_load", fake)


@pytest.mark.slow
def test_compare_distill_adds_the_distilled_rows_and_marks_loaded_times(capsys, tmp_path, monkeypatch):
    _loaded_after_first(monkeypatch)
    argv = ["compare", "tiny", "--data", MINI, "--target", "flops=0.5", "--modes", "flops", "--epochs", 1,
            "--finetune-epochs", 1, "--limit-train", 128, "--limit-test", 64, "--batch-size", 64, "--baselines", "l1",
            "--distill", "--out", tmp_path / "c", "--quiet", "--threads", 1]  # fmt: skip
    code, out, err = run_cli(capsys, *argv, "--distill-alpha", 0.8)
    assert code == 0, err
    rows = {r["method"]: r for r in csv.DictReader((tmp_path / "c" / "compare.csv").open())}
    assert list(rows) == ["direct", "l1", "l1+kd", "direct+kd"]
    assert rows["l1+kd"]["flops_reduction_pct"] == rows["l1"]["flops_reduction_pct"]  # the same pruned network
    assert rows["direct+kd"]["params_reduction_pct"] == rows["direct"]["params_reduction_pct"]
    for method in ("l1+kd", "direct+kd"):
        saved = json.loads((tmp_path / "c" / f"{method}-flops-s0" / "record.json").read_text())
        assert saved["key"]["distill"] == {"alpha": 0.8, "temperature": distill.DEFAULT_TEMPERATURE,
                                           "teacher": "full model"}  # fmt: skip
        assert json.loads((tmp_path / "c" / f"{method}-flops-s0" / "train.json").read_text())["distill"]["alpha"] == 0.8
    assert "distill" not in json.loads((tmp_path / "c" / "l1-flops-s0" / "record.json").read_text())["key"]
    md = (tmp_path / "c" / "compare.md").read_text()
    assert "±" not in md and "±" not in out  # one seed: values alone
    assert all(r["under_load"] == "True" and r["train_seconds_std"] == "" for r in rows.values())
    table = [line for line in md.splitlines() if line.startswith("| ")][1:]
    assert len(table) == 4 and all(line.count("†") == 3 for line in table)  # training, steady time and ratio
    assert "training 0 s\n" in md or "training 1 s\n" in md  # the baseline's quiet epoch: not marked
    assert "† taken under load" in md and "highest 7.5 on 2 cores" in md
    summary = json.loads((tmp_path / "c" / "compare.json").read_text())
    assert summary["baseline"]["under_load"] is False and summary["baseline"]["peak_load"] == [0.4, 2]
    # resuming with other distillation settings does not mix their records up
    code, _, err = run_cli(capsys, *argv, "--distill-alpha", 0.5, "--resume")
    assert "l1+kd-flops-s0/record.json: recorded with other settings (distill:" in one_line_error(err, code)


def _record(method: str, seconds: float, load: float | None, seed: int = 0) -> RunRecord:
    epoch = {"epoch": 1, "test_acc": 0.5, "epoch_seconds": seconds, "stage": 0}
    if load is not None:
        epoch.update(load_1m=load, cores=4)
    return RunRecord(method, "flops" if method != "full" else "-", seed, 0.5, 0.5, 10, 10, 40, seconds, 0.0, 1,
                     [epoch], [{"hostname": "here", "ray_node_id": None}])  # fmt: skip


def test_only_times_taken_under_load_are_marked():
    """4 cores: a load of 4.5 is the run's own (not marked), 4.6 and above is not."""
    settings = pipelines.CompareSettings(model="tiny", targets={"flops": 0.5}, baselines=("l1", "uniform"))
    baselines = [_record("full", 4.0, 4.5)]
    records = [_record("direct", 2.0, 4.5), _record("l1", 6.0, None), _record("uniform", 2.0, 9.25)]
    summary = pipelines.summarise(records, baselines, settings)
    rows = {r["method"]: r for r in summary["rows"]}
    assert [rows[m]["under_load"] for m in ("direct", "l1", "uniform")] == [False, False, True]
    assert rows["l1"]["peak_load"] is None and rows["uniform"]["peak_load"] == [9.25, 4]
    md = pipelines.markdown_table(summary)
    lines = {line.split(" | ")[0][2:]: line for line in md.splitlines() if line.startswith("| ")}
    assert "†" not in lines["direct"] and "†" not in lines["l1"]
    assert "| 2† | 2† | 0.33† |" in lines["uniform"]
    assert "highest 9.2 on 4 cores" in md and "training 4 s\n" in md
    quiet = pipelines.summarise(records[:2], baselines, settings)
    assert "under load" not in pipelines.markdown_table(quiet)


def test_several_seeds_keep_their_spread_and_one_seed_shows_none():
    settings = pipelines.CompareSettings(model="tiny", targets={"flops": 0.5}, baselines=(), seeds=(0, 1))
    baselines = [_record("full", 4.0, None, 0), _record("full", 6.0, None, 1)]
    records = [_record("direct", 2.0, None, 0), _record("direct", 4.0, None, 1)]
    md = pipelines.markdown_table(pipelines.summarise(records, baselines, settings))
    assert "| 3 ± 1 |" in md and "accuracy 50.00% ± 0.00" in md
    one = pipelines.markdown_table(pipelines.summarise(records[:1], baselines[:1], settings))
    assert "±" not in one and "| 50.00 | +0.00 |" in one and "accuracy 50.00%," in one


def test_epochs_record_the_machine_load(data, monkeypatch):
    monkeypatch.setattr(train_loop, "machine_load", lambda: {"load_1m": 3.25, "cores": 2})
    result = train(small_model(num_classes=CLASSES), data, quick(epochs=1), progress=False, threads=1)
    assert (result.history[0]["load_1m"], result.history[0]["cores"]) == (3.25, 2)
    assert busy.loaded_epochs(result.history) == result.history  # 3.25 > 2 + 0.5
    assert busy.loaded_epochs([{"load_1m": 2.5, "cores": 2}]) == []
    real = busy.machine_load()
    assert real == {} or (real["load_1m"] >= 0 and real["cores"] >= 1)


def test_records_of_distilled_runs_and_load_readings_are_accepted_and_checked():
    record = _record("direct+kd", 2.0, 1.5)
    data = {k: getattr(record, k) for k in RunRecord.__dataclass_fields__}
    assert check_record(data) == record
    for bad in ({"load_1m": float("nan")}, {"cores": 0}, {"cores": 1.5}):
        broken = dict(data, history=[dict(data["history"][0], **bad)])
        with pytest.raises(ValueError, match="history"):
            check_record(broken)
    with pytest.raises(ValueError, match="method"):
        check_record(dict(data, method="l1+kd2"))


def test_compare_distill_settings_are_checked():
    settings = pipelines.CompareSettings(model="tiny", targets={"flops": 0.5}, distill=True, distill_temperature=0)
    with pytest.raises(EdgepruneError, match="temperature must be above 0"):
        pipelines.run_comparison(settings, graded_dataset(), "/nonexistent/never-written", progress=False)
