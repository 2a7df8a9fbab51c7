"""Progress bars over the long loops of lut, compare and sweep: on a terminal (stderr) a bar driven to its total,
training bars drawn under a comparison's; with --quiet or stderr not a terminal, nothing on stderr; stdout the same.

A terminal is faked by replacing ``edgeprune.data.progress.is_terminal``, the one check every bar makes.
"""

from __future__ import annotations

import io
import json
from contextlib import contextmanager
from itertools import accumulate
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import synthetic

import edgeprune
from edgeprune import cluster
from edgeprune.cli import main
from edgeprune.cli.lut import build_with_bar
from edgeprune.data import progress
from edgeprune.io import ModelRef
from edgeprune.latency import OVERHEAD, OVERHEAD_BLOCK, build_table, grid_points
from edgeprune.lut import TableSettings

SHAPE = (3, 32, 32)


@pytest.fixture
def bars(monkeypatch):
    """Every Counter as it closes: (label, items counted, total, drawn)."""
    closed = []
    close = progress.Counter.close

    def record(self):
        closed.append((self.label, self.n, self.total, self.enabled))
        close(self)

    monkeypatch.setattr(progress.Counter, "close", record)
    return closed


def fake_terminal(monkeypatch, on: bool = True) -> None:
    monkeypatch.setattr(progress, "is_terminal", lambda stream: on)


def fake_timer(blocks: dict[str, dict]) -> dict[str, float]:
    """Milliseconds from the widths alone: no process started."""
    return {key: 0.01 + 1e-6 * b["c_in"] * b["c_out"] for key, b in blocks.items()}


# -- the bar itself ---------------------------------------------------------------------------------------------


def test_a_counter_draws_on_a_terminal_only_and_echo_keeps_stdout(monkeypatch, capsys):
    stream = io.StringIO()
    with progress.Counter(3, "items", stream=stream) as bar:  # a StringIO is no terminal
        bar.advance(3)
        progress.echo("a line")
    assert not bar.enabled and bar.n == 3 and stream.getvalue() == ""
    fake_terminal(monkeypatch)
    with progress.Counter(3, "items", stream=stream) as bar:
        bar.describe("second")
        bar.advance(2)
        progress.echo("another line")
        bar.advance()
    assert bar.enabled and "items second" in stream.getvalue() and "3/3" in stream.getvalue()
    assert progress._OPEN == []
    assert capsys.readouterr().out == "a line\nanother line\n"


def test_a_training_bar_under_a_counter_is_cleared_and_its_last_state_kept_as_a_line(monkeypatch):
    fake_terminal(monkeypatch)
    stream = io.StringIO()
    with progress.Counter(1, "runs", stream=stream) as outer:
        inner = progress.Progress(True, stream=stream)
        inner.update("epoch 1/1", 1, 2, "half")
        inner.update("epoch 1/1", 2, 2, "loss 0.5", final=True)
        inner.line("a line of its own")
        outer.advance()
    text = stream.getvalue()
    assert "epoch 1/1: 100%" in text and "loss 0.5" in text and "a line of its own\n" in text
    alone = progress.Progress(True, stream=io.StringIO())  # no counter open: the epoch's bar stays, as before
    alone.update("epoch 1/1", 2, 2, "done", final=True)
    assert alone.stream.getvalue().endswith("\n")


def test_a_waiter_counts_tasks_as_they_finish_in_any_order(monkeypatch):
    order = ["c", "a", "b"]  # the order the tasks finish
    calls = []

    def wait(pending: list, num_returns: int) -> tuple[list, list]:
        first = next(r for r in order if r in pending)
        calls.append(first)
        return [first], [r for r in pending if r != first]

    fake_terminal(monkeypatch)
    bar = progress.Counter(6, "tasks", stream=io.StringIO())
    waiter = progress.Waiter(wait, ["a", "b", "c", "a"], bar, weight=2)
    waiter.until(["a"])
    assert calls == ["c", "a"] and bar.n == 4  # c finished first: counted before a
    waiter.until(["b", "c"])
    assert bar.n == 6 and waiter.pending == []
    off = progress.Waiter(wait, ["a"], progress.Counter(1, "off", enabled=False, stream=io.StringIO()))
    off.until(["a"])  # no bar: no waiting, the results are taken as before
    assert len(calls) == 3


