"""Issue 30, "Trust nothing, lose nothing": trust code by what it resolves to, vouch again once, one-line errors.

A received model folder must never run a module of its own (or of the current folder) because the user once
vouched for a module of that name elsewhere; a user who edits their own trusted file vouches again once; deep
JSON and odd exceptions end in one line. SPEC "Loading user code".
"""

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from helpers import one_line, run_cli
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import edgeprune
from edgeprune.errors import EdgepruneError
from edgeprune.files import sha256_file
from edgeprune.io import load, save
from edgeprune.models.build import build_model
from edgeprune.refs import check_kwargs, is_trusted, parse_reference, record_trust, trust_path

ROOT = Path(__file__).resolve().parents[1]

MODELS = """
from torch import nn


def net(num_classes=10, width=8):
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes),
    )
"""


def evil(canary: Path) -> str:
    """A module that writes ``canary`` when it is imported, then looks like the real one."""
    return f"open({str(canary)!r}, 'w').write('pwned')\n" + MODELS


@pytest.fixture
def world(tmp_path, monkeypatch):
    """proj/ holds the user's module, recv/ a received folder's, other/ is neither; a fresh process per command.

    The module's name is unique to the test. ``cli(folder, ...)`` runs a command from ``folder`` and then forgets
    the module, as the next command (a new process) would.
    """
    name = f"mymodels_{uuid.uuid4().hex[:8]}"
    dirs = {d: tmp_path / d for d in ("proj", "recv", "other")}
    for d in dirs.values():
        d.mkdir()
    (dirs["proj"] / f"{name}.py").write_text(MODELS)
    canary = tmp_path / "CANARY"
    (dirs["recv"] / f"{name}.py").write_text(evil(canary))
    monkeypatch.setattr(sys, "path", list(sys.path))  # whatever a command leaves on sys.path goes with the test

    class World:
        pass

    w = World()
    w.name, w.canary, w.tmp = name, canary, tmp_path
    w.proj, w.recv, w.other = dirs["proj"], dirs["recv"], dirs["other"]
    w.module = dirs["proj"] / f"{name}.py"

    def cli(capsys, folder, *argv):
        monkeypatch.chdir(folder)
        try:
            return run_cli(capsys, *argv)
        finally:
            sys.modules.pop(name, None)

    w.cli = cli
    return w


def prune_in_proj(w, capsys, out="x"):
    """The user, in proj/, prunes their own model: this names (vouches for) py:NAME:net."""
    code, _, err = w.cli(capsys, w.proj, "prune", f"{w.name}:net", "--mode", "params", "--target", "0.5", "--out",
                         w.tmp / out)  # fmt: skip
    assert code == 0, err
    return w.tmp / out


def receive(w, folder):
    """The received folder: the saved model.json and weights, beside the sender's own (malicious) module."""
    for f in ("model.json", "model.safetensors"):
        shutil.copy(folder / f, w.recv / f)


# -- 1. a received folder never runs its own module -------------------------------------------------------------


@pytest.mark.slow
def test_received_folder_with_its_own_module_is_refused(world, capsys):
    """`cd recv && edgeprune bench .` after the user vouched for py:NAME:net in proj/: recv's module never runs."""
    receive(world, prune_in_proj(world, capsys))
    code, out, err = world.cli(capsys, world.recv, "bench", ".", "--runs", 2, "--warmup", 1, "--backends", "torch")
    assert not world.canary.exists(), "the received folder's module ran"
    assert code == 2 and one_line(err) and not out, err
    assert f"{world.recv / world.name}.py" in err and "--model" in err
    code, _, err = world.cli(capsys, world.other, "profile", world.recv)  # the module beside the model: same
    assert code == 2 and one_line(err) and not world.canary.exists()


def test_trust_code_never_imports_from_the_current_folder(world, capsys):
    """--trust-code runs the folder's builder, but not from the current folder: only naming it does that."""
    receive(world, prune_in_proj(world, capsys))
    trust_path().unlink()  # another user: nothing vouched for
    code, _, err = world.cli(capsys, world.recv, "profile", ".", "--trust-code")
    assert code == 2 and one_line(err) and not world.canary.exists(), err
    assert f"--model {world.name}:net" in err


