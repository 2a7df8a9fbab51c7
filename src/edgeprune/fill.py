"""Landing a plan just under its limits: the shapes a plan changes, how far it can go, and how close it gets.

The lottery (``edgeprune.pruning``) narrows ``PlanState``'s shapes one step at a time, each step sized by
``smallest_sufficient`` to stop just under the limits; the floor (every prunable group at the fewest filters
it may keep) refuses an unreachable limit up front (``check_reachable``). The limits a step was not sized
for, a big ``round_to`` or width scaling's rounding leave room a user paid for: ``fill`` gives filters back
while every limit holds (SPEC, filling). A latency limit is judged by measurement: ``fit_latency`` re-plans
against a limit moved by the miss until the measured cut lands at or just under it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from edgeprune.complexity import LayerShape, Profile
from edgeprune.costs import Cost, get_cost
from edgeprune.errors import EdgepruneError, UnreachableError
from edgeprune.graph import ChannelGroup

FILL_ORDER = (
    "one step at a time (round_to channels, or what is left of the group), to the group the complexity weighting "
    "would cut least (the smallest sum of its shares of the budget's costs; ties in execution order), while every "
    "limit holds"
)
FILL_TOLERANCE = 0.01  # a binding limit ends within 1 % under when the granularity allows
LATENCY_TOLERANCE = 0.05  # a measured latency within 5 % under its limit is close enough: stop re-planning


class PlanState:
    """Mutable layer shapes (and parameters outside layers) while the plan is made."""

    def __init__(self, prof: Profile):
        self.prof = prof
        self.shapes: dict[str, LayerShape] = prof.by_name()
        self.other = prof.other_params  # shrinks with a norm no layer owns (ChannelGroup.extra)

    def profile(self) -> Profile:
        """The current shapes as a Profile."""
        return Profile(list(self.shapes.values()), self.prof.input_shape, self.other, liveness=self.prof.liveness)

    def total(self, cost: Cost) -> float:
        """The current total of ``cost``."""
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
        """The total of ``cost`` (now ``current``) after removing (or giving back) ``slots`` of ``group``."""
        new, other = self.changed(group, slots, grow)
        if not cost.additive:  # peak memory is a maximum over the forward pass: recompute it at the new widths
            shapes = list({**self.shapes, **new}.values())
            return cost.total(Profile(shapes, self.prof.input_shape, other, liveness=self.prof.liveness))
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
        if not cost.additive:  # peak memory: the group's share of the activations alive at the peak
            return cost.share(self.profile(), group)
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


def quantum(group: ChannelGroup, round_to: int) -> int:
    """Slots per step of ``round_to`` channels: the group keeps a multiple of ``round_to`` channels."""
    return round_to // math.gcd(round_to, group.unit)


def slot_scores(group: ChannelGroup, scores: dict[str, np.ndarray] | None) -> np.ndarray | None:
    """A criterion's per-channel scores averaged over each slot's channels (as Torch-Pruning does for groups)."""
    if not scores or group.name not in scores:
        return None
    per_channel = np.asarray(scores[group.name], dtype=float)
    if group.unit == 1:
        return per_channel
    return per_channel.reshape(group.unit, group.slots).mean(axis=0)


def _meets(state: PlanState, group: ChannelGroup, slots: list[int], budget: dict[str, float],
           current: dict[str, float], costs: dict[str, Cost]) -> bool:  # fmt: skip
    """True when removing ``slots`` of ``group`` brings every cost of ``budget`` to its limit."""
    return all(state.total_after(group, slots, costs[k], current[k]) <= limit for k, limit in budget.items())


def smallest_sufficient(state: PlanState, group: ChannelGroup, order: list[int], budget: dict[str, float],
                        current: dict[str, float], costs: dict[str, Cost], *, quantum: int = 1) -> int:  # fmt: skip
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


# -- the floor: the smallest network a plan can reach -------------------------------------------------------


def floor_slots(group: ChannelGroup, min_filters: int, round_to: int) -> int:
    """The fewest slots the group may keep: ``min_filters`` channels, rounded up to whole quanta."""
    q = quantum(group, round_to)
    slots = max(1, -(-min_filters // group.unit))
    return -(-slots // q) * q


def prunable_groups(groups: list[ChannelGroup], floors: dict[str, int], round_to: int) -> list[ChannelGroup]:
    """The groups a plan may narrow: prunable, at least one quantum wide, and wider than their floor."""
    return [g for g in groups if g.prunable and g.slots * g.unit >= round_to and g.slots > floors[g.name]]


def floor_state(prof: Profile, prunable: list[ChannelGroup], floors: dict[str, int]) -> PlanState:
    """The shapes with every prunable group cut to its floor (its first ``floors`` slots kept)."""
    state = PlanState(prof)
    for g in prunable:
        state.apply(g, list(range(floors[g.name], g.slots)))
    return state


def check_reachable(budget: dict[str, float], floor: PlanState, how: str, costs: dict[str, Cost]) -> None:
    """Refuse an unreachable combination up front, naming the cost, its smallest reachable value and ``how`` that
    smallest network is made (``floor_text``)."""
    if not budget:
        raise EdgepruneError("no budget given: name at least one cost and its limit")
    for name, limit in budget.items():
        cost = costs[name]
        smallest = floor.total(cost)
        if smallest > limit:
            limit_text, smallest_text = (f"{v:,}" if cost.integer else cost.human(v) for v in (limit, smallest))
            raise UnreachableError(
                f"target {limit_text} {name} is unreachable: the smallest reachable is {smallest_text} {name}, {how}"
            )


def floor_text(groups: list[ChannelGroup], prunable: list[ChannelGroup], floors: dict[str, int], round_to: int) -> str:
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


# -- filling ------------------------------------------------------------------------------------------------


def fill(state: PlanState, prunable: list[ChannelGroup], slots: dict[str, list[int]], budget: dict[str, float],
         costs: dict[str, Cost], current: dict[str, float], *, round_to: int, scores: dict[str, np.ndarray] | None,
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
                back = _restore(removed, n, slot_scores(g, scores), rng)  # which slots: the count decides the cost
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
    return min(quantum(group, round_to), group.slots - kept)


def _restore(removed: list[int], n: int, scores: np.ndarray | None, rng: np.random.Generator) -> list[int]:
    """Pick ``n`` removed slots to give back: at random, or the highest-scoring (ties by index)."""
    if scores is None:
        return sorted(int(i) for i in rng.choice(removed, size=n, replace=False))
    return sorted(sorted(removed, key=lambda i: (-scores[i], i))[:n])


def _slack(state: PlanState, prunable: list[ChannelGroup], slots: dict[str, list[int]], budget: dict[str, float],
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


# -- a measured latency limit -------------------------------------------------------------------------------

Plan = Any  # an edgeprune.pruning.PrunePlan: its table, before and after profiles, and its latency log
Cut = Callable[[Plan], Any]  # a plan -> a fresh copy of the model cut to it
Measure = Callable[[Any], float]  # a pruned model -> its measured latency in ms


def first_limit(table: Any, limit: float, smallest: float) -> float:
    """The table sum to plan the first cut at: where the table's calibration puts the middle of the 5 % window.

    A target under the calibration's smallest network (every prunable group at its floor, measured) is refused,
    and so is one under the smallest network these settings allow (``smallest``, its table sum; more filters
    kept or residual channels left whole make it larger), by the calibration's prediction of it.
    """
    floor = getattr(table, "floor_ms", None)
    if floor is None:  # no calibration: the table's sum is the best guess there is
        return limit
    if limit < floor:
        raise UnreachableError(
            f"target {limit:.3f} ms latency is unreachable on {table.backend}: the smallest network (every prunable "
            f"layer at its floor, round_to {table.round_to}) measured {floor:.3f} ms"
        )
    if limit < table.calibrated(smallest):
        raise UnreachableError(
            f"target {limit:.3f} ms latency is unreachable with these settings: the smallest network they allow "
            f"(minimum filters, round_to, residual channels) is predicted at {table.calibrated(smallest):.3f} ms"
        )
    return max(table.table_ms_for(limit * (1 - LATENCY_TOLERANCE / 2)), smallest)


def _predicted(plan: Plan) -> tuple[float, float]:
    """A plan's latency by the table: its table sum and that sum calibrated (the prediction of the measurement)."""
    table_ms = get_cost("latency", plan.table).total(plan.after)
    calibrated = getattr(plan.table, "calibrated", None)
    return table_ms, (calibrated(table_ms) if calibrated else table_ms)


