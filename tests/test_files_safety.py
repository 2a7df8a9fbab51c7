"""Issue 30, "Trust nothing, lose nothing": signals clean up as Ctrl-C does, --force removes only what a manifest
lists, a lock covers its folder's subtree, a failed write is one line, identical runs write identical bytes."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
import torch
from conftest import MINI
from helpers import one_line_error, run_cli

import edgeprune
from edgeprune.cli import main
from edgeprune.files import LOCK_FILE, STASH_DIR
from edgeprune.locks import FolderLock

PRUNE = ["prune", "tiny", "--mode", "flops", "--target", "0.5"]
MANIFEST_FILE = ".edgeprune-manifest.json"  # edgeprune.files.MANIFEST_FILE, spelled out: the file is the contract


def snapshot(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# A CLI run in its own process that sends itself a signal at a hook point (the moment the named function is
# called), as a `kill` from outside would at that moment.
HOOKED = """
import os, signal, sys
import {module} as target
real = target.{function}
def hooked(*args, **kwargs):
    os.kill(os.getpid(), signal.{signal})
    return real(*args, **kwargs)
target.{function} = hooked
from edgeprune.cli import main
sys.exit(main(sys.argv[1:]))
"""


def run_hooked(
    module: str, function: str, sig: str, *argv, hangup: object = signal.SIG_DFL
) -> subprocess.CompletedProcess:
    code = HOOKED.format(module=module, function=function, signal=sig)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    # a hang-up reaches a command only where SIGHUP is not ignored: under nohup (a CI job started so) the child
    # would inherit SIG_IGN, which edgeprune rightly keeps, so the child starts with the default disposition
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, argv)], capture_output=True, text=True, env=env, timeout=300,
        preexec_fn=lambda: signal.signal(signal.SIGHUP, hangup),
    )  # fmt: skip


def run_limited(limit: int, *argv, env: dict | None = None) -> subprocess.CompletedProcess:
    """``edgeprune ARGV`` under ``ulimit -f`` (bytes): SIGXFSZ left at its default, which kills the process."""

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run(
        [sys.executable, "-m", "edgeprune", *map(str, argv)], capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1", **(env or {})},
        preexec_fn=limit_file_size,
    )  # fmt: skip


def temporary_files(folder) -> list[str]:
    """Leftovers of atomic writes (``.NAME.xxxx``) under ``folder``."""
    return [
        str(p.relative_to(folder))
        for p in folder.rglob(".*")
        if p.is_file() and p.name not in (MANIFEST_FILE, LOCK_FILE)
    ]


def write_lock(folder, pid: int, command: str = "compare", **extra) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    holder = {"pid": pid, "host": socket.gethostname(), "command": command, "started": time.time(), **extra}
    (folder / LOCK_FILE).write_text(json.dumps(holder))


# -- 2. SIGTERM and SIGHUP as Ctrl-C; a stash is never deleted by a command that did not make it --------------


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_a_signal_during_force_puts_the_replaced_model_back(tmp_path, capsys, sig):
    """Was: SIGTERM left the previous model hidden in DIR/.edgeprune-replaced/ (no handler: killed at once)."""
    out = tmp_path / "run"
    assert run_cli(capsys, *PRUNE, "--out", out)[0] == 0
    before = snapshot(out)
    proc = run_hooked("edgeprune.pruning", "prune", sig, "prune", "tiny", "--mode", "flops", "--target", "0.3",
                      "--out", out, "--force")  # fmt: skip
    assert proc.returncode == 128 + getattr(signal, sig), proc.stderr
    assert proc.stderr.strip().splitlines() == [f"edgeprune prune: interrupted ({sig})"]
    assert snapshot(out) == before  # the old model in place, byte for byte
    assert not (out / STASH_DIR).exists() and not (out / LOCK_FILE).exists()


@pytest.mark.slow
@pytest.mark.e2e
def test_a_hangup_under_nohup_is_ignored(tmp_path, capsys):
    """A command started under nohup (SIGHUP ignored) keeps it ignored: a hang-up neither stops nor loses it."""
    out = tmp_path / "run"
    assert run_cli(capsys, *PRUNE, "--out", out)[0] == 0
    proc = run_hooked("edgeprune.pruning", "prune", "SIGHUP", "prune", "tiny", "--mode", "flops", "--target", "0.3",
                      "--out", out, "--force", hangup=signal.SIG_IGN)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    written = json.loads((out / "report.json").read_text())
    assert written["target_fraction"] == pytest.approx(0.3, abs=1e-6)  # the new model, not the old one
    assert not (out / STASH_DIR).exists() and not (out / LOCK_FILE).exists()


@pytest.mark.slow
@pytest.mark.e2e
def test_a_signal_as_the_command_finishes_waits_for_its_files(tmp_path, capsys):
    """A signal while the stash is being removed (or put back) is held until that is done: never half a stash."""
    out = tmp_path / "run"
    assert run_cli(capsys, *PRUNE, "--out", out)[0] == 0
    before = snapshot(out)
    proc = run_hooked("edgeprune.files", "OutputFolder.close", "SIGTERM", "prune", "tiny", "--mode", "flops",
                      "--target", "0.3", "--out", out, "--force")  # fmt: skip
    assert proc.returncode == 128 + signal.SIGTERM and "SIGTERM as it finished" in proc.stderr, proc.stderr
    after = snapshot(out)
    assert sorted(after) == sorted(before) and after["model.safetensors"] != before["model.safetensors"]
    assert not (out / STASH_DIR).exists() and not (out / LOCK_FILE).exists()


def test_a_stash_left_by_a_killed_run_is_put_back_and_never_deleted(tmp_path, capsys):
    """Was: the next --force command deleted the stash (a trained model gone) although both commands failed."""
    out = tmp_path / "run"
    assert run_cli(capsys, *PRUNE, "--out", out)[0] == 0
    before = snapshot(out)
    stash = out / STASH_DIR  # as a --force run killed (SIGKILL, power loss) after setting the files aside left it
    stash.mkdir()
    for entry in list(out.iterdir()):
        if entry != stash:
            os.replace(entry, stash / entry.name)
    code, _, err = run_cli(capsys, "prune", "tiny", "--mode", "flops", "--target", "10", "--out", out, "--force")
    assert snapshot(out) == before  # the model the killed run had set aside is back in place
    assert not stash.exists() and not (out / LOCK_FILE).exists()
    assert "unreachable" in err and "Traceback" not in err and code == 2
    assert "put back" in err  # said aloud


def test_a_stash_found_before_a_resume_is_named_not_touched(tmp_path, capsys):
    out = tmp_path / "run"
    (out / STASH_DIR).mkdir(parents=True)
    (out / STASH_DIR / "checkpoint.safetensors").write_text("the run --force replaced")
    code, _, err = run_cli(capsys, "train", "tiny", "--data", MINI, "--epochs", 1, "--out", out, "--resume")
    assert STASH_DIR in one_line_error(err, code)
    assert (out / STASH_DIR / "checkpoint.safetensors").read_text() == "the run --force replaced"


# -- 3. --force removes exactly what a manifest lists; export writes only names it owns -------------------------


@pytest.mark.slow
def test_force_removes_only_what_the_manifest_lists(tmp_path, capsys):
    """Was: --force deleted a user's files that merely looked like edgeprune's."""
    out = tmp_path / "run"
    assert run_cli(capsys, *PRUNE, "--out", out)[0] == 0
    assert json.loads((out / MANIFEST_FILE).read_text())["files"] == ["model.json", "model.safetensors", "report.json"]
    (out / ".model.safetensors.backup").write_bytes((out / "model.safetensors").read_bytes())
    (out / "results.csv").write_text("my numbers\n")
    (out / "model.onnx").write_text("my export")
    (out / "backup-v1").mkdir()
    for name in ("model.json", "model.safetensors"):
        (out / "backup-v1" / name).write_bytes((out / name).read_bytes())
    mine = {k: v for k, v in snapshot(out).items() if k not in ("model.json", "model.safetensors", "report.json")}
    mine.pop(MANIFEST_FILE)
    snapshot_before_force = snapshot(out)
    code, _, err = run_cli(capsys, "prune", "tiny", "--mode", "flops", "--target", "0.3", "--out", out, "--force")
    assert code == 0, err
    after = snapshot(out)
    assert {k: after[k] for k in mine} == mine  # every file of the user's, byte for byte
    assert after["model.safetensors"] != snapshot_before_force["model.safetensors"]  # the new model replaced it
    assert json.loads((out / MANIFEST_FILE).read_text())["files"] == ["model.json", "model.safetensors", "report.json"]


def test_force_removes_listed_files_in_subfolders_and_keeps_the_rest(tmp_path, capsys):
    """Was: a run folder holding one file of the user's kept the old run's checkpoint beside it."""
    out = tmp_path / "cmp"
    (out / "full-s0").mkdir(parents=True)
    (out / "l1-s0").mkdir()
    for rel in ("compare.json", "full-s0/checkpoint.safetensors", "full-s0/record.json", "l1-s0/record.json"):
        (out / rel).write_text("old run")
    (out / "full-s0" / "notes.txt").write_text("mine")
    listed = ["compare.json", "full-s0/checkpoint.safetensors", "full-s0/record.json", "l1-s0/record.json"]
    (out / MANIFEST_FILE).write_text(json.dumps({"format": 1, "files": listed}))
    code, _, err = run_cli(capsys, *PRUNE, "--out", out, "--force")
    assert code == 0, err
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.name != MANIFEST_FILE) == [
        "full-s0", "full-s0/notes.txt", "model.json", "model.safetensors", "report.json"]  # fmt: skip
    assert (out / "full-s0" / "notes.txt").read_text() == "mine"


def test_force_without_a_manifest_refuses_naming_the_files(tmp_path, capsys):
    """A folder an older edgeprune (or the user) wrote: nothing says whose its files are, so nothing is removed."""
    out = tmp_path / "old"
    out.mkdir()
    for name in ("model.json", "results.csv"):
        (out / name).write_text("whose?")
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    code, _, err = run_cli(capsys, *PRUNE, "--out", out, "--force")
    line = one_line_error(err, code)
    assert "model.json, results.csv" in line and MANIFEST_FILE in line and "move them away" in line
    assert snapshot(out) == before and not (out / STASH_DIR).exists()


def test_a_user_file_the_command_would_overwrite_is_refused_before_any_work(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(capsys, *PRUNE, "--out", out)[0] == 0
    listed = json.loads((out / MANIFEST_FILE).read_text())
    (out / MANIFEST_FILE).write_text(json.dumps({**listed, "files": ["model.json", "model.safetensors"]}))
    (out / "report.json").write_text("my report")  # not listed: the user's
    before = snapshot(out)
    code, _, err = run_cli(capsys, *PRUNE, "--out", out, "--force")
    assert "report.json" in one_line_error(err, code)
    assert snapshot(out) == before


def export_int8(target, *extra):
    return main(["export", "tiny", "--onnx", str(target), "--int8", "--calibration", str(MINI),
                 "--calibration-images", "16", "--limit-test", "32", "--max-drop", "100", *extra])  # fmt: skip


@pytest.mark.slow
def test_export_int8_never_overwrites_an_fp32_file_it_did_not_write(tmp_path, capsys):
    """Was: export --onnx q.onnx --int8 silently overwrote an unrelated q-fp32.onnx."""
    theirs = tmp_path / "q-fp32.onnx"
    theirs.write_text("someone's model")
    code = export_int8(tmp_path / "q.onnx")
    err = capsys.readouterr().err
    assert "q-fp32.onnx exists" in one_line_error(err, code) and "--force" in err
    assert theirs.read_text() == "someone's model" and not (tmp_path / "q.onnx").exists()
    assert export_int8(tmp_path / "q.onnx", "--force") == 0  # asked for
    assert export_int8(tmp_path / "q.onnx") == 0  # its own file, from the run before: replaced without --force


# -- 4. a lock covers its folder's subtree ------------------------------------------------------------------


def test_a_lock_covers_the_subfolders(tmp_path, capsys):
    """Was: prune --out cmp/full-s0 --force deleted the checkpoint of the compare run writing cmp."""
    cmp = tmp_path / "cmp"
    (cmp / "full-s0").mkdir(parents=True)
    (cmp / "full-s0" / "checkpoint.safetensors").write_text("compare's, mid-run")
    write_lock(cmp, os.getppid(), command="compare")  # a live process holds cmp
    before = snapshot(cmp)
    code, _, err = run_cli(capsys, *PRUNE, "--out", cmp / "full-s0", "--force")
    line = one_line_error(err, code)
    assert "inside" in line and "'compare'" in line and f"pid {os.getppid()}" in line
    assert snapshot(cmp) == before


def test_a_lock_below_a_folder_covers_it_too(tmp_path, capsys):
    cmp = tmp_path / "cmp"
    write_lock(cmp / "full-s0", os.getppid(), command="train")
    code, _, err = run_cli(capsys, *PRUNE, "--out", cmp, "--force")
    assert "'train'" in one_line_error(err, code) and "full-s0" in err
    assert sorted(p.name for p in cmp.iterdir()) == ["full-s0"]


def test_a_lock_naming_a_reused_pid_is_stale(tmp_path, capsys):
    """Was: a lock whose pid now belongs to an unrelated process blocked the folder for ever."""
    out = tmp_path / "run"
    pid = os.getppid()  # alive, but it is not the process that took the lock (that one started at another time)
    write_lock(out, pid, command="prune", pid_started=psutil.Process(pid).create_time() - 1000)
    code, _, err = run_cli(capsys, *PRUNE, "--out", out, "--force")
    assert code == 0, err
    assert f"took over the lock of 'prune' (pid {pid}" in err and "now another process" in err
    assert not (out / LOCK_FILE).exists()


def test_a_lock_records_when_its_process_started(tmp_path):
    lock = FolderLock(tmp_path, "train").acquire()
    try:
        holder = json.loads((tmp_path / LOCK_FILE).read_text())
        assert holder["pid_started"] == pytest.approx(psutil.Process().create_time())
    finally:
        lock.release()


# -- one line, never a traceback: a write that fails ----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.e2e
def test_a_model_save_over_the_file_size_limit_is_one_line_and_loses_nothing(tmp_path, capsys):
    """Was: ulimit -f killed the command (SIGXFSZ), or safetensors' SafetensorError came as a traceback."""
    out = tmp_path / "run"
    assert run_cli(capsys, *PRUNE, "--out", out)[0] == 0
    before = snapshot(out)
    proc = run_limited(100_000, "prune", "tiny", "--mode", "flops", "--target", "0.3", "--out", out, "--force")
    line = one_line_error(proc.stderr, proc.returncode)
    assert "model.safetensors: cannot write (File too large" in line and "ulimit -f" in line
    assert snapshot(out) == before and not temporary_files(tmp_path)
    assert not (out / STASH_DIR).exists() and not (out / LOCK_FILE).exists()


