"""sweep: rows, CSV/JSON outputs and plots from a small untrained run; Pareto front; bad input."""

import csv
import json
import math

import pytest

from edgeprune.cli import main
from edgeprune.errors import EdgepruneError
from edgeprune.plots import pareto_front
from edgeprune.sweep import SweepSettings, columns, sweep


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    result = sweep("tiny", SweepSettings(out, modes=["flops"], targets=[0.5], runs=3, warmup=1, threads=1, log=None))
    return out, result


@pytest.mark.slow
def test_sweep_rows(swept):
    _, result = swept
    rows = result["rows"]
    assert [(r["mode"], r["target"]) for r in rows] == [("unpruned", 1.0), ("flops", 0.5)]
    ref = rows[0]
    assert ref["params_pct"] == ref["flops_pct"] == ref["memory_pct"] == 100.0
    assert 49.0 < rows[1]["flops_pct"] <= 50.0
    for r in rows:
        for b in ("torch", "onnxruntime"):
            for f in (
                "latency_median_ms",
                "latency_p90_ms",
                "latency_isolated_median_ms",
                "cpu_pct",
                "rss_peak_mb",
                "size_mb",
            ):
                v = r[f"{b}_{f}"]
                assert math.isfinite(v) and v > 0, (r["mode"], b, f)
        assert r["energy_uj"] == pytest.approx(r["energy_compute_uj"] + r["energy_dram_uj"])
        assert r["accuracy"] is None


@pytest.mark.slow
def test_sweep_files(swept):
    out, result = swept
    saved = json.loads((out / "results.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"]))
    assert saved["settings"]["y"] == "params" and saved["settings"]["runs"] == 3
    with open(out / "results.csv") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == columns(["torch", "onnxruntime"])
        csv_rows = list(reader)
    assert len(csv_rows) == 2 and csv_rows[1]["mode"] == "flops" and csv_rows[1]["accuracy"] == ""
    for name in ("tradeoffs_torch.png", "tradeoffs_onnxruntime.png", "latency_vs_flops.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert sorted(saved["plots"]) == sorted(
        ["tradeoffs_torch.png", "tradeoffs_onnxruntime.png", "latency_vs_flops.png"]
    )


def test_pareto_front():
    xs = [1.0, 2.0, 3.0, 2.5, 4.0, 1.0]
    ys = [1.0, 3.0, 2.0, 4.0, 4.0, 0.5]
    # lower x and higher y are better: (1,1), (2,3), (2.5,4) survive; (3,2) and (4,4) are dominated
    assert pareto_front(xs, ys) == [0, 1, 3]
    assert pareto_front([], []) == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"modes": ["latency"]}, "a sweep prunes to proxy costs"),
        ({"targets": [1.5]}, "fractions"),
        ({"targets": []}, "no targets"),
        ({"seeds": []}, "no seeds"),
        ({"epochs": 3}, "both --data and --epochs"),
        ({"backends": ["tvm"]}, "unknown backend"),
        ({"runs": 0}, "runs must be positive"),
        ({"y": "accuracy"}, "needs training"),
    ],
)
def test_sweep_rejects_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(EdgepruneError, match=message):
        sweep("tiny", SweepSettings(tmp_path, log=None, **kwargs))


def test_cli_sweep_errors(tmp_path, capsys):
    assert main(["sweep", "tiny", "--targets", "2", "--out", str(tmp_path / "s")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["sweep", str(tmp_path / "missing" / "x"), "--out", str(tmp_path / "t")]) == 2
    assert "not a model folder" in capsys.readouterr().err


@pytest.mark.slow
def test_sweep_with_training(tmp_path):
    pytest.importorskip("edgeprune.train")
    from conftest import MINI

    result = sweep("tiny", SweepSettings(
        tmp_path, modes=["flops"], targets=[0.5], backends=["onnxruntime"], runs=2, warmup=0, threads=1,
        epochs=1, data=str(MINI), limit_train=128, limit_test=64, log=None,
    ))  # fmt: skip
    assert result["settings"]["y"] == "accuracy"
    for row in result["rows"]:
        assert 0.0 <= row["accuracy"] <= 1.0 and row["train_seconds"] > 0
    assert (tmp_path / "tradeoffs_onnxruntime.png").is_file()


@pytest.mark.slow
def test_every_point_also_meets_the_extra_limits_on_rounded_widths(tmp_path, capsys):
    argv = ["sweep", "tiny", "--modes", "flops", "--targets", "0.7", "--also", "params=0.3", "--round-to", "8"]
    code = main([*argv, "--backends", "onnxruntime", "--runs", "2", "--warmup", "0", "--out", str(tmp_path / "s")])
    assert code == 0, capsys.readouterr().err
    rows = json.loads((tmp_path / "s" / "results.json").read_text())["rows"]
    point = next(r for r in rows if r["mode"] == "flops")
    assert point["params_pct"] <= 30.0 and point["flops_pct"] <= 70.0  # both limits, params the binding one
    with pytest.raises(EdgepruneError, match="a sweep prunes to proxy costs"):
        sweep("tiny", SweepSettings(tmp_path / "x", also={"latency": "1ms"}, log=None))


@pytest.mark.slow
def test_sweep_candidates_and_microcontroller_costs(tmp_path, capsys):
    """--candidates 2: each pruned point is the kept candidate (table in results.json, seconds in its training
    time); peak_memory and flash, among the costs, get their own columns."""
    from conftest import MINI

    out = tmp_path / "o"
    argv = ["sweep", "tiny", "--modes", "flops", "peak_memory", "--targets", "0.5", "--also", "flash=0.6",
            "--backends", "onnxruntime", "--runs", "2", "--warmup", "0", "--threads", "1", "--data", str(MINI),
            "--epochs", "1", "--limit-train", "64", "--limit-test", "32", "--candidates", "2",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    with open(out / "results.csv") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == columns(["onnxruntime"], mcu=("peak_memory", "flash"), search=True)
        assert {"peak_memory_bytes", "flash_bytes", "search_seconds"} <= set(reader.fieldnames)
    rows = json.loads((out / "results.json").read_text())["rows"]
    ref = rows[0]
    assert ref["mode"] == "unpruned" and "search" not in ref
    for row in rows:  # fp32 flash: 4 bytes per parameter (weights, biases, norm vectors)
        assert row["flash_bytes"] == 4 * row["params"]
        assert row["flash_pct"] == pytest.approx(100 * row["flash_bytes"] / ref["flash_bytes"])
    for row in rows[1:]:
        assert row["flash_bytes"] <= 0.6 * ref["flash_bytes"]
        table = row["search"]
        assert len(table["candidates"]) == 2 and row["search_seconds"] == table["search_seconds"] > 0
        kept = [c for c in table["candidates"] if c["kept"]]
        assert len(kept) == 1 and kept[0]["rank"] == 1  # flops proxy: the most FLOPs kept
        assert kept[0]["costs"]["flops"] == max(c["costs"]["flops"] for c in table["candidates"]) == row["flops"]
        assert row["train_seconds"] >= row["search_seconds"]
    peak = next(r for r in rows if r["mode"] == "peak_memory")
    assert peak["peak_memory_bytes"] <= 0.5 * ref["peak_memory_bytes"] and peak["peak_memory_pct"] <= 50.0
