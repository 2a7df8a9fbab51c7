"""Algorithm 1's loop on recorded shapes: the weighted lottery, and width scaling's one ratio for all.

``edgeprune.pruning.make_budget_plan`` sets a plan up (floors, streams, the check that the budget is reachable)
and makes the ``PrunePlan`` from what these leave: the slots each group keeps, the steps drawn, the shapes after.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edgeprune.complexity import Profile
from edgeprune.costs import Cost
from edgeprune.fill import PlanState, quantum, slot_scores, smallest_sufficient
from edgeprune.graph import ChannelGroup


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


def group_weights(weight: Callable[[ChannelGroup, str], float], active: list[ChannelGroup], over: dict[str, float],
             totals: dict[str, float], selection: str) -> np.ndarray:  # fmt: skip
    """Each group's lottery weight: its complexity in the one cost over its limit (Algorithm 1 exactly), or the sum
    of its shares of every cost still over its limit (SPEC, multi-budget). ``weight(group, cost)``: its complexity."""
    if selection == "uniform":
        return np.ones(len(active))
    if len(over) == 1:
        (cost,) = over
        weights = np.array([weight(g, cost) for g in active], dtype=float)
    else:
        weights = np.array([sum(weight(g, k) / totals[k] for k in over) for g in active], dtype=float)
    return weights if weights.sum() > 0 else np.ones(len(active))


class Lottery:
    """Algorithm 1's loop: draw a group, remove a step of its filters, until every limit holds."""

    def __init__(self, state: PlanState, prunable: list[ChannelGroup], floors: dict[str, int], *,
                 slots: dict[str, list[int]], budget: dict[str, float], costs: dict[str, Cost], step: float,
                 round_to: int, selection: str):  # fmt: skip
        self.state, self.prunable, self.floors, self.slots = state, prunable, floors, slots
        self.budget, self.costs, self.step, self.round_to, self.selection = budget, costs, step, round_to, selection
        self.totals = {k: costs[k].total(state.prof) for k in budget}
        self.current = dict(self.totals)
        self.steps: list[Step] = []
        self.bound_last: list[str] = []  # the costs still over their limits before the last step
        self.mode = next(iter(budget))
        # A group's weight in an additive cost changes only when a step resizes one of its filter layers: keep it
        # until then (every active group is weighed at every step). ``touches``: the groups a group's cut resizes.
        self.known: dict[tuple[str, str], float] = {}
        self.touches = {g.name: [h.name for h in prunable if {m.layer for m in g.members} & set(h.out_layers)]
                        for g in prunable}  # fmt: skip

    def weight(self, group: ChannelGroup, cost: str) -> float:
        """The group's complexity in ``cost`` now (``PlanState.weight``), remembered for an additive cost."""
        if not self.costs[cost].additive:  # peak memory: a group's share moves with every other group's cut
            return self.state.weight(group, self.costs[cost])
        key = (group.name, cost)
        if key not in self.known:
            self.known[key] = self.state.weight(group, self.costs[cost])
        return self.known[key]

    def run(self, lottery: np.random.Generator, picker: np.random.Generator,
            scores: dict[str, np.ndarray] | None) -> None:  # fmt: skip
        """Draw until every cost is at or under its limit."""
        while any(self.current[k] > limit for k, limit in self.budget.items()):
            self.draw(lottery, picker, scores)

    def draw(self, lottery: np.random.Generator, picker: np.random.Generator,
             scores: dict[str, np.ndarray] | None) -> None:  # fmt: skip
        """One step: pick a group by its weight, remove the fewest of its filters that the step allows, log it."""
        state, slots, costs = self.state, self.slots, self.costs
        over = {k: limit for k, limit in self.budget.items() if self.current[k] > limit}
        self.bound_last = list(over)
        active = [g for g in self.prunable if len(slots[g.name]) > self.floors[g.name]]
        weights = group_weights(self.weight, active, over, self.totals, self.selection)
        probs = weights / weights.sum()
        pick = int(lottery.choice(len(active), p=probs))
        group = active[pick]
        remaining = slots[group.name]
        q = quantum(group, self.round_to)
        keep = max(self.floors[group.name], (len(remaining) - max(1, round(self.step * len(remaining)))) // q * q)
        n = len(remaining) - keep
        # Groups are uniform (graph.find_groups): which slots go does not change the count, so size the step first.
        n = smallest_sufficient(state, group, remaining[:n], over, self.current, costs, quantum=q)
        removed = choose(remaining, n, slot_scores(group, scores), picker)
        gone = set(removed)
        slots[group.name] = [i for i in remaining if i not in gone]
        self.current = {k: state.total_after(group, removed, costs[k], self.current[k]) for k in self.budget}
        state.apply(group, removed)
        for name in self.touches[group.name]:
            for k in self.budget:
                self.known.pop((name, k), None)
        width = len(remaining) * group.unit
        exact = len(over) == 1 and self.selection != "uniform" and costs[next(iter(over))].integer
        weight = int(weights[pick]) if exact else float(weights[pick])
        self.steps.append(
            Step(len(self.steps) + 1, group.name, weight, float(probs[pick]), group.channels(removed),
                 width - len(removed) * group.unit, self.current[self.mode])
        )  # fmt: skip


def ratio_plan(
    prof: Profile,
    prunable: list[ChannelGroup],
    budget: dict[str, float],
    *,
    scores: dict[str, np.ndarray] | None,
    floors: dict[str, int],
    rng: np.random.Generator,
    slots: dict[str, list[int]],
    round_to: int,
    costs: dict[str, Cost],
) -> tuple[PlanState, float]:
    """Remove the same fraction r of every prunable group's filters, r the smallest that meets every limit.

    ``slots`` (the slots each group keeps) is narrowed in place; returned: the shapes after, and r.

    This is uniform width scaling when filters are chosen at random at initialisation, and the
    usual uniform per-layer ratio of ranking-based pruning when they are chosen by a criterion.
    """

    def count(g: ChannelGroup, ratio: float) -> int:
        removed, q = round(ratio * g.slots), quantum(g, round_to)
        if q == 1:
            return min(removed, g.slots - floors[g.name])
        keep = -(-(g.slots - removed) // q) * q  # rounded up to whole quanta: the ratio is a lower bound
        return g.slots - min(g.slots, max(floors[g.name], keep))

    def shapes_at(ratio: float) -> tuple[PlanState, dict[str, int]]:
        state = PlanState(prof)
        counts = {g.name: count(g, ratio) for g in prunable}
        for g in prunable:
            state.apply(g, list(range(counts[g.name])))
        return state, counts

    def fits(state: PlanState) -> bool:
        return all(state.total(costs[k]) <= limit for k, limit in budget.items())

    lo, hi = 0.0, 1.0  # the totals at ratio 1 are the floors, which were checked against the budget
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if fits(shapes_at(mid)[0]) else (mid, hi)
    state, counts = shapes_at(hi)
    after_shapes = PlanState(prof)
    for g in prunable:
        removed = set(choose(slots[g.name], counts[g.name], slot_scores(g, scores), rng))
        slots[g.name] = [i for i in slots[g.name] if i not in removed]
        after_shapes.apply(g, sorted(removed))
    return after_shapes, hi


def choose(remaining: list[int], n: int, scores: np.ndarray | None, rng: np.random.Generator) -> list[int]:
    """Pick ``n`` slots to remove: at random, or the lowest-scoring (ties by index)."""
    if scores is None:
        return sorted(int(i) for i in rng.choice(remaining, size=n, replace=False))
    return sorted(sorted(remaining, key=lambda i: (scores[i], i))[:n])


__all__ = ["Lottery", "Step", "choose", "group_weights", "ratio_plan"]
