"""The best network that fits (issue 26, items 1 and 3): candidate plans scored by proxies, the fill pass, and a
report whose "after" totals are those of the model written.

Plans with K = 1 and no fill are pinned to digests recorded from the planner before the search and the fill
existed: the same seed must still give exactly the same channels. Every proxy with a closed form is checked
against an independent computation (SynFlow by Euler's theorem for homogeneous functions, NASWOT by its kernel
built by hand); the report's totals against a fresh profile of the saved folder.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from archs import ALL  # tests/ is on sys.path (pytest's rootdir-relative import)
from helpers import graded_dataset, run_cli
from torch import nn

import edgeprune
from edgeprune.costs import get_cost, parse_budget, totals
from edgeprune.data import ImageDataset
from edgeprune.errors import EdgepruneError
from edgeprune.graph import analyse
from edgeprune.pruning import apply_plan, make_budget_plan
from edgeprune.search import (
    PROXIES,
    ProxyContext,
    draw_candidates,
    get_proxy,
    holdout_split,
    proxy_names,
    search,
    spearman,
)


@pytest.fixture(autouse=True)
def _one_thread(_threads):
    """One thread: these nets are tiny, and a second thread only spin-waits on a shared machine."""
    torch.set_num_threads(1)


HERE = Path(__file__).resolve()
ARCH_FILE = HERE.with_name("archs.py")
KEY = {"params": "params", "flops": "flops", "memory": "memory_bytes", "energy": "energy_uj"}


# -- user-style nets the issue names that tests/archs.py does not have ----------------------------------------


class _DenseLayer(nn.Module):
    """DenseNet-BC's pre-activation layer: BN-ReLU-conv1x1-BN-ReLU-conv3x3, output concatenated to the input."""

    def __init__(self, c_in: int, growth: int):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, 4 * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x):
        y = self.conv1(F.relu(self.norm1(x)))
        return torch.cat([x, self.conv2(F.relu(self.norm2(y)))], 1)


class _Transition(nn.Sequential):
    """BN-ReLU-conv1x1-avgpool between dense blocks."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(nn.BatchNorm2d(c_in), nn.ReLU(), nn.Conv2d(c_in, c_out, 1, bias=False), nn.AvgPool2d(2))


class DenseNet(nn.Module):
    """A DenseNet as a new user writes it: dense blocks joined by torch.cat, BN on the concatenation."""

    def __init__(self, num_classes: int = 10, growth: int = 12, blocks: tuple[int, ...] = (3, 3, 3)):
        super().__init__()
        c = 2 * growth
        layers: list[nn.Module] = [nn.Conv2d(3, c, 3, padding=1, bias=False)]
        for i, n in enumerate(blocks):
            for _ in range(n):
                layers.append(_DenseLayer(c, growth))
                c += growth
            if i < len(blocks) - 1:
                layers.append(_Transition(c, c // 2))
                c //= 2
        layers += [nn.BatchNorm2d(c), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        return self.fc(self.features(x))


def densenet(num_classes: int = 10) -> nn.Module:
    """DenseNet-BC style, growth 12, three blocks of three layers, 3x32x32."""
    return DenseNet(num_classes)


def _gn_double(c_in: int, c_out: int) -> nn.Sequential:
    conv = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.GroupNorm(4, c_out), nn.ReLU()]
    return nn.Sequential(*conv, nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.GroupNorm(4, c_out), nn.ReLU())


class UNetGN(nn.Module):
    """The issue's UNet: ConvTranspose up-sampling, skip concatenation, GroupNorm(4) (a slot is 4 channels)."""

    def __init__(self, num_classes: int = 2):
        super().__init__()
        self.enc1, self.enc2, self.mid = _gn_double(3, 16), _gn_double(16, 32), _gn_double(32, 64)
        self.pool = nn.MaxPool2d(2)
        self.up2, self.dec2 = nn.ConvTranspose2d(64, 32, 2, stride=2), _gn_double(64, 32)
        self.up1, self.dec1 = nn.ConvTranspose2d(32, 16, 2, stride=2), _gn_double(32, 16)
        self.head = nn.Conv2d(16, num_classes, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        m = self.mid(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], 1))
        return self.head(self.dec1(torch.cat([self.up1(d2), e1], 1)))


