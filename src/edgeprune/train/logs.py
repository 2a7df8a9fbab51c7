"""Where a training run's per-epoch numbers go besides ``metrics.jsonl``: CSV, TensorBoard, MLflow (``--log``).

Each sink gets, per epoch, the loss, the accuracies, the learning rate and images per second, and once the run's
settings (its TrainConfig, data set and model). ``csv`` writes ``metrics.csv`` (a header, one row per epoch,
rewritten whole and atomically, so a resumed run's file holds every epoch); ``tensorboard`` writes event files
under ``tensorboard/`` (needs the ``tensorboard`` package: ``pip install 'edgeprune[tensorboard]'``); ``mlflow``
logs one MLflow run to a local file store, ``mlruns/`` (``pip install 'edgeprune[mlflow]'``; see it with
``mlflow ui --backend-store-uri OUT/mlruns``; MLflow 3 asks for ``MLFLOW_ALLOW_FILE_STORE=true``, which is set when
unset), and a resumed run continues the same MLflow run (its id kept in ``mlflow_run.json``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

from edgeprune.errors import EdgepruneError
from edgeprune.files import atomic_write, write_json

SINKS = ("csv", "tensorboard", "mlflow")
CSV_FILE = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"
MLFLOW_DIR = "mlruns"
MLFLOW_RUN_FILE = "mlflow_run.json"
SCALARS = ("loss", "train_acc", "val_acc", "test_acc", "lr", "images_per_s")


def check_sinks(names: Sequence[str]) -> tuple[str, ...]:
    """The sinks named, without repeats; one-line error for an unknown one or a missing optional package."""
    chosen = tuple(dict.fromkeys(names))
    for name in chosen:
        if name not in SINKS:
            raise EdgepruneError(f"unknown log '{name}'; choose from: {', '.join(SINKS)}")
    for name, module in (("tensorboard", "tensorboard"), ("mlflow", "mlflow")):
        if name in chosen:
            try:
                __import__(module)
            except ImportError:
                raise EdgepruneError(
                    f"--log {name} needs the {module} package: pip install 'edgeprune[{name}]'"
                ) from None
    return chosen


def flat(settings: dict, prefix: str = "") -> dict[str, str]:
    """``settings`` flattened to ``a.b`` keys with string values (what MLflow params and the TensorBoard text take)."""
    out: dict[str, str] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, list | tuple) else str(value)
    return out


class Sinks:
    """The run's log sinks, in ``out``: :meth:`epoch` after each epoch, :meth:`close` at the end."""

    def __init__(self, names: Sequence[str], out: Path | None, settings: dict, *, resume: bool = False):
        self.names = check_sinks(names)
        if self.names and out is None:
            raise EdgepruneError("--log needs an output folder to write to")
        self.out = out
        self.settings = flat(settings)
        self._writer = None
        self._mlflow: tuple | None = None
        if "tensorboard" in self.names:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(out / TENSORBOARD_DIR))
            self._writer.add_text("settings", "\n".join(f"    {k}: {v}" for k, v in self.settings.items()))
        if "mlflow" in self.names:
            self._mlflow = self._start_mlflow(resume)

    def _start_mlflow(self, resume: bool) -> tuple:
        """(client, run id) of the MLflow run in ``out/mlruns``: the recorded one on resume, else a new one."""
        from mlflow.tracking import MlflowClient

        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks file stores to opt in
        client = MlflowClient(tracking_uri=(self.out / MLFLOW_DIR).resolve().as_uri())
        saved = self.out / MLFLOW_RUN_FILE
        if resume and saved.is_file():
            return client, json.loads(saved.read_text())["run_id"]
        found = client.get_experiment_by_name("edgeprune")
        experiment = found.experiment_id if found is not None else client.create_experiment("edgeprune")
        run_id = client.create_run(experiment, run_name=self.out.name).info.run_id
        for key, value in self.settings.items():
            client.log_param(run_id, key[:250], value[:6000])
        write_json(saved, {"run_id": run_id})
        return client, run_id

    def epoch(self, record: dict, history: list[dict]) -> None:
        """Log epoch ``record`` (``history``: every epoch so far, for the CSV file)."""
        step = int(record["epoch"])
        values = {k: float(record[k]) for k in SCALARS if isinstance(record.get(k), int | float)}
        if "csv" in self.names:
            self._write_csv(history)
        if self._writer is not None:
            for key, value in values.items():
                self._writer.add_scalar(key, value, step)
            self._writer.flush()
        if self._mlflow is not None:
            client, run_id = self._mlflow
            for key, value in values.items():
                client.log_metric(run_id, key, value, step=step)

    def _write_csv(self, history: list[dict]) -> None:
        """``metrics.csv``: a header and one row per epoch."""
        columns = list(dict.fromkeys(k for record in history for k in record))
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(history)
        atomic_write(self.out / CSV_FILE, lambda p: p.write_text(text.getvalue()))

    def close(self, finished: bool = True) -> None:
        """Flush and close the sinks; an MLflow run is marked finished (or killed when the run stopped early)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._mlflow is not None:
            client, run_id = self._mlflow
            client.set_terminated(run_id, "FINISHED" if finished else "KILLED")
            self._mlflow = None


def chance_note(accuracy: float | None, classes: int, images: int, split: str = "test") -> str | None:
    """One line when ``accuracy`` on ``images`` ``split`` images is within 2 standard errors of 1/``classes``."""
    if accuracy is None or classes < 2 or images < 1:
        return None
    chance = 1.0 / classes
    noise = 2 * math.sqrt(chance * (1 - chance) / images)
    if abs(accuracy - chance) > noise:
        return None
    return (
        f"{split} accuracy {100 * accuracy:.2f}% is at chance level (1/{classes} = {100 * chance:.2f}%, +-"
        f"{100 * noise:.1f} points on {images} images): the model has not learned; try more epochs or another --lr"
    )


__all__ = [
    "CSV_FILE",
    "MLFLOW_DIR",
    "MLFLOW_RUN_FILE",
    "SINKS",
    "TENSORBOARD_DIR",
    "Sinks",
    "chance_note",
    "flat",
]
