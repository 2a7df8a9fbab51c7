"""Algorithm 1 of Zawish et al. (2022): complexity-driven pruning to a budget.

Each step picks one prunable group at random with probability proportional to its share of the
model's complexity in the chosen mode (params = PA, flops = FA, memory = MA), recomputed after
every removal, and removes ``max(1, round(step * filters))`` of its filters by the criterion,
until the model fits the target. The loop runs on recorded layer shapes only (a plan); the
dependency graph cuts the real model once per group at the end, and the result is checked
against the plan with one forward pass. Giving filters back after the lottery (``fill``) and the
re-plans of a measured latency limit live in ``edgeprune.fill``; drawing several candidate plans
and ranking them sits above, in ``edgeprune.search``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from torch import nn
from torch_pruning import DependencyGraph

from edgeprune.complexity import CONVENTIONS, MODES, Profile, reduction
from edgeprune.costs import Budget, LayerTimes, get_cost, totals
from edgeprune.criteria import check_criterion, filter_scores
from edgeprune.errors import EdgepruneError
from edgeprune.fill import (
    Measure,
    PlanState,
    check_reachable,
    first_limit,
    fit_latency,
    floor_slots,
    floor_state,
    floor_text,
    prunable_groups,
)
from edgeprune.fill import fill as fill_pass
from edgeprune.graph import ChannelGroup, analyse, build_graph, cut
from edgeprune.liveness import attach as attach_liveness
from edgeprune.lottery import Lottery, Step, ratio_plan
from edgeprune.trace import module_shapes, record_shapes
from edgeprune.validate import check_seed

SELECTIONS = ("weighted", "uniform", "ratio")  # Algorithm 1, its unweighted lottery, one ratio for all


@dataclass
class PrunePlan:
    """The outcome of Algorithm 1 on shapes: which original filters each group keeps."""

    mode: str
    target: int
    before: Profile
    after: Profile
    groups: list[ChannelGroup]
    keep: dict[str, list[int]]
    steps: list[Step] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    budget: dict[str, float] = field(default_factory=dict)  # every (cost, limit); {mode: target} for one budget
    table: LayerTimes | None = None  # the latency table, when latency is one of the costs
    latency: dict = field(default_factory=dict)  # predicted vs measured latency and the re-plans (latency budgets)
    bound_last: list[str] = field(default_factory=list)  # the costs still over their limits before the last step
    fill: dict = field(default_factory=dict)  # what the fill pass gave back, in which order, and each limit's slack
    search: dict = field(default_factory=dict)  # the candidates drawn and scored (edgeprune.search), when K > 1

    def to_dict(self, criterion: str) -> dict:
        """Everything about one pruning run, JSON-ready (the content of report.json)."""
        before, after = self.before, self.after
        after_shapes = after.by_name()
        budget = self.budget or {self.mode: self.target}
        cost = {k: get_cost(k, self.table) for k in budget}
        before_totals, after_totals = totals(before, self.table), totals(after, self.table)
        if self.latency:  # the cut was measured: the limit is the user's, the total the table's calibrated guess
            budget = {**budget, "latency": self.latency["limit_ms"]}
            after_totals[get_cost("latency", self.table).key] = self.latency["predicted_ms"]
        out = {
            "mode": self.mode,
            "target": self.target,
            "target_fraction": self.target / before_totals[cost[self.mode].key],
            "budget": {
                k: {
                    "limit": limit,
                    "fraction": limit / before_totals[cost[k].key],
                    "before": before_totals[cost[k].key],
                    "after": after_totals[cost[k].key],
                    "met": after_totals[cost[k].key] <= limit,
                    "unit": cost[k].unit,
                }
                for k, limit in budget.items()
            },  # fmt: skip
            "bound_last": self.bound_last,
            **({"latency": self.latency} if self.latency else {}),
            "criterion": criterion,
            "settings": self.settings,
            "conventions": CONVENTIONS,
            "before": before_totals,
            "after": after_totals,
            "reduction_pct": {k: reduction(before_totals[k], after_totals[k]) for k in before_totals},
            "layers": [
                {
                    "name": layer.name,
                    "filters_before": layer.c_out,
                    "filters_after": after_shapes[layer.name].c_out,
                    "prunable": before.prunable.get(layer.name, False),
                }
                for layer in before.layers
            ],
            "steps": [asdict(s) for s in self.steps],
            **({"fill": self.fill} if self.fill else {}),
            **({"search": self.search} if self.search else {}),
        }
        if self.latency:
            out["budget"]["latency"].update(after=self.latency["measured_ms"], met=self.latency["met"])
            if self.mode == "latency":
                out["target"] = self.latency["limit_ms"]
                out["target_fraction"] = self.latency["limit_ms"] / before_totals[cost["latency"].key]
        return out


def make_plan(
    prof: Profile,
    groups: list[ChannelGroup],
    mode: str,
    target: int,
    *,
    step: float = 0.1,
    seed: int = 0,
    scores: dict[str, np.ndarray] | None = None,
    min_filters: int = 1,
    selection: str = "weighted",
    round_to: int = 1,
) -> PrunePlan:
    """Run Algorithm 1 on recorded shapes for one budget and return which filters each group keeps."""
    return make_budget_plan(prof, groups, {mode: target}, step=step, seed=seed, scores=scores,
                            min_filters=min_filters, selection=selection, round_to=round_to)  # fmt: skip


def floor_plan(prof: Profile, groups: list[ChannelGroup], min_filters: int = 1, round_to: int = 1) -> PrunePlan:
    """Every prunable group at the fewest filters it may keep: the smallest network a plan can reach."""
    floors = {g.name: floor_slots(g, min_filters, round_to) for g in groups}
    prunable = prunable_groups(groups, floors, round_to)
    after = floor_state(prof, prunable, floors).profile()
    narrowed = {g.name for g in prunable}
    slots = {g.name: list(range(floors[g.name] if g.name in narrowed else g.slots)) for g in groups}
    settings = {"min_filters": min_filters, "round_to": round_to, "floor": True}
    return PrunePlan("floor", 0, prof, after, groups, _kept_channels(groups, slots), [], settings)


def make_budget_plan(
    prof: Profile,
    groups: list[ChannelGroup],
    budget: dict[str, float],
    *,
    step: float = 0.1,
    seed: int = 0,
    scores: dict[str, np.ndarray] | None = None,
    min_filters: int = 1,
    selection: str = "weighted",
    round_to: int = 1,
    table: LayerTimes | None = None,
    fill: bool = False,
) -> PrunePlan:
    """Algorithm 1 against several limits at once (SPEC, multi-budget): loop while any cost is over its limit.

    ``prof`` and ``groups`` are the analysed model (``edgeprune.graph.analyse``); ``budget`` maps costs to
    absolute limits (``edgeprune.costs.parse_budget``). With one cost it is the paper's algorithm exactly (same
    seed, same plan). ``step`` is the share of a drawn group's filters one step removes, ``seed`` seeds the lottery and
    the random filter choice, ``scores`` are a criterion's per-channel scores by group (None: filters at
    random), ``min_filters`` the fewest filters a group keeps, ``selection`` one of ``SELECTIONS``.
    ``round_to`` N makes every pruned group keep a multiple of N channels (a group narrower than N is left as
    it is). ``table`` is the latency table a ``latency`` limit is planned with (``edgeprune.lut``). ``fill``
    gives filters back after the lottery stops while every limit holds (``edgeprune.fill``); off, the plan is
    the paper's stopping rule.
    """
    _check_plan_settings(seed, step, min_filters, round_to, selection)
    costs = {k: get_cost(k, table) for k in budget}
    budget = {k: int(v) if costs[k].integer else float(v) for k, v in budget.items()}
    floors = {g.name: floor_slots(g, min_filters, round_to) for g in groups}  # in slots
    prunable = prunable_groups(groups, floors, round_to)
    state = PlanState(prof)
    check_reachable(budget, floor_state(prof, prunable, floors), floor_text(groups, prunable, floors, round_to), costs)
    # Separate streams for the layer lottery and the random filter choice: the layers drawn (and so the
    # widths) then depend on the seed alone, not on the criterion, and a conventional pipeline's
    # network has exactly the widths of the direct pipeline's for the same seed.
    lottery, picker = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    slots = {g.name: list(range(g.slots)) for g in groups}  # the slots each group keeps
    settings = {"step": step, "seed": seed, "min_filters": min_filters, "selection": selection, "round_to": round_to,
                "fill": bool(fill)}  # fmt: skip
    if selection == "ratio":
        state, ratio = ratio_plan(prof, prunable, budget, scores=scores, floors=floors, rng=picker, slots=slots,
                                  round_to=round_to, costs=costs)  # fmt: skip
        mode, target = next(iter(budget.items()))
        plan = PrunePlan(mode, target, prof, state.profile(), groups, _kept_channels(groups, slots), [],
                         {**settings, "ratio": ratio})  # fmt: skip
        plan.budget, plan.table = budget, table
        if fill:
            current = {k: state.total(costs[k]) for k in budget}
            plan.fill = fill_pass(
                state, prunable, slots, budget, costs, current, round_to=round_to, scores=scores, rng=picker
            )
            plan.after, plan.keep = state.profile(), _kept_channels(groups, slots)
        return plan
    run = Lottery(state, prunable, floors, slots=slots, budget=budget, costs=costs, step=step, round_to=round_to,
                  selection=selection)  # fmt: skip
    run.run(lottery, picker, scores)
    fill_log = (
        fill_pass(state, prunable, slots, budget, costs, run.current, round_to=round_to, scores=scores, rng=picker)
        if fill
        else {}
    )
    mode, target = next(iter(budget.items()))
    plan = PrunePlan(mode, target, prof, state.profile(), groups, _kept_channels(groups, slots), run.steps, settings)
    plan.budget, plan.bound_last, plan.table, plan.fill = budget, run.bound_last, table, fill_log
    return plan


def _check_plan_settings(seed: int, step: float, min_filters: int, round_to: int, selection: str) -> None:
    """Refuse a plan's settings out of range, one line each, in the order they were always checked."""
    check_seed(seed)
    if not 0 < step < 1:
        raise EdgepruneError(f"step must be in (0, 1), got {step}")
    if min_filters < 1:
        raise EdgepruneError(f"min filters must be at least 1, got {min_filters}")
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise EdgepruneError(f"round_to must be a positive integer, got {round_to!r}")
    if selection not in SELECTIONS:
        raise EdgepruneError(f"unknown selection '{selection}'; choose from: {', '.join(SELECTIONS)}")


