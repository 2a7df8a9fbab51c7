"""Costs as one seam, latency tables and pruning to a measured latency (fake timers where timing would flake)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import edgeprune
from edgeprune.cli import main
from edgeprune.costs import NAMES, STATIC, get_cost, totals
from edgeprune.energy import energy_estimate
from edgeprune.errors import EdgepruneError
from edgeprune.graph import analyse
from edgeprune.latency import build_table, calibrate
from edgeprune.lut import (
    LatencyTable,
    LayerTable,
    _isotonic,
    grid_widths,
    layer_blocks,
    load_table,
)
from edgeprune.pruning import apply_plan, floor_plan

SHAPE = (3, 32, 32)


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return edgeprune.create("tiny")


def fake_timer(blocks: dict[str, dict]) -> dict[str, float]:
    """Latency proportional to the block's MACs plus a fixed per-call overhead: numbers a test can check."""
    out = {}
    for key, b in blocks.items():
        positions = 1
        if b["kind"] == "conv":
            h, w = b["input_shape"][1:]
            positions = (h // b["stride"][0]) * (w // b["stride"][1])
        kernel = b["kernel"][0] * b["kernel"][1] if b["kind"] == "conv" else 1
        out[key] = 0.01 + 1e-7 * (b["c_in"] // b["groups"]) * b["c_out"] * kernel * positions
    return out


def fake_table(model: nn.Module | None = None, parent_ms: float = 3.0, round_to: int = 8) -> LatencyTable:
    return build_table(model or tiny(), SHAPE, round_to=round_to, timer=fake_timer, parent_ms=parent_ms, source="tiny",
                       calibration=())  # fmt: skip


# -- costs ----------------------------------------------------------------------------------------


def test_every_cost_has_a_name_unit_key_and_label():
    assert NAMES == ("params", "flops", "memory", "energy", "peak_memory", "flash", "latency")
    keys = [c.key for c in STATIC.values()]
    assert keys == ["params", "flops", "memory_bytes", "energy_uj"] and all(c.unit and c.label for c in STATIC.values())
    with pytest.raises(EdgepruneError, match="needs a latency table"):
        get_cost("latency")


def test_energy_cost_is_the_bench_estimate_summed_per_layer():
    prof = edgeprune.profile(tiny())
    assert get_cost("energy").total(prof) == pytest.approx(energy_estimate(prof)["total_uj"], rel=1e-12)
    assert totals(prof)["params"] == prof.total("params") and totals(prof)["memory_bytes"] == prof.total("memory")


@pytest.mark.parametrize(
    ("cost", "text", "current", "want"),
    [("energy", "50uJ", 100.0, 50.0), ("energy", "0.02mJ", 100.0, 20.0), ("energy", "0.25", 100.0, 25.0),
     ("memory", "1MiB", 10**8, 2**20), ("flops", "150M", 10**9, 150_000_000)],
)  # fmt: skip
def test_limits_parse_in_each_costs_units(cost, text, current, want):
    assert get_cost(cost).parse(text, current) == pytest.approx(want)


@pytest.mark.parametrize(
    ("cost", "text", "match"),
    [("energy", "5", "needs a unit"), ("energy", "5MB", "in bytes"), ("energy", "5ms", "unknown unit"),
     ("energy", "500uJ", "not below"), ("flops", "4ms", "unknown unit")],
)  # fmt: skip
def test_bad_limits_are_one_line(cost, text, match):
    with pytest.raises(EdgepruneError, match=match):
        get_cost(cost).parse(text, 100.0)


@pytest.mark.slow
def test_an_energy_budget_is_met_and_combines_with_others():
    result = edgeprune.prune(tiny(), budget={"energy": 0.5, "params": 0.6}, seed=1)
    report = result.report()
    for cost in ("energy", "params"):
        b = report["budget"][cost]
        assert b["met"] and b["after"] <= b["limit"]
    assert report["after"]["energy_uj"] == pytest.approx(get_cost("energy").total(edgeprune.profile(result.model)))


# -- tables ---------------------------------------------------------------------------------------


def test_interpolation_against_hand_numbers():
    t = LayerTable("conv", [8, 16], [8, 16, 32], [[1.0, 2.0, 4.0], [3.0, 4.0, 8.0]])
    assert t.at(8, 8) == 1.0 and t.at(16, 32) == 8.0
    assert t.at(12, 8) == pytest.approx(2.0)  # halfway in c_in
    assert t.at(12, 12) == pytest.approx(2.5)  # bilinear: (1 + 2 + 3 + 4) / 4
    assert t.at(16, 24) == pytest.approx(6.0)
    assert t.at(4, 40) == 4.0  # clamped to the grid
    dw = LayerTable("conv", [8, 16], [8, 16], [[0.5, 1.5]], depthwise=True)
    assert dw.at(12, 12) == pytest.approx(1.0)


def test_grid_is_multiples_of_round_to_dense_near_full_width():
    for full in (8, 24, 64, 100, 512):
        g = grid_widths(full, 8)
        assert g[-1] == full and g == sorted(set(g)) and all(w % 8 == 0 for w in g[:-1])
        if full > 24:
            assert (full - 1) // 8 * 8 in g and (full - 1) // 8 * 8 - 8 in g  # the two steps below full
    assert grid_widths(5, 8) == [5]


@pytest.mark.slow
def test_blocks_find_norms_and_activations_module_or_functional():
    blocks = layer_blocks(tiny(), SHAPE)
    assert [(b["norm"], b["act"]) for b in blocks.values()] == [(True, "relu")] * 3 + [(False, "relu"), (False, None)]
    res = layer_blocks(edgeprune.create("resnet56", width=0.25), SHAPE)
    assert res["layer1.0.conv1"]["act"] == "relu"  # torch.relu(bn1(conv1(x)))
    assert res["layer1.0.conv2"]["act"] is None  # relu(bn2(conv2(out)) + shortcut): not its own


@pytest.mark.slow
def test_table_predicts_the_parent_exactly_and_round_trips(tmp_path):
    model = tiny()
    table = fake_table(model)
    prof = edgeprune.profile(model)
    assert table.predict(prof) == pytest.approx(3.0)
    assert get_cost("latency", table).total(prof) == pytest.approx(3.0)
    assert table.layers["features.4"].at(48, 96) == pytest.approx(0.01 + 1e-7 * 48 * 96 * 9 * 256)
    fc = table.layers["fc"]
    assert fc.c_in == grid_widths(192, 8) and fc.c_out == grid_widths(192, 8)
    assert table.layers["head"].c_out == [10]  # the output layer keeps its width
    assert table.layers["features.0"].c_in == [3]  # the model's input keeps its channels
    table.save(tmp_path / "t.json")
    again = load_table(tmp_path / "t.json")
    assert again.predict(prof) == pytest.approx(table.predict(prof)) and again.layers == table.layers


@pytest.mark.parametrize(
    ("edit", "match"),
    [(lambda d: d.update(kind="other"), "not an edgeprune latency table"),
     (lambda d: d["layers"]["fc"].update(ms=[[1.0]]), "malformed"),
     (lambda d: d["layers"]["fc"].update(c_in=[16, 8]), "malformed"),
     (lambda d: d.update(parent_ms=-1), "malformed")],
)  # fmt: skip
def test_a_bad_table_file_is_one_line(tmp_path, edit, match):
    data = fake_table().to_dict()
    edit(data)
    (tmp_path / "t.json").write_text(json.dumps(data))
    with pytest.raises(EdgepruneError, match=match):
        load_table(tmp_path / "t.json")


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [("cpu", "Some Other CPU", "CPU 'Some Other CPU'"), ("backend_version", "0.1", "version '0.1'"),
     ("threads", 4, "threads '4'")],
)  # fmt: skip
def test_a_table_from_another_machine_is_refused(field, value, match):
    table = fake_table()
    table.check_machine()  # this machine: fine
    setattr(table, field, value)
    with pytest.raises(EdgepruneError, match=match):
        table.check_machine(threads=1)


def test_a_table_for_another_model_is_refused():
    table = fake_table()
    with pytest.raises(EdgepruneError, match="made for another model"):
        edgeprune.prune(edgeprune.create("tiny", width=0.5), budget={"latency": 0.5}, table=table, measure=lambda m: 0)


# -- pruning to a latency -------------------------------------------------------------------------


def test_latency_budget_plans_with_the_table_and_meets_it():
    table = fake_table()
    measured = []

    def measure(model: nn.Module) -> float:  # the "device" agrees with the table exactly
        ms = table.predict(edgeprune.profile(model))
        measured.append(ms)
        return ms

    result = edgeprune.prune(tiny(), budget={"latency": 0.6}, table=table, measure=measure)
    report = result.report()
    lat = report["latency"]
    assert lat["met"] and lat["measured_ms"] <= 1.8 and lat["predicted_ms"] == pytest.approx(lat["measured_ms"])
    assert report["settings"]["round_to"] == 8  # the table's
    widths = [layer["filters_after"] for layer in report["layers"]][:-1]
    assert all(w % 8 == 0 for w in widths)
    assert len(lat["attempts"]) == len(measured) >= 1


def test_a_measured_miss_replans_against_a_lowered_limit():
    table = fake_table()
    calls = []

    def slow_device(model: nn.Module) -> float:  # runs 15 % slower than the table says
        ms = 1.15 * table.predict(edgeprune.profile(model))
        calls.append(ms)
        return ms

    result = edgeprune.prune(tiny(), budget={"latency": "1.2ms"}, table=table, measure=slow_device, attempts=4)
    lat = result.report()["latency"]
    first, *rest = lat["attempts"]
    assert first["measured_ms"] > 1.2 and rest, "the first cut misses and is re-planned"
    assert rest[0]["planned_ms"] < first["planned_ms"]  # lowered by the miss
    assert lat["met"] and lat["measured_ms"] <= 1.2


@pytest.mark.slow
def test_latency_combines_with_memory_in_one_budget():
    table = fake_table()
    result = edgeprune.prune(tiny(), budget={"latency": 0.8, "memory": 0.4}, table=table,
                             measure=lambda m: table.predict(edgeprune.profile(m)))  # fmt: skip
    report = result.report()
    assert report["budget"]["memory"]["met"] and report["latency"]["met"]


def test_a_miss_that_never_recovers_is_reported_and_the_cli_exits_1(tmp_path, monkeypatch, capsys):
    table = fake_table()
    table.save(tmp_path / "t.json")
    monkeypatch.setattr("edgeprune.search.default_measure", lambda *args: lambda model: 99.0)
    code = main(["prune", "tiny", "--target", "latency=0.5", "--lut", str(tmp_path / "t.json"), "--attempts", "2",
                 "--out", str(tmp_path / "p")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "latency target missed after" in err and err.count("\n") == 1
    report = json.loads((tmp_path / "p" / "report.json").read_text())
    assert report["latency"]["met"] is False and (tmp_path / "p" / "model.safetensors").is_file()


def test_cli_refuses_a_mismatched_table_in_one_line(tmp_path, capsys):
    data = fake_table().to_dict()
    data["cpu"] = "Another CPU"
    (tmp_path / "t.json").write_text(json.dumps(data))
    code = main(["prune", "tiny", "--target", "latency=0.5", "--lut", str(tmp_path / "t.json"),
                 "--out", str(tmp_path / "p")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "made for CPU 'Another CPU'" in err and err.count("\n") == 1
    assert not (tmp_path / "p").exists()
    code = main(["prune", "tiny", "--target", "latency=0.5", "--out", str(tmp_path / "p")])
    assert code == 2 and "needs a latency table" in capsys.readouterr().err


def test_a_table_off_by_a_factor_and_an_offset_is_corrected_in_a_few_cuts():
    table = fake_table()

    full = table.parent_ms - table.rest()  # the parent's layers, by the table

    def device(model: nn.Module) -> float:  # what pruning saves is 30 % more than the table says
        layers = table.predict(edgeprune.profile(model)) - table.rest()
        return table.parent_ms - (full - layers) * 1.3

    result = edgeprune.prune(tiny(), budget={"latency": "1.5ms"}, table=table, measure=device, attempts=4)
    lat = result.report()["latency"]
    first, *_ = lat["attempts"]
    assert first["measured_ms"] < 0.7 * 1.5  # planned with the table alone, it lands far under
    assert lat["met"] and 0.85 * 1.5 <= lat["measured_ms"] <= 1.5  # within a step of tiny's coarse widths
    assert len({a["predicted_ms"] for a in lat["attempts"]}) == len(lat["attempts"])  # no width measured twice


def test_layers_that_add_up_to_more_than_the_model_are_scaled_down_to_it():
    table = fake_table(parent_ms=1.0)  # the layers sum to about 2.3 ms: each paid overhead the model pays once
    prof = edgeprune.profile(tiny())
    assert table.rest_ms < 0 and table.rest() == 0 and table.scale == pytest.approx(1.0 / (1.0 - table.rest_ms))
    assert table.predict(prof) == pytest.approx(1.0)
    half = edgeprune.prune(tiny(), "flops", 0.5).model
    assert 0 < table.predict(edgeprune.profile(half)) < 1.0


# -- calibration: whole models measured, the floor known before cutting ----------------------------


def curved_device(table: LatencyTable):  # noqa: ANN201 - a measure function
    """A device whose latency is a convex function of the table's sum, equal to it at the parent: the floor
    (overhead the layers never shed) is 30 % of the parent."""

    def device(model: nn.Module) -> float:
        s = table.table_sum(edgeprune.profile(model))
        return table.parent_ms * (0.3 + 0.7 * (s / table.parent_ms) ** 1.5)

    return device


def calibrated_table(parent_ms: float = 3.0) -> tuple[LatencyTable, object]:
    table = fake_table(parent_ms=parent_ms)
    device = curved_device(table)
    timer = lambda models: {name: device(m) for name, m in models.items()}  # noqa: E731
    return calibrate(table, tiny(), timer=timer), device


def test_isotonic_fit_pools_violators():
    assert _isotonic([1.0, 3.0, 2.0, 4.0]) == [1.0, 2.5, 2.5, 4.0]
    assert _isotonic([3.0, 1.0, 2.0]) == [2.0, 2.0, 2.0]
    assert _isotonic([1.0, 2.0]) == [1.0, 2.0]


@pytest.mark.slow
def test_calibration_points_are_the_uniform_cuts_and_the_floor_measured():
    table, device = calibrated_table()
    model, example = tiny(), torch.zeros(1, *SHAPE)
    prof, graph = analyse(model, example, prune_residual=True)
    floor = apply_plan(model, floor_plan(prof, prof.groups, round_to=8), example, graph)
    widths = {layer.name: layer.c_out for layer in edgeprune.profile(floor).layers}
    assert set(widths.values()) == {8, 10}  # every layer at one quantum of 8 but the 10-class head
    sums = [p[0] for p in table.calibration]
    assert sums == sorted(sums) and len(sums) == 5  # floor, 0.3, 0.5, 0.75 of the parent's sum, the parent
    assert table.calibration[-1] == [pytest.approx(3.0), pytest.approx(3.0)]
    assert table.floor_ms == pytest.approx(device(floor))
    for s, ms in table.calibration:  # the map goes through its points, and back
        assert table.calibrated(s) == pytest.approx(ms) and table.table_ms_for(ms) == pytest.approx(s)


@pytest.mark.slow
def test_calibration_predicts_a_non_uniform_cut_better_than_the_sum():
    table, device = calibrated_table()
    cut = edgeprune.prune(tiny(), mode="flops", target=0.4, round_to=8).model  # Algorithm 1: not uniform
    prof = edgeprune.profile(cut)
    truth = device(cut)
    assert abs(table.predict(prof) - truth) < 0.05 * truth < abs(table.table_sum(prof) - truth)


@pytest.mark.slow
def test_a_calibrated_table_lands_the_first_cut_and_round_trips(tmp_path):
    table, device = calibrated_table()
    table.save(tmp_path / "t.json")
    again = load_table(tmp_path / "t.json")
    assert again.calibration == table.calibration and again.floor_ms == table.floor_ms
    result = edgeprune.prune(tiny(), budget={"latency": "1.8ms"}, table=again, measure=device, prune_residual=True)
    report = result.report()
    lat = report["latency"]
    assert lat["met"] and lat["measured_ms"] <= 1.8
    assert abs(lat["attempts"][0]["predicted_ms"] - lat["attempts"][0]["measured_ms"]) < 0.05 * 1.8
    # the report speaks of the user's limit and the measurement, not of the table sum the plan was made at
    assert report["target"] == report["budget"]["latency"]["limit"] == pytest.approx(1.8)
    assert report["budget"]["latency"]["after"] == lat["measured_ms"]
    assert report["after"]["latency_ms"] == lat["predicted_ms"] != lat["attempts"][-1]["table_ms"]


def test_a_target_under_the_measured_floor_is_refused_before_cutting():
    table, device = calibrated_table()
    measured = []
    floor = f"{table.floor_ms:.3f}"
    assert table.floor_ms > 0.3 * 3.0  # the device's overhead, and the floor network's layers
    with pytest.raises(EdgepruneError, match=rf"unreachable on onnxruntime: the smallest network .* measured {floor}"):
        edgeprune.prune(tiny(), budget={"latency": f"{table.floor_ms * 0.95:.3f}ms"}, table=table,
                        measure=lambda m: measured.append(m) or 0.0)  # fmt: skip
    assert not measured


@pytest.mark.slow
def test_a_malformed_calibration_is_one_line(tmp_path):
    data = calibrated_table()[0].to_dict()
    data["calibration"][0] = [1.0, -2.0]
    (tmp_path / "t.json").write_text(json.dumps(data))
    with pytest.raises(EdgepruneError, match="calibration latencies must be positive"):
        load_table(tmp_path / "t.json")
    data["calibration"] = [[1.0]]
    (tmp_path / "t.json").write_text(json.dumps(data))
    with pytest.raises(EdgepruneError, match="malformed"):
        load_table(tmp_path / "t.json")


@pytest.mark.slow
def test_cli_builds_a_calibrated_table_with_real_processes(tmp_path, capsys):
    out = tmp_path / "lut.json"
    code = main(["lut", "tiny", "--backend", "onnxruntime", "--runs", "2", "--warmup", "0", "--processes", "1",
                 "--round-to", "32", "--near", "0", "--ratio", "0.3", "--calibrate", "0.5", "--quiet",
                 "--out", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0 and "smallest network" in printed and f"wrote {out}" in printed
    table = load_table(out)
    # the parent, the floor, and the 0.5 cut unless the noisy table (2 runs) puts the floor's sum above it
    assert table.backend == "onnxruntime" and table.round_to == 32 and len(table.calibration) in (2, 3)
    assert [pytest.approx(table.parent_ms)] * 2 in table.calibration
    assert table.floor_ms == min(ms for _, ms in table.calibration) > 0
    with pytest.raises(SystemExit) as exc:
        main(["lut", "tiny", "--calibrate", "1.5", "--out", str(tmp_path / "x.json")])
    assert exc.value.code == 2 and "between 0 and 1" in capsys.readouterr().err


@pytest.mark.slow
def test_a_cut_measuring_off_the_calibration_curve_is_replanned_along_its_slope():
    table, device = calibrated_table()
    slower = lambda m: device(m) + 0.2  # noqa: E731 - Algorithm 1's cuts run slower than uniform ones of equal sum
    result = edgeprune.prune(tiny(), budget={"latency": "1.8ms"}, table=table, measure=slower, prune_residual=True,
                             attempts=4)  # fmt: skip
    lat = result.report()["latency"]
    first, *rest = lat["attempts"]
    assert first["measured_ms"] > 1.8 and rest, "the first cut misses by the offset and is re-planned"
    assert lat["met"] and lat["measured_ms"] <= 1.8


@pytest.mark.slow
def test_a_replan_below_the_smallest_network_plans_the_smallest_network_instead():
    table, device = calibrated_table()
    floor_sum = table.calibration[0][0]
    near_floor = table.floor_ms + 0.2  # a target just above the smallest network's latency
    slower = lambda m: device(m) + 0.4  # noqa: E731 - the first cut misses; the secant points under the floor
    result = edgeprune.prune(tiny(), budget={"latency": f"{near_floor:.4f}ms"}, table=table, measure=slower,
                             prune_residual=True, attempts=4)  # fmt: skip
    lat = result.report()["latency"]
    assert all("error" not in a for a in lat["attempts"]) and len(lat["attempts"]) == 2
    assert lat["attempts"][1]["table_ms"] == pytest.approx(floor_sum)  # the smallest network, planned and measured


@pytest.mark.slow
def test_cli_recalibrates_a_table_without_rebuilding_its_layers(tmp_path, capsys):
    table = fake_table()  # made "on this machine" (its CPU and onnxruntime version), no calibration
    table.save(tmp_path / "t.json")
    code = main(["lut", "tiny", "--recalibrate", "--calibrate", "0.5", "--processes", "1", "--out",
                 str(tmp_path / "t.json")])  # fmt: skip
    assert code == 0 and "smallest network" in capsys.readouterr().out
    again = load_table(tmp_path / "t.json")
    assert again.layers == table.layers and again.parent_ms == table.parent_ms  # the grid is kept
    assert 2 <= len(again.calibration) <= 3 and [pytest.approx(3.0)] * 2 in again.calibration
    data = again.to_dict()
    data["cpu"] = "Another CPU"
    (tmp_path / "t.json").write_text(json.dumps(data))
    assert main(["lut", "tiny", "--recalibrate", "--out", str(tmp_path / "t.json")]) == 2
    assert "made for CPU 'Another CPU'" in capsys.readouterr().err


@pytest.mark.slow
def test_a_target_under_what_the_settings_allow_is_refused_in_predicted_ms():
    table, device = calibrated_table()  # its floor: one quantum of 8 filters per layer
    model, example = tiny(), torch.zeros(1, *SHAPE)
    prof, graph = analyse(model, example, prune_residual=True)
    sixteen = apply_plan(model, floor_plan(prof, prof.groups, min_filters=16, round_to=8), example, graph)
    predicted = table.predict(edgeprune.profile(sixteen))
    target = (table.floor_ms + predicted) / 2  # above the measured floor, below what 16 filters a layer allow
    with pytest.raises(EdgepruneError, match=rf"with these settings: .* predicted at {predicted:.3f} ms"):
        edgeprune.prune(tiny(), budget={"latency": f"{target:.4f}ms"}, table=table, measure=device,
                        prune_residual=True, min_filters=16)  # fmt: skip
