"""Budgets a device understands (SPEC, "Beyond the paper"): several limits at once and hardware-friendly widths.

The single-budget plans are pinned to ``tests/data/plans_single_budget.json``, written by the planner before it
learned several limits (commit d2aec3e): the same seed must still give exactly the same widths.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import edgeprune
from edgeprune.cli import main
from edgeprune.errors import EdgepruneError
from edgeprune.trace import record_shapes

GOLDEN = json.loads((Path(__file__).with_name("data") / "plans_single_budget.json").read_text())
ZOO = {"tiny": {}, "vgg16": {"width": 0.25}, "mobilenetv2": {"width": 0.5}, "resnet56": {}}
KEY = {"params": "params", "flops": "flops", "memory": "memory_bytes"}


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return edgeprune.create(name, **ZOO[name])


@pytest.mark.slow
@pytest.mark.parametrize(
    "case",
    [
        "tiny|params|0.5|0|weighted",
        "tiny|flops|0.3|1|uniform",
        "tiny|memory|0.6|0|ratio",
        "mobilenetv2|memory|0.6|1|weighted",
        "vgg16|flops|0.3|0|ratio",
        "vgg16|memory|0.6|1|uniform",
    ],
)
def test_a_single_budget_gives_the_papers_plan_unchanged(case):
    name, mode, target, seed, selection = case.split("|")
    want = GOLDEN[case]
    for kwargs in ({"mode": mode, "target": float(target)}, {"budget": {mode: float(target)}}):
        report = edgeprune.prune(build(name), seed=int(seed), selection=selection, **kwargs).report()
        assert [layer["filters_after"] for layer in report["layers"]] == want["widths"]
        assert len(report["steps"]) == want["steps"]
        assert {k: report["after"][k] for k in want["after"]} == want["after"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "selection"),
    [("tiny", "weighted"), ("tiny", "uniform"), ("tiny", "ratio"), ("mobilenetv2", "weighted")],
)
def test_every_limit_of_a_budget_is_met(name, selection):
    budget = {"flops": 0.45, "memory": 0.7, "params": 0.6}
    model = build(name)
    before = record_shapes(model, torch.zeros(1, 3, 32, 32)).totals()
    result = edgeprune.prune(model, budget=budget, seed=3, selection=selection)
    after = record_shapes(result.model, torch.zeros(1, 3, 32, 32)).totals()  # recounted on the cut model
    report = result.report()
    for cost, fraction in budget.items():
        assert after[KEY[cost]] <= fraction * before[KEY[cost]]
        assert report["budget"][cost]["met"] and report["budget"][cost]["after"] == after[KEY[cost]]
    if selection != "ratio":
        assert report["bound_last"] and set(report["bound_last"]) <= set(budget)
        # the loop stops as soon as every limit holds: one step fewer leaves one of them violated
        assert report["steps"][-1]["total_after"] == report["after"][KEY[report["mode"]]]


@pytest.mark.slow
def test_a_budget_binds_harder_than_each_of_its_limits_alone():
    model = build("mobilenetv2")
    alone = edgeprune.prune(model, "flops", 0.5, seed=0).report()
    both = edgeprune.prune(model, budget={"flops": 0.5, "params": 0.3}, seed=0).report()
    assert alone["after"]["params"] > 0.3 * alone["before"]["params"]  # the flops budget alone misses params
    assert both["after"]["params"] <= 0.3 * both["before"]["params"]
    assert both["after"]["flops"] <= 0.5 * both["before"]["flops"]


def test_an_unreachable_combination_names_the_cost():
    with pytest.raises(EdgepruneError, match=r"target [\d,]+ params is unreachable"):
        edgeprune.prune(build("tiny"), budget={"flops": 0.5, "params": 10})
    with pytest.raises(EdgepruneError, match="either mode and target, or a budget"):
        edgeprune.prune(build("tiny"), "flops", 0.5, budget={"params": 0.5})
    with pytest.raises(EdgepruneError, match="a latency budget needs a latency table"):
        edgeprune.prune(build("tiny"), budget={"latency": 0.5})
    with pytest.raises(EdgepruneError, match="unknown cost 'speed'"):
        edgeprune.prune(build("tiny"), budget={"speed": 0.5})


@pytest.mark.slow
@pytest.mark.parametrize(("name", "round_to"), [("vgg16", 8), ("mobilenetv2", 16)])
def test_round_to_keeps_multiples_and_meets_the_budget_on_them(name, round_to):
    model = build(name)
    result = edgeprune.prune(model, "flops", 0.5, seed=1, round_to=round_to)
    before = {layer["name"]: layer["filters_before"] for layer in result.report()["layers"]}
    pruned = {layer["name"]: layer["filters_after"] for layer in result.report()["layers"]}
    changed = [n for n in pruned if pruned[n] != before[n]]
    assert changed
    assert all(pruned[n] % round_to == 0 for n in changed), {n: pruned[n] for n in changed}
    after = record_shapes(result.model, torch.zeros(1, 3, 32, 32)).totals()
    assert after["flops"] <= 0.5 * result.report()["before"]["flops"]
    assert result.report()["settings"]["round_to"] == round_to


def test_round_to_one_is_the_default():
    model = build("tiny")
    a = edgeprune.prune(model, "params", 0.5, seed=2).report()
    b = edgeprune.prune(model, "params", 0.5, seed=2, round_to=1).report()
    assert a["layers"] == b["layers"]
    with pytest.raises(EdgepruneError, match="round_to must be a positive integer"):
        edgeprune.prune(model, "params", 0.5, round_to=0)


@pytest.mark.slow
def test_cli_budget_and_round_to(tmp_path, capsys):
    out = tmp_path / "p"
    code = main(["prune", "tiny", "--target", "flops=0.5", "--target", "memory=0.7", "--round-to", "4",
                 "--out", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0 and "2 limits" in printed and "bound last" in printed and "multiples of 4" in printed
    report = json.loads((out / "report.json").read_text())
    assert set(report["budget"]) == {"flops", "memory"} and all(b["met"] for b in report["budget"].values())


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--target", "0.5"], "name its cost"),
        (["--target", "flops=0.5", "--target", "flops=0.4"], "flops twice"),
        (["--mode", "flops", "--target", "0.5", "--target", "0.4"], "--mode takes one plain --target"),
        (["--target", "speed=0.5"], "unknown cost 'speed'"),
        (["--target", "memory=2M"], "memory targets need a byte unit"),
    ],
)
def test_cli_budget_errors_are_one_line(tmp_path, capsys, argv, message):
    code = main(["prune", "tiny", *argv, "--out", str(tmp_path / "p")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "p").exists()
