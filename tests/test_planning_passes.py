"""The planning path's forward passes and shortcuts give what the slow way gives (issue 28, planning speed).

One forward pass records the shapes and feeds Torch-Pruning's graph (``graph.trace_graph``); a cut whose groups
all passed the probe is checked against its modules instead of another forward pass (``pruning._checked_cut``);
the lottery remembers each group's weight until a step resizes one of its layers (``lottery.Lottery``). Each test
compares with the computation the shortcut replaces.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers import small_model
from torch import nn

import edgeprune
from edgeprune import lottery, pruning
from edgeprune.costs import Budget
from edgeprune.errors import EdgepruneError
from edgeprune.graph import analyse, build_graph, find_groups, trace_graph
from edgeprune.pruning import PruneJob, PruneSettings, apply_plan, make_budget_plan, make_plan
from edgeprune.trace import module_shapes, record_shapes

X = torch.zeros(1, 3, 16, 16)


class Net(nn.Module):
    """Two conv blocks, a residual add and a head: prunable groups, a residual-tied one and an output layer."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU())
        self.c = nn.Conv2d(12, 8, 1)
        self.head = nn.Linear(8, 5)

    runs = 0  # forward passes of every Net and copy (a hook would make another architecture for the probe)

    def forward(self, x):
        Net.runs += 1
        a = self.a(x)
        y = self.c(self.b(a)) + a
        return self.head(y.mean((2, 3)))


def _count_forwards(model: nn.Module) -> list[int]:
    """A list whose length is the number of times ``model`` (the root) has run forward since."""
    calls: list[int] = []
    model.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_one_forward_pass_gives_the_shapes_and_the_graph():
    torch.manual_seed(0)
    model = Net()
    expected = record_shapes(copy.deepcopy(model), X)
    ref = copy.deepcopy(model)  # the slow way: shapes and graph from a pass each
    reference_groups = find_groups(build_graph(ref, X), ref, expected)
    analyse(copy.deepcopy(model), X)  # the probe's trial cuts run once for this architecture
    Net.runs = 0
    prof, graph = trace_graph(model, X)
    assert Net.runs == 1
    assert prof.layers == expected.layers and prof.outputs == expected.outputs
    assert prof.other_params == expected.other_params
    groups = find_groups(graph, model, prof)
    assert [g.to_dict() for g in groups] == [g.to_dict() for g in reference_groups]
    Net.runs = 0
    analyse(copy.deepcopy(model), X)
    assert Net.runs == 1  # the probe is cached: analysing again runs the model once


def test_the_keep_check_reads_the_shapes_before_the_graph_is_built():
    with pytest.raises(EdgepruneError, match="--keep nope: no conv or linear layer of that name"):
        analyse(Net(), X, keep=["nope"])


def test_a_model_that_fails_keeps_its_one_line_error():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(x).view(5, -1)  # 4 x 14 x 14 values do not split in 5 rows

    with pytest.raises(EdgepruneError, match="the model fails on a 3x16x16 input: RuntimeError"):
        analyse(Broken(), X)


def _plan(model: nn.Module, share: float = 0.5, seed: int = 0):
    prof, graph = analyse(copy.deepcopy(model), X)
    return prof, make_plan(prof, prof.groups, "flops", int(prof.total("flops") * share), seed=seed)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_checked_cut_reads_what_a_forward_pass_records(seed):
    torch.manual_seed(seed)
    model = small_model(seed, channels=8)
    x = torch.zeros(1, 3, 32, 32)
    prof, graph = analyse(copy.deepcopy(model), x)
    plan = make_plan(prof, prof.groups, "params", int(prof.total("params") * 0.4), seed=seed)
    cut = copy.deepcopy(model)
    calls = _count_forwards(cut)
    apply_plan(cut, plan, x)
    assert len(calls) == 1  # the graph's trace only: no verification pass
    recorded = record_shapes(cut, x)  # the independent way: run the cut model
    assert module_shapes(cut, plan.after.layers) == recorded.layers == plan.after.layers
    assert recorded.other_params == plan.after.other_params


