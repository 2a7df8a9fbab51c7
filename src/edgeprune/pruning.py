"""Algorithm 1 of Zawish et al. (2022): complexity-driven pruning to a budget.

Each step picks one prunable group at random with probability proportional to its share of the
model's complexity in the chosen mode (params = PA, flops = FA, memory = MA), recomputed after
every removal, and removes ``max(1, round(step * filters))`` of its filters by the criterion,
until the model fits the target. The loop runs on recorded layer shapes only (a plan); the
dependency graph cuts the real model once per group at the end, and the result is checked
against the plan with one forward pass.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch_pruning import DependencyGraph

from edgeprune.complexity import CONVENTIONS, MODES, LayerShape, Profile, reduction
from edgeprune.costs import Cost, LayerTimes, check_cost, get_cost, totals
from edgeprune.criteria import check_criterion, filter_scores
from edgeprune.errors import EdgepruneError
from edgeprune.graph import ChannelGroup, analyse, build_graph, cut
from edgeprune.trace import record_shapes

if TYPE_CHECKING:
    from edgeprune.cluster import RayOptions
    from edgeprune.data import ImageDataset

SELECTIONS = ("weighted", "uniform", "ratio")  # Algorithm 1, its unweighted lottery, one ratio for all


def parse_target(target: str | float, mode: str, current: float, table: LayerTimes | None = None) -> float:
    """Absolute limit from a fraction of ``current`` (``0.5``) or an amount with a unit (``2M``, ``4MB``, ``3ms``)."""
    return get_cost(mode, table).parse(target, current)


@dataclass
class Step:
    """One lottery draw: the group picked, why, and what it cost."""

    step: int
    layer: str
    weight: int
    probability: float
    removed: list[int]
    width_after: int
    total_after: int


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


class _State:
    """Mutable layer shapes (and parameters outside layers) while the plan is made."""

    def __init__(self, prof: Profile):
        self.prof = prof
        self.shapes: dict[str, LayerShape] = prof.by_name()
        self.other = prof.other_params  # shrinks with a norm no layer owns (ChannelGroup.extra)

    def profile(self) -> Profile:
        """The current shapes as a Profile."""
        return Profile(list(self.shapes.values()), self.prof.input_shape, self.other)

    def total(self, cost: Cost) -> float:
        return cost.total(self.profile())

    def shrunk(self, group: ChannelGroup, slots: list[int]) -> dict[str, LayerShape]:
        """The member layers' shapes after removing ``slots`` of ``group``."""
        return group.shrunk(self.shapes, slots)

    def changed(self, group: ChannelGroup, slots: list[int], grow: bool = False) -> tuple[dict[str, LayerShape], int]:
        """The member layers' shapes and the parameters outside layers after removing (or giving back) ``slots``."""
        if grow:
            return _grown(self.shapes, group, slots), self.other + group.extra_params(slots)
        return group.shrunk(self.shapes, slots), self.other - group.extra_params(slots)

    def total_after(self, group: ChannelGroup, slots: list[int], cost: Cost, current: float,
                    grow: bool = False) -> float:  # fmt: skip
        new, other = self.changed(group, slots, grow)
        # the same sum in the same order as Algorithm 1 always did: plans stay bit-identical
        value = current - sum(cost.layer(self.shapes[k]) for k in new) + sum(cost.layer(s) for s in new.values())
        if other != self.other:
            value += self._extra(cost, other) - self._extra(cost, self.other)
        return int(value) if cost.integer else value

    def _extra(self, cost: Cost, other: int) -> float:
        return cost.extra(Profile([], self.prof.input_shape, other))

    def apply(self, group: ChannelGroup, slots: list[int], grow: bool = False) -> None:
        """Remove (or give back) ``slots`` of ``group``."""
        new, self.other = self.changed(group, slots, grow)
        self.shapes.update(new)

    def weight(self, group: ChannelGroup, cost: Cost) -> float:
        """The complexity of the layers whose filters the group removes."""
        return sum(cost.layer(self.shapes[layer]) for layer in set(group.out_layers))


def _grown(shapes: dict[str, LayerShape], group: ChannelGroup, slots: list[int]) -> dict[str, LayerShape]:
    """The member layers' shapes after giving back ``slots`` (positions in the original width) of ``group``."""
    added = group.channels(slots)
    new = {m.layer: shapes[m.layer] for m in group.members}
    for m in group.members:
        n = sum(m.counts[i] for i in added)
        s = new[m.layer]
        if s.depthwise:  # resized() keeps the narrower side of a depthwise conv: grow both
            new[m.layer] = s.resized(c_in=s.c_in + n, c_out=s.c_out + n)
        else:
            new[m.layer] = s.resized(c_out=s.c_out + n) if m.dim == "out" else s.resized(c_in=s.c_in + n)
    return new


