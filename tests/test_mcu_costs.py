"""Microcontroller budgets: ``peak_memory`` (activations alive at once) and ``flash`` (stored weights).

Peak memory is checked against hand computations on a residual and a concatenating network, at their traced
widths and at pruned widths (against a re-trace of the narrower network), flash against hand counts and torch's
own parameter bytes; then ``prune`` to both limits, ``profile``'s output, and one-line errors for bad limits.
"""

import json
import math

import onnx
import pytest
import torch
import torch.nn.functional as F
from helpers import random_dataset, run_cli
from torch import nn

import edgeprune
from edgeprune.complexity import LayerShape, Profile
from edgeprune.costs import MCU, Budget, get_cost, mcu_line, totals
from edgeprune.errors import EdgepruneError
from edgeprune.export import export_onnx
from edgeprune.graph import profile
from edgeprune.liveness import attach
from edgeprune.onnx_graph import onnx_profile
from edgeprune.quantize import quantize_onnx

PEAK, FLASH = MCU["peak_memory"], MCU["flash"]


class Residual(nn.Module):
    """conv1 -> relu -> conv2 -> relu -> conv3, plus a skip from conv1's relu; mean, fc. 8x8 maps."""

    def __init__(self, c1: int = 8, c2: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(3, c1, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1, bias=False)
        self.conv3 = nn.Conv2d(c2, c1, 3, padding=1, bias=False)
        self.fc = nn.Linear(c1, 10)

    def forward(self, x):
        a = F.relu(self.conv1(x))
        b = F.relu(self.conv2(a))
        y = self.conv3(b) + a
        return self.fc(y.mean((2, 3)))


class Concat(nn.Module):
    """conv1 (1x1) -> conv2 (3x3); cat(conv1, conv2) -> conv3 (1x1); flatten. 8x8 maps."""

    def __init__(self, c1: int = 4, c2: int = 6):
        super().__init__()
        self.conv1 = nn.Conv2d(3, c1, 1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.conv3 = nn.Conv2d(c1 + c2, 5, 1)

    def forward(self, x):
        a = self.conv1(x)
        b = self.conv2(a)
        return self.conv3(torch.cat([a, b], 1)).flatten(1)


def traced(model: nn.Module, shape=(3, 8, 8)) -> Profile:
    """``model``'s profile with its activation liveness."""
    return attach(profile(model, shape), model, torch.zeros(1, *shape))


def narrowed(prof: Profile, widths: dict[str, int]) -> Profile:
    """``prof`` with some layers' output widths (and their consumers' input widths) changed, liveness kept."""
    shapes = {layer.name: layer.resized(c_out=widths.get(layer.name)) for layer in prof.layers}
    return Profile(list(shapes.values()), prof.input_shape, prof.other_params, liveness=prof.liveness)


# -- peak memory against hand computations -------------------------------------------------------------------


def test_residual_peak_by_hand():
    # fp32, 8x8 maps: the 3-channel input is 3*64*4 = 768 B, an 8-channel map 8*64*4 = 2,048 B.
    # op 0 conv1(x) -> t0: x + t0                 =   768 + 2048        = 2,816
    # op 1 relu(t0) -> a:  t0 + a                 = 2048 + 2048         = 4,096
    # op 2 conv2(a) -> t2: a (held for the skip) + t2                   = 4,096
    # op 3 relu(t2) -> b:  a + t2 + b             = 3 * 2048            = 6,144  <- peak
    # op 4 conv3(b) -> c:  a + b + c                                    = 6,144
    # op 5 c + a    -> y:  a + c + y                                    = 6,144
    # op 6 mean(y)  -> p:  y + p (8*4 = 32 B)                           = 2,080
    # op 7 fc(p)    -> out (10*4 = 40 B): 72.  Without the skip, op 3 would hold t2 + b = 4,096 only.
    prof = traced(Residual())
    assert PEAK.total(prof) == 6144
    assert prof.liveness.per_op(prof.by_name()) == [2816, 4096, 4096, 6144, 6144, 6144, 2080, 72]
    where = PEAK.where(prof)
    assert (where["bytes"], where["op_index"], where["tensors_alive"]) == (6144, 3, 3)
    # conv1 and conv3 (tied by the addition) at 4 channels (1,024 B), conv2 at 6 (1,536 B):
    # op 3: a + t2 + b = 1024 + 1536 + 1536 = 4,096; op 4: a + b + c = 3,584; op 5: 3 * 1024 = 3,072
    small = narrowed(prof, {"conv1": 4, "conv2": 6, "conv3": 4})
    assert PEAK.total(small) == 4096
    assert PEAK.total(traced(Residual(4, 6))) == 4096  # a re-trace of the narrower network agrees


def test_concat_peak_by_hand():
    # fp32, 8x8 maps, 64 * 4 = 256 B per channel: x 3 ch = 768, a 4 ch = 1,024, b 6 ch = 1,536,
    # cat 10 ch = 2,560, conv3's output 5 ch = 1,280.
    # op 0 conv1(x) -> a:   x + a     =   768 + 1024        = 1,792
    # op 1 conv2(a) -> b:   a (held for the cat) + b        = 2,560
    # op 2 cat(a, b) -> c:  a + b + c = 1024 + 1536 + 2560  = 5,120  <- peak
    # op 3 conv3(c) -> d:   c + d     = 2560 + 1280         = 3,840
    # op 4 flatten(d): a view of d's buffer                 = 1,280
    prof = traced(Concat())
    assert PEAK.total(prof) == 5120
    assert prof.liveness.per_op(prof.by_name()) == [1792, 2560, 5120, 3840, 1280]
    assert PEAK.where(prof)["op"] == "cat"  # the top module runs it: no module name before the op
    # conv1 at 2 channels (512 B), conv2 at 3 (768 B): the cat is 1,280 B, op 2 holds 512 + 768 + 1280 = 2,560
    small = narrowed(prof, {"conv1": 2, "conv2": 3})
    assert PEAK.total(small) == 2560 == PEAK.total(traced(Concat(2, 3)))


@pytest.mark.parametrize(("inplace", "expected"), [(True, [2816, 2048, 3072]), (False, [2816, 4096, 3072])])
def test_in_place_ops_share_their_input_buffer(inplace, expected):
    # conv 3->8 (2,048 B), ReLU, conv 8->4 (1,024 B) on 3x8x8 (768 B). In place, the ReLU writes into the conv's
    # buffer: op 1 holds 2,048 B; a new ReLU output holds 2 * 2,048. op 2 holds the ReLU's output + 1,024.
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=inplace), nn.Conv2d(8, 4, 3, padding=1))
    prof = traced(net)
    assert prof.liveness.per_op(prof.by_name()) == expected and PEAK.total(prof) == max(expected)