@pytest.mark.slow
@pytest.mark.e2e
def test_received_folder_end_to_end_in_a_fresh_process(world, capsys, trust_list):
    """The same attack as a user runs it: `python -m edgeprune bench .` in recv/ (whose folder is on sys.path)."""
    receive(world, prune_in_proj(world, capsys))
    env = {**os.environ, "EDGEPRUNE_CONFIG": str(trust_list), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "edgeprune", "bench", ".", "--runs", "2", "--warmup", "1", "--backends", "torch"],
        cwd=world.recv, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert not world.canary.exists(), "the received folder's module ran"
    assert proc.returncode == 2 and one_line(proc.stderr), proc.stderr


def test_a_trusted_module_is_imported_from_where_it_was_vouched_for(world, capsys):
    """From any folder, the folder's py: builder is the file recorded in the trust list (with its hash)."""
    folder = prune_in_proj(world, capsys)
    (entry,) = json.loads(trust_path().read_text())["trusted"]
    assert entry["builder"] == f"py:{world.name}:net"
    assert entry["file"] == str(world.module.resolve()) and entry["sha256"] == sha256_file(world.module)
    code, _, err = world.cli(capsys, world.other, "profile", folder)
    assert code == 0, err
    code, _, err = world.cli(capsys, world.proj, "profile", folder)  # from its own folder too
    assert code == 0, err


def test_naming_a_module_still_imports_it_from_the_current_folder(world, capsys):
    """uvicorn's module:app: a reference the user names now is imported from the current folder first."""
    code, _, err = world.cli(capsys, world.recv, "profile", f"{world.name}:net")
    assert code == 0 and world.canary.exists(), err  # the user named recv's module: it is theirs to run


# -- 2. editing your own trusted file: vouch again once -----------------------------------------------------------


def test_edited_module_is_refused_until_vouched_again_once_with_the_flag(world, capsys):
    folder = prune_in_proj(world, capsys)
    world.module.write_text(MODELS + "# a comment\n")
    code, _, err = world.cli(capsys, world.other, "profile", folder)
    assert code == 2 and one_line(err), err
    assert "changed since you vouched for it" in err and "--allow-changed-code" in err and str(world.module) in err
    with pytest.warns(UserWarning, match="still builds the recorded architecture"):
        code, _, err = world.cli(capsys, world.other, "profile", folder, "--allow-changed-code")
    assert code == 0, err
    code, _, err = world.cli(capsys, world.other, "profile", folder)  # vouched for: no flag any more
    assert code == 0, err
    assert json.loads(trust_path().read_text())["trusted"][-1]["sha256"] == sha256_file(world.module)


def test_edited_module_is_vouched_for_again_by_naming_its_file(world, capsys):
    folder = prune_in_proj(world, capsys)
    world.module.write_text(MODELS + "# a comment\n")
    with pytest.warns(UserWarning, match="still builds the recorded architecture"):
        code, _, err = world.cli(capsys, world.other, "profile", folder, "--model", f"{world.module}:net")
    assert code == 0, err
    assert json.loads((folder / "model.json").read_text())["builder"] == f"py:{world.name}:net"  # untouched
    code, _, err = world.cli(capsys, world.other, "profile", folder)
    assert code == 0, err
    code, _, err = world.cli(capsys, world.other, "profile", folder, "--model", f"py:{world.name}:net")
    assert code == 2 and "cannot import module" in err  # named as a module, it is looked up here (other/)


