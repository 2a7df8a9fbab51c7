"""ExecuTorch (.pte) and LiteRT (.tflite): exports checked against PyTorch, evaluate and timing of the files, int8.

The runtimes are optional extras (``edgeprune[executorch]``, ``edgeprune[litert]``); the tests that need one skip,
saying so, where it is not installed. The exports share module fixtures: each format is exported once.
"""

import contextlib
import importlib.util
import io
import json
import platform
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import MINI
from helpers import assert_one_line_error, one_line_error, run_cli

import edgeprune
from edgeprune.cli import main
from edgeprune.data import Normalizer, load_dataset
from edgeprune.edge_export import check_format, format_for
from edgeprune.train import TrainConfig, train


def _installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


NEEDS = {
    "executorch": pytest.mark.skipif(
        not _installed("executorch"), reason="ExecuTorch is not installed (pip install 'edgeprune[executorch]')"
    ),
    "litert": pytest.mark.skipif(
        not _installed("litert_torch", "ai_edge_litert"),
        reason="LiteRT is not installed (pip install 'edgeprune[litert]')",
    ),
}
FORMATS = [pytest.param(fmt, marks=mark) for fmt, mark in NEEDS.items()]
SUFFIX = {"executorch": ".pte", "litert": ".tflite"}


@pytest.fixture(scope="module")
def trained(shared_cache, tmp_path_factory):
    """The tiny CNN (16 channels) trained 3 epochs on 600 mini images, saved as a model folder; 100 test images."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGEPRUNE_CACHE", str(shared_cache))
        data = load_dataset(MINI, limit_train=600, limit_test=100)
    torch.manual_seed(0)
    model = edgeprune.create("tiny", channels=16)
    train(model, data, TrainConfig(epochs=3, batch_size=64, seed=0), progress=False, threads=2)
    folder = tmp_path_factory.mktemp("edge") / "tiny"
    edgeprune.save(model.eval(), folder, (3, 32, 32))
    return model.eval(), data, folder


@pytest.fixture(scope="module", params=FORMATS)
def exported(request, trained, tmp_path_factory):
    """The trained model exported (fp32) to each format by the library."""
    from edgeprune.edge_export import export_edge

    fmt = request.param
    path = tmp_path_factory.mktemp(f"fp32-{fmt}") / f"tiny{SUFFIX[fmt]}"
    info = export_edge(trained[0], path, fmt)
    return fmt, path, info


@pytest.fixture(scope="module", params=FORMATS)
def quantized(request, trained, tmp_path_factory):
    """The trained model's folder quantized to int8 in each format by the CLI, as a user would: (fmt, path, JSON)."""
    fmt = request.param
    path = tmp_path_factory.mktemp(f"int8-{fmt}") / f"tiny-int8{SUFFIX[fmt]}"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        argv = ["export", str(trained[2]), "--format", fmt, "--out", str(path), "--int8", "--calibration", str(MINI)]
        code = main([*argv, "--calibration-images", "64", "--limit-test", "100", "--max-drop", "100", "--json"])
    assert code == 0
    return fmt, path, json.loads(out.getvalue())


def _scores(model, x):
    with torch.inference_mode():
        return model(x).numpy()


# -- fp32 exports ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_export_matches_torch_in_its_runtime(exported, trained):
    from edgeprune.edge_runtime import open_model

    fmt, path, info = exported
    assert info["format"] == fmt and info["precision"] == "fp32" and info["input_shape"] == [1, 3, 32, 32]
    assert info["check"]["max_abs_diff"] <= info["check"]["atol"] == 1e-4
    assert info["bytes"] == path.stat().st_size
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    # an independent check: other inputs, more of them, compared here
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    got = open_model(path).run(x.numpy())
    expected = _scores(trained[0], x)
    assert got.shape == expected.shape == (3, 10)
    assert np.max(np.abs(got - expected)) <= 1e-4


@pytest.mark.slow
def test_evaluate_of_the_file_gives_the_torch_accuracy(exported, trained):
    from edgeprune.edge_runtime import open_model
    from edgeprune.evaluate import evaluate

    fmt, path, _ = exported
    model, data, _ = trained
    got, ref = evaluate(path, data), evaluate(model, data)
    assert got["backend"] == fmt and got["images"] == ref["images"] == 100
    assert got["correct"] == ref["correct"]
    # the predictions themselves, image by image, from the runtime and from torch on the same preprocessing
    x = Normalizer(data.mean, data.std)(data.test_x[:20]).contiguous()
    assert (open_model(path).run(x.numpy()).argmax(1) == _scores(model, x).argmax(1)).all()


