"""ONNX export: outputs match PyTorch within 1e-4 on every zoo model, pruned and unpruned; atomic writes."""

import importlib.util

import numpy as np
import pytest
import torch

import edgeprune
from edgeprune.cli import main
from edgeprune.errors import EdgepruneError
from edgeprune.export import export_onnx, onnx_outputs

_PRUNED: dict[str, torch.nn.Module] = {}


def _pruned(name: str) -> torch.nn.Module:
    """The zoo model pruned to 50% FLOPs (seed 0, coarse steps for speed), computed once per test session."""
    if name not in _PRUNED:
        torch.manual_seed(0)
        _PRUNED[name] = edgeprune.prune(edgeprune.create(name), "flops", 0.5, seed=0, step=0.3).model.eval()
    return _PRUNED[name]


@pytest.mark.slow
@pytest.mark.parametrize("pruned", [False, True], ids=["unpruned", "pruned"])
@pytest.mark.parametrize("name", edgeprune.list_models())
def test_onnx_matches_torch(name, pruned, tmp_path):
    torch.manual_seed(0)
    model = _pruned(name) if pruned else edgeprune.create(name)
    info = export_onnx(model, tmp_path / f"{name}.onnx")
    assert info["check"]["max_abs_diff"] <= 1e-4
    assert info["bytes"] == (tmp_path / f"{name}.onnx").stat().st_size
    # An independent check on another input and batch size.
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        expected = model.eval()(x).numpy()
    got = onnx_outputs(tmp_path / f"{name}.onnx", x.numpy())
    assert got.shape == expected.shape
    assert np.max(np.abs(got - expected)) <= 1e-4


def test_failed_check_leaves_no_file(tmp_path, monkeypatch):
    import edgeprune.export

    monkeypatch.setattr(edgeprune.export, "check_onnx", lambda *a, **k: 1.0)  # outputs that differ by 1
    target = tmp_path / "tiny.onnx"
    with pytest.raises(EdgepruneError, match="ONNX export check failed"):
        export_onnx("tiny", target)
    assert list(tmp_path.iterdir()) == []


def test_export_replaces_existing_file_atomically(tmp_path):
    target = tmp_path / "m.onnx"
    target.write_text("old")
    export_onnx("tiny", target)
    assert target.stat().st_size > 1000
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_export_bad_input(tmp_path):
    with pytest.raises(EdgepruneError, match="unknown exporter"):
        export_onnx("tiny", tmp_path / "a.onnx", exporter="tflite")
    with pytest.raises(EdgepruneError, match="is a folder"):
        export_onnx("tiny", tmp_path)
    with pytest.raises(EdgepruneError, match="not a model folder"):
        export_onnx(str(tmp_path / "missing" / "dir"), tmp_path / "a.onnx")


@pytest.mark.slow
def test_cli_export(tmp_path, capsys):
    folder = tmp_path / "pruned"
    assert main(["prune", "tiny", "--mode", "params", "--target", "0.5", "--out", str(folder)]) == 0
    capsys.readouterr()
    assert main(["export", str(folder), "--onnx", str(tmp_path / "p.onnx")]) == 0
    out = capsys.readouterr().out
    assert "max |onnxruntime - torch|" in out and (tmp_path / "p.onnx").is_file()
    assert main(["export", "tiny", "--onnx", str(tmp_path / "q.onnx"), "--exporter", "nope"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("onnxscript") is None, reason="dynamo exporter needs onnxscript")
def test_dynamo_exporter(tmp_path):
    info = export_onnx("tiny", tmp_path / "d.onnx", exporter="dynamo")
    assert info["exporter"] == "dynamo" and info["check"]["max_abs_diff"] <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny", "mobilenetv2"])
def test_pad_channels_keeps_outputs(name, tmp_path):
    from edgeprune.export import pad_channels

    pruned = _pruned(name)
    padded = pad_channels(pruned, 16)
    head = [m for m in padded.modules() if isinstance(m, torch.nn.Linear)][-1]
    widths = [m.out_channels for m in padded.modules() if isinstance(m, torch.nn.Conv2d)]
    if name == "tiny":
        assert all(w % 16 == 0 for w in widths)
    else:  # MobileNetV2: only the residual-tied widths (24, unpruned) are left as they were
        assert all(w % 16 == 0 or w == 24 for w in widths)
    assert head.out_features == 10
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(padded(x), pruned(x), atol=1e-5)
    if name == "tiny":  # saved and loaded like any model; exported with the check against the unpadded model
        edgeprune.save(padded, tmp_path / "padded")
        with torch.inference_mode():
            assert torch.allclose(edgeprune.load(tmp_path / "padded")(x), pruned(x), atol=1e-5)
        info = export_onnx(pruned, tmp_path / "p.onnx", pad_to=16)
        assert info["pad_channels"] == 16 and info["check"]["max_abs_diff"] <= 1e-4


def test_pad_channels_rejects_bad_multiple():
    from edgeprune.export import pad_channels

    with pytest.raises(EdgepruneError, match="multiple must be positive"):
        pad_channels(edgeprune.create("tiny"), 0)
