"""Int8 that holds on every CPU: --target-cpu, 7-bit weights where x86 without VNNI saturates, an emulated AVX2 run.

x86 CPUs without VNNI add pairs of uint8 x int8 products into a saturating 16-bit sum (VPMADDUBSW). The
checks here are independent of the CPU the suite runs on: the stored weights are read back from the file
and the worst pair sum computed by hand, and where ``qemu-x86_64`` is installed the files are run on an
emulated AVX2-only CPU (Haswell) and compared with this CPU's outputs.
"""

import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from helpers import random_dataset
from onnx import numpy_helper
from torch import nn

from edgeprune.cpu import TARGETS, cpu_class, cpu_summary, reduce_range_for
from edgeprune.errors import EdgepruneError
from edgeprune.export import export_onnx
from edgeprune.quantize import file_target_cpu, int8_check, quantize_onnx

INT16_MAX = 32767


def _saturating_model():
    """A conv whose weights are all at the top of the int8 range: every pair of products of bright pixels
    overflows a 16-bit sum when the weights keep 8 bits."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)
    )
    with torch.no_grad():
        model[0].weight.fill_(0.25)
    return model.eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The saturating model's fp32 file and its int8 files for every target CPU."""
    folder = tmp_path_factory.mktemp("target-cpu")
    data = random_dataset((3, 8, 8), 4, train=64)
    fp32 = folder / "m.onnx"
    export_onnx(_saturating_model(), fp32, (3, 8, 8))
    out = {}
    for target in ("any", "vnni", "avx2", "native"):
        path = folder / f"m-{target}.onnx"
        out[target] = (path, quantize_onnx(fp32, path, data, images=32, seed=0, target_cpu=target))
    return data, fp32, out


def _int8_weights(path):
    """The int8 weight tensors of a QDQ file (initialisers feeding DequantizeLinear)."""
    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    weights = []
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            array = numpy_helper.to_array(inits[node.input[0]])
            if array.dtype == np.int8 and array.ndim >= 2:
                weights.append(array)
    assert weights
    return weights


def _worst_pair_sum(weights):
    """The largest |sum of two adjacent uint8 x int8 products| a kernel can form (activations up to 255)."""
    worst = 0
    for w in weights:
        flat = np.abs(w.reshape(w.shape[0], -1).astype(np.int64))
        if flat.shape[1] > 1:
            worst = max(worst, int((255 * (flat[:, :-1] + flat[:, 1:])).max()))
        worst = max(worst, int(255 * flat.max()))
    return worst


def test_cpu_class_from_flags_and_cpuid():
    vnni = frozenset({"avx2", "avx512f", "avx512_vnni"})
    assert cpu_class(vnni, "AVX512") == "vnni"
    assert cpu_class(vnni | {"amx_tile", "amx_int8"}, "AVX512") == "amx"
    assert cpu_class(frozenset({"avx2", "avx512f"}), "AVX512") == "avx512"
    assert cpu_class(frozenset({"avx2"}), "AVX2") == "avx2"
    assert cpu_class(vnni, "AVX2") == "avx2"  # cpuid (an emulated Haswell) wins over the host's /proc/cpuinfo
    assert cpu_class(frozenset({"avx2", "avx_vnni"}), "AVX2") == "vnni"  # AVX-VNNI without AVX-512
    assert cpu_class(frozenset({"sse4_2"}), "DEFAULT") == "other"
    summary = cpu_summary()
    assert summary["class"] in ("amx", "vnni", "avx512", "avx2", "arm", "other") and summary["model"]


@pytest.mark.parametrize(
    ("target", "here", "reduce"),
    [("any", "vnni", True), ("any", "avx2", True), ("avx2", "vnni", True), ("vnni", "avx2", False),
     ("native", "vnni", False), ("native", "amx", False), ("native", "arm", False), ("native", "avx2", True),
     ("native", "avx512", True), ("native", "other", True)],
)  # fmt: skip
def test_reduce_range_for_each_target(target, here, reduce):
    assert reduce_range_for(target, here) is reduce


def test_unknown_target_is_one_line():
    with pytest.raises(EdgepruneError, match="unknown target CPU 'arm9'; choose from: any, native"):
        reduce_range_for("arm9")
    assert TARGETS[0] == "any"


@pytest.mark.slow
def test_any_and_avx2_files_cannot_saturate_a_16_bit_pair_sum(files):
    _, _, out = files
    for target in ("any", "avx2"):
        path, info = out[target]
        assert _worst_pair_sum(_int8_weights(path)) <= INT16_MAX, target
        assert info["target_cpu"]["reduce_range"] and "7-bit" in info["weights"]
        assert file_target_cpu(path) == {"target": target, "reduce_range": True}
    path, info = out["vnni"]  # full 8-bit weights: the same model overflows the pair sum
    assert _worst_pair_sum(_int8_weights(path)) > INT16_MAX
    assert not info["target_cpu"]["reduce_range"] and file_target_cpu(path)["reduce_range"] is False
    native = out["native"][1]["target_cpu"]
    assert native["reduce_range"] == reduce_range_for("native", cpu_class())
    assert native["quantized_on"] == cpu_class()


def test_int8_check_says_which_cpu_it_ran_on(files):
    data, fp32, out = files
    check = int8_check(fp32, out["any"][0], data, max_drop=100.0)
    assert check["cpu"]["class"] == cpu_class() and check["cpu"]["model"]
    assert set(check["cpu"]["flags"]) >= {"avx2", "avx512f", "avx512_vnni", "amx_tile"}
    assert check["target_cpu"] == {"target": "any", "reduce_range": True}
    assert int8_check(fp32, fp32, data, max_drop=100.0)["target_cpu"] == {}  # an fp32 file records none


_RUNNER = """
import sys, numpy as np, onnxruntime as ort
x = np.load(sys.argv[1])
for path in sys.argv[3:]:
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    np.save(path + ".out.npy", s.run(None, {s.get_inputs()[0].name: x})[0])
print("ok")
"""


def _run(paths, x, tmp_path, emulate=None):
    """Each file's outputs on ``x`` in a fresh onnxruntime process, optionally on an emulated CPU."""
    np.save(tmp_path / "x.npy", x)
    cmd = [sys.executable, "-c", _RUNNER, str(tmp_path / "x.npy"), "-", *map(str, paths)]
    if emulate:
        cmd = [shutil.which("qemu-x86_64"), "-cpu", emulate, *cmd]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-2000:]
    return [np.load(str(p) + ".out.npy") for p in paths]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("qemu-x86_64") is None, reason="needs qemu-user (apt-get install qemu-user)")
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="qemu-user runs Linux x86-64 programs")
def test_on_an_emulated_avx2_cpu_only_the_any_file_keeps_its_outputs(files, tmp_path):
    """On Haswell (AVX2, no VNNI) the 8-bit file's sums saturate and its outputs change; the 7-bit one's do not."""
    data, _, out = files
    x = ((data.test_x[:8].float() / 255 - 0.5) / 0.25).numpy().astype(np.float32)
    paths = [out["any"][0], out["vnni"][0]]
    here = _run(paths, x, tmp_path)
    avx2 = _run(paths, x, tmp_path, emulate="Haswell")
    scale = np.abs(here[1]).max()
    assert np.abs(avx2[0] - here[0]).max() <= 1e-4 * max(1.0, scale)  # 'any': the same on every CPU
    if cpu_class() in ("vnni", "amx"):  # here the 8-bit file runs exactly; on AVX2 it saturates
        assert np.abs(avx2[1] - here[1]).max() > 0.05 * scale
