"""The best network that fits: K candidate plans for one budget, ranked by a proxy (SPEC, "Candidates").

A candidate is one plan of Algorithm 1 that meets every limit of the budget: ``weighted`` (the paper's
lottery) with seeds ``s, s+1, ..., s+K-1``, and, when asked for, ``uniform`` (its unweighted lottery, the
same seeds) and ``ratio`` (width scaling, one plan: its widths do not depend on the seed). A proxy maps a
candidate to a number, higher is better; the candidate it ranks first is kept, ties going to the one drawn
first (the lower seed). K = 1 is no search at all: Algorithm 1's plan, as ``edgeprune.prune`` always made it.

Proxies, one class each, registered in ``PROXIES`` (adding one is a class here plus its entry):

- ``flops`` / ``params``: most FLOPs (MACs) / parameters kept. The baseline a proxy must beat to be worth
  its cost (SPEC: Spearman correlation with final accuracy over >= 16 trained candidates of one budget).
- ``synflow``: SynFlow (Tanaka et al. 2020), data-free: with every weight replaced by its absolute value and
  an all-ones input, R = sum of the outputs; score = log sum over conv/linear weights of |w * dR/dw|. In
  float64, norm layers in inference mode (at initialisation an identity), as Abdelfattah et al. (2021,
  "Zero-Cost Proxies for Lightweight NAS") ran it; it was their best single zero-cost proxy.
- ``naswot``: NASWOT (Mellor et al. 2021): each image's binary code of which units are active (the sign of
  every conv/linear layer's output after its norm, which is the ReLU pattern in a ReLU network); with
  K[i, j] = units where images i and j agree, score = log |det K|. Networks that keep inputs apart score high.
- ``gradnorm``: the summed L2 norms of the conv/linear weights' gradients of the cross-entropy on one batch of
  training images (Abdelfattah et al. 2021). Needs labelled training images.
- ``train:STEPS``: each candidate trained ``STEPS`` optimiser steps (``edgeprune.train.TrainStep``, the same
  batches and augmentation for every candidate) on part of the training split and ranked by its accuracy on
  the rest of the training split. The test split is never read.

The zero-cost scores take about a second per candidate on a CPU for a CIFAR network; ``train:STEPS`` costs
STEPS training steps per candidate, reported as the search's seconds.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._pytree import tree_leaves

from edgeprune import cluster, pruning
from edgeprune.cluster import RayOptions
from edgeprune.complexity import Profile
from edgeprune.costs import Budget, LayerTimes, get_cost, totals
from edgeprune.data import ImageDataset, Normalizer, center_crop, check_compatible, holdout
from edgeprune.errors import EdgepruneError
from edgeprune.graph import ChannelGroup
from edgeprune.latency import Measure, default_measure
from edgeprune.pruning import (
    SELECTIONS,
    PruneJob,
    PrunePlan,
    PruneResult,
    PruneSettings,
    apply_plan,
    check_seed,
    make_budget_plan,
)
from edgeprune.train import TrainConfig, TrainStep, evaluate, lr_at

KINDS = SELECTIONS  # weighted = Algorithm 1, uniform = its unweighted lottery, ratio = width scaling
DEFAULT_TRAIN_STEPS = 200
MAX_TRAIN_STEPS = 100_000


@dataclass
class ProxyContext:
    """What a proxy may use besides the candidate: the input shape, training images, a seed, a device."""

    input_shape: tuple[int, ...]
    data: ImageDataset | None = None
    seed: int = 0
    batch: int = 64  # images for the zero-cost scores (NASWOT's kernel is batch x batch)
    holdout: float = 0.1  # the share of the training split the short-training proxy ranks on
    train_batch: int = 128
    device: str = "cpu"
    _split: ImageDataset | None = field(default=None, repr=False)

    def inputs(self, n: int) -> torch.Tensor:
        """``n`` training images, normalised as training does (the same for every candidate); random normal ones
        when there is no data set."""
        if self.data is None:
            return torch.randn(n, *self.input_shape, generator=torch.Generator().manual_seed(self.seed))
        x, _ = self.labelled(n)
        return x

    def labelled(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` normalised training images and their labels (a seeded draw, never the test split)."""
        data = self._need_data("this proxy")
        idx = torch.randperm(len(data.train_y), generator=torch.Generator().manual_seed(self.seed))[:n]
        _, h, w = data.input_shape()  # resized sets store training images larger than the model's input
        x = Normalizer(data.mean, data.std)(center_crop(data.train_x[idx], h, w)).contiguous()
        return x, data.train_y[idx]

    def split(self) -> ImageDataset:
        """The training split cut in two: ``train`` the part to train on, ``test`` the held-out training images."""
        if self._split is None:
            self._split = holdout_split(self._need_data("the short-training proxy"), self.holdout, self.seed)
        return self._split

    def _need_data(self, who: str) -> ImageDataset:
        if self.data is None:
            raise EdgepruneError(f"{who} needs training images: pass data= (the CLI's --data)")
        if tuple(self.data.input_shape()) != tuple(self.input_shape):
            shape = "x".join(map(str, self.data.input_shape()))
            raise EdgepruneError(f"the data set's {shape} images do not fit the model's {self.input_shape} input")
        return self.data