@pytest.mark.slow
def test_bench_times_the_file_in_its_runtime_in_a_fresh_process(exported):
    from edgeprune.backends import time_artifacts
    from edgeprune.measure import bench
    from edgeprune.report import bench_table

    fmt, path, _ = exported
    result = bench(path, runs=3, warmup=1, threads=1)
    ((name, measured),) = result["backends"].items()
    assert name == fmt and result["input_shape"] == [3, 32, 32]
    assert measured["latency_ms"]["n"] == 3 and 0 < measured["latency_ms"]["min"] <= measured["latency_ms"]["max"]
    assert measured["size"]["bytes"] == path.stat().st_size and measured["runtime"].startswith(
        "executorch" if fmt == "executorch" else "ai-edge-litert"
    )
    assert "params" not in result["complexity"] and "not counted" in bench_table(result)
    other = "litert" if fmt == "executorch" else "executorch"
    assert_one_line_error(lambda: bench(path, [other]), f"runs on {fmt} only")
    assert_one_line_error(lambda: time_artifacts({"m": (path, (3, 32, 32))}, other, runs=1), other, "loads")


@pytest.mark.slow
@NEEDS["litert"]
def test_a_failed_check_leaves_no_file(trained, tmp_path, monkeypatch):
    import edgeprune.edge_export as ee

    monkeypatch.setattr(ee, "runtime_diff", lambda *a, **k: 0.5)  # outputs that differ by 0.5
    assert_one_line_error(lambda: ee.export_edge(trained[0], tmp_path / "m.tflite", "litert"), "check failed", "0.5")
    assert list(tmp_path.iterdir()) == []


# -- int8 ------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_int8_file_keeps_the_accuracy_within_max_drop(quantized, trained):
    from edgeprune.edge_quantize import edge_int8_check
    from edgeprune.edge_runtime import open_model

    fmt, path, info = quantized
    check = info["check"]
    assert info["precision"] == "int8" and "per output channel" in info["scheme"]
    assert info["calibration"] == {"data": "cifar10-mini", "split": "train", "images": 64, "seed": 0}
    assert check["fp32"]["top1"] > 0.15  # it learnt something (chance: 0.1): the limit means something
    assert check["images"] == 100 and check["drop_points"] <= 3.0, check  # 3 of 100 images
    assert check["drop_points"] == pytest.approx(100 * (check["fp32"]["top1"] - check["int8"]["top1"]))
    as_cli = load_dataset(MINI, limit_test=100)  # the CLI's: mean and std of the whole training split
    strict = edge_int8_check(trained[0], path, as_cli, max_drop=check["drop_points"] - 0.5)
    assert not strict["passed"] and strict["drop_points"] == check["drop_points"], (strict, check)
    fp32_weights = 4 * sum(p.numel() for p in trained[0].parameters())
    assert path.stat().st_size < 0.5 * fp32_weights, (path.stat().st_size, fp32_weights)
    x = Normalizer(trained[1].mean, trained[1].std)(trained[1].test_x[:8]).contiguous()
    agree = (open_model(path).run(x.numpy()).argmax(1) == _scores(trained[0], x).argmax(1)).mean()
    assert agree >= 0.75  # int8 changes a few near-ties, not the model


_RUN_FILE = """
import sys, numpy as np
from edgeprune.edge_runtime import open_model
np.save(sys.argv[3], open_model(sys.argv[1], threads=1).run(np.load(sys.argv[2])))
"""


def _outputs(path, x, tmp_path, emulate=None):
    """The file's outputs on ``x`` in a fresh process, on this CPU or an emulated one (qemu-user)."""
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / f"y-{emulate or 'here'}.npy"
    cmd = [sys.executable, "-c", _RUN_FILE, str(path), str(tmp_path / "x.npy"), str(out)]
    cmd = [shutil.which("qemu-x86_64"), "-cpu", emulate, *cmd] if emulate else cmd
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return np.load(out)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("qemu-x86_64") is None, reason="needs qemu-user (apt-get install qemu-user)")
@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.machine() != "x86_64", reason="x86-64 Linux")
def test_int8_file_gives_the_same_outputs_on_an_emulated_avx2_cpu(quantized, trained, tmp_path):
    """XNNPACK's int8 kernels differ by instruction set; on Haswell (AVX2, no AVX-512, no VNNI) the outputs
    must be those of this CPU (measured: identical), so an int8 edge file's accuracy holds on every x86 CPU.

    LiteRT only in the suite: ExecuTorch runs the same XNNPACK kernels, but its runtime imports torch, which
    takes ~40 s under qemu; its .pte gave identical outputs on Haswell when run by hand (2026-12-05)."""
    fmt, path, _ = quantized
    if fmt != "litert":
        pytest.skip("ExecuTorch's emulated run is by hand only (its torch import takes ~40 s under qemu)")
    x = Normalizer(trained[1].mean, trained[1].std)(trained[1].test_x[:16]).contiguous().numpy()
    here, avx2 = _outputs(path, x, tmp_path), _outputs(path, x, tmp_path, emulate="Haswell")
    assert np.isfinite(here).all() and np.abs(here).max() > 0
    # one step of the int8 output's scale at most (a rounding difference, not saturation)
    step = np.abs(np.diff(np.unique(here))).min(initial=np.inf)
    assert np.abs(avx2 - here).max() <= max(step, 1e-6) * 1.01
    assert (avx2.argmax(1) == here.argmax(1)).all()


