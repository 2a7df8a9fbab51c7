"""Int8 for the edge: static quantization, test accuracy in torch and onnxruntime, int8 counts and energy."""

import json

import onnx
import pytest
import torch
from conftest import MINI
from helpers import random_dataset
from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
from torch import nn

import edgeprune
from edgeprune.complexity import LayerShape, Profile
from edgeprune.data import load_dataset
from edgeprune.energy import energy_estimate
from edgeprune.errors import EdgepruneError
from edgeprune.evaluate import evaluate
from edgeprune.export import export_onnx
from edgeprune.measure import bench
from edgeprune.onnx_graph import onnx_profile
from edgeprune.quantize import calibration_batches, int8_check, quantize_onnx
from edgeprune.report import bench_table
from edgeprune.train import TrainConfig, train
from edgeprune.train import evaluate as train_evaluate


@pytest.fixture(scope="module")
def trained(shared_cache, tmp_path_factory):
    """The tiny CNN (16 channels) trained 3 epochs on 600 mini images, its fp32 export and its int8 file."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGEPRUNE_CACHE", str(shared_cache))
        data = load_dataset(MINI, limit_train=600, limit_test=400)
    torch.manual_seed(0)
    model = edgeprune.create("tiny", channels=16)
    train(model, data, TrainConfig(epochs=3, batch_size=64, seed=0), progress=False, threads=2)
    folder = tmp_path_factory.mktemp("int8")
    fp32, int8 = folder / "tiny.onnx", folder / "tiny-int8.onnx"
    export_onnx(model, fp32, (3, 32, 32))
    info = quantize_onnx(fp32, int8, data, images=128, seed=0)
    return model.eval(), data, fp32, int8, info


# -- quantize and check ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_int8_export_stays_within_the_accuracy_limit(trained):
    _, data, fp32, int8, info = trained
    assert info["format"] == "QDQ" and info["method"] == "minmax" and info["per_channel"]
    assert info["calibration"] == {"data": data.name, "split": "train", "images": 128, "seed": 0}
    assert info["bytes"] == int8.stat().st_size and info["fp32_bytes"] == fp32.stat().st_size
    assert not [p for p in int8.parent.iterdir() if p.name.startswith(".")]  # no temporary file left
    check = int8_check(fp32, int8, data, max_drop=1.0)
    assert check["passed"] and check["drop_points"] <= 1.0, check
    assert check["fp32"]["top1"] > 0.2  # it learnt something: the limit means something
    assert check["int8"]["bytes"] < 0.5 * check["fp32"]["bytes"] and check["images"] == 400
    assert check["drop_points"] == pytest.approx(100 * (check["fp32"]["top1"] - check["int8"]["top1"]))
    strict = int8_check(fp32, int8, data, max_drop=check["drop_points"] - 0.25)
    assert not strict["passed"]
    json.dumps(check)


@pytest.mark.slow
def test_int8_counts_and_energy_of_the_tiny_model(trained):
    _, _, fp32, int8, _ = trained
    f, q = onnx_profile(fp32), onnx_profile(int8)
    assert (f.precision, q.precision) == ("fp32", "int8")
    assert [layer.name for layer in q.layers] == [layer.name for layer in f.layers]  # every layer still counted
    assert q.totals()["params"] == f.totals()["params"] and q.totals()["flops"] == f.totals()["flops"]
    assert q.other_params == 0  # scales and zero points are no parameters
    assert q.totals()["memory_bytes"] < 0.3 * f.totals()["memory_bytes"]
    e = energy_estimate(q)
    assert (e["precision"], e["source"], e["int8_macs"]) == ("int8", "estimate", q.totals()["flops"])
    assert e["constants"] == {"pj_per_mac": 0.23, "pj_per_dram_byte": 160.0, "source": "45 nm, Horowitz 2014"}


@pytest.mark.slow
def test_bench_of_an_int8_onnx_file_reports_int8_energy(trained):
    _, _, _, int8, _ = trained
    out = bench(int8, runs=2, warmup=0, threads=1)
    prof = onnx_profile(int8)
    totals = prof.totals()
    assert out["complexity"]["precision"] == "int8" and out["complexity"]["memory_bytes"] == totals["memory_bytes"]
    e = out["energy"]
    assert (e["precision"], e["source"]) == ("int8", "estimate")
    assert e["compute_uj"] == pytest.approx(0.23e-6 * totals["flops"])
    assert e["dram_uj"] == pytest.approx(160e-6 * totals["memory_bytes"])
    text = bench_table(out)
    assert "energy per inference (int8)" in text and "0.23 pJ" in text and "160 pJ" in text


@pytest.mark.slow
@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_other_calibration_methods(trained, tmp_path, monkeypatch, method):
    _, data, fp32, _, _ = trained
    monkeypatch.setattr("edgeprune.quantize.ENTROPY_BINS", 512)  # the KL search is quadratic in the bins
    info = quantize_onnx(fp32, tmp_path / "q.onnx", data, images=32, seed=1, method=method, per_channel=False)
    assert info["method"] == method and info["calibration"]["images"] == 32 and not info["per_channel"]
    assert onnx_profile(tmp_path / "q.onnx").precision == "int8"


@pytest.mark.slow
def test_bad_calibration_input_is_one_line(trained, tmp_path):
    _, data, fp32, _, _ = trained
    target = tmp_path / "q.onnx"
    target.write_bytes(b"old")
    cases = [
        (dict(calibration=data, images=8), "calibration needs at least 16 images, got 8"),
        (dict(calibration=random_dataset((3, 32, 32), 10, train=10)), "training split of 'random' has 10"),
        (dict(calibration=random_dataset((3, 16, 16), 10)),
         "takes 3x32x32 inputs, the calibration data set 'random' has"),
        (dict(calibration=random_dataset((1, 32, 32), 10)), "has 1x32x32"),
        (dict(calibration=data, method="kl"), "unknown calibration method 'kl'"),
    ]  # fmt: skip
    for kwargs, message in cases:
        with pytest.raises(EdgepruneError, match=message) as err:
            quantize_onnx(fp32, target, **kwargs)
        assert "\n" not in str(err.value)
    assert target.read_bytes() == b"old"  # nothing written over
    with pytest.raises(EdgepruneError, match="no such file"):
        quantize_onnx(tmp_path / "missing.onnx", target, data)
    with pytest.raises(EdgepruneError, match="max drop must be a finite number"):
        int8_check(fp32, fp32, data, max_drop=float("nan"))


# -- counts of quantized graphs against hand numbers -------------------------------------------------------


class _TwoLayer(nn.Module):
    """Conv 3->4 (3x3, padding 1, bias) -> ReLU -> flatten -> Linear 256->5 on 3x8x8 inputs."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))


