"""Complexity numbers against independent counts (sum of numel, torch's FLOP counter, hooks)."""

import json

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import edgeprune
from edgeprune.cli import main
from edgeprune.complexity import LayerShape
from edgeprune.models import list_models
from edgeprune.trace import record_shapes

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


@pytest.mark.slow
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


@pytest.mark.slow
def test_shares_sum_to_one_and_json_cli(capsys):
    assert main(["profile", "resnet56", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data["total"]) == {"params", "flops", "memory_bytes"}
    assert data["total"]["params"] == sum(p.numel() for p in edgeprune.create("resnet56").parameters())
    for key in ("params_share", "flops_share", "memory_share"):
        assert sum(r[key] for r in data["layers"]) == pytest.approx(1.0)
    residual = [g for g in data["groups"] if g["reason"] == "residual-tied"]
    assert residual and all(not g["prunable"] for g in residual)


@pytest.mark.slow
def test_profile_table_and_plot(tmp_path, capsys):
    png = tmp_path / "shares.png"
    assert main(["profile", "vgg16", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "features.0" in out and "TOTAL" in out and "output layer" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.strip().endswith(f"wrote {png}")