def holdout_split(data: ImageDataset, fraction: float = 0.1, seed: int = 0) -> ImageDataset:
    """``data``'s training split as a data set of its own: a seeded ``fraction`` held out (stratified per class) as
    its test split, the split ``--val-fraction`` makes (``edgeprune.data.holdout``)."""
    return holdout(data, fraction, seed)


# -- proxies --------------------------------------------------------------------------------------------


class Proxy:
    """A score of a candidate network, higher is better."""

    name: ClassVar[str]
    help: ClassVar[str]  # one line for --help
    needs_model: ClassVar[bool] = True  # False: the plan's costs are enough, nothing is cut
    needs_data: ClassVar[bool] = False  # True: labelled training images

    @property
    def spec(self) -> str:
        """The name this proxy is given by (``train:300`` for a short training)."""
        return self.name

    def check(self, ctx: ProxyContext) -> None:
        """Refuse up front what would fail on the first candidate."""
        if self.needs_data:
            ctx._need_data(f"proxy '{self.spec}'")

    def score(self, model: nn.Module | None, candidate: Candidate, ctx: ProxyContext) -> float:
        """The candidate's score; ``model`` is its cut network (a copy the proxy may change), None when not needed."""
        raise NotImplementedError


class FlopsKept(Proxy):
    """Most FLOPs (MACs) kept: the plain baseline."""

    name = "flops"
    help = "most FLOPs (MACs) kept: the plain baseline every other proxy must beat"
    needs_model = False

    def score(self, model: nn.Module | None, candidate: Candidate, ctx: ProxyContext) -> float:
        """The candidate's multiply-adds."""
        return float(candidate.costs["flops"])


class ParamsKept(Proxy):
    """Most parameters kept."""

    name = "params"
    help = "most parameters kept"
    needs_model = False

    def score(self, model: nn.Module | None, candidate: Candidate, ctx: ProxyContext) -> float:
        """The candidate's parameters."""
        return float(candidate.costs["params"])


def _weights(model: nn.Module) -> list[nn.Parameter]:
    """The conv and linear weights (what the zero-cost proxies sum over)."""
    return [m.weight for m in model.modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]


def _output_sum(out: object) -> torch.Tensor:
    """The sum of every tensor a model returns (a tensor, a tuple, a dict...)."""
    leaves = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if not leaves:
        raise EdgepruneError("the model returns no floating-point tensor to score")
    return sum(t.sum() for t in leaves)  # type: ignore[return-value]