def _kept_channels(groups: list[ChannelGroup], slots: dict[str, list[int]]) -> dict[str, list[int]]:
    """The channels each group keeps, from the slots it keeps."""
    return {g.name: g.channels(slots[g.name]) for g in groups}


def apply_plan(
    model: nn.Module, plan: PrunePlan, example_input: torch.Tensor, graph: DependencyGraph | None = None
) -> nn.Module:
    """Cut ``model`` (in place) to the plan's widths and check the result against the plan."""
    graph = graph or build_graph(model, example_input)
    cut_groups = []
    for group in plan.groups:
        kept = set(plan.keep[group.name])
        removed = [i for i in range(group.width) if i not in kept]
        if removed:
            cut_groups.append(group)
            try:
                cut(graph, model, group.name, removed)
            except Exception as e:  # the probe should have caught it; never leak a raw error
                raise EdgepruneError(
                    f"Torch-Pruning failed to cut group {group.name}: {type(e).__name__}: {e}"
                ) from None
    actual = _checked_cut(model, plan, cut_groups) or record_shapes(model, example_input)
    expected = plan.after.by_name()
    for layer in actual.layers:
        want = expected.get(layer.name)
        if layer != want:
            got = f"{layer.c_in}->{layer.c_out}"
            raise EdgepruneError(f"pruned layer {layer.name} is {got}, the plan expected "
                                 f"{f'{want.c_in}->{want.c_out}' if want else 'no such layer'}")  # fmt: skip
    if actual.other_params != plan.after.other_params:
        # a parameter outside the layers that the graph cut and the plan did not count (a custom module's
        # per-channel vector): the report must give the totals of the model written, so take the recount
        plan.after = replace(plan.after, other_params=actual.other_params)
    return model


