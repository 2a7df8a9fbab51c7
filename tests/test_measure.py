"""bench: JSON schema, positive finite figures, the energy formula, bad input, interleaved latency."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import edgeprune
from edgeprune.backends import latency_stats
from edgeprune.cli import main
from edgeprune.energy import energy_estimate
from edgeprune.errors import EdgepruneError
from edgeprune.export import export_onnx
from edgeprune.measure import bench, latency_interleaved, prepare

RUNS = 5


def _own_counts(model: nn.Module, shape=(3, 32, 32)) -> tuple[int, int]:
    """MACs and 32-bit words moved (params + conv/linear outputs), counted here without edgeprune.complexity."""
    macs = 0
    activations = 0

    def hook(m, _inp, out):
        nonlocal macs, activations
        spatial = out.shape[2:].numel() if isinstance(m, nn.Conv2d) else 1
        macs += m.weight.numel() * spatial
        activations += out[0].numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(torch.zeros(1, *shape))
    for h in handles:
        h.remove()
    params = sum(p.numel() for p in model.parameters())
    return macs, params + activations


@pytest.fixture(scope="module")
def pruned_dir(tmp_path_factory):
    torch.manual_seed(0)
    result = edgeprune.prune(edgeprune.create("tiny"), "flops", 0.5, seed=1)
    folder = tmp_path_factory.mktemp("pruned") / "tiny-flops-0.5"
    edgeprune.save(result.model, folder)
    return folder


@pytest.fixture(scope="module")
def measured(pruned_dir):
    return bench(str(pruned_dir), runs=RUNS, warmup=1, threads=1)


def _positive_finite(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.slow
def test_bench_schema_and_figures(measured, pruned_dir):
    assert set(measured) >= {"model", "input_shape", "runs", "warmup", "threads", "complexity", "energy", "backends"}
    assert measured["runs"] == RUNS and measured["threads"] == 1 and measured["input_shape"] == [3, 32, 32]
    assert list(measured["backends"]) == ["torch", "onnxruntime"]
    for name, b in measured["backends"].items():
        lat = b["latency_ms"]
        assert lat["n"] == RUNS
        for key in ("median", "p90", "mean", "min", "max"):
            assert _positive_finite(lat[key]), (name, key)
        assert lat["min"] <= lat["median"] <= lat["p90"] <= lat["max"]
        assert _positive_finite(b["throughput_per_s"])
        assert _positive_finite(b["cpu"]["utilisation_pct"]) and b["cpu"]["threads"] == 1
        mem = b["memory"]
        for key in ("rss_baseline_mb", "rss_peak_mb", "rss_after_mb"):
            assert _positive_finite(mem[key]), (name, key)
        assert math.isfinite(mem["rss_increase_mb"]) and mem["rss_increase_mb"] >= 0
        assert mem["rss_peak_mb"] >= mem["rss_baseline_mb"]
        assert _positive_finite(b["size"]["bytes"]) and b["size"]["mb"] == b["size"]["bytes"] / 1e6
        measured_energy = b["energy"]  # RAPL where readable, else the reason; never the estimate
        assert measured_energy["source"] == "rapl"
        assert measured_energy["uj_per_inference"] >= 0 if measured_energy["available"] else measured_energy["reason"]
    assert measured["backends"]["torch"]["size"]["bytes"] == (pruned_dir / "model.safetensors").stat().st_size
    assert measured["backends"]["torch"]["size"]["file"] == "model.safetensors"
    assert measured["backends"]["onnxruntime"]["size"]["file"] == "model.onnx"
    assert measured["backends"]["onnxruntime"]["export"]["check"]["max_abs_diff"] <= 1e-4
    json.dumps(measured)  # JSON-ready


@pytest.mark.slow
def test_energy_equals_formula_on_own_counts(measured, pruned_dir):
    macs, words = _own_counts(edgeprune.load(pruned_dir))
    e = measured["energy"]
    assert e["macs"] == macs
    assert e["dram_words"] == words
    assert e["compute_uj"] == pytest.approx(4.6e-6 * macs, rel=1e-12)
    assert e["dram_uj"] == pytest.approx(640e-6 * words, rel=1e-12)
    assert e["total_uj"] == pytest.approx(4.6e-6 * macs + 640e-6 * words, rel=1e-12)
    assert e["constants"] == {"pj_per_mac": 4.6, "pj_per_dram_word": 640.0, "source": "45 nm, Horowitz 2014"}
    assert measured["complexity"]["flops"] == macs
    assert e["source"] == "estimate"


def _powercap(root, energy_uj):
    """A powercap folder like /sys/class/powercap: package 0 with a core and a dram subdomain."""
    for folder, name in [("intel-rapl:0", "package-0"), ("intel-rapl:0/intel-rapl:0:0", "core"),
                         ("intel-rapl:0/intel-rapl:0:1", "dram")]:  # fmt: skip
        (root / folder).mkdir(parents=True)
        (root / folder / "name").write_text(name + "\n")
        (root / folder / "energy_uj").write_text(f"{energy_uj}\n")
        (root / folder / "max_energy_range_uj").write_text("262143328850\n")
    return root


@pytest.mark.slow
def test_bench_reads_rapl_in_the_measuring_process(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EDGEPRUNE_POWERCAP", str(_powercap(tmp_path / "powercap", 123456)))
    quick = ["--runs", "2", "--warmup", "0", "--threads", "1"]
    assert main(["bench", "tiny", "--backends", "torch", *quick, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["energy"]["source"] == "estimate" and list(out["backends"]) == ["torch"]
    for b in out["backends"].values():
        e = b["energy"]  # a fixture that does not count: 0 uJ, but measured and labelled as such
        assert (e["source"], e["available"], e["uj_per_inference"]) == ("rapl", True, 0.0)
        assert set(e["domains"]) == {"package-0", "package-0/core", "package-0/dram"}
        assert "includes idle cores and other processes" in e["note"] and e["inferences"] >= 2
    monkeypatch.setenv("EDGEPRUNE_POWERCAP", str(tmp_path / "none"))
    assert main(["bench", "tiny", "--backends", "onnxruntime", *quick]) == 0
    text = " ".join(capsys.readouterr().out.split())  # notes wrap at 100 columns, paths are never cut
    assert f"measured energy (RAPL): none, {tmp_path / 'none'}: no such folder" in text
    assert "estimate, not a measurement" in text


def test_energy_estimate_from_totals():
    e = energy_estimate({"flops": 1_000_000, "memory_bytes": 4_000_000})
    assert e["compute_uj"] == pytest.approx(4.6)
    assert e["dram_uj"] == pytest.approx(640.0)
    assert "45 nm, Horowitz 2014" in e["model"]


def test_latency_stats_match_numpy():
    times = list(np.random.default_rng(0).uniform(0.001, 0.01, 37))
    s = latency_stats(times)
    ms = 1e3 * np.array(times)
    assert s["median"] == pytest.approx(np.median(ms))
    assert s["p90"] == pytest.approx(np.percentile(ms, 90))
    assert s["mean"] == pytest.approx(ms.mean())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"backends": ("torch", "tensorrt")}, "unknown backend 'tensorrt'"),
        ({"backends": ()}, "no backend"),
        ({"runs": 0}, "runs must be positive"),
        ({"runs": -3}, "runs must be positive"),
        ({"warmup": -1}, "warmup must be >= 0"),
        ({"batch_size": 0}, "batch_size must be positive"),
        ({"threads": 0}, "threads must be positive"),
        ({"pad_to": 0}, r"pad_to \(--pad-channels\) must be positive"),
    ],
)
def test_bench_rejects_bad_arguments(kwargs, message):
    with pytest.raises(EdgepruneError, match=message):
        bench("tiny", **kwargs)


def test_bench_rejects_missing_folder(tmp_path):
    with pytest.raises(EdgepruneError, match="not a model folder"):
        bench(str(tmp_path / "nope" / "model"))
    with pytest.raises(EdgepruneError, match="unknown model"):
        bench("resnet9000")


@pytest.mark.slow
def test_cli_bench_json_and_errors(capsys, pruned_dir):
    assert main(["bench", str(pruned_dir), "--backends", "onnxruntime", "--runs", "3", "--warmup", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out["backends"]) == ["onnxruntime"] and out["runs"] == 3 and out["spin_wait"] is True
    assert out["backends"]["onnxruntime"]["spin_wait"] == "session.intra_op.allow_spinning=1"
    assert main(["bench", "tiny", "--backends", "tflite"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown backend 'tflite'" in err
    with pytest.raises(SystemExit) as exit_info:  # checked by argparse, before any work
        main(["bench", "tiny", "--runs", "0"])
    assert exit_info.value.code == 2 and "must be at least 1" in capsys.readouterr().err
    assert main(["bench", "/no/such/dir"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.slow
def test_cli_bench_table(capsys):
    args = ["bench", "tiny", "--backends", "onnxruntime", "--runs", "2", "--warmup", "0", "--threads", "2", "--no-spin"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "median ms" in out and "onnxruntime" in out and "no spin-waiting" in out
    flat = " ".join(out.split())  # notes wrap at 100 columns
    assert "45 nm, Horowitz 2014" in flat and "4.6 pJ" in flat and "640 pJ" in flat
    assert max(map(len, out.splitlines())) <= 100  # fits a terminal: long notes wrap, the table is narrow
    assert "onnxruntime: model.onnx" in flat  # the file timed, in the notes


@pytest.mark.slow
def test_latency_interleaved(pruned_dir):
    res = latency_interleaved({"parent": "tiny", "pruned": str(pruned_dir)}, "onnxruntime", runs=4, warmup=1, threads=1)
    assert set(res) == {"parent", "pruned"}
    for r in res.values():
        assert r["latency_ms"]["n"] == 4 and _positive_finite(r["latency_ms"]["median"])


@pytest.mark.slow
def test_latency_interleaved_models_of_different_input_shapes(tmp_path):
    small = prepare("tiny", tmp_path / "small", ("torch",), (3, 16, 16))
    large = prepare("tiny", tmp_path / "large", ("torch",), (3, 40, 40))
    res = latency_interleaved({"small": small, "large": large}, "torch", runs=3, warmup=0, threads=1)
    assert {n: r["latency_ms"]["n"] for n, r in res.items()} == {"small": 3, "large": 3}


@pytest.mark.slow
def test_bench_an_onnx_file_as_it_is(tmp_path, capsys):
    model = edgeprune.create("tiny")
    path = tmp_path / "tiny.onnx"
    export_onnx(model, path, (3, 32, 32))
    before = path.read_bytes()
    assert main(["bench", str(path), "--runs", "3", "--warmup", "1", "--threads", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out["backends"]) == ["onnxruntime"] and out["input_shape"] == [3, 32, 32]  # from the file
    ort = out["backends"]["onnxruntime"]
    assert ort["size"] == {"file": "tiny.onnx", "bytes": len(before), "mb": len(before) / 1e6}
    assert "export" not in ort and ort["latency_ms"]["n"] == 3 and ort["latency_ms"]["median"] > 0
    macs, words = _own_counts(model)
    folded = sum(m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert out["complexity"]["flops"] == out["energy"]["macs"] == macs
    assert out["energy"]["dram_words"] == words - folded  # BatchNorms folded into the convs' biases
    assert "ONNX graph" in out["complexity"]["counted_from"] and path.read_bytes() == before
    assert main(["bench", str(path), "--runs", "2", "--warmup", "0", "--threads", "1"]) == 0
    assert "complexity counted from the ONNX graph" in capsys.readouterr().out
    for args, message in [
        (["--backends", "torch"], "runs on onnxruntime only (--backends onnxruntime)"),
        (["--pad-channels", "16"], "--pad-channels needs a model folder or a zoo name"),
        (["--input-size", "64"], "takes 3x32x32 inputs, not 3x64x64"),
    ]:
        assert main(["bench", str(path), *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err
    assert main(["bench", str(tmp_path / "gone.onnx")]) == 2
    assert "gone.onnx: no such file" in capsys.readouterr().err