class SynFlow(Proxy):
    """SynFlow (Tanaka et al. 2020): log of sum |w * dR/dw|, R the output of the all-ones input with |weights|."""

    name = "synflow"
    help = "SynFlow (Tanaka et al. 2020), data-free, zero-cost: synaptic flow through |weights| from an all-ones input"

    def score(self, model: nn.Module | None, candidate: Candidate, ctx: ProxyContext) -> float:
        """log sum over conv/linear weights of |w * dR/dw|, in float64 with norms in inference mode."""
        assert model is not None
        net = model.double().eval()  # float64: the flow multiplies |weights| over the whole depth
        with torch.no_grad():
            for tensor in net.state_dict().values():
                if tensor.is_floating_point():
                    tensor.abs_()
        net.zero_grad(set_to_none=True)
        with torch.enable_grad():
            _output_sum(net(torch.ones(1, *ctx.input_shape, dtype=torch.float64))).backward()
        flow = sum(float((w.detach() * w.grad).abs().sum()) for w in _weights(net) if w.grad is not None)
        return math.log(flow) if flow > 0 and math.isfinite(flow) else (math.inf if flow > 0 else -math.inf)


class NASWOT(Proxy):
    """NASWOT (Mellor et al. 2021): log |det K| of the images' activation-pattern agreement kernel."""

    name = "naswot"
    help = ("NASWOT (Mellor et al. 2021), zero-cost: how differently a batch of images activates the network "
            "(training images with --data, else random ones)")  # fmt: skip

    def score(self, model: nn.Module | None, candidate: Candidate, ctx: ProxyContext) -> float:
        """log |det K|, K[i, j] = units whose sign agrees between images i and j, over every hidden layer."""
        assert model is not None
        x = ctx.inputs(ctx.batch)
        kernel = torch.zeros(len(x), len(x), dtype=torch.float64)
        modules = dict(model.named_modules())
        outputs = set(candidate.plan.before.outputs)
        points = [layer.bn or layer.name for layer in candidate.plan.after.layers if layer.name not in outputs]

        def hook(_module: nn.Module, _args: tuple, out: object) -> None:
            if isinstance(out, torch.Tensor):
                # agreements = units - actives_i - actives_j + 2 * both active: one matmul, exact in float32
                # below 2**24 units per image
                codes = (out.detach().flatten(1) > 0).float()
                active = codes.sum(1, dtype=torch.float64)
                both = (codes @ codes.T).double()
                kernel.add_(codes.shape[1] - active[:, None] - active[None, :] + 2 * both)

        handles = [modules[p].register_forward_hook(hook) for p in dict.fromkeys(points) if p in modules]
        try:
            with torch.no_grad():
                model.eval()(x)
        finally:
            for h in handles:
                h.remove()
        sign, logdet = torch.linalg.slogdet(kernel)
        return float(logdet) if sign > 0 else -math.inf


class GradNorm(Proxy):
    """Gradient norm at initialisation (Abdelfattah et al. 2021)."""

    name = "gradnorm"
    help = "sum of the conv/linear weights' gradient norms of the loss on one batch of training images (needs --data)"
    needs_data = True

    def score(self, model: nn.Module | None, candidate: Candidate, ctx: ProxyContext) -> float:
        """Sum over conv/linear weights of ||dL/dw||, L the cross-entropy of one batch of training images."""
        assert model is not None
        x, y = ctx.labelled(ctx.batch)
        model.train().zero_grad(set_to_none=True)
        with torch.enable_grad():
            out = model(x)
            if not isinstance(out, torch.Tensor) or out.ndim != 2:
                raise EdgepruneError("proxy 'gradnorm' needs a classification model with one (N, classes) output")
            F.cross_entropy(out, y).backward()
        return sum(float(w.grad.norm()) for w in _weights(model) if w.grad is not None)