class _Reader:
    def __init__(self, batches):
        self.batches = iter(batches)

    def get_next(self):
        batch = next(self.batches, None)
        return None if batch is None else {"input": batch}


# Hand counts. conv: 4*3*3*3 = 108 weights + 4 bias, 4*8*8 = 256 outputs, 108 * 64 = 6,912 MACs.
# fc: 256*5 = 1,280 weights + 5 bias, 5 outputs, 1,280 MACs.
PARAMS, FLOPS = 108 + 4 + 1280 + 5, 108 * 64 + 1280
FP32_MEMORY = 4 * (108 + 4 + 256) + 4 * (1280 + 5 + 5)
INT8_MEMORY = (108 + 4 * 4 + 256) + (1280 + 4 * 5 + 5)  # int8 weights, int32 biases, int8 outputs (logits too)


@pytest.fixture(scope="module")
def two_layer(tmp_path_factory):
    """The two-layer model's fp32 export and its calibration data (3x8x8, 5 classes)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("two") / "two.onnx"
    export_onnx(_TwoLayer().eval(), path, (3, 8, 8))
    return path, random_dataset((3, 8, 8), 5)


def test_qdq_graph_counts_against_hand_numbers(two_layer, tmp_path):
    fp32, data = two_layer
    assert onnx_profile(fp32).totals() == {"params": PARAMS, "flops": FLOPS, "memory_bytes": FP32_MEMORY}
    quantize_onnx(fp32, tmp_path / "qdq.onnx", data, images=32)
    ops = {n.op_type for n in onnx.load(tmp_path / "qdq.onnx").graph.node}
    assert {"DequantizeLinear", "QuantizeLinear", "Conv", "Gemm"} <= ops
    prof = onnx_profile(tmp_path / "qdq.onnx")
    assert prof.totals() == {"params": PARAMS, "flops": FLOPS, "memory_bytes": INT8_MEMORY}
    conv, fc = prof.layers
    assert (conv.weight_bytes, conv.output_bytes, conv.memory) == (1, 1, 108 + 16 + 256)
    assert (fc.weight_bytes, fc.output_bytes, fc.memory) == (1, 1, 1280 + 20 + 5)
    assert prof.other_params == 0 and prof.precision == "int8"
    assert prof.to_dict()["precision"] == "int8" and "stored width" in prof.to_dict()["conventions"]
    e = energy_estimate(prof)
    assert e["total_uj"] == pytest.approx(0.23e-6 * FLOPS + 160e-6 * INT8_MEMORY)


def test_qlinear_and_integer_graphs_count_their_layers(two_layer, tmp_path):
    fp32, data = two_layer
    batches = calibration_batches(data, (3, 8, 8), images=32)
    qop = tmp_path / "qop.onnx"
    quantize_static(str(fp32), str(qop), _Reader(batches), quant_format=QuantFormat.QOperator, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)  # fmt: skip
    assert {"QLinearConv", "QGemm"} <= {n.op_type for n in onnx.load(qop).graph.node}
    prof = onnx_profile(qop)
    assert prof.totals() == {"params": PARAMS, "flops": FLOPS, "memory_bytes": INT8_MEMORY}
    assert prof.other_params == 0 and [layer.kind for layer in prof.layers] == ["conv", "linear"]
    dyn = tmp_path / "dyn.onnx"
    quantize_dynamic(str(fp32), str(dyn), weight_type=QuantType.QInt8, op_types_to_quantize=["Conv", "MatMul", "Gemm"])
    assert {"ConvInteger", "MatMulInteger"} <= {n.op_type for n in onnx.load(dyn).graph.node}
    prof = onnx_profile(dyn)
    # int8 weights, int32 outputs; the biases are added in float after the integer op: other parameters
    assert prof.totals() == {"params": PARAMS, "flops": FLOPS, "memory_bytes": (108 + 4 * 256) + (1280 + 4 * 5) + 4 * 9}
    assert prof.other_params == 9 and prof.precision == "int8"


def test_energy_of_fp32_int8_and_mixed_profiles():
    fp32 = energy_estimate({"flops": 1_000_000, "memory_bytes": 4_000_000})
    assert (fp32["precision"], fp32["source"], fp32["compute_uj"], fp32["dram_uj"]) == ("fp32", "estimate", 4.6, 640.0)
    assert fp32["constants"] == {"pj_per_mac": 4.6, "pj_per_dram_word": 640.0, "source": "45 nm, Horowitz 2014"}
    int8 = energy_estimate({"flops": 1_000_000, "memory_bytes": 1_000_000, "precision": "int8"})
    assert int8["compute_uj"] == pytest.approx(0.23) and int8["dram_uj"] == pytest.approx(160.0)
    layers = [LayerShape("a", "conv", 3, 8, kernel=9, spatial=100, weight_bytes=1, output_bytes=1),
              LayerShape("b", "linear", 8, 10)]  # fmt: skip
    prof = Profile(layers, (3, 10, 10))
    mixed = energy_estimate(prof)
    assert prof.precision == "mixed" and mixed["precision"] == "mixed"
    assert (mixed["int8_macs"], mixed["fp32_macs"]) == (216 * 100, 80)
    assert mixed["compute_uj"] == pytest.approx((0.23 * 21600 + 4.6 * 80) * 1e-6)
    assert layers[0].memory == 216 + 800 and layers[1].memory == 4 * (80 + 10)
    with pytest.raises(EdgepruneError, match="needs the profile's layers"):
        energy_estimate({"flops": 1, "memory_bytes": 4, "precision": "mixed"})


# -- evaluate ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_evaluate_torch_model_and_its_onnx_agree(trained, tmp_path):
    model, data, fp32, _, _ = trained
    torch_scores = evaluate(model, data, batch_size=128)
    onnx_scores = evaluate(fp32, data, batch_size=100, threads=1)
    assert torch_scores["top1"] == pytest.approx(train_evaluate(model, data))  # train's own evaluation
    assert abs(torch_scores["correct"] - onnx_scores["correct"]) <= 1  # float rounding may flip one tie
    assert (torch_scores["backend"], onnx_scores["backend"]) == ("torch", "onnxruntime")
    assert torch_scores["images"] == onnx_scores["images"] == 400 and "top5" not in torch_scores
    edgeprune.save(model, tmp_path / "folder", (3, 32, 32))
    assert evaluate(tmp_path / "folder", data)["correct"] == torch_scores["correct"]


def test_evaluate_top5_above_ten_classes(tmp_path):
    data = random_dataset((3, 16, 16), 12, test=40)
    torch.manual_seed(0)
    model = edgeprune.create("tiny", num_classes=12, channels=8).eval()
    scores = evaluate(model, data, batch_size=16)
    x = (data.test_x.float() / 255 - 0.5) / 0.25
    with torch.inference_mode():
        best = model(x).topk(5, dim=1).indices
    assert scores["top1"] == pytest.approx((best[:, 0] == data.test_y).float().mean().item())
    assert scores["top5"] == pytest.approx((best == data.test_y[:, None]).any(1).float().mean().item())
    export_onnx(model, tmp_path / "m.onnx", (3, 16, 16))
    assert evaluate(tmp_path / "m.onnx", data)["top5"] == pytest.approx(scores["top5"], abs=1 / 40)


@pytest.mark.slow
def test_evaluate_shape_mismatch_is_one_line(trained, tmp_path):
    model, data, fp32, _, _ = trained
    small, gray = random_dataset((3, 16, 16), 10), random_dataset((1, 32, 32), 10)
    edgeprune.save(model, tmp_path / "folder", (3, 32, 32))
    cases = [
        (fp32, small, "takes 3x32x32 inputs, the data set 'random' has 3x16x16 images"),
        (fp32, gray, "takes 3x32x32 inputs, the data set 'random' has 1x32x32 images"),
        (model, gray, "3-channel images, the data set 'random' has 1-channel images"),
        (tmp_path / "folder", small, "was built for 3x32x32 images"),
        (model, random_dataset((3, 32, 32), 7), "the data set 'random' has 7 classes"),
        (tmp_path / "missing.onnx", data, "no such file"),
    ]
    for source, dataset, message in cases:
        with pytest.raises(EdgepruneError, match=message) as err:
            evaluate(source, dataset)
        assert "\n" not in str(err.value)
    with pytest.raises(EdgepruneError, match="batch size must be a positive integer"):
        evaluate(model, data, batch_size=0)


@pytest.mark.slow
def test_cli_export_int8_and_evaluate(trained, tmp_path, capsys):
    """The commands of the issue: export --int8 --calibration, then evaluate the model folder and both files."""
    from edgeprune.cli import main

    model, data, _, _, _ = trained
    folder = tmp_path / "m"
    edgeprune.save(model, folder, (3, 32, 32))
    target = tmp_path / "m.onnx"
    code = main(["export", str(folder), "--onnx", str(target), "--int8", "--calibration", str(MINI),
                 "--calibration-images", "64", "--limit-test", "400"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "int8 QDQ" in out and "drop" in out
    assert target.is_file() and (tmp_path / "m-fp32.onnx").is_file()
    larger = target.stat().st_size >= (tmp_path / "m-fp32.onnx").stat().st_size
    assert larger == ("not smaller than the fp32" in out)
    scores = {}
    for source in (folder, tmp_path / "m-fp32.onnx", target):
        assert main(["evaluate", str(source), "--data", str(MINI), "--limit-test", "400", "--json"]) == 0
        scores[source.name] = json.loads(capsys.readouterr().out)["top1"]
    assert scores["m"] == pytest.approx(scores["m-fp32.onnx"], abs=0.0026)  # at most one image of 400 differs
    assert abs(scores["m"] - scores["m.onnx"]) <= 0.01  # within the default --max-drop of 1 point
    # over the limit: the file is kept, the command says so in one line and exits 2
    code = main(["export", str(folder), "--onnx", str(target), "--int8", "--calibration", str(MINI),
                 "--calibration-images", "64", "--limit-test", "400", "--max-drop", "-100"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "over --max-drop" in err and err.count("\n") == 1 and target.is_file()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--int8"], "--int8 needs --calibration"),
        (["--calibration", "data"], "--int8 needs --calibration"),
        (["--int8", "--calibration", "/no/such/data"], "no such data set"),
        (["--int8", "--calibration", "data", "--calibration-method", "magic"], "unknown calibration method"),
    ],
)
def test_cli_int8_argument_errors_are_one_line(tmp_path, capsys, extra, message):
    from edgeprune.cli import main

    code = main(["export", "tiny", "--onnx", str(tmp_path / "t.onnx"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_sweep_int8_adds_int8_rows_beside_the_fp32_ones(tmp_path, capsys):
    from edgeprune.cli import main

    out = tmp_path / "s"
    code = main(["sweep", "tiny", "--modes", "flops", "--targets", "0.5", "--data", str(MINI), "--epochs", "1",
                 "--limit-train", "256", "--limit-test", "64", "--runs", "2", "--warmup", "0", "--int8",
                 "--backends", "torch", "onnxruntime", "--out", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    rows = {r["mode"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert set(rows) == {"unpruned", "unpruned int8", "flops", "flops int8"}
    for mode in ("unpruned", "flops"):
        fp32, int8 = rows[mode], rows[f"{mode} int8"]
        assert (fp32["precision"], int8["precision"]) == ("fp32", "int8")
        assert int8["flops"] == fp32["flops"]  # MACs unchanged
        # params as values: the same, less the BatchNorm scales and shifts folded into the convs by the export
        assert 0.99 * fp32["params"] < int8["params"] <= fp32["params"]
        assert int8["onnxruntime_size_mb"] < 0.5 * fp32["onnxruntime_size_mb"]
        assert int8["energy_uj"] < fp32["energy_uj"] and int8["accuracy"] is not None
        assert int8["onnxruntime_latency_median_ms"] > 0 and int8.get("torch_latency_median_ms") is None
    with pytest.raises(SystemExit):  # --int8 of an untrained sweep: nothing to calibrate on
        main(["sweep", "tiny", "--int8", "--targets", "0.5", "--out", str(tmp_path / "u"), "--epochs", "0"])
    code = main(["sweep", "tiny", "--int8", "--targets", "0.5", "--out", str(tmp_path / "u")])
    assert code == 2 and "--int8 needs --data" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_export_int8_says_when_the_int8_file_is_not_smaller(tmp_path, capsys):
    """At a few channels per layer, per-channel scales and zero points outweigh the bytes int8 weights save."""
    from edgeprune.cli import main

    torch.manual_seed(0)
    edgeprune.save(edgeprune.create("tiny", width=0.05), tmp_path / "n", (3, 32, 32))
    code = main(["export", str(tmp_path / "n"), "--onnx", str(tmp_path / "n.onnx"), "--int8", "--calibration",
                 str(MINI), "--calibration-images", "32", "--limit-test", "100", "--max-drop", "100"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and (tmp_path / "n.onnx").stat().st_size >= (tmp_path / "n-fp32.onnx").stat().st_size
    assert "note: the int8 file is not smaller than the fp32 one" in out