def _checked_cut(model: nn.Module, plan: PrunePlan, cut_groups: list[ChannelGroup]) -> Profile | None:
    """The cut model's shapes read from its modules, when a forward pass could tell nothing more; else None.

    Every group the plan cuts passed ``graph.probe``: a trial cut of it (with the model's other prunable groups)
    ran forward with exactly the shapes the arithmetic predicts. A plan that cuts any other group, or a model
    with a functional layer (shapes only a forward pass records), is checked by running it.
    """
    if plan.before.functional or not all(g.prunable for g in cut_groups):
        return None
    layers = module_shapes(model, plan.after.layers)
    if layers is None:
        return None
    attributed = sum(layer.params for layer in layers)
    total = sum(p.numel() for p in model.parameters())
    return Profile(layers, plan.after.input_shape, other_params=max(total - attributed, 0))


@dataclass
class PruneResult:
    """A pruned copy of the model and the plan that made it."""

    model: nn.Module
    plan: PrunePlan
    criterion: str

    def report(self) -> dict:
        """Before/after totals, per-layer filters and the per-step log, JSON-ready."""
        return self.plan.to_dict(self.criterion)


@dataclass(frozen=True)
class PruneSettings:
    """How a model is pruned, besides its budget, the seed and the lottery kind: ``prune``'s and ``PruneJob``'s."""

    step: float = 0.1  # the share of a drawn group's filters one step removes, in (0, 1)
    criterion: str = "random"  # which filters go (edgeprune.criteria: random, l1, nuclear...)
    example_input: torch.Tensor | None = None  # what the model is traced with (None: zeros of (1, *input_shape))
    input_shape: tuple[int, ...] = (3, 32, 32)  # one input, no batch dimension
    min_filters: int = 1  # the fewest filters a pruned group keeps
    prune_residual: bool = False  # also cut the channels tied to residual additions
    calibration: torch.Tensor | None = None  # the batch a data-driven criterion reads
    keep: Sequence[str] = ()  # layers whose filters must stay (besides the output layers, which always do)
    round_to: int | None = None  # every pruned group keeps a multiple of N channels (None: 1, or the latency table's)
    table: LayerTimes | None = None  # the latency table a latency limit is planned with (edgeprune.lut.load_table)
    measure: Measure | None = None  # times a cut model in the table's ms; a latency limit needs it
    attempts: int = 4  # latency: cuts measured and re-planned at most (checked when a latency limit is fitted)
    fill: bool = False  # give filters back after the lottery stops while every limit holds (off: the paper's rule)

    def validate(self) -> None:
        """Refuse a setting out of range or a criterion without the data it reads, one line each."""
        if not 0 < self.step < 1:
            raise EdgepruneError(f"step must be in (0, 1), got {self.step}")
        if self.min_filters < 1:
            raise EdgepruneError(f"min filters must be at least 1, got {self.min_filters}")
        if self.round_to is not None and (
            isinstance(self.round_to, bool) or not isinstance(self.round_to, int) or self.round_to < 1
        ):
            raise EdgepruneError(f"round_to must be a positive integer, got {self.round_to!r}")
        check_criterion(self.criterion, self.calibration)

    def example(self) -> torch.Tensor:
        """The input the model is traced with."""
        return self.example_input if self.example_input is not None else torch.zeros(1, *self.input_shape)