def test_a_checked_cut_refuses_a_plan_the_model_does_not_match():
    model = Net()
    prof, plan = _plan(model)
    layers = list(plan.after.layers)
    i = next(k for k, layer in enumerate(layers) if layer.name == "b.0")
    layers[i] = layers[i].resized(c_out=layers[i].c_out + 1)
    wrong = copy.copy(plan)
    wrong.after = replace(plan.after, layers=layers)
    want = f"pruned layer b.0 is 8->{layers[i].c_out - 1}, the plan expected 8->{layers[i].c_out}"
    with pytest.raises(EdgepruneError, match=want):
        apply_plan(copy.deepcopy(model), wrong, X)


def test_a_cut_of_a_group_the_probe_did_not_pass_is_checked_by_running_it():
    model = Net()
    prof, plan = _plan(model)
    cut_names = {g.name for g in plan.groups if len(plan.keep[g.name]) < g.width}
    assert cut_names
    unprobed = copy.copy(plan)
    unprobed.groups = [replace(g, prunable=False) if g.name in cut_names else g for g in plan.groups]
    cut = copy.deepcopy(model)
    calls = _count_forwards(cut)
    apply_plan(cut, unprobed, X)
    assert len(calls) == 2  # the graph's trace and the verification pass
    assert record_shapes(cut, X).layers == plan.after.layers


@pytest.mark.parametrize(
    "budget, selection", [({"flops": 0.4}, "weighted"), ({"flops": 0.6, "params": 0.5, "memory": 0.7}, "weighted")]
)
def test_remembered_weights_draw_the_same_plan_as_weights_weighed_every_step(monkeypatch, budget, selection):
    model = edgeprune.create("resnet56")
    x = torch.zeros(1, 3, 32, 32)
    prof, _ = analyse(copy.deepcopy(model), x)
    limits = Budget(budget).absolute(prof)
    fast = make_budget_plan(prof, prof.groups, limits, seed=3, selection=selection)
    # the reference: every group weighed afresh at every step, as Algorithm 1 is written
    monkeypatch.setattr(lottery.Lottery, "weight", lambda self, g, k: self.state.weight(g, self.costs[k]))
    slow = make_budget_plan(prof, prof.groups, limits, seed=3, selection=selection)
    assert fast.keep == slow.keep
    assert [(s.layer, s.weight, s.probability, s.removed) for s in fast.steps] == [
        (s.layer, s.weight, s.probability, s.removed) for s in slow.steps
    ]
    assert len(fast.steps) > 10


def test_prune_settings_validate_each_field_in_one_line():
    for settings, message in [
        (PruneSettings(step=1.0), r"step must be in \(0, 1\), got 1.0"),
        (PruneSettings(min_filters=0), "min filters must be at least 1, got 0"),
        (PruneSettings(round_to=0), "round_to must be a positive integer, got 0"),
        (PruneSettings(round_to=True), "round_to must be a positive integer, got True"),
        (PruneSettings(criterion="loud"), "unknown criterion 'loud'"),
        (PruneSettings(criterion="nuclear"), "criterion 'nuclear' needs a batch of real inputs"),
    ]:
        with pytest.raises(EdgepruneError, match=message):
            settings.validate()
    PruneSettings().validate()
    assert torch.equal(PruneSettings(input_shape=(1, 4, 4)).example(), torch.zeros(1, 1, 4, 4))


def test_prune_keywords_and_a_job_started_with_the_same_settings_make_the_same_network():
    model = small_model(0, channels=8)
    kwargs = {"step": 0.2, "min_filters": 2, "round_to": 2, "fill": True, "input_shape": (3, 32, 32)}
    result = pruning.prune(model, "params", 0.5, seed=4, **kwargs)
    job = PruneJob.start(model, Budget.of("params", 0.5), PruneSettings(**kwargs))
    assert (job.step, job.min_filters, job.round_to, job.fill) == (0.2, 2, 2, True)
    other = job.finish(job.plan(job.first, seed=4, selection="weighted"), seed=4, selection="weighted")
    assert other.report() == result.report()
    for a, b in zip(result.model.state_dict().values(), other.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    np.testing.assert_equal(sorted(result.plan.keep), sorted(other.plan.keep))
