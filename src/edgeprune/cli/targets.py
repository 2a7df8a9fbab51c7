"""``--target``: one spelling in every command, ``[COST=]VALUE``, given once with several values or repeated.

In ``prune`` every ``COST=VALUE`` is a limit the one pruned model meets at once (``--mode M`` names the cost of
a plain VALUE); in ``compare`` each mode gets its own run, so ``MODE=VALUE`` is that mode's target and a plain
VALUE is every mode's (limits every run meets besides are ``--also COST=VALUE``, as in ``sweep``).
"""

from __future__ import annotations

import argparse

from edgeprune.errors import EdgepruneError


def target(help: str, *, several: bool = False) -> argparse.ArgumentParser:
    """``--target [COST=]VALUE``, repeatable; with ``several`` one ``--target a b`` is ``--target a --target b`` too.

    prune takes one value per ``--target`` (as it always has: ``prune --target 0.5 MODEL`` stays unambiguous).
    """
    p = argparse.ArgumentParser(add_help=False)
    if several:
        p.add_argument("--target", required=True, action="extend", nargs="+", metavar="[COST=]VALUE", help=help)
    else:
        p.add_argument("--target", required=True, action="append", metavar="[COST=]VALUE", help=help)
    return p


def prune_budget(mode: str | None, items: list[str]) -> dict[str, str]:
    """``--mode M --target T`` or repeated ``--target COST=VALUE`` -> {cost: limit}."""
    from edgeprune.costs import check_cost

    if mode is not None:
        check_cost(mode)
        if len(items) != 1 or "=" in items[0]:
            raise EdgepruneError("--mode takes one plain --target; for several limits drop --mode and use COST=VALUE")
        return {mode: items[0]}
    budget: dict[str, str] = {}
    for item in items:
        cost, sep, value = item.partition("=")
        if not sep:
            raise EdgepruneError(f"--target {item}: name its cost (flops={item}) or give --mode")
        check_cost(cost)
        if cost in budget:
            raise EdgepruneError(f"--target gives {cost} twice")
        budget[cost] = value
    return budget


def mode_targets(items: list[str], modes: list[str]) -> dict[str, str]:
    """``['0.5']`` or ``['params=0.2', 'flops=0.1']`` -> a target per mode."""
    from edgeprune.costs import check_cost as check_mode

    for mode in modes:
        check_mode(mode)
    if len(items) == 1 and "=" not in items[0]:
        return {mode: items[0] for mode in modes}
    targets = {}
    for item in items:
        mode, sep, value = item.partition("=")
        if not sep:
            raise EdgepruneError(f"--target '{item}': give one value for all modes, or MODE=T for each")
        check_mode(mode)
        targets[mode] = value
    missing = [m for m in modes if m not in targets]
    if missing:
        raise EdgepruneError(f"--target gives no value for mode(s) {', '.join(missing)}")
    return {m: targets[m] for m in modes}


def also_budget(items: list[str]) -> dict[str, str]:
    """``--also COST=VALUE ...`` -> {cost: limit} (empty when none)."""
    return prune_budget(None, items) if items else {}
