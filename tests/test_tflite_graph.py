"""``profile`` of a .tflite file: Conv2D, DepthwiseConv2D and FullyConnected counted by SPEC's formulas.

One tiny net (a plain, a depthwise and a grouped conv, and a linear layer) is exported once with the LiteRT
converter; its profile from the flatbuffer must equal the PyTorch model's, layer by layer and in total.
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers import run_cli
from torch import nn

from edgeprune.errors import EdgepruneError

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")

SHAPE = (3, 8, 8)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.g = nn.Conv2d(8, 12, 3, stride=2, padding=1, groups=2, bias=False)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        x = torch.relu(self.dw(torch.relu(self.a(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(torch.relu(self.g(x)), 1), 1))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from edgeprune.edge_export import lower

    torch.manual_seed(0)
    model = _Net().eval()
    path = tmp_path_factory.mktemp("tflite") / "net.tflite"
    lower("litert", model, torch.zeros(1, *SHAPE), path)
    return model, path


def test_tflite_profile_equals_the_pytorch_models(exported):
    from edgeprune.tflite_graph import tflite_profile

    model, path = exported
    prof = tflite_profile(path)
    # independent count, SPEC's formulas on the modules' own attributes: (C_in/g) k_h k_w C_out (+ C_out bias)
    expected = []
    out_hw = {"a": 64, "dw": 64, "g": 16, "fc": 1}
    for name, m in model.named_children():
        k = m.weight[0].numel()  # (C_in/g) * k_h * k_w, or C_in for a linear layer
        c_out = m.weight.shape[0]
        params = k * c_out + (c_out if m.bias is not None else 0)
        expected.append((params, k * c_out * out_hw[name]))
    assert [(layer.params, layer.flops) for layer in prof.layers] == expected
    assert [layer.groups for layer in prof.layers] == [1, 8, 2, 1]
    assert prof.other_params == 0 and tuple(prof.input_shape) == SHAPE


def test_profile_cli_reads_a_tflite_file(exported, capsys):
    from edgeprune.graph import profile

    model, path = exported
    code, out, err = run_cli(capsys, "profile", path, "--json")
    assert code in (0, None), err
    data = json.loads(out)
    torch_prof = profile(model, SHAPE)
    assert data["total"]["params"] == sum(layer.params for layer in torch_prof.layers)
    assert data["total"]["flops"] == sum(layer.flops for layer in torch_prof.layers)


def test_a_file_that_is_not_a_flatbuffer_is_one_line_error(tmp_path):
    from edgeprune.tflite_graph import tflite_profile

    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(EdgepruneError, match="TFL3") as e:
        tflite_profile(bad)
    assert "\n" not in str(e.value)
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(b"\x18\x00\x00\x00TFL3" + b"\xff" * 8)
    with pytest.raises(EdgepruneError) as e:
        tflite_profile(cut)
    assert "\n" not in str(e.value)


def test_a_file_with_more_subgraphs_counts_the_main_one_and_says_so(exported, monkeypatch):
    from edgeprune.tflite_graph import _schema, tflite_profile

    model, path = exported
    alone = tflite_profile(path)
    monkeypatch.setattr(_schema().Model, "SubgraphsLength", lambda self: 3)  # as a file with control-flow bodies
    with pytest.warns(UserWarning, match="3 subgraphs; only the main one"):
        prof = tflite_profile(path)
    assert [layer.flops for layer in prof.layers] == [layer.flops for layer in alone.layers]