class ShortTraining(Proxy):
    """A few hundred training steps, ranked on held-out training images."""

    name = "train"
    help = (
        f"train:STEPS: each candidate trained STEPS steps (default {DEFAULT_TRAIN_STEPS}) on part of the "
        "training split, ranked on the held-out rest of it (needs --data; the test split is never read)"
    )
    needs_data = True

    def __init__(self, steps: int = DEFAULT_TRAIN_STEPS):
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_TRAIN_STEPS:
            raise EdgepruneError(f"train:STEPS needs STEPS from 1 to {MAX_TRAIN_STEPS:,}, got {steps!r}")
        self.steps = steps

    @property
    def spec(self) -> str:
        """``train:STEPS``."""
        return f"{self.name}:{self.steps}"

    def check(self, ctx: ProxyContext) -> None:
        """Refuse a missing or too small data set up front."""
        super().check(ctx)
        ctx.split()

    def score(self, model: nn.Module | None, candidate: Candidate, ctx: ProxyContext) -> float:
        """Accuracy on the held-out training images after ``steps`` steps (the same batches for every candidate)."""
        assert model is not None
        split = ctx.split()
        check_compatible(model, split)
        n = len(split.train_y)
        config = TrainConfig(epochs=1, batch_size=min(ctx.train_batch, n), seed=ctx.seed).validate()
        torch.manual_seed(ctx.seed)  # dropout
        stepper = TrainStep(model, split, config, torch.Generator().manual_seed(ctx.seed), torch.device(ctx.device))
        order = torch.Generator().manual_seed(ctx.seed + 1)
        warmup = min(round(0.1 * self.steps), int(0.3 * self.steps))
        for step in range(self.steps):
            index = torch.randperm(n, generator=order)[: config.batch_size]
            loss, _ = stepper(index, lr_at(step, self.steps, warmup, config.peak_lr, config.schedule))
            if not torch.isfinite(loss):
                return -math.inf  # diverged: the worst score, the search goes on
        return evaluate(stepper.model, split)  # split.test_* are held-out training images


PROXIES: dict[str, type[Proxy]] = {p.name: p for p in (FlopsKept, ParamsKept, SynFlow, NASWOT, GradNorm, ShortTraining)}


def get_proxy(spec: str | Proxy) -> Proxy:
    """The proxy called ``spec`` (``flops``, ``synflow``, ``train:300``...)."""
    if isinstance(spec, Proxy):
        return spec
    name, _, arg = str(spec).partition(":")
    if name not in PROXIES:
        raise EdgepruneError(f"unknown proxy '{spec}'; choose from: {', '.join(proxy_names())}")
    if name == ShortTraining.name:
        if arg and not arg.isdigit():
            raise EdgepruneError(f"proxy '{spec}': STEPS must be a whole number, e.g. train:300")
        return ShortTraining(int(arg) if arg else DEFAULT_TRAIN_STEPS)
    if arg:
        raise EdgepruneError(f"proxy '{name}' takes no ':' argument, got '{spec}'")
    return PROXIES[name]()


def proxy_names() -> list[str]:
    """Every proxy as it is named (``train:STEPS`` for the short training)."""
    return [f"{n}:STEPS" if n == ShortTraining.name else n for n in PROXIES]


def proxy_help() -> str:
    """One line per proxy, for --help."""
    return "; ".join(f"{p.name}: {p.help}" for p in PROXIES.values())


# -- candidates -----------------------------------------------------------------------------------------


@dataclass
class Candidate:
    """One plan that meets the budget, its costs, and how the proxy ranked it."""

    kind: str  # the selection that drew it: weighted, uniform or ratio
    seed: int
    plan: PrunePlan
    costs: dict[str, float]  # every cost's total after the cut, by cost name
    score: float | None = None
    rank: int | None = None  # 1 = kept
    seconds: float = 0.0  # planning + cutting + scoring

    def widths(self) -> dict:
        """A summary of the widths: channels kept over the prunable groups, the narrowest and widest group."""
        groups = [g for g in self.plan.groups if g.prunable]
        kept = [len(self.plan.keep[g.name]) / g.width for g in groups]
        return {
            "channels_kept": sum(len(self.plan.keep[g.name]) for g in groups),
            "channels": sum(g.width for g in groups),
            "narrowest_group": min(kept) if kept else 1.0,
            "widest_group": max(kept) if kept else 1.0,
        }

    def to_dict(self, kept: bool = False) -> dict:
        """One row of the report's candidate table."""
        return {"kind": self.kind, "seed": self.seed, "widths": self.widths(), "costs": self.costs,
                "score": self.score, "rank": self.rank, "kept": kept, "seconds": round(self.seconds, 3)}  # fmt: skip