def test_an_old_name_only_trust_entry_says_how_to_vouch_again(world, capsys):
    folder = prune_in_proj(world, capsys)
    trust_path().write_text(
        json.dumps({"format": "edgeprune-trust/1", "trusted": [{"builder": f"py:{world.name}:net"}]})
    )
    code, _, err = world.cli(capsys, world.proj, "profile", folder)
    assert code == 2 and one_line(err) and "older edgeprune" in err and f"--model {world.name}:net" in err, err
    code, _, err = world.cli(capsys, world.proj, "profile", folder, "--model", f"{world.name}:net")
    assert code == 0, err
    code, _, err = world.cli(capsys, world.other, "profile", folder)
    assert code == 0, err


def test_edited_file_builder_needs_one_flag_once(world, capsys):
    """The issue's report: one comment edited in a file: builder, and --allow-changed-code alone failed."""
    code, _, err = world.cli(capsys, world.other, "prune", f"{world.module}:net", "--mode", "params", "--target", 0.5,
                             "--out", world.tmp / "f")  # fmt: skip
    assert code == 0, err
    world.module.write_text(MODELS + "# a comment\n")
    code, _, err = world.cli(capsys, world.other, "profile", world.tmp / "f")
    assert code == 2 and one_line(err) and "--allow-changed-code" in err, err
    with pytest.warns(UserWarning, match="changed since the model was saved .* still builds the recorded architecture"):
        code, _, err = world.cli(capsys, world.other, "profile", world.tmp / "f", "--allow-changed-code")
    assert code == 0, err
    with pytest.warns(UserWarning, match="still builds the recorded architecture"):
        code, _, err = world.cli(capsys, world.other, "profile", world.tmp / "f")  # no flag needed any more
    assert code == 0, err


def test_a_changed_file_that_no_longer_builds_the_architecture_says_so(world, capsys):
    code, _, err = world.cli(capsys, world.other, "prune", f"{world.module}:net", "--mode", "params", "--target", 0.5,
                             "--out", world.tmp / "f")  # fmt: skip
    assert code == 0, err
    world.module.write_text(MODELS.replace("nn.ReLU(),", "nn.ReLU(), nn.Conv2d(width, width, 1),"))
    code, _, err = world.cli(capsys, world.other, "profile", world.tmp / "f", "--allow-changed-code")
    assert code == 2 and one_line(err) and "changed since the model was saved" in err, err


def test_allow_changed_does_not_vouch_for_code_never_vouched_for(world, capsys):
    receive(world, prune_in_proj(world, capsys))
    trust_path().unlink()
    code, _, err = world.cli(capsys, world.other, "profile", world.recv, "--allow-changed-code")
    assert code == 2 and "not vouched for" in err and not world.canary.exists(), err


# -- 3. deep JSON, odd exceptions: one line ------------------------------------------------------------------------


def deep(n: int) -> str:
    return '{"a": ' + "[" * n + "]" * n + "}"


@pytest.mark.parametrize("model", ["tiny", "{module}:net"])
def test_deep_model_args_are_one_line(world, capsys, model):
    code, out, err = world.cli(capsys, world.other, "profile", model.format(module=world.module),
                               "--model-args", deep(5000))  # fmt: skip
    assert code == 2 and one_line(err) and not out and "--model-args" in err, err


def test_deep_kwargs_from_python_are_one_line():
    value: list = []
    for _ in range(5000):
        value = [value]
    with pytest.raises(EdgepruneError, match="nest") as e:
        check_kwargs({"a": value})
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "content",
    [
        '{"format": "edgeprune-trust/1", "trusted": ' + "[" * 5000 + "]" * 5000 + "}",
        '{"format": "edgeprune-trust/1", "trusted": [{"builder": ' + "1" * 5000 + "}]}",
        '{"format": "edgeprune-trust/1", "trusted": [{"builder": "x", "file": ' + "{" * 3000 + "}",
    ],
    ids=["deep", "huge-int", "deep-unclosed"],
)
def test_a_broken_trust_list_is_one_line(world, capsys, content):
    folder = prune_in_proj(world, capsys)
    trust_path().write_text(content)
    code, _, err = world.cli(capsys, world.other, "profile", folder)
    assert code == 2 and one_line(err) and "trust list" in err, err