@pytest.mark.slow
@pytest.mark.e2e
def test_a_checkpoint_save_over_the_file_size_limit_is_one_line(tmp_path):
    from edgeprune.data import load_dataset

    load_dataset(str(MINI), 64, 32, progress=False)  # the image cache exists: the checkpoint is the big write
    out = tmp_path / "t"
    proc = run_limited(100_000, "train", "tiny", "--data", MINI, "--epochs", 1, "--limit-train", 64, "--limit-test",
                       32, "--batch-size", 32, "--quiet", "--threads", 1, "--out", out)  # fmt: skip
    line = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "cannot write (File too large" in line and ".safetensors" in line
    assert not out.exists() or not temporary_files(out)


@pytest.mark.slow
@pytest.mark.e2e
def test_an_image_cache_over_the_file_size_limit_is_a_warning(tmp_path):
    cache = tmp_path / "cache"
    proc = run_limited(1_000_000, "evaluate", "tiny", "--data", MINI, "--limit-test", 32,
                       env={"EDGEPRUNE_CACHE": str(cache)})  # fmt: skip
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "cannot write the image cache" in proc.stderr and "top-1" in proc.stdout
    assert not temporary_files(cache)


@pytest.mark.slow
@pytest.mark.e2e
def test_an_export_over_the_file_size_limit_is_reported_as_such(tmp_path):
    """Was: a failed write made the exporter fall back to dynamo: "needs the 'onnxscript' package"."""
    proc = run_limited(200_000, "export", "tiny", "--onnx", tmp_path / "t.onnx")
    line = one_line_error(proc.stderr, proc.returncode)
    assert "t.onnx: cannot write (File too large" in line and "onnxscript" not in line
    assert list(tmp_path.iterdir()) == []


