"""What ``compare`` refuses before any work: settings no run can use, each a one-line error.

Split from ``edgeprune.pipelines`` (which holds the settings and the runs); the settings are taken as any object
with ``CompareSettings``' fields, as ``edgeprune.records`` takes them.
"""

from __future__ import annotations

from typing import Any

from edgeprune.costs import STATIC
from edgeprune.errors import EdgepruneError
from edgeprune.io import is_folder_ref
from edgeprune.pruning import check_seed
from edgeprune.records import CONVENTIONAL
from edgeprune.search import KINDS, get_proxy
from edgeprune.train.distill import Distill

BASELINES = ("l1", "nuclear", "uniform", "unweighted")
AT_INIT_BASELINES = ("uniform", "unweighted")


def check_settings(settings: Any) -> None:
    """One-line errors for settings (a ``CompareSettings``) no run can use, before any work."""
    if settings.time_matched and not set(settings.baselines) & set(CONVENTIONAL):
        raise EdgepruneError("time-matched training needs a conventional pipeline (l1 or nuclear) among the baselines")
    if settings.matched_also and not settings.time_matched:
        raise EdgepruneError("--time-matched-also needs --time-matched")
    if stray := [m for m in settings.matched_also if m not in AT_INIT_BASELINES or m not in settings.baselines]:
        raise EdgepruneError(f"--time-matched-also {' '.join(stray)}: name baselines pruned at initialisation that run "
                             f"(uniform, unweighted, among --baselines)")  # fmt: skip
    if not settings.seeds:
        raise EdgepruneError("no seeds given")
    for seed in settings.seeds:
        check_seed(seed)
    unknown = set(settings.baselines) - set(BASELINES)
    if unknown:
        raise EdgepruneError(f"unknown baseline(s) {sorted(unknown)}; choose from: {', '.join(BASELINES)}")
    if not settings.targets:
        raise EdgepruneError("no modes given")
    for mode in [*settings.targets, *settings.also]:
        if mode not in STATIC:  # a comparison prunes to proxy costs; latency needs a table and a device
            raise EdgepruneError(f"unknown mode '{mode}'; choose from: {', '.join(STATIC)}")
    if settings.candidates != 1 or tuple(settings.candidate_kinds) != ("weighted",):
        _check_search(settings)
    if settings.distill:
        Distill(settings.distill_alpha, settings.distill_temperature).validate()
    if is_folder_ref(settings.model):
        raise EdgepruneError(f"{settings.model}: compare trains from scratch; give a zoo name or a model reference")


def _check_search(s: Any) -> None:
    """One-line errors for search settings no search can use."""
    if isinstance(s.candidates, bool) or not isinstance(s.candidates, int) or s.candidates < 1:
        raise EdgepruneError(f"candidates must be a positive integer, got {s.candidates!r}")
    unknown = [k for k in s.candidate_kinds if k not in KINDS] or ([] if s.candidate_kinds else [""])
    if unknown:
        raise EdgepruneError(f"unknown candidate kind '{unknown[0]}'; choose from: {', '.join(KINDS)}")
    get_proxy(s.proxy)
    if not 0 < s.proxy_holdout < 1:
        raise EdgepruneError(f"proxy holdout must be a fraction between 0 and 1, got {s.proxy_holdout!r}")


__all__ = ["BASELINES", "check_settings"]