def unet_gn(num_classes: int = 2) -> nn.Module:
    """UNet with GroupNorm(4), 3x32x32 in, (N, classes, 32, 32) out."""
    return UNetGN(num_classes)


LOCAL = {"densenet": (densenet, {}, (3, 32, 32)), "unet_gn": (unet_gn, {}, (3, 32, 32))}
NETS = {**ALL, **LOCAL}
PRUNABLE = [n for n in NETS if n != "functional_weight"]  # refused on purpose (tests/test_user_models.py)


def build(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    """A fresh seeded instance of net ``name`` and its input shape."""
    factory, kwargs, shape = NETS[name]
    torch.manual_seed(0)
    return factory(**kwargs), shape


def builder_ref(name: str) -> tuple[str, dict]:
    """The ``file:`` builder reference that saves net ``name``, and its kwargs."""
    factory, kwargs, _ = NETS[name]
    return f"file:{ARCH_FILE if name in ALL else HERE}:{factory.__name__}", kwargs


_ANALYSED: dict[str, object] = {}


def analysed(name: str):
    """The analysed profile of net ``name`` (a zoo model when not a test net), once per session."""
    if name not in _ANALYSED:
        if name in NETS:
            model, shape = build(name)
        else:
            model, shape = edgeprune.create(name), (3, 32, 32)
        _ANALYSED[name] = analyse(model, torch.zeros(1, *shape))[0]
    return _ANALYSED[name]


def digest(plan) -> str:
    return hashlib.sha256(json.dumps(plan.keep, sort_keys=True).encode()).hexdigest()[:16]


# -- K = 1 without fill is Algorithm 1, plan for plan ---------------------------------------------------------

# keep digests (sha256 of the kept channels per group) and step counts, recorded with the planner as it was
# before the search and the fill pass were added ("model|budget|selection|seed|round_to")
RECORDED = {
    "tiny|flops=0.5|weighted|0|1": ("bd0e350a519f20cc", 11),
    "tiny|flops=0.5|weighted|7|1": ("ac2244dc662b55f8", 11),
    "tiny|params=0.4|weighted|1|1": ("971a407876436543", 12),
    "tiny|memory=0.6|weighted|2|1": ("b1bc86418f3f0f6a", 11),
    "tiny|flops=0.5|uniform|3|1": ("581989fa5a508d39", 14),
    "tiny|flops=0.5|ratio|4|1": ("83c85abf009bd389", 0),
    "tiny|flops=0.5,params=0.6|weighted|5|1": ("e6f8687dc2a7d4d4", 10),
    "tiny|flops=0.5|weighted|6|8": ("0a44ef3377d90bb0", 8),
    "mobilenetv2|flops=0.5|weighted|0|1": ("5a1752a3db643b3e", 114),
    "mobilenetv2|memory=0.6|weighted|2|1": ("a098ac04bdf9c393", 76),
    "mobilenetv2|flops=0.5|weighted|6|8": ("40f10e19f0beb1ce", 91),
    "dense_mixed|flops=0.5|weighted|0|1": ("5946598d47449b67", 12),
    "dense_mixed|params=0.4|weighted|1|1": ("e090cb120997f325", 26),
    "dense_mixed|memory=0.6|weighted|2|1": ("4ae99dc588779a22", 26),
    "dense_mixed|flops=0.5|ratio|4|1": ("ca0a75062744c8d9", 0),
    "dense_mixed|flops=0.5,params=0.6|weighted|5|1": ("dd5d9b845a17d76a", 12),
    "unet|flops=0.5|weighted|0|1": ("866caa476e2839be", 36),
    "unet|memory=0.6|weighted|2|1": ("0c74b59c04109102", 55),
    "unet|flops=0.5|uniform|3|1": ("d4965eb188847cb1", 42),
    "unet|flops=0.5|weighted|6|8": ("108ffd1d0defd714", 10),
    "resnext|flops=0.5|weighted|7|1": ("5461e4763f38c8b6", 30),
    "resnext|params=0.4|weighted|1|1": ("4d304213a1974d9d", 35),
    "resnext|flops=0.5|ratio|4|1": ("b742e1a556b25bec", 0),
    "resnext|flops=0.5,params=0.6|weighted|5|1": ("3e310b12e903a715", 31),
    "gn_se|flops=0.5|weighted|0|1": ("3f10a8a6ece9825a", 14),
    "gn_se|memory=0.6|weighted|2|1": ("16e03a49bdfa92f2", 9),
    "gn_se|flops=0.5|weighted|6|8": ("f6f45450a6c29915", 13),
    # the DenseNet's FLOPs plans do not move; its params plans do, on purpose: the planner now counts the
    # BatchNorm vectors on the concatenations that a cut removes (they were counted as never pruned)
    "densenet|flops=0.5|weighted|0|1": ("3e29de83d91e759f", 46),
    "densenet|flops=0.5|ratio|1|1": ("2e605401b1c1c652", 0),
}


def _case(key: str) -> tuple[str, dict[str, float], str, int, int]:
    name, budget, selection, seed, round_to = key.split("|")
    limits = {k: float(v) for k, v in (item.split("=") for item in budget.split(","))}
    return name, limits, selection, int(seed), int(round_to)


@pytest.mark.slow
@pytest.mark.parametrize("key", list(RECORDED))
def test_one_candidate_without_fill_is_the_recorded_plan(key):
    name, limits, selection, seed, round_to = _case(key)
    prof = analysed(name)
    plan = make_budget_plan(prof, prof.groups, parse_budget(limits, prof), seed=seed, selection=selection,
                            round_to=round_to)  # fmt: skip
    assert (digest(plan), len(plan.steps)) == RECORDED[key]
    assert plan.fill == {} and plan.search == {}


@pytest.mark.slow
@pytest.mark.parametrize("key", ["tiny|flops=0.5|weighted|7|1", "unet|flops=0.5|weighted|6|8"])
def test_prune_with_k1_and_no_fill_is_the_recorded_plan(key):
    name, limits, selection, seed, round_to = _case(key)
    model, shape = build(name) if name in NETS else (edgeprune.create(name), (3, 32, 32))
    result = edgeprune.prune(model, budget=limits, seed=seed, selection=selection, round_to=round_to,
                             input_shape=shape, fill=False, candidates=1)  # fmt: skip
    assert (digest(result.plan), len(result.plan.steps)) == RECORDED[key]
    assert "search" not in result.report() and "fill" not in result.report()


# -- the report is the model written ----------------------------------------------------------------------


def _profile_of_folder(name: str, model: nn.Module, shape: tuple[int, ...], folder: Path) -> dict:
    ref, kwargs = builder_ref(name)
    edgeprune.save(model, folder, builder=ref, kwargs=kwargs, input_shape=shape)
    return totals(edgeprune.profile(edgeprune.load(folder, trust_code=True), shape))


@pytest.mark.slow
@pytest.mark.parametrize("name", PRUNABLE)
def test_report_totals_are_a_fresh_profile_of_the_written_folder(name, tmp_path):
    model, shape = build(name)
    runs = [({"flops": 0.5}, False), ({"flops": 0.5}, True)]
    if name in ("densenet", "dense_mixed", "unet_gn"):
        runs.append(({"flops": 0.5, "params": 0.5}, True))
    for i, (budget, fill) in enumerate(runs):
        result = edgeprune.prune(model, budget=budget, seed=0, input_shape=shape, fill=fill)
        report = result.report()
        fresh = _profile_of_folder(name, result.model, shape, tmp_path / str(i))
        assert {k: report["after"][k] for k in fresh} == fresh
        assert report["after"]["params"] == sum(p.numel() for p in result.model.parameters())
        for cost, entry in report["budget"].items():
            assert entry["after"] == fresh[KEY[cost]] <= entry["limit"]


@pytest.mark.slow
def test_densenet_report_counts_the_batchnorms_on_concatenations():
    # was: the BatchNorm vectors of a cut concatenation stayed in the report (184,126 reported, 182,310 written)
    model, shape = build("densenet")
    before = analysed("densenet")
    assert any(g.extra for g in before.groups)  # the pre-activation norms are nobody's layer
    for fill in (False, True):
        result = edgeprune.prune(model, budget={"flops": 0.5, "params": 0.5}, seed=0, fill=fill)
        report = result.report()
        written = sum(p.numel() for p in result.model.parameters())
        assert report["after"]["params"] == written <= report["budget"]["params"]["limit"]
        assert report["after"]["memory_bytes"] == totals(edgeprune.profile(result.model, shape))["memory_bytes"]


# -- the fill pass ----------------------------------------------------------------------------------------

FILL_CASES = [
    ("unet_gn", {"flops": 0.5}, 1),  # the issue: landed at 0.478 of its FLOPs
    ("dense_mixed", {"memory": 0.6}, 1),  # the issue: landed at 0.579 of its memory
    ("densenet", {"flops": 0.5}, 1),
    ("densenet", {"params": 0.5, "memory": 0.7}, 1),
    ("resnext", {"flops": 0.5}, 8),
    ("gn_se", {"flops": 0.4, "params": 0.5}, 1),
    ("unet", {"memory": 0.6}, 8),
    ("chunk_net", {"params": 0.5, "memory": 0.7}, 1),
]


def _kept_sets(plan) -> dict[str, set[int]]:
    return {k: set(v) for k, v in plan.keep.items()}


@pytest.mark.slow
@pytest.mark.parametrize(("name", "budget", "round_to"), FILL_CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("selection", ["weighted", "ratio"])
def test_fill_ends_within_one_percent_or_says_the_granularity(name, budget, round_to, selection):
    model, shape = build(name)
    common = {"budget": budget, "seed": 2, "input_shape": shape, "round_to": round_to, "selection": selection}
    paper = edgeprune.prune(model, fill=False, **common)
    filled = edgeprune.prune(model, fill=True, **common)
    report = filled.report()
    fresh = totals(edgeprune.profile(filled.model, shape))  # recounted on the cut model
    # the lottery is the same; filling only gives channels back
    kept, before = _kept_sets(filled.plan), _kept_sets(paper.plan)
    assert all(before[g] <= kept[g] for g in kept)
    assert report["fill"]["channels_given_back"] == sum(len(kept[g]) - len(before[g]) for g in kept)
    assert "cut least" in report["fill"]["order"]
    limits = report["fill"]["limits"]
    for cost, entry in limits.items():
        limit = report["budget"][cost]["limit"]
        assert entry["after"] == fresh[KEY[cost]] <= limit
        assert fresh[KEY[cost]] >= paper.report()["after"][KEY[cost]]
        slack = limit - fresh[KEY[cost]]
        if entry["within_1pct"]:
            assert slack <= 0.01 * limit
        elif entry["why"].startswith("granularity"):
            assert entry["finest_step"] > slack  # the granularity really is coarser than what is left
        else:
            assert entry["why"].startswith(("not binding", "every prunable group"))
    # at least one limit binds: within 1 %, or stopped by the granularity
    assert any(e["within_1pct"] or e["why"].startswith("granularity") for e in limits.values())
    for g in filled.plan.groups:  # round_to still holds: a multiple of N channels, or the full width
        n = len(filled.plan.keep[g.name])
        assert n == g.width or n % math.lcm(round_to, g.unit) == 0 or g.width < round_to


@pytest.mark.slow
def test_fill_lands_the_issues_two_nets_within_one_percent():
    for name, budget, cost in (("unet_gn", {"flops": 0.5}, "flops"), ("dense_mixed", {"memory": 0.6}, "memory")):
        model, shape = build(name)
        report = edgeprune.prune(model, budget=budget, seed=0, input_shape=shape, fill=True).report()
        fraction = report["after"][KEY[cost]] / report["before"][KEY[cost]]
        entry = report["fill"]["limits"][cost]
        assert entry["within_1pct"] or entry["why"].startswith("granularity"), entry
        if entry["within_1pct"]:
            assert 0.99 * budget[cost] <= fraction <= budget[cost]


def test_fill_gives_back_the_highest_ranked_filters_under_a_criterion():
    model = edgeprune.create("tiny")
    torch.manual_seed(0)
    calibration = torch.randn(8, 3, 32, 32)
    common = {"seed": 1, "criterion": "l1", "calibration": calibration, "round_to": 8}
    paper = edgeprune.prune(model, "flops", 0.4, fill=False, **common).plan
    filled = edgeprune.prune(model, "flops", 0.4, fill=True, **common).plan
    weights = dict(model.named_parameters())
    for g in filled.groups:
        back = set(filled.keep[g.name]) - set(paper.keep[g.name])
        if not back:
            continue
        norms = weights[f"{g.name}.weight"].detach().abs().flatten(1).sum(1)
        still_out = set(range(g.width)) - set(filled.keep[g.name])
        assert min(norms[i] for i in back) >= max((norms[i] for i in still_out), default=-1)


# -- candidates and the search ----------------------------------------------------------------------------


@pytest.mark.slow
def test_every_candidate_meets_every_limit_and_round_to():
    model, shape = build("resnext")
    prof = analysed("resnext")
    limits = parse_budget({"flops": 0.5, "params": 0.6}, prof)
    found = draw_candidates(prof, prof.groups, limits, k=3, kinds=("weighted", "uniform", "ratio"), seed=4,
                            round_to=8, fill=True)  # fmt: skip
    assert [(c.kind, c.seed) for c in found] == [
        ("weighted", 4), ("weighted", 5), ("weighted", 6), ("uniform", 4), ("uniform", 5), ("uniform", 6), ("ratio", 4)
    ]  # fmt: skip
    for cand in found:
        cut = apply_plan(copy.deepcopy(model), cand.plan, torch.zeros(1, *shape))
        fresh = totals(edgeprune.profile(cut, shape))
        for cost, limit in limits.items():
            assert fresh[KEY[cost]] == cand.costs[cost] <= limit
        for g in cand.plan.groups:
            n = len(cand.plan.keep[g.name])
            assert n == g.width or n % 8 == 0


def test_search_keeps_the_best_score_and_ties_go_to_the_lower_seed():
    model, shape = build("gn_se")
    prof = analysed("gn_se")
    limits = parse_budget({"flops": 0.5}, prof)
    found = search(model, prof, limits, k=4, kinds=("weighted", "uniform", "ratio"), proxy="params", seed=3)
    best = max(c.costs["params"] for c in found.candidates)
    assert found.kept.costs["params"] == best == found.kept.score
    assert found.kept is min((c for c in found.candidates if c.score == best), key=found.candidates.index)
    assert sorted(c.rank for c in found.candidates) == list(range(1, 10))
    assert all(a.score >= b.score for a, b in zip(*[sorted(found.candidates, key=lambda c: c.rank)] * 2, strict=True))

    class Same(PROXIES["flops"]):
        def score(self, model, candidate, ctx):
            return 1.0

    tied = search(model, prof, limits, k=3, proxy=Same(), seed=7)
    assert (tied.kept.kind, tied.kept.seed, tied.kept.rank) == ("weighted", 7, 1)


@pytest.mark.slow
def test_prune_with_candidates_reports_every_candidate_and_writes_the_kept_one(tmp_path):
    model, shape = build("densenet")
    result = edgeprune.prune(model, budget={"flops": 0.5, "params": 0.6}, seed=10, candidates=3, fill=True,
                             candidate_kinds=("weighted", "ratio"), proxy="synflow")  # fmt: skip
    report = result.report()
    table = report["search"]
    assert table["proxy"] == "synflow" and table["seconds"] > 0 and "data-free" in table["inputs"]
    rows = table["candidates"]
    assert [(r["kind"], r["seed"]) for r in rows] == [("weighted", 10), ("weighted", 11), ("weighted", 12),
                                                     ("ratio", 10)]  # fmt: skip
    assert sum(r["kept"] for r in rows) == 1
    kept = next(r for r in rows if r["kept"])
    assert kept["rank"] == 1 and kept["score"] == max(r["score"] for r in rows)
    assert {"channels_kept", "channels", "narrowest_group", "widest_group"} <= set(kept["widths"])
    assert {"params", "flops", "memory", "energy"} <= set(kept["costs"])
    assert (report["settings"]["selection"], report["settings"]["seed"]) == (kept["kind"], kept["seed"])
    assert {k: report["after"][KEY[k]] for k in ("params", "flops", "memory")} == {
        k: kept["costs"][k] for k in ("params", "flops", "memory")
    }
    fresh = _profile_of_folder("densenet", result.model, shape, tmp_path / "m")
    assert {k: report["after"][k] for k in fresh} == fresh
    # the kept candidate is exactly the plan its seed and kind give alone
    alone = edgeprune.prune(model, budget={"flops": 0.5, "params": 0.6}, seed=kept["seed"], selection=kept["kind"],
                             fill=True)  # fmt: skip
    assert alone.plan.keep == result.plan.keep


@pytest.mark.slow
def test_candidate_kinds_never_do_worse_than_each_kind_alone_by_the_proxy():
    model, _ = build("unet")
    prof = analysed("unet")
    limits = parse_budget({"flops": 0.5}, prof)
    both = search(model, prof, limits, k=2, kinds=("weighted", "ratio"), proxy="flops")
    for kind in ("weighted", "ratio"):
        alone = search(model, prof, limits, k=2, kinds=(kind,), proxy="flops")
        assert both.kept.score >= alone.kept.score


# -- proxies against independent computations ---------------------------------------------------------------


def _chain() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5, bias=False),
    )  # fmt: skip