def fit_latency(plan: Plan, pruned: Any, limits: dict[str, float], planned: float, *,
                plan_for: Callable[[dict[str, float]], Plan], cut: Cut, measure: Measure,
                attempts: int) -> tuple[Plan, Any]:  # fmt: skip
    """Measure the cut model; re-plan against a limit moved by the miss (SPEC) until it lands at or just under.

    Each measured cut is a point (table sum, measured latency); the parent and the table's calibration networks
    make the curve they are read against. The next planning limit aims 2.5 % under the limit (``_next_limit``:
    a secant step), never under the calibration's smallest network: a table that is off by a factor or an
    offset is corrected in one or two cuts. The best attempt that meets the limit wins (the last one when none
    does, reported as missed). ``cut`` makes a fresh cut model of a re-plan.
    """
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        raise EdgepruneError(f"attempts must be a positive integer, got {attempts!r}")
    limit = limits["latency"]
    parent = get_cost("latency", plan.table).total(plan.before)
    curve = [(parent, float(getattr(plan.table, "parent_ms", parent)))]  # (table sum, measured)
    curve += [(float(a), float(b)) for a, b in getattr(plan.table, "calibration", [])]
    cuts: list[tuple[float, float]] = []
    log: list[dict] = []
    best = last = None
    for i in range(attempts):
        if i:
            try:
                plan = plan_for({**limits, "latency": planned})
            except EdgepruneError as e:  # the moved limit is out of reach: keep what was measured
                log.append({"planned_ms": planned, "error": str(e)})
                break
            pruned = cut(plan)
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


__all__ = [
    "FILL_ORDER",
    "FILL_TOLERANCE",
    "LATENCY_TOLERANCE",
    "Measure",
    "PlanState",
    "check_reachable",
    "fill",
    "first_limit",
    "fit_latency",
    "floor_slots",
    "floor_state",
    "floor_text",
    "prunable_groups",
    "quantum",
    "slot_scores",
    "smallest_sufficient",
]
