"""The CLI's core commands end to end, and one-line errors for bad input."""

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import run_cli

import edgeprune


def test_models_lists_the_zoo(capsys):
    code, out, _ = run_cli(capsys, "models")
    assert code == 0
    for name in ("vgg16", "alexnet", "resnet50", "resnet56", "mobilenetv2", "tiny"):
        assert name in out


@pytest.mark.slow
def test_prune_writes_loadable_folder_and_report(tmp_path, capsys):
    out_dir = tmp_path / "p"
    code, out, _ = run_cli(capsys, "prune", "tiny", "--mode", "flops", "--target", "0.5", "--out", str(out_dir))
    assert code == 0 and "reduction" in out and "features.0" in out
    listed = [".edgeprune-manifest.json", "model.json", "model.safetensors", "report.json"]  # the manifest: for --force
    assert sorted(p.name for p in out_dir.iterdir()) == listed
    report = json.loads((out_dir / "report.json").read_text())
    assert report["after"]["flops"] <= report["target"] and report["steps"]
    assert {"layer", "weight", "probability", "removed"} <= set(report["steps"][0])
    model = edgeprune.load(out_dir)
    assert sum(p.numel() for p in model.parameters()) == report["after"]["params"]
    # a pruned folder can be profiled and pruned again
    code, _, _ = run_cli(
        capsys, "prune", str(out_dir), "--mode", "params", "--target", "0.5", "--out", str(tmp_path / "q")
    )
    assert code == 0


@pytest.mark.slow
def test_absolute_target_with_unit(tmp_path, capsys):
    code, _, _ = run_cli(capsys, "prune", "resnet56", "--mode", "memory", "--target", "2.5MB", "--out", str(tmp_path))
    assert code == 0
    assert json.loads((tmp_path / "report.json").read_text())["after"]["memory_bytes"] <= 2_500_000


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv, message",
    [
        (["prune", "resnet9000", "--mode", "params", "--target", "0.5"], "unknown model 'resnet9000'"),
        (["prune", "tiny", "--mode", "latency", "--target", "0.5"], "a latency budget needs a latency table"),
        (["prune", "tiny", "--mode", "speed", "--target", "0.5"], "unknown cost 'speed'"),
        (["prune", "tiny", "--mode", "params", "--target", "1"], "not below"),
        (["prune", "tiny", "--mode", "params", "--target", "5M"], "not below"),
        (["prune", "tiny", "--mode", "params", "--target", "0"], "positive"),
        (["prune", "tiny", "--mode", "params", "--target", "10"], "unreachable"),
        (["prune", "tiny", "--mode", "params", "--target", "0.5", "--step", "1.5"], "step must be in"),
        (["prune", "tiny", "--mode", "params", "--target", "0.5", "--step", "0"], "step must be in"),
        (["prune", "tiny", "--mode", "params", "--target", "0.5", "--step", "abc"], "must be a number"),
        (["profile", "no/such/dir"], "not a model folder"),
    ],
)
def test_bad_input_one_line_error(tmp_path, capsys, argv, message):
    if argv[0] == "prune":
        argv = [*argv, "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) if "abc" in argv else _nothing():
        code, out, err = run_cli(capsys, *argv, catch_exit=False)
        assert code == 2 and message in err and err.count("\n") == 1 and not out
    if "abc" in argv:
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    assert not (tmp_path / "o" / "model.json").exists()


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_non_empty_out_needs_force_and_is_not_touched(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("precious")
    code, _, err = run_cli(capsys, "prune", "tiny", "--mode", "params", "--target", "0.5", "--out", str(tmp_path))
    assert code == 2 and "not empty" in err and "--force" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
    code, _, _ = run_cli(
        capsys, "prune", "tiny", "--mode", "params", "--target", "0.5", "--out", str(tmp_path), "--force"
    )
    assert code == 0 and (tmp_path / "keep.txt").read_text() == "precious"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_out(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    code, _, err = run_cli(capsys, "prune", "tiny", "--mode", "params", "--target", "0.5", "--out", str(locked / "x"))
    assert code == 2 and "cannot create" in err


def test_out_is_a_file(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    code, _, err = run_cli(capsys, "prune", "tiny", "--mode", "params", "--target", "0.5", "--out", str(f))
    assert code == 2 and "not a folder" in err


@pytest.fixture
def saved(tmp_path):
    model = edgeprune.prune(edgeprune.create("tiny"), "params", 0.5).model
    edgeprune.save(model, tmp_path)
    return tmp_path


@pytest.mark.slow
@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:1000]), "truncated"),
        (lambda d: (d / "model.safetensors").unlink(), "not found"),
        (lambda d: (d / "model.json").unlink(), "no model.json"),
        (lambda d: (d / "model.json").write_text("{not json"), "not valid JSON"),
        (lambda d: (d / "model.json").write_text('{"format": "other"}'), "not an edgeprune-model"),
        (
            lambda d: (d / "model.json").write_text(
                (d / "model.json").read_text().replace('"out_features": 10', '"out_features": 7')
            ),
            "model.safetensors disagrees",
        ),
        (
            lambda d: (d / "model.json").write_text(
                (d / "model.json").read_text().replace('"zoo:tiny"', '"zoo:vgg16"')
            ),
            "do not match",
        ),
    ],
)
def test_corrupt_model_files_give_one_line_errors(saved, capsys, damage, message):
    damage(saved)
    code, _, err = run_cli(capsys, "profile", str(saved))
    assert code == 2 and message in err and err.count("\n") == 1


def test_load_never_unpickles(saved, monkeypatch):
    import pickle

    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("pickle used"))
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load used"))
    assert edgeprune.load(saved)(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.slow
@pytest.mark.e2e
def test_console_script_error_has_no_traceback(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgeprune",
            "prune",
            "nope",
            "--mode",
            "params",
            "--target",
            "0.5",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "edgeprune prune: error: unknown model 'nope'; choose from: " + ", ".join(
        edgeprune.list_models()
    )


@pytest.mark.slow
@pytest.mark.e2e
def test_help_explains_every_option():
    proc = subprocess.run([sys.executable, "-m", "edgeprune", "prune", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for option in ("--mode", "--target", "--step", "--seed", "--criterion", "--min-filters", "--out", "--force"):
        assert option in proc.stdout


def test_every_subcommand_option_has_help():
    import argparse

    from edgeprune.cli import COMMANDS, build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == set(COMMANDS)
    for name, parser in sub.choices.items():
        for action in parser._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
        text = parser.format_help()
        assert "%%" not in text and parser.description, name