BOOM = """
class Boom(BaseException):
    pass


def net():
    raise Boom("kaboom")


def leaves():
    raise SystemExit(3)


def generator_exit():
    raise GeneratorExit("closed")


def ctrl_c():
    raise KeyboardInterrupt
"""


@pytest.mark.parametrize(
    "factory, message", [("net", "raised Boom: kaboom"), ("leaves", "raised SystemExit: 3"),
                         ("generator_exit", "raised GeneratorExit: closed")],
)  # fmt: skip
def test_a_factory_raising_a_base_exception_is_one_line(tmp_path, capsys, factory, message):
    (tmp_path / "boom.py").write_text(BOOM)
    code, out, err = run_cli(capsys, "profile", f"{tmp_path / 'boom.py'}:{factory}")
    assert code == 2 and one_line(err) and message in err and not out, err


def test_a_module_raising_a_base_exception_when_imported_is_one_line(tmp_path, capsys):
    (tmp_path / "boom.py").write_text(BOOM + "\nraise Boom('at import')\n")
    code, _, err = run_cli(capsys, "profile", f"{tmp_path / 'boom.py'}:net")
    assert code == 2 and one_line(err) and "running it raised Boom: at import" in err, err


def test_keyboard_interrupt_still_interrupts(tmp_path, capsys):
    """Ctrl-C (KeyboardInterrupt) is the user stopping the command, not the factory failing: it is not swallowed."""
    (tmp_path / "boom.py").write_text(BOOM)
    with pytest.raises(KeyboardInterrupt):
        build_model(f"{tmp_path / 'boom.py'}:ctrl_c")
    code, _, err = run_cli(capsys, "profile", f"{tmp_path / 'boom.py'}:ctrl_c")
    assert code == 130 and err.strip().endswith("interrupted")


# -- 4. fuzzing the trust list: it loads, or one EdgepruneError line ----------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
ENTRY = st.fixed_dictionaries(
    {}, optional={k: JSON | st.text(max_size=70) for k in ("builder", "file", "sha256", "added")}
) | JSON  # fmt: skip
TRUST = st.one_of(
    st.binary(max_size=200),
    JSON.map(lambda v: json.dumps(v).encode()),
    st.lists(ENTRY, max_size=4).map(lambda e: json.dumps({"format": "edgeprune-trust/1", "trusted": e}).encode()),
    st.integers(1, 20_000).map(lambda n: b'{"format": "edgeprune-trust/1", "trusted": ' + b"[" * n + b"]" * n + b"}"),
)


@pytest.fixture(scope="module")
def fuzz_folder(tmp_path_factory):
    """A file: model folder saved once for every fuzzing example."""
    base = tmp_path_factory.mktemp("fuzz")
    (base / "models.py").write_text(MODELS)
    save(build_model(f"{base / 'models.py'}:net", remember=False), base / "m")
    return base


@pytest.mark.slow
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=TRUST)
@example(content=b'{"format": "edgeprune-trust/1", "trusted": ' + b"[" * 5000 + b"]" * 5000 + b"}")
@example(content=b'{"format": "edgeprune-trust/1", "trusted": [' + b"9" * 5000 + b"]}")
@example(content=b'{"format": "edgeprune-trust/1", "trusted": [{"builder": "x", "sha256": ' + b"[" * 3000 + b"}")
@example(content=b"\xff\xfe not utf-8")
def test_fuzzed_trust_list_loads_or_is_one_line(fuzz_folder, trust_list, content):
    trust_path().write_bytes(content)
    ref = parse_reference(f"{fuzz_folder / 'models.py'}:net")
    for action in (
        lambda: is_trusted(ref, sha256_file(fuzz_folder / "models.py")),
        lambda: load(fuzz_folder / "m"),
        lambda: record_trust(ref, sha256_file(fuzz_folder / "models.py")),
        lambda: edgeprune.load(fuzz_folder / "m"),
    ):
        try:
            action()
        except EdgepruneError as e:
            assert "\n" not in str(e), str(e)