def _candidate_of(model: nn.Module, shape=(3, 16, 16)):
    prof = analyse(model, torch.zeros(1, *shape))[0]
    return draw_candidates(prof, prof.groups, parse_budget({"flops": 0.6}, prof))[0]


def test_synflow_is_the_depth_times_the_flow_for_a_homogeneous_chain():
    # R(w) = sum of the outputs on an all-ones input with |w|: degree 1 in each of the L weight tensors of a
    # chain without biases (BatchNorm at initialisation in inference mode is an identity), so by Euler's
    # theorem sum over all weights of w * dR/dw = L * R
    model = _chain()
    net = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for t in net.state_dict().values():
            if t.is_floating_point():
                t.abs_()
        flow = float(net(torch.ones(1, 3, 16, 16, dtype=torch.float64)).sum())
    ctx = ProxyContext((3, 16, 16))
    score = get_proxy("synflow").score(copy.deepcopy(model), _candidate_of(model), ctx)
    assert score == pytest.approx(math.log(3 * flow), rel=1e-9)


def test_naswot_is_the_log_determinant_of_the_agreement_kernel():
    model = _chain()
    ctx = ProxyContext((3, 16, 16), batch=12, seed=5)
    x = ctx.inputs(12)
    with torch.no_grad():
        model.eval()
        h1 = model[1](model[0](x))
        h2 = model[4](model[3](F.relu(h1)))
    kernel = torch.zeros(12, 12, dtype=torch.float64)
    for h in (h1, h2):  # the output layer (the Linear) is not a hidden unit
        c = (h.flatten(1) > 0).double()
        kernel += c @ c.T + (1 - c) @ (1 - c).T
    want = float(torch.linalg.slogdet(kernel)[1])
    assert get_proxy("naswot").score(copy.deepcopy(model), _candidate_of(model), ctx) == pytest.approx(want)


