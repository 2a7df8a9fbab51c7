"""Training's logs and messages: CSV / TensorBoard / MLflow sinks, the tqdm bar, extending a finished run,
the learning rate in train.json, and the chance-level line."""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from pathlib import Path

import pytest
from helpers import graded_dataset, run_cli, small_model

from edgeprune.errors import EdgepruneError
from edgeprune.train import Progress, TrainConfig, lr_at, train
from edgeprune.train.checkpoint import plural
from edgeprune.train.logs import chance_note, check_sinks

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT / "data" / "cifar10-mini.tar.gz"


def quick(**kwargs) -> TrainConfig:
    return TrainConfig(**{"epochs": 2, "batch_size": 16, "seed": 0, **kwargs})


def trained(tmp_path: Path, log: list[str], name: str = "run", **kwargs):
    data = graded_dataset(n_train=48, n_test=16, classes=4, shape=(3, 8, 8))
    model = small_model(num_classes=4)
    result = train(model, data, quick(**kwargs), tmp_path / name, progress=False, threads=1, log=log)
    return result, data


def test_csv_sink_holds_one_row_per_epoch_with_the_history(tmp_path):
    result, _ = trained(tmp_path, ["csv"])
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for row, record in zip(rows, result.history, strict=True):
        for key in ("loss", "train_acc", "test_acc", "lr", "images_per_s"):
            assert float(row[key]) == pytest.approx(record[key], rel=1e-12)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [float(r["loss"]) for r in rows] == [m["loss"] for m in metrics]