# -- smaller: what a failed or stopped command leaves ---------------------------------------------------------


def test_a_failed_command_removes_the_parent_folders_it_created(tmp_path, capsys):
    """Was: a failed --out a/b/c left a/b."""
    code, _, err = run_cli(capsys, "prune", "tiny", "--mode", "flops", "--target", "10", "--out", tmp_path / "a/b/c")
    one_line_error(err, code)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.e2e
def test_sigterm_during_export_leaves_no_temporary_file(tmp_path):
    proc = run_hooked("edgeprune.export", "check_onnx", "SIGTERM", "export", "tiny", "--onnx", tmp_path / "t.onnx")
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.e2e
def test_sigterm_leaves_no_folder_holding_a_stale_lock(tmp_path):
    proc = run_hooked("edgeprune.pruning", "prune", "SIGTERM", *PRUNE, "--out", tmp_path / "new" / "run")
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_identical_saves_write_identical_bytes(tmp_path):
    """Was: safetensors wrote the metadata keys in a different order from one save to the next."""
    torch.manual_seed(0)
    model = edgeprune.create("tiny", channels=4)
    for i in range(8):
        edgeprune.save(model, tmp_path / str(i))
    assert len({(tmp_path / str(i) / "model.safetensors").read_bytes() for i in range(8)}) == 1
    assert edgeprune.load(tmp_path / "0") is not None  # still a valid file, checksum and all


@pytest.mark.slow
@pytest.mark.e2e
def test_a_deferred_signal_is_raised_once_the_files_are_in_place():
    """SIGTERM while --force moves files is held until they are all moved (never half a stash)."""
    code = textwrap.dedent("""
        import os, signal
        from edgeprune.cli import signals as cli
        cli._catch_signals()
        try:
            with cli._signals_deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                print("still moving files")
        except KeyboardInterrupt as e:
            print("then stopped", e.signum)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert out.split("\n")[:2] == ["still moving files", f"then stopped {int(signal.SIGTERM)}"]