def test_gradnorm_is_the_sum_of_weight_gradient_norms_on_training_images():
    model = _chain()
    data = graded_dataset(shape=(3, 16, 16), classes=5)
    ctx = ProxyContext((3, 16, 16), data=data, batch=8)
    x, y = ctx.labelled(8)
    manual = copy.deepcopy(model).train()
    F.cross_entropy(manual(x), y).backward()
    want = sum(float(m.weight.grad.norm()) for m in manual if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert get_proxy("gradnorm").score(copy.deepcopy(model), _candidate_of(model), ctx) == pytest.approx(want)


@pytest.mark.slow
def test_the_short_training_proxy_reads_only_the_training_split():
    data = graded_dataset(classes=10)
    split = holdout_split(data, 0.25, seed=3)
    assert len(split.test_y) == 12 and len(split.train_y) == 36
    rows = {bytes(img.numpy()) for img in data.train_x}
    assert all(bytes(img.numpy()) in rows for img in torch.cat([split.train_x, split.test_x]))
    assert not {bytes(img.numpy()) for img in split.test_x} & {bytes(img.numpy()) for img in split.train_x}
    # another test split changes nothing: it is never read
    other = graded_dataset(classes=10, seed=9)
    swapped = ImageDataset(data.name, data.classes, data.train_x, data.train_y, other.test_x, 1 - other.test_y,
                           data.mean, data.std)  # fmt: skip
    model = edgeprune.create("tiny", channels=8)
    prof = analyse(model, torch.zeros(1, 3, 32, 32))[0]
    limits = parse_budget({"flops": 0.5}, prof)
    runs = [search(model, prof, limits, k=2, proxy="train:3", data=d) for d in (data, swapped)]
    assert [c.score for c in runs[0].candidates] == [c.score for c in runs[1].candidates]
    assert all(0 <= c.score <= 1 for c in runs[0].candidates)
    assert runs[0].proxy == "train:3" and "held out" in runs[0].inputs and "test split not read" in runs[0].inputs


@pytest.mark.slow
def test_the_proxy_holdout_reaches_the_short_training_proxy(tmp_path, capsys):
    data = graded_dataset(classes=10)  # 48 training images
    model = edgeprune.create("tiny", channels=8)
    for holdout, held in ((0.1, 5), (0.25, 12)):
        result = edgeprune.prune(model, mode="flops", target=0.5, candidates=2, proxy="train:2", data=data,
                                 holdout=holdout)  # fmt: skip
        assert f"{48 - held} images trained on, {held} held out" in result.report()["search"]["inputs"]
    code, _, err = run_cli(capsys, "prune", "tiny", "--mode", "flops", "--target", "0.5", "--candidates", "2",
                           "--proxy", "train:2", "--proxy-holdout", "1.5", "--out", tmp_path / "x")  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--proxy-holdout" in err


@pytest.mark.slow
def test_zero_cost_proxies_score_every_test_architecture():
    # one candidate each: SynFlow and NASWOT must run on concatenations, groups, two heads, dense outputs
    for name in ("densenet", "unet_gn", "two_head", "dense_mixed", "chunk_net"):
        model, shape = build(name)
        prof = analysed(name)
        limits = parse_budget({"flops": 0.6}, prof)
        for proxy in ("synflow", "naswot"):
            found = search(model, prof, limits, k=1, kinds=("weighted", "ratio"), proxy=proxy)
            assert all(math.isfinite(c.score) for c in found.candidates), (name, proxy)


# -- errors ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"candidates": 0}, "candidates must be a positive integer"),
        ({"candidates": 2, "proxy": "accuracy"}, "unknown proxy 'accuracy'"),
        ({"candidates": 2, "proxy": "train:many"}, "STEPS must be a whole number"),
        ({"candidates": 2, "proxy": "train:0"}, "train:STEPS needs STEPS from 1"),
        ({"candidates": 2, "proxy": "synflow:3"}, "takes no ':' argument"),
        ({"candidates": 2, "proxy": "gradnorm"}, "needs training images"),
        ({"candidates": 2, "proxy": "train:5"}, "needs training images"),
        ({"candidate_kinds": ("weighted", "random")}, "unknown candidate kind 'random'"),
        ({"candidates": 3, "seed": 2**32 - 2}, "seed + candidates - 1 must be an integer"),
    ],
)
def test_bad_search_settings_are_one_line_errors(kwargs, message):
    with pytest.raises(EdgepruneError, match=re.escape(message)) as info:
        edgeprune.prune(edgeprune.create("tiny", channels=8), "flops", 0.5, **kwargs)
    assert "\n" not in str(info.value)