def _meets(state: _State, group: ChannelGroup, slots: list[int], budget: dict[str, float],
           current: dict[str, float], costs: dict[str, Cost]) -> bool:  # fmt: skip
    """True when removing ``slots`` of ``group`` brings every cost of ``budget`` to its limit."""
    return all(state.total_after(group, slots, costs[k], current[k]) <= limit for k, limit in budget.items())


def _smallest_sufficient(state: _State, group: ChannelGroup, order: list[int], budget: dict[str, float],
                         current: dict[str, float], costs: dict[str, Cost], quantum: int = 1) -> int:  # fmt: skip
    """Fewest slots (a prefix of ``order``, in whole quanta from the end) that meet every limit of ``budget``;
    all of them if even that does not."""
    n = len(order)
    if not _meets(state, group, order, budget, current, costs):
        return n
    # candidates: n, n - quantum, ...; each leaves the group a whole number of quanta (n itself does)
    candidates = list(range(n, 0, -quantum))[::-1]
    lo, hi = 0, len(candidates) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if _meets(state, group, order[: candidates[mid]], budget, current, costs):
            hi = mid
        else:
            lo = mid + 1
    return candidates[lo]


def _slot_scores(group: ChannelGroup, scores: dict[str, np.ndarray] | None) -> np.ndarray | None:
    """A criterion's per-channel scores averaged over each slot's channels (as Torch-Pruning does for groups)."""
    if not scores or group.name not in scores:
        return None
    per_channel = np.asarray(scores[group.name], dtype=float)
    if group.unit == 1:
        return per_channel
    return per_channel.reshape(group.unit, group.slots).mean(axis=0)


MAX_SEED = 2**32 - 1  # numpy's and torch's seeds are 32-bit unsigned here