@dataclass
class SearchResult:
    """The candidates in the order drawn, the one kept, the proxy and the search's seconds."""

    kept: Candidate
    candidates: list[Candidate]
    proxy: str
    seconds: float
    inputs: str  # what the proxy read: nothing, random inputs, training images, a held-out split

    def to_dict(self) -> dict:
        """The report's ``search`` section."""
        return {
            "proxy": self.proxy,
            "inputs": self.inputs,
            "kept": {"kind": self.kept.kind, "seed": self.kept.seed, "score": self.kept.score},
            "ties": "go to the candidate drawn first (kinds in the order given, lower seed first)",
            "seconds": round(self.seconds, 3),
            "candidates": [c.to_dict(c is self.kept) for c in self.candidates],
        }


def _check_search(k: int, kinds: Sequence[str]) -> tuple[str, ...]:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise EdgepruneError(f"candidates must be a positive integer, got {k!r}")
    kinds = tuple(dict.fromkeys(kinds))
    unknown = [kind for kind in kinds if kind not in KINDS]
    if unknown or not kinds:
        name = unknown[0] if unknown else ""
        raise EdgepruneError(f"unknown candidate kind '{name}'; choose from: {', '.join(KINDS)}")
    return kinds


def draw_candidates(prof: Profile, groups: list[ChannelGroup], budget: dict[str, float], k: int = 1,
                    kinds: Sequence[str] = ("weighted",), seed: int = 0, *, step: float = 0.1,
                    scores: dict[str, np.ndarray] | None = None, min_filters: int = 1, round_to: int = 1,
                    table: LayerTimes | None = None, fill: bool = False) -> list[Candidate]:  # fmt: skip
    """K plans per lottery kind (seeds ``seed .. seed+K-1``) and one width-scaling plan, each meeting ``budget``."""
    kinds = _check_search(k, kinds)
    check_seed(seed + k - 1, "seed + candidates - 1")
    costs = {name: get_cost(name, table) for name in budget}
    out = []
    for kind in kinds:
        for s in range(seed, seed + (1 if kind == "ratio" else k)):
            t0 = time.perf_counter()
            plan = make_budget_plan(prof, groups, budget, step=step, seed=s, scores=scores, min_filters=min_filters,
                                    selection=kind, round_to=round_to, table=table, fill=fill)  # fmt: skip
            missed = [n for n, limit in budget.items() if costs[n].total(plan.after) > limit]
            if missed:  # make_budget_plan never returns such a plan; a candidate is only ever one that fits
                raise EdgepruneError(f"candidate {kind} seed {s} misses its {missed[0]} limit")
            after = totals(plan.after, table)
            by_name = {name: after[get_cost(name, table).key] for name in _cost_names(table)}
            out.append(Candidate(kind, s, plan, by_name, seconds=time.perf_counter() - t0))
    return out


def _cost_names(table: LayerTimes | None) -> list[str]:
    return ["params", "flops", "memory", "energy", *(["latency"] if table is not None else [])]


def cut_candidate(model: nn.Module, plan: PrunePlan, example: torch.Tensor) -> nn.Module:
    """A copy of ``model`` cut to ``plan`` (the model is left as it is)."""
    return apply_plan(copy.deepcopy(model), plan, example)


def rank(candidates: list[Candidate]) -> Candidate:
    """Set every candidate's rank by score, higher first, ties to the one drawn first; return the first."""
    order = sorted(range(len(candidates)), key=lambda i: (-_sortable(candidates[i].score), i))
    for r, i in enumerate(order, 1):
        candidates[i].rank = r
    return candidates[order[0]]


def _sortable(score: float | None) -> float:
    """NaN and missing scores rank last."""
    return -math.inf if score is None or math.isnan(score) else score