def test_data_of_another_shape_is_refused():
    with pytest.raises(EdgepruneError, match="do not fit the model"):
        edgeprune.prune(edgeprune.create("tiny", channels=8), "flops", 0.5, candidates=2, proxy="gradnorm",
                        data=graded_dataset(shape=(3, 16, 16)))  # fmt: skip


def test_every_proxy_is_named_and_has_help():
    assert proxy_names() == ["flops", "params", "synflow", "naswot", "gradnorm", "train:STEPS"]
    assert all(p.help and "\n" not in p.help for p in PROXIES.values())
    assert get_proxy("train").spec == "train:200" and get_proxy("train:50").spec == "train:50"
    assert get_cost("flops").key == KEY["flops"]


def test_spearman_matches_the_pearson_correlation_of_mean_ranks():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties share their mean rank: x ranks (1, 2.5, 2.5, 4), y ranks (1, 2, 3, 4)
    x, y = torch.tensor([1, 2.5, 2.5, 4], dtype=torch.float64), torch.arange(1, 5, dtype=torch.float64)
    want = float(torch.corrcoef(torch.stack([x, y]))[0, 1])
    assert spearman([0.1, 0.5, 0.5, 0.9], [3, 5, 7, 9]) == pytest.approx(want)
    with pytest.raises(EdgepruneError, match="two equally long lists"):
        spearman([1.0], [2.0])


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.skipif(not os.environ.get("EDGEPRUNE_TEST_RAY"), reason="starts Ray (a minute here): EDGEPRUNE_TEST_RAY=1")
def test_proxy_trainings_as_ray_tasks_score_as_they_do_here(monkeypatch, tmp_path):
    ray = pytest.importorskip("ray")
    from edgeprune.cluster import RayOptions

    data = graded_dataset(classes=10)
    model = edgeprune.create("tiny", channels=8)
    prof = analyse(model, torch.zeros(1, 3, 32, 32))[0]
    limits = parse_budget({"flops": 0.5}, prof)
    here = search(model, prof, limits, k=2, proxy="train:2", data=data)
    monkeypatch.setenv("EDGEPRUNE_CONFIG", str(tmp_path))  # the workers inherit this environment
    ray.init(num_cpus=1, include_dashboard=False, logging_level="WARNING")
    try:
        there = search(model, prof, limits, k=2, proxy="train:2", data=data, ray=RayOptions(cpus_per_run=1))
    finally:
        ray.shutdown()
    assert [c.score for c in there.candidates] == [c.score for c in here.candidates]
    assert (there.kept.kind, there.kept.seed) == (here.kept.kind, here.kept.seed)