def check_seed(seed: object, option: str = "seed") -> int:
    """A seed in [0, 2**32 - 1], else a one-line EdgepruneError (numpy refuses negatives, torch overflows)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) <= MAX_SEED:
        raise EdgepruneError(f"{option} must be an integer from 0 to {MAX_SEED}, got {seed!r}")
    return int(seed)


def make_plan(
    prof: Profile,
    groups: list[ChannelGroup],
    mode: str,
    target: int,
    step: float = 0.1,
    seed: int = 0,
    scores: dict[str, np.ndarray] | None = None,
    min_filters: int = 1,
    selection: str = "weighted",
    round_to: int = 1,
) -> PrunePlan:
    """Run Algorithm 1 on recorded shapes for one budget and return which filters each group keeps."""
    return make_budget_plan(prof, groups, {mode: target}, step, seed, scores, min_filters, selection, round_to)


def _quantum(group: ChannelGroup, round_to: int) -> int:
    """Slots per step of ``round_to`` channels: the group keeps a multiple of ``round_to`` channels."""
    return round_to // math.gcd(round_to, group.unit)


def _floor_slots(group: ChannelGroup, min_filters: int, round_to: int) -> int:
    """The fewest slots the group may keep: ``min_filters`` channels, rounded up to whole quanta."""
    q = _quantum(group, round_to)
    slots = max(1, -(-min_filters // group.unit))
    return -(-slots // q) * q


def _prunable(groups: list[ChannelGroup], floors: dict[str, int], round_to: int) -> list[ChannelGroup]:
    """The groups a plan may narrow: prunable, at least one quantum wide, and wider than their floor."""
    return [g for g in groups if g.prunable and g.slots * g.unit >= round_to and g.slots > floors[g.name]]


def _floor_state(prof: Profile, prunable: list[ChannelGroup], floors: dict[str, int]) -> _State:
    """The shapes with every prunable group cut to its floor (its first ``floors`` slots kept)."""
    state = _State(prof)
    for g in prunable:
        state.apply(g, list(range(floors[g.name], g.slots)))
    return state


def floor_plan(prof: Profile, groups: list[ChannelGroup], min_filters: int = 1, round_to: int = 1) -> PrunePlan:
    """Every prunable group at the fewest filters it may keep: the smallest network a plan can reach."""
    floors = {g.name: _floor_slots(g, min_filters, round_to) for g in groups}
    prunable = _prunable(groups, floors, round_to)
    after = _floor_state(prof, prunable, floors).profile()
    narrowed = {g.name for g in prunable}
    slots = {g.name: list(range(floors[g.name] if g.name in narrowed else g.slots)) for g in groups}
    settings = {"min_filters": min_filters, "round_to": round_to, "floor": True}
    return PrunePlan("floor", 0, prof, after, groups, _kept_channels(groups, slots), [], settings)


def _check_budget(budget: dict[str, float], floor: _State, how: str, costs: dict[str, Cost]) -> None:
    """Refuse an unreachable combination up front, naming the cost, its smallest reachable value and ``how`` that
    smallest network is made (``_floor_text``)."""
    if not budget:
        raise EdgepruneError("no budget given: name at least one cost and its limit")
    for name, limit in budget.items():
        cost = costs[name]
        smallest = floor.total(cost)
        if smallest > limit:
            limit_text, smallest_text = (f"{v:,}" if cost.integer else cost.human(v) for v in (limit, smallest))
            raise EdgepruneError(
                f"target {limit_text} {name} is unreachable: the smallest reachable is {smallest_text} {name}, {how}"
            )


def _floor_text(groups: list[ChannelGroup], prunable: list[ChannelGroup], floors: dict[str, int], round_to: int) -> str:
    """The filters the floor network keeps, as they are: ``min_filters`` rounded up to whole ``round_to`` steps (and
    channel groups), the layers narrower than that kept whole (it said '1 filter(s)' at --round-to 1000)."""
    kept = sorted({floors[g.name] * g.unit for g in prunable})
    cut = {g.name for g in prunable}
    whole = sum(1 for g in groups if g.prunable and g.name not in cut)
    count = "" if not kept else f"{kept[0]:,}" if len(kept) == 1 else f"{kept[0]:,} to {kept[-1]:,}"
    if round_to == 1:
        text = f"with every prunable layer at {count} filter(s)" if kept else "with no prunable layer it can cut"
        return text + (f" ({whole} no wider than that kept whole)" if whole and kept else "")
    if not kept:
        return f"with no prunable layer wide enough to cut to a multiple of {round_to:,} filters ({whole} kept whole)"
    if not whole:
        return f"with every prunable layer at {count} filters (multiples of round-to {round_to:,})"
    return (f"with the prunable layers wide enough at {count} filters (multiples of round-to {round_to:,}) and "
            f"{whole} narrower one(s) kept whole")  # fmt: skip


def _weights(state: _State, active: list[ChannelGroup], over: dict[str, float], totals: dict[str, float],
             selection: str, costs: dict[str, Cost]) -> np.ndarray:  # fmt: skip
    """Each group's lottery weight: its complexity in the one cost over its limit (Algorithm 1 exactly), or the sum
    of its shares of every cost still over its limit (SPEC, multi-budget)."""
    if selection == "uniform":
        return np.ones(len(active))
    if len(over) == 1:
        (cost,) = over
        weights = np.array([state.weight(g, costs[cost]) for g in active], dtype=float)
    else:
        weights = np.array([sum(state.weight(g, costs[k]) / totals[k] for k in over) for g in active], dtype=float)
    return weights if weights.sum() > 0 else np.ones(len(active))


def make_budget_plan(
    prof: Profile,
    groups: list[ChannelGroup],
    budget: dict[str, float],
    step: float = 0.1,
    seed: int = 0,
    scores: dict[str, np.ndarray] | None = None,
    min_filters: int = 1,
    selection: str = "weighted",
    round_to: int = 1,
    table: LayerTimes | None = None,
    *,
    fill: bool = False,
) -> PrunePlan:
    """Algorithm 1 against several limits at once (SPEC, multi-budget): loop while any cost is over its limit.

    With one cost it is the paper's algorithm exactly (same seed, same plan). ``round_to`` N makes every
    pruned group keep a multiple of N channels (a group narrower than N is left as it is). ``table`` is
    the latency table a ``latency`` limit is planned with (``edgeprune.lut``). ``fill`` gives filters back
    after the lottery stops while every limit holds (``_fill``); off, the plan is the paper's stopping rule.
    """
    check_seed(seed)
    if not 0 < step < 1:
        raise EdgepruneError(f"step must be in (0, 1), got {step}")
    if min_filters < 1:
        raise EdgepruneError(f"min filters must be at least 1, got {min_filters}")
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise EdgepruneError(f"round_to must be a positive integer, got {round_to!r}")
    if selection not in SELECTIONS:
        raise EdgepruneError(f"unknown selection '{selection}'; choose from: {', '.join(SELECTIONS)}")
    costs = {k: get_cost(k, table) for k in budget}
    budget = {k: int(v) if costs[k].integer else float(v) for k, v in budget.items()}
    floors = {g.name: _floor_slots(g, min_filters, round_to) for g in groups}  # in slots
    prunable = _prunable(groups, floors, round_to)
    state = _State(prof)
    _check_budget(budget, _floor_state(prof, prunable, floors), _floor_text(groups, prunable, floors, round_to), costs)
    mode, target = next(iter(budget.items()))
    # Separate streams for the layer lottery and the random filter choice: the layers drawn (and so the
    # widths) then depend on the seed alone, not on the criterion, and a conventional pipeline's
    # network has exactly the widths of the direct pipeline's for the same seed.
    lottery, picker = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    slots = {g.name: list(range(g.slots)) for g in groups}  # the slots each group keeps
    settings = {"step": step, "seed": seed, "min_filters": min_filters, "selection": selection, "round_to": round_to,
                "fill": bool(fill)}  # fmt: skip
    if selection == "ratio":
        plan, state = _ratio_plan(prof, groups, prunable, budget, scores, floors, picker, slots, settings, round_to,
                                  costs)  # fmt: skip
        plan.table = table
        if fill:
            current = {k: state.total(costs[k]) for k in budget}
            plan.fill = _fill(state, prunable, slots, budget, costs, current, round_to, scores, picker)
            plan.after, plan.keep = state.profile(), _kept_channels(groups, slots)
        return plan
    totals = {k: costs[k].total(prof) for k in budget}
    current = dict(totals)
    steps: list[Step] = []
    bound_last: list[str] = []
    while any(current[k] > limit for k, limit in budget.items()):
        over = {k: limit for k, limit in budget.items() if current[k] > limit}
        bound_last = list(over)
        active = [g for g in prunable if len(slots[g.name]) > floors[g.name]]
        weights = _weights(state, active, over, totals, selection, costs)
        probs = weights / weights.sum()
        pick = int(lottery.choice(len(active), p=probs))
        group = active[pick]
        remaining = slots[group.name]
        q = _quantum(group, round_to)
        keep = max(floors[group.name], (len(remaining) - max(1, round(step * len(remaining)))) // q * q)
        n = len(remaining) - keep
        # Groups are uniform (graph.find_groups): which slots go does not change the count, so size the step first.
        n = _smallest_sufficient(state, group, remaining[:n], over, current, costs, q)
        removed = _choose(remaining, n, _slot_scores(group, scores), picker)
        slots[group.name] = [i for i in remaining if i not in set(removed)]
        current = {k: state.total_after(group, removed, costs[k], current[k]) for k in budget}
        state.apply(group, removed)
        width = len(remaining) * group.unit
        exact = len(over) == 1 and selection != "uniform" and costs[next(iter(over))].integer
        weight = int(weights[pick]) if exact else float(weights[pick])
        steps.append(
            Step(len(steps) + 1, group.name, weight, float(probs[pick]), group.channels(removed),
                 width - len(removed) * group.unit, current[mode])
        )  # fmt: skip
    fill_log = _fill(state, prunable, slots, budget, costs, current, round_to, scores, picker) if fill else {}
    plan = PrunePlan(mode, target, prof, state.profile(), groups, _kept_channels(groups, slots), steps, settings)
    plan.budget, plan.bound_last, plan.table, plan.fill = budget, bound_last, table, fill_log
    return plan


FILL_ORDER = (
    "one step at a time (round_to channels, or what is left of the group), to the group the complexity weighting "
    "would cut least (the smallest sum of its shares of the budget's costs; ties in execution order), while every "
    "limit holds"
)
FILL_TOLERANCE = 0.01  # a binding limit ends within 1 % under when the granularity allows


def _fill(state: _State, prunable: list[ChannelGroup], slots: dict[str, list[int]], budget: dict[str, float],
          costs: dict[str, Cost], current: dict[str, float], round_to: int, scores: dict[str, np.ndarray] | None,
          rng: np.random.Generator) -> dict:  # fmt: skip
    """Give slots back after the lottery stops while every limit holds (SPEC, filling); updates ``state`` and
    ``slots`` and returns the log: the order, what went back, and each limit's slack and granularity.

    The lottery's last step already lands just under the limit it was sized for, but the limits it was not
    sized for, a big ``round_to`` or width scaling's rounding leave room a user paid for; this spends it.
    """
    parent = {k: costs[k].total(state.prof) for k in budget}
    given: dict[str, int] = {}
    closed: set[str] = set()  # costs only grow as slots go back: a step that does not fit never will
    while True:
        open_groups = [g for g in prunable if g.name not in closed and len(slots[g.name]) < g.slots]
        weight = {g.name: sum(state.weight(g, costs[k]) / parent[k] for k in budget) for g in open_groups}
        for g in sorted(open_groups, key=lambda g: weight[g.name]):  # stable: ties keep execution order
            removed = _removed(g, slots[g.name])
            n = _give_back_count(g, len(slots[g.name]), round_to)
            after = {k: state.total_after(g, removed[:n], costs[k], current[k], grow=True) for k in budget}
            if all(after[k] <= limit for k, limit in budget.items()):
                back = _restore(removed, n, _slot_scores(g, scores), rng)  # which slots: the count decides the cost
                state.apply(g, back, grow=True)
                current = after
                slots[g.name] = sorted(slots[g.name] + back)
                given[g.name] = given.get(g.name, 0) + n * g.unit
                break
            closed.add(g.name)
        else:
            break
    return {
        "order": FILL_ORDER,
        "channels_given_back": sum(given.values()),
        "groups": given,
        "limits": _slack(state, prunable, slots, budget, costs, current, round_to),
    }


def _removed(group: ChannelGroup, kept: list[int]) -> list[int]:
    """The slots of ``group`` not in ``kept``, in order."""
    keep = set(kept)
    return [i for i in range(group.slots) if i not in keep]


def _give_back_count(group: ChannelGroup, kept: int, round_to: int) -> int:
    """Slots one fill step gives back: a whole quantum, or what is left of the group (back to its full width)."""
    return min(_quantum(group, round_to), group.slots - kept)


def _restore(removed: list[int], n: int, scores: np.ndarray | None, rng: np.random.Generator) -> list[int]:
    """Pick ``n`` removed slots to give back: at random, or the highest-scoring (ties by index)."""
    if scores is None:
        return sorted(int(i) for i in rng.choice(removed, size=n, replace=False))
    return sorted(sorted(removed, key=lambda i: (-scores[i], i))[:n])


def _slack(state: _State, prunable: list[ChannelGroup], slots: dict[str, list[int]], budget: dict[str, float],
           costs: dict[str, Cost], current: dict[str, float], round_to: int) -> dict[str, dict]:  # fmt: skip
    """Each limit after filling: its slack, the finest step it could still take, and why it ends where it does."""
    out = {}
    for k, limit in budget.items():
        steps = []
        for g in prunable:
            if len(slots[g.name]) < g.slots:
                removed = _removed(g, slots[g.name])
                n = _give_back_count(g, len(slots[g.name]), round_to)
                steps.append(state.total_after(g, removed[:n], costs[k], current[k], grow=True) - current[k])
        finest = min(steps) if steps else None
        slack = limit - current[k]
        within = slack <= FILL_TOLERANCE * limit
        entry = {
            "limit": limit,
            "after": current[k],
            "slack_pct": 100 * slack / limit,
            "within_1pct": within,
            "finest_step": finest,
            "finest_step_pct": None if finest is None else 100 * finest / limit,
        }
        if within:
            entry["why"] = "met within 1 %"
        elif finest is None:
            entry["why"] = "every prunable group is back at its full width"
        elif finest > slack:
            entry["why"] = (f"granularity: the smallest step that could go back adds {_text(costs[k], finest)} "
                            f"{k} ({100 * finest / limit:.2f} % of the limit), more than the slack")  # fmt: skip
        else:
            entry["why"] = "not binding: every step that fits it breaks another limit"
        out[k] = entry
    return out


def _text(cost: Cost, value: float) -> str:
    """A cost value for a message: exact counts with separators, else the cost's own format."""
    return f"{int(value):,}" if cost.integer else cost.human(value)