# -- lut --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("terminal, quiet", [(True, False), (False, False), (True, True)])
def test_lut_counts_every_grid_point_on_a_terminal(monkeypatch, capsys, bars, terminal, quiet):
    fake_terminal(monkeypatch, terminal)
    torch.manual_seed(0)
    table = build_with_bar(edgeprune.create("tiny"), SHAPE, TableSettings(round_to=8, calibration=()), source="tiny",
                           quiet=quiet, timer=fake_timer, parent_ms=3.0)  # fmt: skip
    out, err = capsys.readouterr()
    points = table.settings["points"]
    assert points > 100
    if quiet:
        assert out == err == "" and bars == [("lut", 0, 0, False)]
        return
    assert out.splitlines()[0].startswith("  features.0: ") and len(out.splitlines()) == len(table.layers)
    if terminal:
        assert bars == [("lut", points, points, True)] and f"{points}/{points}" in err and "lut features.4" in err
    else:
        assert err == "" and bars == [("lut", 0, 0, False)]


def test_lut_counts_each_exported_point_of_an_edge_backend_once(monkeypatch, capsys, bars):
    """ExecuTorch and LiteRT export every grid point (the slow part): each is counted as it is written, through
    the library's own hook (the measuring processes' export and timing faked: no runtime needed)."""
    import edgeprune.backends as backends
    import edgeprune.backends.probe as probe

    fake_terminal(monkeypatch)
    written, timed = [], []

    def write_block(backend, block, path):
        written.append((block is OVERHEAD_BLOCK, progress._OPEN[-1].n))  # the bar's count as the file is written
        return path

    def time_artifacts(artifacts, backend, seed, **options):
        timed.append((len(artifacts) - 1, progress._OPEN[-1].n))
        return {key: {"median": 1.0 + (key != OVERHEAD)} for key in artifacts}

    monkeypatch.setattr(probe, "write_block", write_block)
    monkeypatch.setattr(backends, "time_artifacts", time_artifacts)
    settings = TableSettings(backend="litert", round_to=8, calibration=(), processes=1)
    table = build_with_bar(edgeprune.create("tiny"), SHAPE, settings, source="tiny", parent_ms=3.0)
    points = table.settings["points"]
    assert points > 100 and bars == [("lut", points, points, True)] and f"{points}/{points}" in capsys.readouterr().err
    assert [n for overhead, n in written if not overhead] == list(range(points))  # each counted once, as written
    assert sum(overhead for overhead, _ in written) == len(timed)  # one overhead block a chunk, never counted
    assert [n for _, n in timed] == list(accumulate(size for size, _ in timed))  # timed once all are counted
    assert all(ms == 1.0 for layer in table.layers.values() for row in layer.ms for ms in row)


def test_build_table_calls_on_point_once_per_grid_point_then_each_stage():
    model, settings, calls = edgeprune.create("tiny"), TableSettings(round_to=8, calibration=(0.5,)), []
    sizes = grid_points(model, SHAPE, settings)
    build_table(model, SHAPE, settings, timer=fake_timer, parent_ms=3.0, on_point=lambda *call: calls.append(call),
                model_timer=lambda models: dict.fromkeys(models, 1.0))  # fmt: skip
    assert calls == [(name, "layer") for name, size in sizes.items() for _ in range(size)] + [("", "calibration")]


