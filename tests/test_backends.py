"""Backends: layer block specs on torch and onnxruntime, several input shapes in one timed job, bad specs."""

import json
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import edgeprune
from edgeprune.backends import (
    ACTIVATIONS,
    BACKENDS,
    layer_output_shape,
    normalize_layer_spec,
    onnx_block,
    read_layer_spec,
    time_artifacts,
    torch_block,
    write_artifact,
    write_layer_spec,
)
from edgeprune.errors import EdgepruneError

CONV = {"kind": "conv", "c_in": 8, "c_out": 16, "kernel": [3, 3], "stride": [2, 2], "padding": [1, 1],
        "dilation": [1, 1], "groups": 1, "bias": False, "norm": True, "act": "relu6",
        "input_shape": [8, 10, 12]}  # fmt: skip
DEPTHWISE = {"kind": "conv", "c_in": 8, "c_out": 8, "kernel": 3, "groups": 8, "act": "silu", "input_shape": [8, 7, 7]}
SAME = {"kind": "conv", "c_in": 4, "c_out": 6, "kernel": [4, 3], "padding": "same", "dilation": [1, 2],
        "input_shape": [4, 9, 10]}  # fmt: skip
VALID = {"kind": "conv", "c_in": 4, "c_out": 6, "kernel": [2, 2], "padding": "valid", "input_shape": [4, 5, 5]}
LINEAR = {"kind": "linear", "c_in": 24, "c_out": 10, "bias": True, "norm": False, "act": "gelu", "input_shape": [24]}
STATS = {"median", "p90", "mean", "min", "max", "n"}


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("specs")
    return {name: write_layer_spec(spec, folder / f"{name}.json") for name, spec in
            {"conv": CONV, "depthwise": DEPTHWISE, "linear": LINEAR}.items()}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_specs_of_each_kind_and_shape_timed_in_one_job(specs, backend, tmp_path):
    artifacts = {name: (path, tuple(read_layer_spec(path)["input_shape"])) for name, path in specs.items()}
    if backend == "torch":  # a whole model beside the blocks, at its own input shape
        folder, info = write_artifact("torch", edgeprune.create("tiny"), tmp_path, (3, 32, 32))
        assert info == {"kind": "folder"}
        artifacts["tiny"] = (folder, (3, 32, 32))
    stats = time_artifacts(artifacts, backend, runs=3, warmup=1)
    assert set(stats) == set(artifacts)
    for s in stats.values():
        assert set(s) == STATS and s["n"] == 3 and 0 < s["min"] <= s["median"] <= s["max"]


@pytest.mark.filterwarnings("ignore:Using padding='same'")  # torch's note on an even kernel, expected here
@pytest.mark.parametrize("act", [*ACTIVATIONS, None])
@pytest.mark.parametrize("base", [CONV, DEPTHWISE, SAME, VALID, LINEAR], ids=["conv", "dw", "same", "valid", "linear"])
def test_onnx_block_matches_torch_block_shape(base, act):
    spec = {**base, "act": act}
    block = torch_block(spec, seed=1)
    assert not block.training
    x = np.random.default_rng(0).standard_normal((2, *spec["input_shape"]), dtype=np.float32)
    with torch.inference_mode():
        expected = tuple(block(torch.from_numpy(x)).shape)
    model = onnx.load_from_string(onnx_block(spec, seed=1))
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"input": x})
    assert out.shape == expected == (2, *layer_output_shape(normalize_layer_spec(spec)))
    assert np.isfinite(out).all()


def test_torch_block_layers_and_seed():
    block = torch_block(CONV, seed=3)
    assert [type(m).__name__ for m in block] == ["Conv2d", "BatchNorm2d", "ReLU6"]
    assert block[0].bias is None and block[0].stride == (2, 2)
    assert block[0].weight.is_contiguous(memory_format=torch.channels_last)
    state = torch.random.get_rng_state()
    assert torch.equal(torch_block(CONV, seed=3)[0].weight, block[0].weight)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random stream untouched
    linear = torch_block({**LINEAR, "norm": True, "act": "leaky_relu"})
    assert [type(m).__name__ for m in linear] == ["Linear", "BatchNorm1d", "LeakyReLU"]


