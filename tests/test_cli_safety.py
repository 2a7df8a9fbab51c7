"""Issue 12 at the command line: one writer per folder, --force that loses nothing, no folder left by a failure,
and every argument checked before any work (one line, exit 2, no traceback)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from conftest import MINI
from helpers import one_line_error, run_cli

from edgeprune.files import LOCK_FILE, MANIFEST_FILE, STASH_DIR
from edgeprune.locks import FolderLock

PRUNE = ["prune", "tiny", "--mode", "flops", "--target", "0.5"]


def snapshot(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_lock(folder, pid: int, host: str | None = None, command: str = "train") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    holder = {"pid": pid, "host": host or socket.gethostname(), "command": command, "started": 0}
    (folder / LOCK_FILE).write_text(json.dumps(holder))


# -- one writer per folder ------------------------------------------------------------------------


def test_a_second_writer_is_refused_naming_the_holder(tmp_path, capsys):
    """Was: two 'edgeprune train' runs into one folder both succeeded; the last writer won."""
    out = tmp_path / "run"
    write_lock(out, os.getppid(), command="train")  # a live process holds it
    code, _, err = run_cli(capsys, *PRUNE, "--out", out, "--force")
    line = one_line_error(err, code)
    assert "being written by 'train'" in line and f"pid {os.getppid()}" in line
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing written, the holder's lock kept


def test_two_trainings_into_one_folder_cannot_both_write(tmp_path, capsys):
    """The lock is held for the whole command: a second FolderLock on the same folder is refused meanwhile."""
    first = FolderLock(tmp_path, "train").acquire()
    try:
        with pytest.raises(Exception, match="being written by 'train'"):
            FolderLock(tmp_path, "train").acquire()
    finally:
        first.release()
    assert not (tmp_path / LOCK_FILE).exists()
    FolderLock(tmp_path, "train").acquire().release()  # free again


def test_a_stale_lock_is_taken_over_and_said_aloud(tmp_path, capsys):
    out = tmp_path / "run"
    pid = dead_pid()
    write_lock(out, pid, command="prune")
    code, _, err = run_cli(capsys, *PRUNE, "--out", out, "--force")
    assert code == 0, err
    assert f"took over the lock of 'prune' (pid {pid}" in err
    assert not (out / LOCK_FILE).exists()  # released at the end
    assert (out / "model.json").is_file()


def test_a_lock_from_another_host_is_not_taken_over(tmp_path, capsys):
    out = tmp_path / "run"
    write_lock(out, dead_pid(), host="some-other-machine")
    code, _, err = run_cli(capsys, *PRUNE, "--out", out, "--force")
    assert "some-other-machine" in one_line_error(err, code) and "delete" in err


# -- --force and failures ---------------------------------------------------------------------------


@pytest.mark.slow
def test_force_replaces_edgeprunes_files_and_keeps_the_users(tmp_path, capsys):
    """Was: --force into a trained folder left the old train.json and checkpoint beside the new model.

    Now --force removes exactly what the manifest of the earlier command lists; a folder without one is refused.
    """
    out = tmp_path / "run"
    assert run_cli(capsys, *PRUNE, "--out", out)[0] == 0
    (out / "notes.txt").write_text("mine")
    code, _, err = run_cli(capsys, *PRUNE, "--out", out, "--force")
    assert code == 0, err
    names = sorted(p.name for p in out.iterdir() if p.name != MANIFEST_FILE)
    assert names == ["model.json", "model.safetensors", "notes.txt", "report.json"]
    assert (out / "notes.txt").read_text() == "mine"
    old = tmp_path / "old"  # look-alike files with no manifest: nothing says edgeprune wrote them
    old.mkdir()
    for name in ("train.json", "checkpoint.safetensors", "model.json"):
        (old / name).write_text("old run")
    code, _, err = run_cli(capsys, *PRUNE, "--out", old, "--force")
    assert "model.json" in one_line_error(err, code)
    assert sorted(p.name for p in old.iterdir()) == ["checkpoint.safetensors", "model.json", "train.json"]


def test_a_failed_forced_command_loses_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(capsys, *PRUNE, "--out", out)[0] == 0
    before = snapshot(out)
    code, _, err = run_cli(capsys, "prune", "tiny", "--mode", "flops", "--target", "10", "--out", out, "--force")
    assert "unreachable" in one_line_error(err, code)
    assert snapshot(out) == before
    assert not (out / STASH_DIR).exists() and not (out / LOCK_FILE).exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["prune", "tiny", "--mode", "bogus", "--target", "0.5"],
        ["prune", "tiny", "--mode", "flops", "--target", "10"],
        ["prune", "no-such-model", "--mode", "flops", "--target", "0.5"],
    ],
)
def test_a_failed_command_leaves_no_folder_it_created(tmp_path, capsys, argv):
    """Was: a failed command (an unknown mode) left an empty --out folder behind."""
    out = tmp_path / "new" / "run"
    code, _, err = run_cli(capsys, *argv, "--out", out)
    one_line_error(err, code)
    assert not out.exists()


@pytest.mark.slow
def test_an_interrupted_training_keeps_its_checkpoint_folder(tmp_path, capsys, monkeypatch):
    """A failure after a checkpoint was written keeps the folder: the work can be resumed."""
    import edgeprune.train as train_module

    out = tmp_path / "t"
    real = train_module.train

    def train_then_fail(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "train", train_then_fail)
    code, _, _ = run_cli(capsys, "train", "tiny", "--data", MINI, "--epochs", 1, "--limit-train", 64,
                         "--limit-test", 32, "--batch-size", 32, "--quiet", "--out", out)  # fmt: skip
    assert code == 130
    assert (out / "checkpoint.safetensors").is_file()
    assert not (out / LOCK_FILE).exists()


# -- arguments checked before any work --------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([*PRUNE, "--seed=-1"], "seed must be from 0 to"),
        ([*PRUNE, "--seed=18446744073709551616"], "seed must be from 0 to"),
        (["sweep", "tiny", "--seeds", "-1", "--targets", "0.5"], "seed must be from 0 to"),
        (["compare", "tiny", "--data", MINI, "--target", "0.5", "--seeds", "-1"], "seed must be from 0 to"),
        (["train", "tiny", "--data", MINI, "--epochs", "1", "--seed=-1"], "seed must be from 0 to"),
        (["profile", "tiny", "--input-size", "100000"], "input size must be from 1 to 4096"),
        (["profile", "vgg16", "--input-size", "224"], "fails on a 3x224x224 input"),
        (["profile", "alexnet", "--input-size", "1"], "fails on a 3x1x1 input"),
        (["profile", "tiny", "--plot", "/proc/x.png"], "--plot /proc/x.png: cannot write"),
        (["profile", "tiny", "--plot", "/no/such/folder/x.png"], "does not exist"),
        (["export", "tiny", "--onnx", "OUT/t.onnx", "--opset", "99"], "opset must be an integer from 7 to 20"),
        (["export", "tiny", "--onnx", "OUT/t.onnx", "--atol", "nan"], "must be a finite number"),
        (["export", "tiny", "--onnx", "OUT/t.onnx", "--atol", "-1"], "atol must be a finite number >= 0"),
        (["bench", "tiny", "--runs", "0"], "must be at least 1"),
        ([*PRUNE, "--step", "inf"], "must be a finite number"),
        (["bench", "tiny", "--device", "cuda"], "device cuda is not available"),
        (["compare", "tiny", "--data", MINI, "--target", "0.5", "--device", "cuda"], "device cuda is not available"),
        (["sweep", "tiny", "--targets", "0.5", "--device", "cuda"], "device cuda is not available"),
        (["sweep", "tiny", "--targets", "0.5", "--device", "tpu"], "unknown device 'tpu'"),
    ],
)
def test_bad_arguments_fail_at_once_in_one_line(tmp_path, capsys, argv, message):
    """Was: numpy ValueError / overflow / shape errors as tracebacks, some only after training had run."""
    argv = [str(a).replace("OUT", str(tmp_path)) for a in argv]
    needs_out = argv[0] in ("prune", "sweep", "compare", "train")
    code, out, err = run_cli(capsys, *argv, *(["--out", tmp_path / "o"] if needs_out else []))
    assert message in one_line_error(err, code)
    assert out == ""  # nothing on stdout (the exporter's IR dump, a progress line)
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob("*.onnx"))


@pytest.mark.slow
@pytest.mark.e2e
def test_console_script_bad_opset_prints_one_line(tmp_path):
    """Was: 51 lines of TorchScript IR on stdout and a message blaming onnxscript."""
    proc = subprocess.run(
        [sys.executable, "-m", "edgeprune", "export", "tiny", "--onnx", str(tmp_path / "t.onnx"), "--opset", "99"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().count("\n") == 0 and "opset" in proc.stderr
