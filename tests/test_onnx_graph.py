"""Complexity of .onnx files counted from their graphs, against hand counts, torch's FLOP counter and sum(numel)."""

import json
import warnings

import onnx
import onnxruntime
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import edgeprune
from edgeprune.cli import main
from edgeprune.errors import EdgepruneError
from edgeprune.export import export_onnx
from edgeprune.measure import prepare
from edgeprune.onnx_graph import onnx_profile

# -- hand-built graphs ------------------------------------------------------------------------------------


def _weight(name, *dims):
    return helper.make_tensor(name, TensorProto.FLOAT, dims, [0.01] * int(torch.tensor(dims).prod()))


def _save(path, nodes, inputs, outputs, inits):
    graph = helper.make_graph(nodes, "hand", inputs, outputs, inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _hand_built_onnx(path):
    """Conv (2 groups, bias) -> BatchNorm -> Relu -> pool -> Gemm (transB) -> MatMul with a Constant weight."""
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", group=2, pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "s", "o", "m", "v"], ["n"], name="bn"),
        helper.make_node("Relu", ["n"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "g", "gb"], ["y"], name="fc", transB=1),
        helper.make_node("Constant", [], ["k"], value=_weight("kv", 10, 5)),
        helper.make_node("MatMul", ["y", "k"], ["z"], name="head"),
    ]
    inits = [_weight("w", 8, 2, 3, 3), _weight("b", 8), _weight("g", 10, 8), _weight("gb", 10)]
    inits += [_weight(n, 8) for n in ("s", "o", "m", "v")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, "H", "W"])
    _save(path, nodes, [x], [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 5])], inits)


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
    with pytest.raises(EdgepruneError, match="missing.onnx: no such file"):
        onnx_profile(tmp_path / "missing.onnx")


def test_hand_built_conv_transpose_counts_input_positions(tmp_path):
    """ConvTranspose weight (C_in, C_out/g, k...): F = C_in * (C_out/g) * k * H_in * W_in."""
    path = tmp_path / "deconv.onnx"
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="up", group=2, strides=[2, 2], pads=[1, 1, 1, 1])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 5])
    _save(path, [node], [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [_weight("w", 4, 3, 4, 4)])
    (layer,) = onnx_profile(path).layers
    assert (layer.kind, layer.c_in, layer.c_out, layer.groups, layer.kernel) == ("conv_transpose", 4, 6, 2, 16)
    assert (layer.in_spatial, layer.spatial) == (25, 100)  # 5x5 -> 10x10
    assert (layer.params, layer.flops) == (4 * 3 * 16, 4 * 3 * 16 * 25)


@pytest.mark.slow
def test_two_inputs_and_an_unrunnable_graph_are_one_line_errors(tmp_path):
    two = tmp_path / "two.onnx"
    a, b = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in "ab")
    _save(two, [helper.make_node("Add", ["a", "b"], ["c"])], [a, b], [helper.make_tensor_value_info("c", 1, None)], [])
    with pytest.raises(EdgepruneError, match="two.onnx: has 2 inputs; only single-input models can be measured"):
        onnx_profile(two)
    # an op nobody knows: no inference can type its output and onnxruntime cannot load the graph
    odd = tmp_path / "odd.onnx"
    nodes = [helper.make_node("Warp", ["x"], ["u"], domain="my.ops"), helper.make_node("Conv", ["u", "w"], ["y"])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "odd", [x], [y], [_weight("w", 4, 2, 3, 3)])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("my.ops", 1)]
    onnx.save(helper.make_model(graph, opset_imports=opsets), odd)
    with pytest.raises(EdgepruneError, match=r"odd.onnx: cannot read the shape of 'u': onnxruntime failed") as err:
        onnx_profile(odd)
    assert "\n" not in str(err.value)


@pytest.mark.slow
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


# -- user-style nets exported by torch (the failures of issue 10) -----------------------------------------