def test_onnx_block_folds_the_norm_into_a_bias():
    ops = lambda spec: [n.op_type for n in onnx.load_from_string(onnx_block(spec)).graph.node]  # noqa: E731
    names = lambda spec: {i.name for i in onnx.load_from_string(onnx_block(spec)).graph.initializer}  # noqa: E731
    assert ops(CONV) == ["Conv", "Clip"] and "bias" in names(CONV)  # bias false, norm true: a bias
    assert "bias" not in names({**CONV, "norm": False})
    assert ops(LINEAR) == ["Gemm", "Div", "Erf", "Add", "Mul", "Mul"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"kind": "pool"}, "kind must be one of conv, linear"),
        ({"kernel": None}, "a conv spec needs kernel"),
        ({"kernel": [3]}, r"kernel must be \[h, w\] of integers >= 1"),
        ({"c_out": 0}, "c_out must be a positive integer"),
        ({"groups": 3}, "groups 3 must divide c_in 8 and c_out 16"),
        ({"input_shape": [4, 10, 12]}, "has 4 channels but c_in is 8"),
        ({"input_shape": [8, 10]}, r"input_shape of a conv spec must be \[C, H, W\]"),
        ({"act": "tanh"}, "act must be null or one of relu"),
        ({"bias": 1}, "bias must be true or false"),
        ({"padding": [0, 0], "kernel": [13, 3]}, "larger than the padded input"),
        ({"stride": [1, -1]}, r"stride must be \[h, w\] of integers >= 1"),
        ({"wieght": 1}, "unknown key"),
        ({"padding": "full"}, r"padding must be \[h, w\]"),
        ({"padding": "same"}, "padding 'same' needs stride"),
    ],
)
def test_bad_spec_is_one_line(tmp_path, change, message):
    spec = {k: v for k, v in {**CONV, **change}.items() if v is not None}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(EdgepruneError, match=message) as info:
        time_artifacts({"bad": (path, (8, 10, 12))}, "onnxruntime", runs=1)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    with pytest.raises(EdgepruneError, match=message):
        write_layer_spec(spec, tmp_path / "other.json")


def test_other_bad_artifacts_are_one_line(specs, tmp_path):
    missing = {"kind": "linear", "c_in": 4, "input_shape": [4]}
    with pytest.raises(EdgepruneError, match="a linear spec needs c_out"):
        write_layer_spec(missing, tmp_path / "m.json")
    with pytest.raises(EdgepruneError, match="a linear spec takes no kernel, padding"):
        write_layer_spec({**LINEAR, "kernel": [3, 3], "padding": 1}, tmp_path / "m.json")
    (tmp_path / "junk.json").write_text("{not json")
    cases = [
        ({"x": (tmp_path / "junk.json", (8,))}, "onnxruntime", "not a layer block spec"),
        ({"x": (tmp_path / "gone.json", (8,))}, "onnxruntime", "gone.json: no such file"),
        ({"x": (specs["conv"], (8, 10, 10))}, "torch", r"the spec's input_shape is \[8, 10, 12\], not \[8, 10, 10\]"),
        ({"x": (tmp_path / "m.onnx", (3, 8, 8))}, "torch", "torch loads folder, program, layer artifacts, not a onnx"),
        ({"x": (specs["conv"], (8, 10, 12))}, "tflite", "unknown backend 'tflite'"),
        ({}, "torch", "no artifacts given"),
    ]
    for artifacts, backend, message in cases:
        with pytest.raises(EdgepruneError, match=message) as info:
            time_artifacts(artifacts, backend, runs=1)
        assert "\n" not in str(info.value)
    with pytest.raises(EdgepruneError, match="runs must be positive"):
        time_artifacts({"x": (specs["conv"], (8, 10, 12))}, "torch", runs=0)


@pytest.mark.slow
@pytest.mark.e2e
def test_backends_module_imports_neither_torch_nor_edgeprune():
    import subprocess

    from edgeprune.backends import worker as backends

    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('b', {str(backends.__file__)!r})\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['b'] = m; spec.loader.exec_module(m)\n"
        "m.onnx_block({'kind': 'linear', 'c_in': 2, 'c_out': 2, 'input_shape': [2]})\n"
        "m._sibling('energy').RaplMeter().start()\n"
        "print(sorted(n for n in sys.modules if n == 'torch' or n.startswith('edgeprune')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.slow
def test_blocked_order_times_each_artifact_back_to_back(specs):
    artifacts = {name: (path, tuple(read_layer_spec(path)["input_shape"])) for name, path in specs.items()}
    stats = time_artifacts(artifacts, "onnxruntime", runs=4, warmup=1, order="blocked")
    assert set(stats) == set(artifacts) and all(s["n"] == 4 and s["min"] > 0 for s in stats.values())
    with pytest.raises(EdgepruneError, match="unknown timing order 'random'"):
        time_artifacts(artifacts, "onnxruntime", runs=1, order="random")