def test_group_share_is_what_it_holds_at_the_peak():
    # at the residual net's peak (op 3) a, t2 and b are alive: a is conv1's (2,048 B), t2 and b conv2's (4,096 B)
    prof = traced(Residual())
    assert prof.liveness.held(prof.by_name(), ["conv1"]) == 2048
    assert prof.liveness.held(prof.by_name(), ["conv2"]) == 4096
    assert prof.liveness.held(prof.by_name(), ["conv3", "fc"]) == 0


def test_peak_memory_needs_a_traced_profile():
    prof = profile(Residual(), (3, 8, 8))  # no liveness attached
    assert "peak_memory_bytes" not in totals(prof) and "flash_bytes" in totals(prof)
    with pytest.raises(EdgepruneError, match="peak_memory needs the traced forward pass"):
        Budget({"peak_memory": 0.5}).absolute(prof)
    assert "peak memory n/a" in mcu_line(prof)


# -- flash against hand counts ----------------------------------------------------------------------------


def test_fp32_flash_by_hand_and_torch_bytes():
    # Concat: conv1 3*4 + 4 bias = 16, conv2 4*9*6 + 6 = 222, conv3 10*5 + 5 = 55 -> 293 values * 4 B
    model = Concat()
    assert FLASH.total(traced(model)) == 4 * 293 == sum(p.numel() * p.element_size() for p in model.parameters())
    # a BatchNorm's two vectors count too: conv 3*9*8 = 216, BN 2*8 = 16, fc 8*10 + 10 = 90 -> 322 * 4 B
    net = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 10))  # fmt: skip
    prof = profile(net, (3, 8, 8))
    assert FLASH.total(prof) == 4 * 322 == sum(p.numel() * p.element_size() for p in net.parameters())


def test_int8_flash_by_hand():
    # int8: 1 B per weight, 4 B scale + 4 B zero point per output channel, 4 B int32 bias (or folded BN)
    conv = LayerShape("c", "conv", 16, 32, kernel=9, spatial=64, bias=True, weight_bytes=1, output_bytes=1)
    assert FLASH.layer(conv) == 16 * 9 * 32 + 32 * (4 + 4 + 4)  # 4,992
    folded = LayerShape("c", "conv", 16, 32, kernel=9, spatial=64, bn="bn", weight_bytes=1, output_bytes=1)
    assert FLASH.layer(folded) == 4992
    bare = LayerShape("c", "conv", 16, 32, kernel=9, spatial=64, weight_bytes=1, output_bytes=1)
    assert FLASH.layer(bare) == 16 * 9 * 32 + 32 * 8