class SENet(nn.Module):
    """Conv-BN-ReLU, a squeeze-and-excitation block (1x1 convs, or Linear layers and a view), a linear head."""

    def __init__(self, linear: bool = False, c: int = 8):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        layer = nn.Linear if linear else (lambda i, o: nn.Conv2d(i, o, 1))
        self.linear, self.fc1, self.fc2 = linear, layer(c, c // 4), layer(c // 4, c)
        self.head = nn.Linear(c, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        if self.linear:  # torch writes view(b, c, 1, 1) as Shape -> Gather -> Concat -> Reshape
            b, c = x.shape[:2]
            s = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3)))))).view(b, c, 1, 1)
        else:  # GlobalAveragePool -> Conv -> Relu -> Conv -> Sigmoid -> Mul
            s = torch.sigmoid(self.fc2(torch.relu(self.fc1(nn.functional.adaptive_avg_pool2d(x, 1)))))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x * s, 1), 1))


def _group_norm_net():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.GroupNorm(2, 8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    )  # fmt: skip


def _decoder():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1, groups=2), nn.BatchNorm2d(4), nn.ReLU(),
        nn.ConvTranspose2d(4, 2, 3, padding=1),
    )  # fmt: skip


def _conv1d_net():
    return nn.Sequential(
        nn.Conv1d(2, 8, 5, padding=2), nn.BatchNorm1d(8), nn.ReLU(), nn.Conv1d(8, 8, 3, groups=8),
        nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(8, 4),
    )  # fmt: skip


def _conv3d_net():
    return nn.Sequential(
        nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 4, 3, stride=2), nn.Flatten(), nn.Linear(108, 3)
    )


# name: (factory, input shape, parameters lost to BatchNorms folded into convs, kinds of the counted layers)
NETS = {
    "se_conv": (SENet, (3, 16, 16), 8, ["conv", "conv", "conv", "linear"]),  # BN -> the bias-free conv's bias
    "se_linear": (lambda: SENet(linear=True), (3, 16, 16), 8, ["conv", "linear", "linear", "linear"]),
    "group_norm": (_group_norm_net, (3, 16, 16), 0, ["conv", "conv", "linear"]),
    "conv_transpose": (_decoder, (3, 16, 16), 0, ["conv", "conv_transpose", "conv_transpose"]),  # BN stays
    "conv1d": (_conv1d_net, (2, 32), 16, ["conv", "conv", "linear"]),  # BN merged into the conv's own bias
    "conv3d": (_conv3d_net, (1, 8, 8, 8), 0, ["conv", "conv", "linear"]),
}
LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)


def _export(model: nn.Module, shape: tuple[int, ...], path) -> None:
    """Export as edgeprune.export does: torchscript exporter, opset 17, constant folding, dynamic batch."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(), (torch.randn(1, *shape),), str(path), dynamo=False, opset_version=17,
            do_constant_folding=True, input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )  # fmt: skip


def _independent(model: nn.Module, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """FlopCounterMode / 2, sum(numel) and the conv/linear output elements (by hooks) of one batch-1 pass."""
    outputs = []
    layers = [m for m in model.modules() if isinstance(m, LAYERS)]
    hooks = [m.register_forward_hook(lambda _m, _i, o: outputs.append(o.numel())) for m in layers]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(torch.zeros(1, *shape))
    for h in hooks:
        h.remove()
    return counter.get_total_flops() // 2, sum(p.numel() for p in model.parameters()), sum(outputs)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Each net of NETS, built with a fixed seed and exported once: name -> (model, .onnx path)."""
    folder = tmp_path_factory.mktemp("nets")
    nets = {}
    for name, (factory, shape, _, _) in NETS.items():
        torch.manual_seed(0)
        nets[name] = (factory(), folder / f"{name}.onnx")
        _export(nets[name][0], shape, nets[name][1])
    return nets


@pytest.mark.slow
@pytest.mark.parametrize("name", NETS)
def test_exported_nets_match_flop_counter_and_numel(name, exported):
    model, path = exported[name]
    _, shape, folded, kinds = NETS[name]
    flops, params, out_elements = _independent(model, shape)
    prof = onnx_profile(path)
    assert prof.input_shape == shape and [layer.kind for layer in prof.layers] == kinds
    assert prof.total("flops") == flops  # exact: every FLOP torch counts is in a conv or linear (SE's Mul is not)
    assert prof.total("params") == params - folded and prof.other_params == 0
    assert prof.total("memory") == 4 * (params - folded + out_elements)