@dataclass
class PruneJob:
    """A model analysed for one budget: what its plans are made from and how a plan is cut and checked.

    ``prune`` is ``PruneJob.start``, ``plan`` and ``finish``; ``edgeprune.search.prune`` puts its candidates'
    search between the first and the last.
    """

    model: nn.Module  # the caller's model: never changed (scores, re-plans and the latency parent read it)
    pruned: nn.Module  # the copy the first plan cuts
    example: torch.Tensor
    prof: Profile  # the copy's analysed profile, its channel groups included
    graph: DependencyGraph
    limits: dict[str, float]  # every cost's absolute limit
    first: dict[str, float]  # the limits the first plan is made for (a latency limit moved into its window)
    scores: dict[str, np.ndarray] | None  # the criterion's per-channel scores by group
    settings: PruneSettings  # how it is pruned, ``round_to`` resolved (the latency table's, or 1)

    @property
    def step(self) -> float:
        """The share of a drawn group's filters one step removes."""
        return self.settings.step

    @property
    def min_filters(self) -> int:
        """The fewest filters a pruned group keeps."""
        return self.settings.min_filters

    @property
    def round_to(self) -> int:
        """Every pruned group keeps a multiple of this many channels."""
        return self.settings.round_to  # type: ignore[return-value]

    @property
    def fill(self) -> bool:
        """Whether filters are given back after the lottery while every limit holds."""
        return self.settings.fill

    @classmethod
    def start(
        cls,
        model: nn.Module,
        budget: Budget,
        settings: PruneSettings | None = None,
    ) -> PruneJob:
        """Check the budget and ``settings``, analyse a copy of ``model``, score its filters: all before a plan."""
        settings = settings or PruneSettings()
        table, keep, prune_residual = settings.table, settings.keep, settings.prune_residual
        budget.validate(table)  # a latency limit without a table: one line, before any work
        limits = budget.limits
        if settings.round_to is None:
            settings = replace(settings, round_to=getattr(table, "round_to", 1) if "latency" in limits else 1)
        settings.validate()
        if "latency" in limits and settings.measure is None:
            raise EdgepruneError("a latency limit needs measure=, how a cut model is timed: "
                                 "edgeprune.latency.default_measure(table, input_shape, model), as edgeprune.prune "
                                 "passes it")  # fmt: skip
        example = settings.example()
        pruned = copy.deepcopy(model)
        prof, graph = analyse(pruned, example, prune_residual, keep)
        attach_liveness(prof, pruned, example, required="peak_memory" in limits)  # peak_memory's liveness
        if prof.functional:
            raise EdgepruneError(
                f"parameter '{prof.functional[0]}' takes part in a conv/linear op outside its own module (a functional "
                "call): profile counts it, but pruning cannot follow it; make that op an nn.Module layer"
            )
        if "latency" in limits and hasattr(table, "check_model"):
            table.check_model(prof)  # type: ignore[union-attr]
        absolute = budget.absolute(prof, table)
        bns = {layer.name: layer.bn for layer in prof.layers}
        groups = [(g.name, bns.get(g.name)) for g in prof.groups if g.prunable]
        scores = filter_scores(model, groups, settings.criterion, settings.calibration)
        first = dict(absolute)
        if "latency" in absolute:
            floor = floor_plan(prof, prof.groups, settings.min_filters, settings.round_to)  # type: ignore[arg-type]
            smallest = get_cost("latency", table).total(floor.after)
            first["latency"] = first_limit(table, absolute["latency"], smallest)
        return cls(model, pruned, example, prof, graph, absolute, first, scores, settings)

    def plan(self, limits: dict[str, float], *, seed: int, selection: str) -> PrunePlan:
        """Algorithm 1's plan for ``limits`` with this job's settings."""
        return make_budget_plan(self.prof, self.prof.groups, limits, step=self.step, seed=seed, scores=self.scores,
                                min_filters=self.min_filters, selection=selection, round_to=self.round_to,
                                table=self.settings.table, fill=self.fill)  # fmt: skip

    def cut(self, plan: PrunePlan) -> nn.Module:
        """A fresh copy of the model cut to ``plan`` (a latency re-plan's)."""
        pruned = copy.deepcopy(self.model)
        apply_plan(pruned, plan, self.example, build_graph(pruned, self.example))  # the groups are the plan's
        return pruned

    def finish(self, plan: PrunePlan, *, seed: int, selection: str) -> PruneResult:
        """Cut the copy to ``plan``, fit a latency limit by measurement (re-plans use ``seed`` and ``selection``)."""
        apply_plan(self.pruned, plan, self.example, self.graph)
        pruned = self.pruned
        if "latency" in self.limits:
            plan, pruned = fit_latency(
                plan, pruned, self.limits, self.first["latency"], cut=self.cut, measure=self.settings.measure,  # type: ignore[arg-type]
                plan_for=lambda limits: self.plan(limits, seed=seed, selection=selection),
                attempts=self.settings.attempts,
            )  # fmt: skip
        plan.settings["prune_residual"] = self.settings.prune_residual
        if self.settings.keep:
            plan.settings["keep"] = list(self.settings.keep)
        return PruneResult(pruned, plan, self.settings.criterion)


