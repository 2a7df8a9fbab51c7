"""The command line's shape: --help imports no torch, one spelling per option (old ones still accepted), and
prune's candidate search."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from conftest import MINI
from helpers import one_line_error, run_cli

from edgeprune.cli import COMMANDS, build_parser

NO_TORCH = textwrap.dedent("""
    import sys
    from edgeprune.cli import main
    try:
        main(sys.argv[1:])
    except SystemExit:
        pass
    print("torch imported" if "torch" in sys.modules else "no torch")
""")


def _imports_torch(*argv: str) -> bool:
    """Whether ``edgeprune *argv`` imports torch, run in a fresh interpreter (this one has torch already)."""
    proc = subprocess.run([sys.executable, "-c", NO_TORCH, *argv], capture_output=True, text=True, timeout=120)
    last = proc.stdout.strip().splitlines()[-1]
    return last == "torch imported"


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.parametrize("argv", [["--help"], *([name, "--help"] for name in COMMANDS)])
def test_help_imports_no_torch(argv):
    assert not _imports_torch(*argv), argv


@pytest.mark.slow
@pytest.mark.e2e
def test_import_edgeprune_is_lazy_and_complete():
    code = "import sys, edgeprune; names = dir(edgeprune); print('torch' in sys.modules, ' '.join(edgeprune.__all__))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    torch_loaded, names = proc.stdout.strip().split(" ", 1)
    assert torch_loaded == "False"
    import edgeprune

    assert set(names.split()) <= set(dir(edgeprune))
    for name in names.split():
        assert getattr(edgeprune, name) is not None
    from edgeprune.errors import EdgepruneError

    assert edgeprune.EdgepruneError is EdgepruneError and edgeprune.__version__
    with pytest.raises(AttributeError):
        edgeprune.no_such_name  # noqa: B018


def test_version_matches_the_package_metadata(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"edgeprune {version('edgeprune')}"
    assert not _imports_torch("--version")


@pytest.mark.slow
@pytest.mark.e2e
def test_models_imports_no_torch():
    assert not _imports_torch("models")


def test_the_light_zoo_list_agrees_with_the_registered_models():
    """``ZOO`` names and describes the zoo without torch; importing every file must register the same."""
    import importlib

    from edgeprune.models import registry

    for module in {module for module, _ in registry.ZOO.values()}:
        importlib.import_module(f"edgeprune.models.{module}")
    registered = {name: entry.description for name, entry in registry._REGISTRY.items() if name in registry.ZOO}
    assert registered == {name: text for name, (_, text) in registry.ZOO.items()}


# -- one spelling, the old one still accepted --------------------------------------------------------------------


def _parse(*argv: str):
    return build_parser().parse_args(list(argv))


def test_backend_and_backends_are_one_option():
    assert _parse("lut", "tiny", "--backends", "torch", "--out", "t.json").backend == "torch"
    assert _parse("lut", "tiny", "--backend", "torch", "--out", "t.json").backend == "torch"
    assert _parse("bench", "tiny", "--backend", "onnxruntime").backends == ["onnxruntime"]
    assert _parse("bench", "tiny", "--backends", "torch", "onnxruntime").backends == ["torch", "onnxruntime"]
    assert _parse("sweep", "tiny", "--backend", "torch", "--out", "o").backends == ["torch"]


def test_export_data_is_calibration():
    assert _parse("export", "tiny", "--onnx", "t.onnx", "--int8", "--data", "d").calibration == "d"
    assert _parse("export", "tiny", "--onnx", "t.onnx", "--int8", "--calibration", "d").calibration == "d"


def test_threads_is_one_option_checked_at_parse_time(capsys):
    commands = {
        "bench": ["bench", "tiny"],
        "lut": ["lut", "tiny", "--out", "t.json"],
        "sweep": ["sweep", "tiny", "--out", "o"],
        "evaluate": ["evaluate", "tiny", "--data", "d"],
        "compare": ["compare", "tiny", "--data", "d", "--target", "0.5", "--out", "o"],
    }
    for name, argv in commands.items():
        with pytest.raises(SystemExit) as info:
            _parse(*argv, "--threads", "0")
        assert info.value.code == 2, name
        assert "argument --threads: must be from 1 to" in capsys.readouterr().err, name
        assert _parse(*argv, "--threads", "3").threads == 3
    assert _parse(*commands["bench"]).threads is None  # all cores
    assert _parse(*commands["lut"]).threads == 1  # a table is measured as deployed


def test_target_given_once_or_repeated_means_the_same():
    once = _parse("compare", "tiny", "--data", "d", "--out", "o", "--target", "params=0.5", "flops=0.3")
    repeated = _parse("compare", "tiny", "--data", "d", "--out", "o", "--target", "params=0.5", "--target", "flops=0.3")
    assert once.target == repeated.target == ["params=0.5", "flops=0.3"]
    prune = _parse("prune", "--target", "flops=0.5", "tiny", "--out", "o", "--target", "memory=4MB")
    assert prune.target == ["flops=0.5", "memory=4MB"] and prune.model == "tiny"


def test_compare_round_to_is_refused_in_one_line(tmp_path, capsys):
    code, _, err = run_cli(capsys, "compare", "tiny", "--data", MINI, "--target", "0.5", "--round-to", "8",
                           "--out", tmp_path / "o")  # fmt: skip
    assert "--round-to: compare does not support it" in one_line_error(err, code)
    assert not (tmp_path / "o").exists()


# -- prune's candidate search ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_prune_candidates_lists_each_and_meets_the_budget(tmp_path, capsys):
    out = tmp_path / "k3"
    code, text, err = run_cli(capsys, "prune", "tiny", "--mode", "flops", "--target", "0.5", "--candidates", "3",
                              "--out", out)  # fmt: skip
    assert code == 0, err
    assert "3 candidates ranked by flops" in text
    report = json.loads((out / "report.json").read_text())
    rows = report["search"]["candidates"]
    assert len(rows) == 3 and sum(row["kept"] for row in rows) == 1
    assert [row["seed"] for row in rows] == [0, 1, 2] and {row["kind"] for row in rows} == {"weighted"}
    for row in rows:  # each row of the table printed: its seed and rank
        assert any(line.startswith(f"weighted | {row['seed']} |") and f"| {row['rank']} |" in line
                   for line in text.splitlines())  # fmt: skip
    budget = report["budget"]["flops"]
    assert budget["met"] and budget["after"] <= 0.5 * budget["before"]
    kept = next(row for row in rows if row["kept"])
    assert report["after"]["flops"] == kept["costs"]["flops"]


def test_prune_no_fill_with_one_candidate_is_algorithm_1(tmp_path, capsys):
    import torch

    import edgeprune
    from edgeprune.pruning import prune

    code, _, err = run_cli(capsys, "prune", "tiny", "--mode", "flops", "--target", "0.5", "--no-fill",
                           "--candidates", "1", "--out", tmp_path / "a")  # fmt: skip
    assert code == 0, err
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert "search" not in report and "fill" not in report
    torch.manual_seed(0)  # as prune does before building the model
    expected = prune(edgeprune.create("tiny"), "flops", 0.5, seed=0, fill=False).report()
    widths = {layer["name"]: layer["filters_after"] for layer in report["layers"]}
    assert widths == {layer["name"]: layer["filters_after"] for layer in expected["layers"]}
    assert report["steps"] == expected["steps"]