def test_norms_count_with_their_layer(exported):
    gn = onnx_profile(exported["group_norm"][1]).layers
    assert [layer.bn is not None for layer in gn] == [True, True, False]  # Reshape-InstanceNorm-Reshape-Mul-Add
    deconv = onnx_profile(exported["conv_transpose"][1]).layers
    assert [layer.bn is not None for layer in deconv] == [False, True, False]  # a BatchNorm after a ConvTranspose
    assert (deconv[1].c_in, deconv[1].c_out, deconv[1].groups, deconv[1].in_spatial, deconv[1].spatial) == (
        8, 4, 2, 64, 256,
    )  # fmt: skip


@pytest.mark.parametrize("name", ["se_linear", "group_norm"])
def test_each_shape_source_gives_the_same_profile(name, exported, monkeypatch):
    """onnx inference, then onnxruntime's symbolic inference, then one onnxruntime run: the same numbers."""
    from onnxruntime.tools import symbolic_shape_infer

    path = exported[name][1]
    expected = onnx_profile(path).to_dict()

    def fail(*args, **kwargs):
        raise RuntimeError("no shapes here")

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", fail)
    assert onnx_profile(path).to_dict() == expected  # symbolic shape inference alone
    monkeypatch.setattr(symbolic_shape_infer.SymbolicShapeInference, "infer_shapes", staticmethod(fail))
    runs = []

    class Counting(onnxruntime.InferenceSession):
        def run(self, *args, **kwargs):
            runs.append(args[0])
            return super().run(*args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", Counting)
    assert onnx_profile(path).to_dict() == expected  # measured
    assert len(runs) == 1 and "logits" in runs[0]


def test_cli_profile_and_bench_preparation_of_exported_nets(exported, tmp_path, capsys):
    model, path = exported["group_norm"]
    flops, params, _ = _independent(model, (3, 16, 16))
    assert main(["profile", str(path), "--json"]) == 0
    total = json.loads(capsys.readouterr().out)["total"]
    assert (total["flops"], total["params"]) == (flops, params)
    prepared = prepare(exported["se_linear"][1], tmp_path, backends=("onnxruntime",))  # what bench counts
    assert prepared.totals == onnx_profile(exported["se_linear"][1]).totals()


# -- peak memory of an .onnx file ------------------------------------------------------------------------------


class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.c, self.fc = nn.Conv2d(8, 8, 3, padding=1), nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.a(x))
        x = torch.relu(x + self.c(torch.relu(self.b(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class _Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 5, 3, stride=2, padding=1)
        self.up, self.c, self.fc = nn.Upsample(scale_factor=2), nn.Conv2d(11, 4, 1), nn.Linear(4, 3)

    def forward(self, x):
        x = torch.relu(self.a(x))
        z = torch.relu(self.c(torch.cat([x, self.up(torch.relu(self.b(x)))], 1)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(z, 1), 1))


@pytest.mark.parametrize("net", [_Residual, _Concat])
def test_onnx_peak_memory_equals_the_pytorch_models(tmp_path, net):
    from edgeprune.costs import mcu_totals
    from edgeprune.graph import profile
    from edgeprune.liveness import attach

    torch.manual_seed(0)
    model, shape = net().eval(), (3, 8, 8)
    prof = profile(model, shape)
    attach(prof, model, torch.zeros(1, *shape))
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, *shape),), str(path), dynamo=False)
    from_onnx = mcu_totals(onnx_profile(path))["peak_memory_bytes"]
    # independent count: the peak over ops of the activations alive, by hand for these two graphs (4 B values)
    if net is _Residual:  # at c: x (8x8x8), b's relu output and c's output alive
        expected = 4 * 3 * 8 * 8 * 8
    else:  # at cat: x (6x8x8), up's output (5x8x8) and the cat (11x8x8)
        expected = 4 * (6 + 5 + 11) * 8 * 8
    assert from_onnx == mcu_totals(prof)["peak_memory_bytes"] == expected


def test_profile_of_an_onnx_file_shows_its_peak_memory(tmp_path, capsys):
    model = _Residual().eval()
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 3, 8, 8),), str(path), dynamo=False)
    assert main(["profile", str(path)]) in (0, None)
    out = capsys.readouterr().out
    assert f"peak memory {4 * 3 * 8 * 8 * 8 / 1000:.2f} kB (batch 1" in out, out