def prune(
    model: nn.Module,
    mode: str | None = None,
    target: str | float | None = None,
    *,
    budget: Budget | Mapping[str, str | float] | None = None,
    step: float = 0.1,
    seed: int = 0,
    criterion: str = "random",
    example_input: torch.Tensor | None = None,
    input_shape: tuple[int, ...] = (3, 32, 32),
    min_filters: int = 1,
    prune_residual: bool = False,
    selection: str = "weighted",
    calibration: torch.Tensor | None = None,
    keep: Sequence[str] = (),
    round_to: int | None = None,
    table: LayerTimes | None = None,
    measure: Measure | None = None,
    attempts: int = 4,
    fill: bool = False,
) -> PruneResult:
    """Prune a copy of ``model`` with Algorithm 1 to every limit of ``budget`` (``mode``/``target``: one limit).

    - ``budget``: a ``Budget`` (or a mapping it is made from) of costs and limits
      (``{"flops": 0.5, "memory": "4MB", "latency": "3ms"}``); ``mode``/``target`` is the shorthand for
      ``Budget.of(mode, target)``, the paper's one cost. Give one form or the other.
    - ``step``: the share of a drawn group's filters one step removes, in (0, 1).
    - ``seed``: seeds the layer lottery and the random filter choice (separate streams), 0 to 2**32 - 1.
    - ``criterion``: which filters go (``edgeprune.criteria``: random, l1, nuclear...); ``calibration`` is the
      batch a data-driven criterion reads.
    - ``example_input`` / ``input_shape``: what the model is traced with (zeros of ``(1, *input_shape)``).
    - ``min_filters``: the fewest filters a pruned group keeps.
    - ``prune_residual``: also cut the channels tied to residual additions.
    - ``selection``: ``weighted`` (Algorithm 1), ``uniform`` (its unweighted lottery) or ``ratio`` (width scaling).
    - ``keep``: layers whose filters must stay (besides the output layers, which always do).
    - ``round_to``: N keeps every pruned group's width a multiple of N (default 1, or the latency table's).
    - ``table``: the latency table a latency limit is planned with (``edgeprune.lut.load_table``).
    - ``measure``: times a cut model in the table's ms; a latency limit needs it (``edgeprune.prune`` passes
      ``edgeprune.latency.default_measure``). The cut is measured and re-planned up to ``attempts`` times.
    - ``fill``: give filters back after the lottery stops while every limit holds (off, the default here: the
      paper's stopping rule).

    These are ``PruneSettings``' fields (but ``budget``, ``seed`` and ``selection``), documented there too.
    Candidate search (K plans ranked by a proxy) is ``edgeprune.search.prune``, the package's ``edgeprune.prune``.
    """
    settings = PruneSettings(
        step=step, criterion=criterion, example_input=example_input, input_shape=input_shape, min_filters=min_filters,
        prune_residual=prune_residual, calibration=calibration, keep=keep, round_to=round_to, table=table,
        measure=measure, attempts=attempts, fill=fill,
    )  # fmt: skip
    job = PruneJob.start(model, Budget.from_args(mode, target, budget), settings)
    plan = job.plan(job.first, seed=seed, selection=selection)
    return job.finish(plan, seed=seed, selection=selection)


__all__ = [
    "MODES",
    "SELECTIONS",
    "Measure",
    "PruneJob",
    "PruneSettings",
    "PrunePlan",
    "PruneResult",
    "apply_plan",
    "check_seed",
    "floor_plan",
    "make_budget_plan",
    "make_plan",
    "prune",
]