def search(model: nn.Module, prof: Profile, budget: dict[str, float], *, k: int = 1,
           kinds: Sequence[str] = ("weighted",), proxy: str | Proxy = "flops", seed: int = 0,
           data: ImageDataset | None = None, example: torch.Tensor | None = None, step: float = 0.1,
           scores: dict[str, np.ndarray] | None = None, min_filters: int = 1, round_to: int = 1,
           table: LayerTimes | None = None, fill: bool = False, device: str = "cpu", ray: RayOptions | None = None,
           holdout: float = 0.1) -> SearchResult:  # fmt: skip
    """Draw the candidates for ``budget`` on ``model``'s analysed profile, score each with ``proxy``, keep the best.

    ``prof`` is ``edgeprune.graph.analyse``'s profile of ``model`` (its groups included); ``data`` is the training
    images the data-driven proxies read (the training split only; ``holdout`` of it is what ``train:STEPS`` ranks
    on). With ``ray`` each candidate is cut and scored in a Ray task (``edgeprune.cluster``: a local instance or
    a cluster), as ``compare``'s runs are.
    """
    t0 = time.perf_counter()
    chosen = get_proxy(proxy)
    example = example if example is not None else torch.zeros(1, *prof.input_shape)
    ctx = ProxyContext(tuple(example.shape[1:]), data, seed, holdout=holdout, device=device)
    chosen.check(ctx)
    _check_search(k, kinds)
    found = draw_candidates(prof, prof.groups, budget, k, kinds, seed, step=step, scores=scores,
                            min_filters=min_filters, round_to=round_to, table=table, fill=fill)  # fmt: skip
    if ray is not None and chosen.needs_model:
        scored = _scores_on_ray(model, found, chosen, ctx, example, ray)
    else:
        scored = [_score_one(model, cand, chosen, ctx, example) for cand in found]
    for cand, (score, seconds) in zip(found, scored, strict=True):
        cand.score, cand.seconds = score, cand.seconds + seconds
    kept = rank(found)
    return SearchResult(kept, found, chosen.spec, time.perf_counter() - t0, _inputs(chosen, ctx))


def prune(model: nn.Module, mode: str | None = None, target: str | float | None = None, *,
          budget: Budget | Mapping[str, str | float] | None = None, candidates: int = 1,
          candidate_kinds: Sequence[str] | None = None, proxy: str | Proxy = "flops", data: ImageDataset | None = None,
          ray: RayOptions | None = None, seed: int = 0, selection: str = "weighted", measure: Measure | None = None,
          table: LayerTimes | None = None, holdout: float = 0.1, **options: Any) -> PruneResult:  # fmt: skip
    """Prune a copy of ``model`` to its budget: the best of K candidate plans by ``proxy`` (``edgeprune.prune``).

    ``candidates`` K > 1 (or ``candidate_kinds`` beyond ``selection``) draws K plans per kind and keeps the one
    ``proxy`` ranks best; ``data`` is the training images a data-driven proxy reads (never its test split); ``ray``
    scores the candidates as Ray tasks; ``holdout`` is the share of the training split ``train:STEPS`` ranks on.
    K = 1 is ``edgeprune.pruning.prune``: Algorithm 1's plan exactly (without ``fill``). ``budget``/``mode``/
    ``target``, ``seed``, ``selection`` and ``table`` and the ``options`` (``step``,
    ``criterion``, ``example_input``, ``input_shape``, ``min_filters``, ``prune_residual``, ``calibration``,
    ``keep``, ``round_to``, ``attempts``, ``fill``) are ``edgeprune.pruning.prune``'s. ``measure`` times a cut
    model for a latency limit; by default on the table's backend and threads beside the parent
    (``edgeprune.latency.default_measure``).
    """
    limits = Budget.from_args(mode, target, budget)
    limits.validate(table)
    if measure is None and "latency" in limits.limits:
        example = options.get("example_input")
        shape = tuple(example.shape[1:]) if example is not None else tuple(options.get("input_shape", (3, 32, 32)))
        measure = default_measure(table, shape, model)
    kinds = tuple(candidate_kinds) if candidate_kinds is not None else (selection,)
    if candidates == 1 and kinds == (selection,):
        return pruning.prune(model, budget=limits, seed=seed, selection=selection, table=table, measure=measure,
                             **options)  # fmt: skip
    job = PruneJob.start(model, limits, PruneSettings(table=table, measure=measure, **options))
    found = search(model, job.prof, job.first, k=candidates, kinds=kinds, proxy=proxy, seed=seed, data=data,
                   example=job.example, step=job.step, scores=job.scores, min_filters=job.min_filters,
                   round_to=job.round_to, table=table, fill=job.fill, ray=ray, holdout=holdout)  # fmt: skip
    result = job.finish(found.kept.plan, seed=found.kept.seed, selection=found.kept.kind)
    result.plan.search = found.to_dict()
    return result