def test_tensorboard_event_files_hold_the_logged_values(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result, _ = trained(tmp_path, ["tensorboard"])
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    for key in ("loss", "test_acc", "lr", "images_per_s"):
        events = acc.Scalars(key)
        assert [e.step for e in events] == [1, 2]
        expected = [r[key] for r in result.history]
        assert [e.value for e in events] == pytest.approx(expected, rel=1e-6)  # stored as float32
    settings = acc.Tensors("settings/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "config.lr: 0.05" in settings and "data.name: synthetic" in settings and "model: " in settings


def test_mlflow_run_holds_the_metrics_and_settings(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    result, data = trained(tmp_path, ["mlflow"], lr=0.02)
    run_id = json.loads((tmp_path / "run" / "mlflow_run.json").read_text())["run_id"]
    client = MlflowClient(tracking_uri=(tmp_path / "run" / "mlruns").resolve().as_uri())
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    loss = sorted(client.get_metric_history(run_id, "loss"), key=lambda m: m.step)
    assert [m.step for m in loss] == [1, 2]
    assert [m.value for m in loss] == pytest.approx([r["loss"] for r in result.history], rel=1e-12)
    params = run.data.params
    assert params["config.lr"] == "0.02" and params["config.epochs"] == "2"
    assert params["data.name"] == data.name and params["data.classes"] == json.dumps(data.classes)
    model = small_model(num_classes=4)  # a resumed (here: extended) run continues the same MLflow run
    more = train(model, data, quick(epochs=3, lr=0.02), tmp_path / "run", resume=True, progress=False, log=["mlflow"])
    loss = sorted(client.get_metric_history(run_id, "loss"), key=lambda m: m.step)
    assert [m.value for m in loss] == pytest.approx([r["loss"] for r in more.history], rel=1e-12)
    assert len(client.search_runs([run.info.experiment_id])) == 1


def test_a_missing_sink_package_and_an_unknown_sink_are_one_line_errors(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import fails as when it is not installed
    with pytest.raises(EdgepruneError, match=r"pip install 'edgeprune\[tensorboard\]'") as e:
        check_sinks(["csv", "tensorboard"])
    assert "\n" not in str(e.value)
    with pytest.raises(EdgepruneError, match="unknown log 'wandb'"):
        check_sinks(["wandb"])
    with pytest.raises(EdgepruneError, match="output folder"):
        train(
            small_model(num_classes=4),
            graded_dataset(shape=(3, 8, 8)),
            quick(epochs=1),
            None,
            progress=False,
            log=["csv"],
        )


def test_train_json_records_the_learning_rate_used(tmp_path):
    trained(tmp_path, [], name="sgd")
    trained(tmp_path, [], name="rms", optimizer="rmsprop")
    assert json.loads((tmp_path / "sgd" / "train.json").read_text())["config"]["lr"] == 0.05
    assert json.loads((tmp_path / "rms" / "train.json").read_text())["config"]["lr"] == 1e-3


def test_resume_with_more_epochs_extends_a_finished_run(tmp_path):
    data = graded_dataset(n_train=48, n_test=16, classes=4, shape=(3, 8, 8))
    model = small_model(num_classes=4)
    first = train(model, data, quick(), tmp_path / "r", progress=False, threads=1)
    more = train(model, data, quick(epochs=4), tmp_path / "r", resume=True, threads=1, progress=False, log=["csv"])
    assert [r["epoch"] for r in more.history] == [1, 2, 3, 4]
    assert more.history[:2] == first.history  # the epochs done are kept as they were
    steps = 48 // 16
    warmup = min(round(1.0 * steps), int(0.3 * 4 * steps))  # the 4-epoch schedule, recomputed
    for record in more.history[2:]:
        last_step = record["epoch"] * steps - 1
        assert record["lr"] == pytest.approx(lr_at(last_step, 4 * steps, warmup, 0.05, "onecycle"))
    assert json.loads((tmp_path / "r" / "train.json").read_text())["epochs"] == 4
    rows = list(csv.DictReader((tmp_path / "r" / "metrics.csv").open()))  # rewritten whole: every epoch
    assert [float(r["loss"]) for r in rows] == [r["loss"] for r in more.history]
    again = train(model, data, quick(epochs=4), tmp_path / "r", resume=True, threads=1, progress=False)
    assert again.history == more.history  # finished: nothing left to do
    with pytest.raises(EdgepruneError, match=r"different config \(epochs: was 4, now 3\)"):
        train(model, data, quick(epochs=3), tmp_path / "r", resume=True, threads=1, progress=False)


def test_an_unfinished_run_is_not_extended(tmp_path):
    data = graded_dataset(n_train=48, n_test=16, classes=4, shape=(3, 8, 8))
    model = small_model(num_classes=4)

    def interrupt(record):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(model, data, quick(epochs=3), tmp_path / "r", progress=False, threads=1, callback=interrupt)
    with pytest.raises(EdgepruneError, match="different config"):
        train(model, data, quick(epochs=5), tmp_path / "r", resume=True, threads=1, progress=False)


def test_chance_level_is_said_within_two_standard_errors():
    noise = 2 * math.sqrt(0.5 * 0.5 / 100)  # 0.1 for two classes on 100 images
    assert chance_note(0.5 + noise * 0.9, 2, 100) is not None
    assert chance_note(0.5 - noise * 0.9, 2, 100) is not None
    assert chance_note(0.5 + noise * 1.1, 2, 100) is None
    note = chance_note(0.11, 10, 1000, "validation")
    assert note is not None and note.startswith("validation accuracy 11.00% is at chance level (1/10 = 10.00%")
    assert chance_note(0.5, 10, 1000) is None and chance_note(None, 10, 10) is None
    assert (plural(1, "epoch"), plural(2, "epoch"), plural(0, "step")) == ("1 epoch", "2 epochs", "0 steps")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_draws_a_tqdm_bar_and_lines_above_it():
    stream = _Terminal()
    times = iter(float(t) for t in range(100)).__next__
    bar = Progress(True, stream=stream, clock=times)
    for done in range(1, 6):
        bar.update("epoch 1/2", done, 6, f"loss {done}")
    bar.line("a note")
    bar.update("epoch 1/2", 6, 6, "loss final", final=True)
    text = stream.getvalue()
    assert "\r" in text and "epoch 1/2" in text and "6/6" in text and "loss final" in text
    assert "a note\n" in text and text.index("a note") < text.index("loss final")
    assert list(Progress(True, stream=stream).track(range(3), "decoding")) == [0, 1, 2]
    quiet = io.StringIO()  # not a terminal: with tty_only nothing, not even the final line
    Progress(True, stream=quiet, tty_only=True).update("decoding", 1, 1, "images", final=True)
    assert quiet.getvalue() == ""


def test_cli_log_csv_and_one_epoch_in_the_message(capsys, tmp_path):
    code, out, err = run_cli(
        capsys, "train", "tiny", "--data", MINI, "--epochs", 1, "--limit-train", 64, "--limit-test", 20,
        "--batch-size", 64, "--out", tmp_path / "r", "--quiet", "--threads", 1, "--log", "csv",
    )  # fmt: skip
    assert code == 0, err
    assert "after 1 epoch (" in out and "1 epochs" not in out
    rows = list(csv.DictReader((tmp_path / "r" / "metrics.csv").open()))
    history = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and float(rows[0]["test_acc"]) == history[0]["test_acc"]
    at_chance = abs(history[0]["test_acc"] - 0.1) <= 2 * math.sqrt(0.09 / 20)  # 20 test images, 10 classes
    assert ("at chance level" in out) == at_chance
    code, _, err = run_cli(capsys, "train", "tiny", "--data", MINI, "--epochs", 1, "--out", tmp_path / "x",
                           "--log", "nosuch")  # fmt: skip
    assert code == 2 and "--log" in err