def test_lut_probe_counts_every_file_written(monkeypatch, capsys, bars, tmp_path):
    fake_terminal(monkeypatch)
    code = main(["lut", "tiny", "--model-args", '{"channels": 4}', "--probe", str(tmp_path / "probe"), "--round-to",
                 "8", "--near", "0", "--ratio", "0.3", "--calibrate"])  # fmt: skip
    out, err = capsys.readouterr()
    manifest = json.loads((tmp_path / "probe" / "manifest.json").read_text())
    points = sum(len(g["artifacts"]) - 1 for g in manifest["groups"] if g["name"].startswith("layer "))
    assert code == 0 and out.startswith("wrote ") and bars == [("probe", points, points, True)]
    assert f"{points}/{points}" in err


@pytest.mark.slow
def test_lut_on_litert_times_an_exported_one_conv_grid(tmp_path, capsys):
    """``lut --backend litert`` end to end on a one-conv net: its one grid point exported, timed, and the parent."""
    pytest.importorskip("ai_edge_litert")
    pytest.importorskip("litert_torch")
    (tmp_path / "net.py").write_text(
        "from torch import nn\n\n\ndef net(num_classes=10, in_channels=3):\n"
        "    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU())\n"
    )
    out = tmp_path / "t.json"
    code = main(["lut", f"{tmp_path / 'net.py'}:net", "--trust-code", "--input-size", "8", "--backend", "litert",
                 "--runs", "1", "--warmup", "0", "--processes", "1", "--calibrate", "--out", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0 and "on litert" in printed and "1 widths measured" in printed, printed
    table = json.loads(out.read_text())
    assert table["backend"] == "litert" and list(table["layers"]) == ["0"] and table["parent_ms"] > 0


# -- compare ----------------------------------------------------------------------------------------------------


def _compare(tmp_path, progress_on: bool = True) -> None:
    from edgeprune.pipelines import CompareSettings, run_comparison

    settings = CompareSettings(model="tiny", targets={"params": 0.5}, baselines=("uniform",), epochs=1, seeds=(0,),
                               batch_size=16, model_args={"channels": 4}, threads=1)  # fmt: skip
    run_comparison(settings, synthetic(16), tmp_path, progress=progress_on)


@pytest.mark.slow
@pytest.mark.parametrize("terminal, quiet", [(True, False), (False, False), (True, True)])
def test_compare_counts_its_runs_with_training_bars_under_it(monkeypatch, capsys, bars, tmp_path, terminal, quiet):
    import edgeprune.pipelines as pipelines

    monkeypatch.setattr(pipelines, "write_outputs", lambda *args: None)  # the tables and plots: not what is tested
    fake_terminal(monkeypatch, terminal)
    _compare(tmp_path, progress_on=not quiet)
    out, err = capsys.readouterr()
    if quiet:
        assert out == err == "" and bars == [("compare", 3, 3, False)]
        return
    assert [line for line in out.splitlines() if line.startswith("run ")] == ["run 1/3", "run 2/3", "run 3/3"]
    assert len(out.splitlines()) == 6  # and each run's own line, as without a bar
    if terminal:
        assert bars == [("compare", 3, 3, True)] and "3/3" in err
        assert err.count("epoch 1/1: 100%") >= 3  # each run's epoch, kept as a line when its bar is cleared
    else:  # training's own lines in a log (a line a minute and each epoch's last) stay as they were
        assert bars == [("compare", 3, 3, False)] and "compare" not in err and "\r" not in err


def _waiting_ray(finish_order: list) -> SimpleNamespace:
    """A Ray whose tasks (named by their refs) finish in ``finish_order``."""

    def wait(pending: list, num_returns: int) -> tuple[list, list]:
        first = next(r for r in finish_order if r in pending)
        return [first], [r for r in pending if r != first]

    return SimpleNamespace(put=lambda obj: obj, wait=wait)


@contextmanager
def _connected(ray):
    yield ray


def _fake_cluster(monkeypatch, ray, name_of, results, seen, bar_of):
    """``edgeprune.cluster`` on ``ray``: a task's ref is ``name_of(fn, args)``, its result ``results(ref)``; each
    result taken is noted in ``seen`` with the bar's count then (``bar_of()``)."""
    monkeypatch.setattr(cluster, "connected", lambda options: _connected(ray))
    monkeypatch.setattr(cluster, "check_shared_folder", lambda ray, folder: None)
    monkeypatch.setattr(cluster, "portable_ref", lambda text: text)
    monkeypatch.setattr(cluster, "task", lambda ray, fn, options: SimpleNamespace(
        remote=lambda *args: name_of(fn, args)))  # fmt: skip

    def get(ray, ref, what):
        seen.append((ref, bar_of()))
        return results(ref)

    monkeypatch.setattr(cluster, "get", get)


def test_compare_on_ray_counts_each_run_as_its_task_finishes(monkeypatch, capsys, tmp_path):
    import edgeprune.pipelines as pipelines
    from edgeprune.pipelines import CompareSettings, make_context

    fake_terminal(monkeypatch)
    monkeypatch.setattr(pipelines, "progress_line", lambda record: record)
    settings = CompareSettings(model="tiny", targets={"params": 0.5}, baselines=("uniform",), seeds=(0,))
    ctx = make_context(settings, synthetic(16), tmp_path)
    seen: list = []
    with progress.Counter(3, "compare", stream=io.StringIO()) as bar:
        # the full model finishes last: by the time its result is taken, every run has been counted
        ray = _waiting_ray(["uniform", "direct", "full"])
        _fake_cluster(monkeypatch, ray, lambda fn, args: "full" if fn.__name__ == "_full_task" else args[1],
                      lambda ref: (ref, None) if ref == "full" else ref, seen, lambda: bar.n)  # fmt: skip
        batches = list(pipelines._runs_on_ray(ctx, cluster.RayOptions(), bar))
    assert batches == [("full", ["direct", "uniform"])]
    assert seen == [("full", 3), ("direct", 3), ("uniform", 3)] and bar.n == 3
    assert "run 1/3: full" in capsys.readouterr().out


# -- sweep ------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sweep_counts_its_points(monkeypatch, capsys, bars, tmp_path):  # no terminal: the lut and compare tests
    terminal = True
    import edgeprune.sweep as sweep_module
    from edgeprune.sweep import SweepSettings, sweep

    monkeypatch.setattr(sweep_module, "plot_sweep", lambda result, out: [])  # the figures: not what is tested
    fake_terminal(monkeypatch, terminal)
    settings = SweepSettings(tmp_path, modes=["flops"], targets=[0.5], runs=1, warmup=0, threads=1,
                             backends=["onnxruntime"], input_shape=(3, 16, 16))  # fmt: skip
    sweep(ModelRef("tiny", {"channels": 4}), settings)
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith("[1/2] unpruned 1 seed 0: ") and lines[1].startswith("[2/2] flops 0.5 seed 0: ")
    assert len(lines) == 4 and lines[-1].startswith("2 models in ")
    assert bars == [("sweep", 2, 2, terminal)]
    assert ("2/2" in err) if terminal else err == ""


def test_sweep_on_ray_counts_each_point_as_its_task_finishes(monkeypatch):
    import edgeprune.sweep as sweep_module

    fake_terminal(monkeypatch)
    seen: list = []
    jobs = [(0, "unpruned", 1.0), (0, "flops", 0.5), (0, "flops", 0.3)]
    ctx = SimpleNamespace(work=Path("/nonexistent/work"), int8=True)
    with progress.Counter(6, "sweep", stream=io.StringIO()) as bar:
        ray = _waiting_ray([2, 0, 1])
        _fake_cluster(monkeypatch, ray, lambda fn, args: args[-1], lambda ref: [(ref, None), (ref, None)], seen,
                      lambda: bar.n)  # fmt: skip
        rows = [row for row, _ in sweep_module._points_on_ray(ctx, jobs, cluster.RayOptions(), bar)]
    assert rows == [0, 0, 1, 1, 2, 2] and bar.n == 6
    assert seen == [(0, 4), (1, 6), (2, 6)]  # point 2 finished first: counted (fp32 and int8 rows) before 0's taken