# -- bad input -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--format", "tensorrt", "--out", "m.pte"], "unknown format 'tensorrt'"),
        (["--format", "litert", "--out", "m.pte"], "must end in .tflite"),
        (["--format", "executorch", "--out", "m.onnx"], "must end in .pte"),
        (["--out", "m.bin"], "give --format"),
        (["--onnx", "a.onnx", "--out", "b.onnx"], "not both"),
        (["--onnx", "a.onnx", "--format", "litert"], "--onnx writes ONNX"),
        ([], "give the file to write"),
        (["--format", "executorch", "--out", "m.pte", "--opset", "12"], "--opset: only for --format onnx"),
    ],
)
def test_export_argument_errors_are_one_line(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "export", "tiny", *argv)
    assert message in one_line_error(err, code)
    assert list(tmp_path.iterdir()) == []


def test_format_from_the_suffix():
    assert [format_for(n) for n in ("a.onnx", "b.PTE", "c.tflite")] == ["onnx", "executorch", "litert"]
    assert check_format("litert", "x.tflite") == "litert"
    assert_one_line_error(lambda: format_for("model"), "give --format")


@pytest.mark.slow  # reads the mini data set
@pytest.mark.parametrize("fmt", ["executorch", "litert"])
def test_a_missing_runtime_is_one_line_naming_the_extra(tmp_path, capsys, monkeypatch, fmt):
    import edgeprune.edge_runtime as er

    monkeypatch.setitem(er._RUNTIMES, fmt, ("edgeprune_no_such_runtime", fmt))
    target = tmp_path / f"m{SUFFIX[fmt]}"
    code, _, err = run_cli(capsys, "export", "tiny", "--out", target)
    assert f"pip install 'edgeprune[{fmt}]'" in one_line_error(err, code)
    assert not target.exists()
    target.write_bytes(b"not a model")
    code, _, err = run_cli(capsys, "evaluate", target, "--data", MINI, "--limit-test", 10)
    assert f"the {fmt} runtime is not installed" in one_line_error(err, code)


@pytest.mark.slow  # imports the runtime, reads the mini data set
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_file_the_runtime_cannot_load_is_one_line(tmp_path, capsys, fmt):
    target = tmp_path / f"m{SUFFIX[fmt]}"
    code, _, err = run_cli(capsys, "evaluate", target, "--data", MINI, "--limit-test", 10)
    assert "no such file" in one_line_error(err, code)
    target.write_bytes(b"\0" * 64)
    code, _, err = run_cli(capsys, "evaluate", target, "--data", MINI, "--limit-test", 10)
    assert f"{fmt} cannot load it" in one_line_error(err, code)


def test_unknown_backend_names_the_edge_runtimes():
    from edgeprune.backends import check_backends

    assert check_backends(["litert", "torch", "litert"]) == ("litert", "torch")
    assert_one_line_error(lambda: check_backends("tensorrt"), "executorch", "litert", "onnxruntime")


@pytest.mark.slow
@NEEDS["litert"]
def test_bench_exports_and_times_a_model_on_litert(trained, capsys):
    folder = trained[2]
    code, out, err = run_cli(capsys, "bench", folder, "--backends", "onnxruntime", "litert", "--runs", 3,
                             "--warmup", 1, "--threads", 1)  # fmt: skip
    assert code == 0, err
    table = [line.split() for line in out.splitlines() if line.split()[:1] in (["onnxruntime"], ["litert"])]
    rows = {words[0]: " ".join(words) for words in table if words[1].replace(".", "").isdigit()}  # not the notes
    assert set(rows) == {"litert", "onnxruntime"}
    assert "litert: model.tflite" in " ".join(out.split()) and "onnxruntime: model.onnx" in " ".join(out.split())
    assert "litert export: batch 1, max |litert - torch| = " in out
    code, _, err = run_cli(capsys, "bench", folder, "--backends", "litert", "--batch-size", 2)
    assert "exported for batch 1" in one_line_error(err, code)
