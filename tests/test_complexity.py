"""Complexity numbers against independent counts (sum of numel, torch's FLOP counter, hooks)."""

import json

import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import edgeprune
from edgeprune.cli import main
from edgeprune.complexity import LayerShape, onnx_profile, record_shapes
from edgeprune.errors import EdgepruneError
from edgeprune.export import export_onnx
from edgeprune.models import list_models

ZOO = list_models()


def torch_flops(model: nn.Module, shape=(3, 32, 32)) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(torch.zeros(1, *shape))
    return counter.get_total_flops()


def hook_memory(model: nn.Module, shape=(3, 32, 32)) -> int:
    """4 bytes x (all parameters + every conv/linear output element), counted by hooks."""
    outputs = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, o: outputs.append(o.numel()))
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    with torch.no_grad():
        model.eval()(torch.zeros(1, *shape))
    for h in hooks:
        h.remove()
    return 4 * (sum(p.numel() for p in model.parameters()) + sum(outputs))


@pytest.mark.parametrize("name", ZOO)
def test_zoo_totals_match_independent_counts(name):
    model = edgeprune.create(name)
    prof = record_shapes(model, torch.zeros(1, 3, 32, 32))
    assert prof.total("params") == sum(p.numel() for p in model.parameters())
    assert prof.total("flops") == pytest.approx(torch_flops(model) / 2, rel=0.005)
    assert prof.total("memory") == hook_memory(model)
    assert prof.other_params == 0  # every parameter belongs to a conv/linear (BN counted with its conv)


def test_hand_computed_conv_bn_and_depthwise():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8)
    )
    prof = record_shapes(model, torch.zeros(1, 3, 8, 8))
    conv, dw = prof.layers
    assert conv == LayerShape("0", "conv", 3, 8, 1, 9, 64, False, "1")
    assert (conv.params, conv.flops, conv.memory) == (3 * 9 * 8 + 2 * 8, 3 * 9 * 8 * 64, 4 * (232 + 8 * 64))
    assert dw.depthwise and (dw.params, dw.flops) == (9 * 8 + 8, 9 * 8 * 16)
    assert dw.resized(c_out=5) == LayerShape("2", "conv", 5, 5, 5, 9, 16, True, None)


def test_linear_in_3d_input_counts_every_position():
    prof = record_shapes(nn.Linear(4, 6), torch.zeros(1, 5, 4))
    assert prof.total("flops") == 4 * 6 * 5


def test_profile_works_on_any_module_and_marks_output_layer():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    prof = edgeprune.profile(model, (1, 8, 8))
    assert prof.prunable == {"0": True, "3": False}
    assert prof.total("params") == sum(p.numel() for p in model.parameters())


def test_shares_sum_to_one_and_json_cli(capsys):
    assert main(["profile", "resnet56", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data["total"]) == {"params", "flops", "memory_bytes"}
    assert data["total"]["params"] == sum(p.numel() for p in edgeprune.create("resnet56").parameters())
    for key in ("params_share", "flops_share", "memory_share"):
        assert sum(r[key] for r in data["layers"]) == pytest.approx(1.0)
    residual = [g for g in data["groups"] if g["reason"] == "residual-tied"]
    assert residual and all(not g["prunable"] for g in residual)


def test_profile_table_and_plot(tmp_path, capsys):
    png = tmp_path / "shares.png"
    assert main(["profile", "vgg16", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "features.0" in out and "TOTAL" in out and "output layer" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _hand_built_onnx(path):
    """Conv (2 groups, bias) -> BatchNorm -> Relu -> pool -> Gemm (transB) -> MatMul with a Constant weight."""

    def weight(name, *dims):
        return helper.make_tensor(name, TensorProto.FLOAT, dims, [0.01] * int(torch.tensor(dims).prod()))

    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", group=2, pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "s", "o", "m", "v"], ["n"], name="bn"),
        helper.make_node("Relu", ["n"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "g", "gb"], ["y"], name="fc", transB=1),
        helper.make_node("Constant", [], ["k"], value=weight("kv", 10, 5)),
        helper.make_node("MatMul", ["y", "k"], ["z"], name="head"),
    ]
    inits = [weight("w", 8, 2, 3, 3), weight("b", 8), weight("g", 10, 8), weight("gb", 10)]
    inits += [weight(n, 8) for n in ("s", "o", "m", "v")]
    graph = helper.make_graph(
        nodes,
        "hand",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, "H", "W"])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 5])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_onnx_profile_of_a_hand_built_graph(tmp_path):
    path = tmp_path / "hand.onnx"
    _hand_built_onnx(path)
    prof = onnx_profile(path, (4, 6, 6))
    conv, fc, head = prof.layers
    # conv: (4/2)*3*3*8 = 144 weights + 8 bias + 2*8 BatchNorm affine; 6x6 output map
    assert (conv.params, conv.flops, conv.memory) == (168, 144 * 36, 4 * (168 + 8 * 36))
    assert (conv.groups, conv.bn) == (2, "bn")
    assert (fc.c_in, fc.c_out, fc.params, fc.flops, fc.memory) == (8, 10, 90, 80, 4 * (90 + 10))
    assert (head.c_in, head.c_out, head.params, head.flops, head.memory) == (10, 5, 50, 50, 4 * (50 + 5))
    # the running mean and variance are not parameters; nothing is left unattributed
    assert prof.other_params == 0 and prof.totals() == {"params": 308, "flops": 5314, "memory_bytes": 2444}
    with pytest.raises(EdgepruneError, match=r"input's size is not fixed \(4x\?x\?\); give it"):
        onnx_profile(path)
    with pytest.raises(EdgepruneError, match=r"takes 4x\?x\? inputs, not 3x6x6"):
        onnx_profile(path, (3, 6, 6))
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf at all")
    with pytest.raises(EdgepruneError, match="junk.onnx: not a readable ONNX model"):
        onnx_profile(tmp_path / "junk.onnx")


@pytest.mark.parametrize("name", ["tiny", "mobilenetv2"])
def test_onnx_profile_of_an_export_matches_the_torch_profile(name, tmp_path):
    model = edgeprune.create(name)
    export_onnx(model, tmp_path / "m.onnx", (3, 32, 32))
    ours, theirs = edgeprune.profile(model), onnx_profile(tmp_path / "m.onnx")
    assert theirs.input_shape == (3, 32, 32) and len(theirs.layers) == len(ours.layers)
    # the exporter folds each BatchNorm into its conv: C_out bias values instead of 2 * C_out affine ones
    folded = sum(layer.c_out for layer in ours.layers if layer.bn)
    assert folded > 0
    t, o = ours.totals(), theirs.totals()
    assert o == {"params": t["params"] - folded, "flops": t["flops"], "memory_bytes": t["memory_bytes"] - 4 * folded}
    assert [(a.c_in, a.c_out, a.groups, a.spatial) for a in theirs.layers] == [
        (b.c_in, b.c_out, b.groups, b.spatial) for b in ours.layers
    ]


def test_cli_profile_of_an_onnx_file(tmp_path, capsys):
    path = tmp_path / "hand.onnx"
    _hand_built_onnx(path)
    assert main(["profile", str(path), "--in-channels", "4", "--input-size", "6", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total"] == {"params": 308, "flops": 5314, "memory_bytes": 2444}
    assert main(["profile", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "give it (--input-size)" in err
    assert main(["profile", str(tmp_path / "missing.onnx")]) == 2
    assert "missing.onnx: no such file" in capsys.readouterr().err