def _kept_channels(groups: list[ChannelGroup], slots: dict[str, list[int]]) -> dict[str, list[int]]:
    """The channels each group keeps, from the slots it keeps."""
    return {g.name: g.channels(slots[g.name]) for g in groups}


def _ratio_plan(
    prof: Profile,
    groups: list[ChannelGroup],
    prunable: list[ChannelGroup],
    budget: dict[str, float],
    scores: dict[str, np.ndarray] | None,
    floors: dict[str, int],
    rng: np.random.Generator,
    slots: dict[str, list[int]],
    settings: dict,
    round_to: int,
    costs: dict[str, Cost],
) -> tuple[PrunePlan, _State]:
    """Remove the same fraction r of every prunable group's filters, r the smallest that meets every limit.

    This is uniform width scaling when filters are chosen at random at initialisation, and the
    usual uniform per-layer ratio of ranking-based pruning when they are chosen by a criterion.
    """

    def count(g: ChannelGroup, ratio: float) -> int:
        removed, q = round(ratio * g.slots), _quantum(g, round_to)
        if q == 1:
            return min(removed, g.slots - floors[g.name])
        keep = -(-(g.slots - removed) // q) * q  # rounded up to whole quanta: the ratio is a lower bound
        return g.slots - min(g.slots, max(floors[g.name], keep))

    def shapes_at(ratio: float) -> tuple[_State, dict[str, int]]:
        state = _State(prof)
        counts = {g.name: count(g, ratio) for g in prunable}
        for g in prunable:
            state.apply(g, list(range(counts[g.name])))
        return state, counts

    def fits(state: _State) -> bool:
        return all(state.total(costs[k]) <= limit for k, limit in budget.items())

    lo, hi = 0.0, 1.0  # the totals at ratio 1 are the floors, which were checked against the budget
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if fits(shapes_at(mid)[0]) else (mid, hi)
    state, counts = shapes_at(hi)
    after_shapes = _State(prof)
    for g in prunable:
        removed = set(_choose(slots[g.name], counts[g.name], _slot_scores(g, scores), rng))
        slots[g.name] = [i for i in slots[g.name] if i not in removed]
        after_shapes.apply(g, sorted(removed))
    after = after_shapes.profile()
    mode, target = next(iter(budget.items()))
    plan = PrunePlan(mode, target, prof, after, groups, _kept_channels(groups, slots), [], {**settings, "ratio": hi})
    plan.budget = budget
    return plan, after_shapes


def _choose(remaining: list[int], n: int, scores: np.ndarray | None, rng: np.random.Generator) -> list[int]:
    """Pick ``n`` slots to remove: at random, or the lowest-scoring (ties by index)."""
    if scores is None:
        return sorted(int(i) for i in rng.choice(remaining, size=n, replace=False))
    return sorted(sorted(remaining, key=lambda i: (scores[i], i))[:n])


def apply_plan(
    model: nn.Module, plan: PrunePlan, example_input: torch.Tensor, graph: DependencyGraph | None = None
) -> nn.Module:
    """Cut ``model`` (in place) to the plan's widths and check the result against the plan."""
    graph = graph or build_graph(model, example_input)
    for group in plan.groups:
        kept = set(plan.keep[group.name])
        removed = [i for i in range(group.width) if i not in kept]
        if removed:
            try:
                cut(graph, model, group.name, removed)
            except Exception as e:  # the probe should have caught it; never leak a raw error
                raise EdgepruneError(
                    f"Torch-Pruning failed to cut group {group.name}: {type(e).__name__}: {e}"
                ) from None
    actual = record_shapes(model, example_input)
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


@dataclass
class PruneResult:
    """A pruned copy of the model and the plan that made it."""

    model: nn.Module
    plan: PrunePlan
    criterion: str

    def report(self) -> dict:
        """Before/after totals, per-layer filters and the per-step log, JSON-ready."""
        return self.plan.to_dict(self.criterion)


def parse_budget(budget: dict[str, str | float], prof: Profile, table: LayerTimes | None = None) -> dict[str, float]:
    """``{"flops": 0.5, "memory": "4MB"}`` -> absolute limits, each parsed like a single target."""
    if not isinstance(budget, dict) or not budget:
        raise EdgepruneError("a budget is a non-empty mapping of cost to limit, e.g. {'flops': 0.5, 'memory': '4MB'}")
    costs = {name: get_cost(name, table) for name in budget}
    return {name: cost.parse(budget[name], cost.total(prof)) for name, cost in costs.items()}


Measure = Callable[[nn.Module], float]  # a pruned model -> its measured latency in ms


def prune(
    model: nn.Module,
    mode: str | None = None,
    target: str | float | None = None,
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
    budget: dict[str, str | float] | None = None,
    round_to: int | None = None,
    table: LayerTimes | None = None,
    measure: Measure | None = None,
    attempts: int = 4,
    *,
    fill: bool = False,
    candidates: int = 1,
    candidate_kinds: Sequence[str] | None = None,
    proxy: str = "flops",
    data: ImageDataset | None = None,
    ray: RayOptions | None = None,
) -> PruneResult:
    """Prune a copy of ``model`` with Algorithm 1 to ``target`` in ``mode``, or to every limit of ``budget``.

    ``budget`` maps costs to limits (``{"flops": 0.5, "memory": "4MB", "latency": "3ms"}``); ``mode``/``target``
    is the one-cost case. ``round_to`` N keeps every pruned group's width a multiple of N (default 1, or the
    latency table's). ``keep`` names layers whose filters must stay (besides the output layers, which always
    do). A latency limit needs ``table`` (``edgeprune.lut.load_table``); the pruned model is then measured
    (``measure``, default: on the table's backend and threads) and re-planned up to ``attempts`` times.

    ``fill`` gives filters back after the lottery stops while every limit holds (off, the default here: the
    paper's stopping rule). ``candidates`` K > 1 (or ``candidate_kinds`` beyond ``selection``) draws K plans
    per kind (``edgeprune.search``) and keeps the one ``proxy`` ranks best; ``data`` is the training images a
    data-driven proxy reads (never its test split); ``ray`` scores the candidates as Ray tasks. K = 1 without
    fill is Algorithm 1's plan exactly.
    """
    if (budget is None) == (mode is None or target is None):
        raise EdgepruneError("give either mode and target, or a budget of several costs (not both)")
    limits: dict[str, str | float] = dict(budget) if budget is not None else {mode: target}  # type: ignore[dict-item]
    for cost in limits:
        check_cost(cost)
        get_cost(cost, table)  # a latency limit without a table: one line, before any work
    if round_to is None:
        round_to = getattr(table, "round_to", 1) if "latency" in limits else 1
    check_criterion(criterion, calibration)
    example = example_input if example_input is not None else torch.zeros(1, *input_shape)
    pruned = copy.deepcopy(model)
    prof, graph = analyse(pruned, example, prune_residual, keep)
    if prof.functional:
        raise EdgepruneError(
            f"parameter '{prof.functional[0]}' takes part in a conv/linear op outside its own module (a functional "
            "call): profile counts it, but pruning cannot follow it; make that op an nn.Module layer"
        )
    if "latency" in limits and hasattr(table, "check_model"):
        table.check_model(prof)  # type: ignore[union-attr]
    absolute = parse_budget(limits, prof, table)
    groups = prof.groups
    bns = {layer.name: layer.bn for layer in prof.layers}
    scores = filter_scores(model, [(g.name, bns.get(g.name)) for g in groups if g.prunable], criterion, calibration)

    kinds = tuple(candidate_kinds) if candidate_kinds is not None else (selection,)
    chosen = {"selection": selection, "seed": seed}  # the search's kept candidate, when there is a search

    def plan_for(limits_now: dict[str, float]) -> PrunePlan:
        return make_budget_plan(prof, groups, limits_now, step, chosen["seed"], scores, min_filters,
                                chosen["selection"], round_to, table, fill=fill)  # fmt: skip

    first = dict(absolute)
    if "latency" in absolute:
        smallest = get_cost("latency", table).total(floor_plan(prof, groups, min_filters, round_to).after)
        first["latency"] = _first_limit(table, absolute["latency"], smallest)
    found = None
    if candidates != 1 or kinds != (selection,):
        from edgeprune.search import search  # search sits above pruning (it cuts and trains): loaded when asked for

        found = search(model, prof, first, k=candidates, kinds=kinds, proxy=proxy, seed=seed, data=data,
                       example=example, step=step, scores=scores, min_filters=min_filters, round_to=round_to,
                       table=table, fill=fill, ray=ray)  # fmt: skip
        chosen.update(selection=found.kept.kind, seed=found.kept.seed)
        plan = found.kept.plan
    else:
        plan = plan_for(first)
    apply_plan(pruned, plan, example, graph)
    if "latency" in absolute:
        measure = measure or _default_measure(table, tuple(example.shape[1:]), model)
        plan, pruned = _fit_latency(model, plan, pruned, absolute, first["latency"], plan_for, measure, attempts,
                                    example, prune_residual, keep)  # fmt: skip
    plan.settings["prune_residual"] = prune_residual
    if keep:
        plan.settings["keep"] = list(keep)
    if found is not None:
        plan.search = found.to_dict()
    return PruneResult(pruned, plan, criterion)


LATENCY_TOLERANCE = 0.05  # a measured latency within 5 % under its limit is close enough: stop re-planning


def _first_limit(table: Any, limit: float, smallest: float) -> float:
    """The table sum to plan the first cut at: where the table's calibration puts the middle of the 5 % window.

    A target under the calibration's smallest network (every prunable group at its floor, measured) is refused,
    and so is one under the smallest network these settings allow (``smallest``, its table sum; more filters
    kept or residual channels left whole make it larger), by the calibration's prediction of it.
    """
    floor = getattr(table, "floor_ms", None)
    if floor is None:  # no calibration: the table's sum is the best guess there is
        return limit
    if limit < floor:
        raise EdgepruneError(
            f"target {limit:.3f} ms latency is unreachable on {table.backend}: the smallest network (every prunable "
            f"layer at its floor, round_to {table.round_to}) measured {floor:.3f} ms"
        )
    if limit < table.calibrated(smallest):
        raise EdgepruneError(
            f"target {limit:.3f} ms latency is unreachable with these settings: the smallest network they allow "
            f"(minimum filters, round_to, residual channels) is predicted at {table.calibrated(smallest):.3f} ms"
        )
    return max(table.table_ms_for(limit * (1 - LATENCY_TOLERANCE / 2)), smallest)


def _predicted(plan: PrunePlan) -> tuple[float, float]:
    """A plan's latency by the table: its table sum and that sum calibrated (the prediction of the measurement)."""
    table_ms = get_cost("latency", plan.table).total(plan.after)
    calibrated = getattr(plan.table, "calibrated", None)
    return table_ms, (calibrated(table_ms) if calibrated else table_ms)


def _fit_latency(model: nn.Module, plan: PrunePlan, pruned: nn.Module, limits: dict[str, float], planned: float,
                 plan_for: Callable[[dict[str, float]], PrunePlan], measure: Measure, attempts: int,
                 example: torch.Tensor, prune_residual: bool,
                 keep: Sequence[str]) -> tuple[PrunePlan, nn.Module]:  # fmt: skip
    """Measure the cut model; re-plan against a limit moved by the miss (SPEC) until it lands at or just under.

    Each measured cut is a point (table sum, measured latency); the parent and the table's calibration networks
    make the curve they are read against. The next planning limit aims 2.5 % under the limit (``_next_limit``:
    a secant step), never under the calibration's smallest network: a table that is off by a factor or an
    offset is corrected in one or two cuts. The best attempt that meets the limit wins (the last one when none
    does, reported as missed).
    """
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        raise EdgepruneError(f"attempts must be a positive integer, got {attempts!r}")
    limit = limits["latency"]
    parent = get_cost("latency", plan.table).total(plan.before)
    curve = [(parent, float(getattr(plan.table, "parent_ms", parent)))]  # (table sum, measured)
    curve += [(float(a), float(b)) for a, b in getattr(plan.table, "calibration", [])]
    cuts: list[tuple[float, float]] = []
    log, best, last = [], None, None
    for i in range(attempts):
        if i:
            try:
                plan = plan_for({**limits, "latency": planned})
            except EdgepruneError as e:  # the moved limit is out of reach: keep what was measured
                log.append({"planned_ms": planned, "error": str(e)})
                break
            pruned = copy.deepcopy(model)
            _, graph = analyse(pruned, example, prune_residual, keep)
            apply_plan(pruned, plan, example, graph)
        table_ms, predicted = _predicted(plan)
        if any(entry.get("table_ms") == table_ms for entry in log):
            break  # the same widths again: widths move in steps, and this one was measured already
        measured = float(measure(pruned))
        log.append({"planned_ms": planned, "table_ms": table_ms, "predicted_ms": predicted, "measured_ms": measured})
        last = (plan, pruned, predicted, measured)
        if measured <= limit and (best is None or measured > best[3]):
            best = last
        if limit * (1 - LATENCY_TOLERANCE) <= measured <= limit:
            break
        cuts.append((table_ms, measured))
        planned = _next_limit(curve, cuts, limit * (1 - LATENCY_TOLERANCE / 2), parent * 0.999)
        # not below the calibration's smallest network: it measured at or under the limit (else refused up front)
        planned = max(planned, min(x for x, _ in curve)) if len(curve) > 1 else planned
    plan, pruned, predicted, measured = best or last  # type: ignore[misc]
    plan.latency = {
        "limit_ms": limit,
        "predicted_ms": predicted,
        "measured_ms": measured,
        "met": measured <= limit,
        "prediction_error_pct": 100 * (predicted - measured) / measured,
        "attempts": log,
    }
    return plan, pruned


def _next_limit(curve: list[tuple[float, float]], cuts: list[tuple[float, float]], goal: float,
                ceiling: float) -> float:  # fmt: skip
    """The next planning limit (a table sum) for a measured ``goal``: a secant step.

    ``curve`` holds (table sum, measured) of the parent and the table's calibration networks, ``cuts`` those of
    the cuts measured so far. Between a cut under the goal and one over it: the line through them. Otherwise
    from the cut nearest the goal, along the curve's slope there (a cut of the same sum can measure off the
    curve; its slope still says how far to move), or by the ratio of the miss when there is no usable slope.
    """
    below = [c for c in cuts if c[1] <= goal]
    above = [c for c in cuts if c[1] > goal]
    if below and above:
        lo, hi = max(below, key=lambda c: c[1]), min(above, key=lambda c: c[1])
        if hi[0] > lo[0]:
            return min(max(lo[0] + (goal - lo[1]) * (hi[0] - lo[0]) / (hi[1] - lo[1]), 1e-9), ceiling)
    anchor = min(cuts, key=lambda c: abs(c[1] - goal))
    slope = _slope(curve if len(curve) >= 2 else curve + cuts, anchor)
    if slope <= 0:  # noise: move by the ratio of the miss
        return min(anchor[0] * goal / anchor[1], ceiling)
    return min(max(anchor[0] + (goal - anchor[1]) / slope, 1e-9), ceiling)


def _slope(points: list[tuple[float, float]], at: tuple[float, float]) -> float:
    """Measured ms per table ms along ``points`` at ``at``'s table sum: the line through the points either side of
    it, else through the two nearest (or through ``at`` and the only other point)."""
    others = sorted((p for p in points if p[0] != at[0]), key=lambda p: abs(p[0] - at[0]))
    if not others:
        return 0.0
    left, right = [p for p in others if p[0] < at[0]], [p for p in others if p[0] > at[0]]
    if len(others) == 1:
        a, b = at, others[0]
    else:
        a, b = (max(left), min(right)) if left and right else (others[0], others[1])
    return (b[1] - a[1]) / (b[0] - a[0])


def _default_measure(table: Any, input_shape: tuple[int, ...], parent: nn.Module) -> Measure:
    """Measure on the table's backend and threads: a cut's latency relative to the parent timed beside it, in
    the table's milliseconds (``edgeprune.lut.measure_relative``: robust to the machine's drift)."""
    from edgeprune.lut import measure_relative

    settings = getattr(table, "settings", {}) or {}

    def measure(model: nn.Module) -> float:
        return measure_relative(model, parent, input_shape, table.backend, table.threads, table.parent_ms,
                                processes=settings.get("processes", 3), spin=settings.get("spin", False))  # fmt: skip

    return measure


__all__ = [
    "MODES",
    "PrunePlan",
    "PruneResult",
    "make_budget_plan",
    "floor_plan",
    "make_plan",
    "parse_budget",
    "parse_target",
    "prune",
]