def spearman(scores: Sequence[float], accuracies: Sequence[float]) -> float:
    """Spearman's rank correlation of proxy scores with final accuracies (ties share their mean rank).

    SPEC: a proxy is worth its cost only if, over at least 16 candidates of one budget trained to the study's
    epochs, this beats the same correlation of the plain ``flops`` proxy.
    """
    if len(scores) != len(accuracies) or len(scores) < 2:
        raise EdgepruneError(f"a rank correlation needs two equally long lists of 2+ values, got {len(scores)} "
                             f"and {len(accuracies)}")  # fmt: skip
    a, b = _mean_ranks(scores), _mean_ranks(accuracies)
    a, b = a - a.mean(), b - b.mean()
    denominator = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum()) / denominator if denominator else 0.0


def _mean_ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks from 1, ties sharing the mean of the ranks they span."""
    x = np.asarray(values, dtype=float)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and x[order[j + 1]] == x[order[i]]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _score_one(model: nn.Module, cand: Candidate, proxy: Proxy, ctx: ProxyContext,
               example: torch.Tensor) -> tuple[float, float]:  # fmt: skip
    """Cut ``model`` to the candidate's plan (when the proxy needs it) and score it: (score, seconds)."""
    t0 = time.perf_counter()
    net = cut_candidate(model, cand.plan, example) if proxy.needs_model else None
    return float(proxy.score(net, cand, ctx)), time.perf_counter() - t0


def _score_task(shared: tuple, cand: Candidate, proxy: Proxy, threads: int) -> tuple[float, float]:
    """One candidate's scoring as a Ray task (``shared``: the model, the proxy's context, the example input)."""
    model, ctx, example = shared
    torch.set_num_threads(threads)
    return _score_one(model, cand, proxy, ctx, example)


def _scores_on_ray(model: nn.Module, candidates: list[Candidate], proxy: Proxy, ctx: ProxyContext,
                   example: torch.Tensor, options: RayOptions) -> list[tuple[float, float]]:  # fmt: skip
    """Every candidate scored in its own Ray task; the model and the images are put in Ray's store once."""
    with cluster.connected(options) as ray:
        shared = ray.put((model, ctx, example))
        remote = cluster.task(ray, _score_task, options)
        refs = [remote.remote(shared, cand, proxy, options.threads()) for cand in candidates]
        return [cluster.get(ray, ref, f"proxy {proxy.spec} of candidate {c.kind} seed {c.seed}")
                for ref, c in zip(refs, candidates, strict=True)]  # fmt: skip


def _inputs(proxy: Proxy, ctx: ProxyContext) -> str:
    """What the proxy read, for the report."""
    if not proxy.needs_model:
        return "none: the plan's costs"
    if isinstance(proxy, ShortTraining):
        split = ctx.split()
        return (f"training split of '{ctx.data.name}' ({len(split.train_y)} images trained on, "  # type: ignore[union-attr]
                f"{len(split.test_y)} held out and ranked on; test split not read)")  # fmt: skip
    if isinstance(proxy, SynFlow):
        return "an all-ones input (data-free)"
    if ctx.data is None:
        return f"{ctx.batch} random normal inputs (no data set given)"
    return f"{ctx.batch} training images of '{ctx.data.name}'"


__all__ = [
    "KINDS",
    "PROXIES",
    "Candidate",
    "Proxy",
    "ProxyContext",
    "SearchResult",
    "draw_candidates",
    "get_proxy",
    "holdout_split",
    "proxy_help",
    "proxy_names",
    "prune",
    "rank",
    "search",
    "spearman",
]