class _TwoLayer(nn.Module):
    """Conv 3->4 (3x3, padding 1, bias) -> ReLU -> flatten -> Linear 256->5 on 3x8x8 inputs."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))


@pytest.mark.slow
def test_int8_onnx_flash_and_profile(tmp_path, capsys):
    torch.manual_seed(0)
    fp32, int8 = tmp_path / "two.onnx", tmp_path / "two-int8.onnx"
    export_onnx(_TwoLayer().eval(), fp32, (3, 8, 8))
    quantize_onnx(fp32, int8, random_dataset((3, 8, 8), 5), images=32)
    # conv: 108 int8 weights + 4 channels * (scale 4 + zero point 4 + int32 bias 4) = 156
    # fc: 1,280 int8 weights + 5 * 12 = 1,340
    prof = onnx_profile(int8)
    assert prof.precision == "int8" and FLASH.total(prof) == 156 + 1340
    weights = [t for t in onnx.load(int8).graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) > 1]
    assert sum(math.prod(t.dims) for t in weights) == 108 + 1280  # the int8 weights the file holds
    assert FLASH.total(onnx_profile(fp32)) == 4 * (108 + 4 + 1280 + 5)
    code, out, _ = run_cli(capsys, "profile", str(int8), "--json")
    mcu = json.loads(out)["microcontroller"]
    assert code == 0 and mcu["flash_bytes"] == 1496 and mcu["peak_memory_bytes"] is None
    assert list(mcu["flash_bytes_by_layer"].values()) == [156, 1340]


# -- budgets -----------------------------------------------------------------------------------------------


def test_prune_to_peak_memory_and_flash_meets_both():
    model = Residual(16, 16)
    prof = traced(model)
    before_peak, before_flash = PEAK.total(prof), FLASH.total(prof)
    result = edgeprune.prune(model, budget={"peak_memory": 0.6, "flash": 0.5}, input_shape=(3, 8, 8),
                             prune_residual=True, seed=0)  # fmt: skip
    report = result.report()
    fresh = traced(result.model)  # recounted on the cut model
    assert PEAK.total(fresh) == report["budget"]["peak_memory"]["after"] <= 0.6 * before_peak
    assert FLASH.total(fresh) == report["budget"]["flash"]["after"] <= 0.5 * before_flash
    assert FLASH.total(fresh) == sum(4 * p.numel() for p in result.model.parameters())
    assert report["after"]["peak_memory_bytes"] == PEAK.total(fresh) and report["budget"]["flash"]["met"]


def test_peak_memory_alone_is_algorithm_one_on_its_share():
    result = edgeprune.prune(Concat(8, 8), "peak_memory", 0.7, input_shape=(3, 8, 8), seed=1)
    steps = result.plan.steps
    assert steps and all(s.weight > 0 for s in steps)  # every draw weighted by what the group held at the peak
    assert PEAK.total(traced(result.model)) <= 0.7 * PEAK.total(traced(Concat(8, 8)))


@pytest.mark.slow
def test_cli_prune_and_profile_show_the_mcu_costs(tmp_path, capsys):
    code, out, _ = run_cli(capsys, "profile", "tiny")
    assert code == 0 and "microcontroller: peak memory" in out and "flash" in out
    code, out, _ = run_cli(capsys, "profile", "tiny", "--json")
    mcu = json.loads(out)["microcontroller"]
    tiny = edgeprune.create("tiny")
    assert mcu["flash_bytes"] == sum(4 * p.numel() for p in tiny.parameters())
    assert mcu["peak_memory_bytes"] == PEAK.total(traced(tiny, (3, 32, 32)))
    dest = tmp_path / "p"
    code, out, _ = run_cli(capsys, "prune", "tiny", "--target", "peak_memory=200KB", "--target", "flash=400KB",
                           "--out", str(dest))  # fmt: skip
    assert code == 0 and "peak memory" in out and "flash" in out
    report = json.loads((dest / "report.json").read_text())
    assert report["budget"]["peak_memory"]["limit"] == 200_000 and report["budget"]["flash"]["limit"] == 400_000
    written = edgeprune.load(dest)
    fresh = traced(written, (3, 32, 32))
    assert PEAK.total(fresh) == report["budget"]["peak_memory"]["after"] <= 200_000
    assert FLASH.total(fresh) == report["budget"]["flash"]["after"] <= 400_000


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("peak_memory=256K", "peak_memory targets need a byte unit"),
        ("flash=abc", "flash target 'abc' is not a number"),
        ("flash=0", "flash target must be positive"),
        ("peak_memory=2GB", "is not below the model's current"),
        ("peak_memory=10B", "unreachable"),
        ("flash=3ms", "unknown unit 'ms'"),
    ],
)
def test_bad_mcu_limits_are_one_line(tmp_path, capsys, target, message):
    code, _, err = run_cli(capsys, "prune", "tiny", "--target", target, "--out", str(tmp_path / "p"))
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "p").exists()


def test_costs_are_registered():
    assert get_cost("peak_memory") is PEAK and get_cost("flash") is FLASH
    assert PEAK.parse("256KB", 10**6) == 256_000 and FLASH.parse("1MiB", 10**7) == 2**20
    assert not PEAK.additive and FLASH.additive