@pytest.mark.slow
def test_a_latency_budget_searches_and_fills_with_the_table():
    from test_lut import fake_table, tiny  # the table whose layer times are proportional to their MACs

    table = fake_table()
    result = edgeprune.prune(tiny(), budget={"latency": 0.6, "flops": 0.7}, table=table, candidates=3, fill=True,
                             measure=lambda m: table.predict(edgeprune.profile(m)))  # fmt: skip
    report = result.report()
    assert report["latency"]["met"] and report["budget"]["flops"]["met"]
    rows = report["search"]["candidates"]
    assert len(rows) == 3 and all(r["costs"]["latency"] <= report["budget"]["latency"]["limit"] for r in rows)
    kept = next(r for r in rows if r["kept"])
    assert report["settings"]["seed"] == kept["seed"] and "fill" in report
    assert all(layer["filters_after"] % 8 == 0 for layer in report["layers"][:-1])  # the table's round_to


def test_the_cli_spells_the_search_names_as_the_library_does():
    """cli/options.py spells them so --help imports no torch; they must not drift from edgeprune.search."""
    import inspect

    from edgeprune import search
    from edgeprune.cli import options

    assert options.KINDS == tuple(search.KINDS)
    assert options.DEFAULT_HOLDOUT == inspect.signature(search.search).parameters["holdout"].default
    spelled = [name.strip() for name in options.PROXIES.replace(" or ", ", ").split(",")]
    assert spelled == search.proxy_names()
