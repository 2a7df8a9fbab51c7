"""The two pipelines of the paper, and the baselines, run side by side on one model and data set.

- ``direct`` (the paper's): build the model, prune it at initialisation with Algorithm 1 (random
  filters, layers drawn by complexity share), train the pruned network once.
- ``unweighted``: the same, but the layer lottery ignores complexity (uniform), which measures
  what the complexity weighting itself is worth.
- ``uniform``: uniform width scaling - every layer keeps the same fraction of its filters, the
  smallest fraction that fits - trained from scratch.
- ``l1`` / ``nuclear`` (conventional): train the full model, rank filters by weight l1 norm or by
  the nuclear norm of their feature maps, prune to the same target, fine-tune.
- with ``distill``: ``l1+kd`` / ``nuclear+kd``, the conventional pipeline whose fine-tuning is distilled from
  its own pre-trained full model, and ``direct+kd``, the direct network trained from scratch with that full
  model as teacher (a user who already has a trained model; its training time is its own, without the teacher's).

Training time counts every epoch a pipeline runs: a conventional pipeline's includes the full
model's pre-training, which the run trains once and shares between them.

Each run (a seed's full model, a network pruned at initialisation and trained, a prune + fine-tune of
the trained full model) is one function of a :class:`RunContext`. The serial path calls them one after
the other; with ``ray`` (:mod:`edgeprune.cluster`) each is a Ray task, a conventional run waiting for
its own seed's full model only. Every run records the machine it trained on, and a table's training
time says when its runs ran on different machines; every epoch records the machine's load
(:mod:`edgeprune.train.busy`), and a time taken under load is marked in the tables, with a footnote.

A finished run also leaves ``record.json`` in its folder (``edgeprune.records``), which ``--resume`` reads back
before its checkpoint: a long study carries over to another machine in those small files, without its weights.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from edgeprune import cluster
from edgeprune.cluster import CRASH_ENV, MAX_RETRIES, RayOptions, crash_hook, node_info
from edgeprune.compare_checks import BASELINES, check_settings
from edgeprune.data import ImageDataset
from edgeprune.data.progress import Counter, Waiter, echo
from edgeprune.errors import EdgepruneError
from edgeprune.files import write_json
from edgeprune.io import ModelRef, resolve
from edgeprune.limits import read_json
from edgeprune.pruning import prune
from edgeprune.records import (
    CONVENTIONAL,
    DIRECT,
    DIRECT_KD,
    KD,
    RECORD,
    SEARCHED,
    SEARCHED_MATCHED,
    RunRecord,
    check_record,
    matched_epochs,
    matched_name,
    new_record,
    progress_line,
    run_tag,
    save_record,
    stored_record,
    summarise,
)
from edgeprune.report import markdown_table as markdown_table  # re-exported: compare prints it
from edgeprune.report import write_compare
from edgeprune.search import prune as search_prune
from edgeprune.trace import record_shapes
from edgeprune.train import TrainConfig, TrainResult, data_signature, train
from edgeprune.train.distill import DEFAULT_ALPHA, DEFAULT_TEMPERATURE, Distill, Teacher

_AT_INIT = {DIRECT: "weighted", "unweighted": "uniform", "uniform": "ratio"}  # -> layer selection
AT_INIT = {**_AT_INIT, **{matched_name(m): selection for m, selection in _AT_INIT.items()}}  # and time-matched
SEARCH_FILE = "search.json"  # a searched run's candidate table, in its folder
# The settings that decide a run's result (threads and device do not: a record made with others is still it)
RESULT_SETTINGS = ("model", "width", "model_args", "num_classes", "step", "conventional_layers", "optimizer", "lr",
                   "batch_size", "calibration_images", "also")  # fmt: skip


@dataclass
class CompareSettings:
    """One comparison: model, targets per mode, methods, epochs and seeds.

    ``model`` is a reference (zoo name, ``package.module:factory``, ``path/file.py:factory``) built
    fresh, after seeding, for every run, with ``model_args`` and the data set's classes and channels.
    """

    model: str
    targets: dict[str, float]
    baselines: tuple[str, ...] = BASELINES
    epochs: int = 10
    finetune_epochs: int = 5
    seeds: tuple[int, ...] = (0,)
    step: float = 0.1
    conventional_layers: str = "weighted"  # Algorithm 1's lottery, or "ratio" (one ratio for every layer)
    num_classes: int | None = None
    optimizer: str = "sgd"
    lr: float | None = None
    batch_size: int = 128
    calibration_images: int = 256
    time_matched: bool = False  # also train the direct network for the conventional pipeline's training time
    matched_also: tuple[str, ...] = ()  # with time_matched: these at-init baselines' networks too (uniform...)
    width: float = 1.0  # the zoo's width multiplier (a factory gets it only when it is not 1)
    model_args: dict = field(default_factory=dict)  # keyword arguments of the reference's factory
    threads: int | None = None  # CPU threads per training run (default: all cores; with Ray, the run's CPUs)
    device: str = "cpu"  # where every run trains (edgeprune.train.resolve_device)
    also: dict = field(default_factory=dict)  # limits every pruned network meets besides its mode's (cost -> limit)
    distill: bool = False  # also l1+kd / nuclear+kd and direct+kd, distilled from the seed's trained full model
    distill_alpha: float = DEFAULT_ALPHA
    distill_temperature: float = DEFAULT_TEMPERATURE
    candidates: int = 1  # K > 1: also the searched method, the direct pipeline on the best of K plans by ``proxy``
    candidate_kinds: tuple[str, ...] = ("weighted",)
    proxy: str = "flops"
    proxy_holdout: float = 0.1

    def budget(self, mode: str) -> dict:
        """What a run of ``mode`` prunes to: the mode's target and every ``also`` limit (SPEC, multi-budget)."""
        return {mode: self.targets[mode], **{k: v for k, v in self.also.items() if k != mode}}


@dataclass
class RunContext:
    """What every run of one comparison needs: settings, data, output folder, model reference, how to log."""

    settings: CompareSettings
    data: ImageDataset
    out: Path
    ref: ModelRef
    shape: tuple[int, ...]
    resume: bool = False
    progress: bool = True
    in_ray: bool = False  # runs are Ray tasks: they record Ray's node id
    crash_once: str | None = None  # test hook: the run tag that exits once after its first checkpoint (CRASH_ENV)

    def fresh(self, seed: int) -> nn.Module:
        """The model, built anew after seeding ``seed``."""
        torch.manual_seed(seed)
        return resolve(self.ref).model

    def log(self, text: str) -> None:
        """Print a progress line (above a bar being drawn), unless quiet."""
        if self.progress:
            echo(text)

    def train(
        self, model: nn.Module, epochs: int, seed: int, tag: str, teacher: nn.Module | None = None
    ) -> TrainResult:
        """Train ``model`` in ``out/tag`` (resuming when asked), distilled from the full model ``teacher`` if given."""
        s = self.settings
        config = TrainConfig(epochs=epochs, seed=seed, optimizer=s.optimizer, lr=s.lr, batch_size=s.batch_size)
        guide = None
        if teacher is not None:
            guide = Teacher(teacher, run_tag("full", "-", seed), Distill(s.distill_alpha, s.distill_temperature))
        return train(model, self.data, config, self.out / tag, resume=self.resume, progress=self.progress,
                     callback=crash_hook(tag, self.out, self.crash_once), threads=s.threads,
                     device=s.device, teacher=guide)  # fmt: skip


def calibration_batch(data: ImageDataset, n: int, seed: int) -> torch.Tensor:
    """``n`` training images chosen by ``seed``, normalised as in training (for the nuclear criterion)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.train_y), generator=g)[: min(n, len(data.train_y))]
    x = data.train_x[idx].float() / 255
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in (data.mean, data.std))
    return (x - mean) / std


def _record(ctx: RunContext, method: str, mode: str, seed: int, model: nn.Module, runs: list[TrainResult],
            before: list[dict] | None = None) -> RunRecord:  # fmt: skip
    """The record of a run whose stages are ``runs``; ``before``: the nodes of the stages it did not train itself."""
    target = 1.0 if method == "full" else ctx.settings.targets[mode]
    totals = record_shapes(model, torch.zeros(1, *ctx.shape)).totals()
    return new_record(method, mode, seed, target=target, totals=totals, runs=runs,
                      nodes=[*(before or []), node_info(ctx.in_ray)])  # fmt: skip


# -- the runs: each independent of the others but for its inputs, called by the serial and the Ray paths --


def stage_epochs(settings: CompareSettings, method: str, epochs: int) -> int | list[int]:
    """The epochs a run trains, per stage: the full model's, a conventional pipeline's pre-training and
    fine-tuning, or (pruned at init) the run's own ``epochs``, which only those runs choose."""
    if method == "full":
        return settings.epochs
    if method.removesuffix(KD) in CONVENTIONAL:
        return [settings.epochs, settings.finetune_epochs]
    return epochs


def record_key(ctx: RunContext, method: str, mode: str, seed: int, epochs: int) -> dict:
    """What decides a run's result: the result-deciding settings, the data, the run, its budget and epochs
    (per stage, ``stage_epochs``), as JSON reads it back."""
    s = ctx.settings
    key = {k: getattr(s, k) for k in RESULT_SETTINGS}
    budget = {} if method == "full" else s.budget(mode)
    key.update(data=data_signature(ctx.data), method=method, mode=mode, seed=seed, budget=budget,
               epochs=stage_epochs(s, method, epochs))  # fmt: skip
    if method.endswith(KD):  # only a distilled run's key names them: the others' keys stay as before
        key["distill"] = {"alpha": s.distill_alpha, "temperature": s.distill_temperature, "teacher": "full model"}
    if method in (SEARCHED, SEARCHED_MATCHED):  # only a searched run's key names the search, others' stay as before
        key["search"] = search_key(s)
    content = getattr(ctx.data, "content_hash", None)
    if content is not None:  # name and sizes stay the same when images are swapped between classes; this does not
        key["data"]["content_hash"] = content
    return json.loads(json.dumps(key))


def full_weights_needed(ctx: RunContext, seed: int) -> bool:
    """Whether a conventional run of ``seed`` is still to train (and so needs the trained full model)."""
    s = ctx.settings
    tags = [run_tag(m, mode, seed) for m in [*_finetuned_methods(s), *_from_teacher(s)] for mode in s.targets]
    return not ctx.resume or any(not (ctx.out / t / RECORD).is_file() for t in tags)


def records_from_summary(summary: dict, data: ImageDataset, out_dir: str | Path) -> list[str]:
    """Write ``record.json`` for every run of a ``compare.json`` made before runs left records (``summary``), keyed
    by its settings and ``data`` (the data it ran on), so that ``--resume`` reads them back; returns the run
    folders written (one that has a record keeps it)."""
    try:
        settings = CompareSettings(**summary["settings"])
        records = [check_record(r) for r in summary["runs"]]
    except (KeyError, TypeError, ValueError) as e:
        raise EdgepruneError(f"not a comparison summary with run records ({e})") from None
    ctx = make_context(settings, data, out_dir)
    written = []
    for r in records:
        tag = run_tag(r.method, r.mode, r.seed)
        if (ctx.out / tag / RECORD).exists():
            continue
        save_record(ctx, tag, record_key(ctx, r.method, r.mode, r.seed, r.epochs), r)
        written.append(tag)
    return written


def run_full(ctx: RunContext, seed: int) -> tuple[RunRecord, nn.Module | None]:
    """The full model trained from scratch: the baseline, and the conventional pipelines' pre-training (the
    model is None when it is read back from its record and no conventional run needs it)."""
    epochs, tag = ctx.settings.epochs, run_tag("full", "-", seed)
    key = record_key(ctx, "full", "-", seed, epochs)
    done = stored_record(ctx, tag, key)
    if done is not None and not full_weights_needed(ctx, seed):
        return done, None
    full = ctx.fresh(seed)  # trained, or read back from its checkpoint; retrained (deterministic) if none is left
    ctx.log(f"[seed {seed}] training the full {ctx.settings.model} for {epochs} epochs (baseline, pre-training)")
    pre = ctx.train(full, epochs, seed, tag)
    return save_record(ctx, tag, key, _record(ctx, "full", "-", seed, full, [pre])), full


def pruned_at_init(ctx: RunContext, method: str, mode: str, seed: int) -> nn.Module:
    """The network ``method`` prunes from a fresh model at initialisation (the layer lottery of ``AT_INIT[method]``),
    untrained; the same every time for the same settings and seed. (A conventional run of that seed drawn by the
    same lottery gets the same layer sizes: the lottery decides how many filters a layer loses, the criterion
    only which.)"""
    s = ctx.settings
    return prune(ctx.fresh(seed), budget=s.budget(mode), step=s.step, seed=seed, input_shape=ctx.shape,
                 selection=AT_INIT[method]).model  # fmt: skip


def run_at_init(ctx: RunContext, method: str, mode: str, seed: int, epochs: int) -> RunRecord:
    """Prune a fresh model at initialisation (the layer lottery of ``AT_INIT[method]``) and train it ``epochs``."""
    tag = run_tag(method, mode, seed)
    key = record_key(ctx, method, mode, seed, epochs)
    if (done := stored_record(ctx, tag, key)) is not None:
        return done
    pruned = pruned_at_init(ctx, method, mode, seed)
    ctx.log(f"[seed {seed}] {method} {mode}: pruned at init, training {epochs} epochs")
    result = ctx.train(pruned, epochs, seed, tag)
    return save_record(ctx, tag, key, _record(ctx, method, mode, seed, pruned, [result]))


def search_key(settings: CompareSettings) -> dict:
    """The search settings that decide a searched run's plan."""
    return {"candidates": settings.candidates, "kinds": list(settings.candidate_kinds), "proxy": settings.proxy,
            "holdout": settings.proxy_holdout}  # fmt: skip


def run_searched(ctx: RunContext, mode: str, seed: int, epochs: int, method: str = SEARCHED) -> RunRecord:
    """The direct pipeline on the best of K candidate plans (``edgeprune.search``), trained ``epochs``; its
    training time counts the search's seconds, and ``search.json`` in its folder lists every candidate.
    ``method`` searched-matched: the same search (deterministic: the same plan is kept) for a time-matched run."""
    s, tag = ctx.settings, run_tag(method, mode, seed)
    key = record_key(ctx, method, mode, seed, epochs)
    if (done := stored_record(ctx, tag, key)) is not None:
        return done
    t0 = time.perf_counter()
    found = search_prune(ctx.fresh(seed), budget=s.budget(mode), candidates=s.candidates,
                         candidate_kinds=s.candidate_kinds, proxy=s.proxy, data=ctx.data, seed=seed, step=s.step,
                         input_shape=ctx.shape, holdout=s.proxy_holdout)  # fmt: skip
    seconds = time.perf_counter() - t0
    twin = _direct_twin(ctx, mode, seed, epochs, method, found.model)
    table = {**(found.plan.search or {}), "search_seconds": round(seconds, 3)}
    if twin is not None:
        table["same_network_as"] = run_tag(twin.method, mode, seed)
    (ctx.out / tag).mkdir(parents=True, exist_ok=True)
    write_json(ctx.out / tag / SEARCH_FILE, table)
    ctx.log(
        f"[seed {seed}] {method} {mode}: kept {table['kept']['kind']} seed {table['kept']['seed']} of "
        f"{len(table['candidates'])} candidates by {s.proxy} ({seconds:.1f} s), "
        + (f"the {twin.method} run's own network: its record read back" if twin else f"training {epochs} epochs")
    )
    if twin is not None:  # the same weights trained the same way: training them again would repeat that run
        return save_record(ctx, tag, key, replace(twin, method=method, train_seconds=twin.train_seconds + seconds))
    result = ctx.train(found.model, epochs, seed, tag)
    result = replace(result, train_seconds=result.train_seconds + seconds)
    return save_record(ctx, tag, key, _record(ctx, method, mode, seed, found.model, [result]))


def _direct_twin(ctx: RunContext, mode: str, seed: int, epochs: int, method: str, kept: nn.Module) -> RunRecord | None:
    """The finished direct (or direct-matched) run of the same epochs when the search kept its very network (the
    seed's own plan, weight for weight), else None."""
    twin = DIRECT if method == SEARCHED else matched_name(DIRECT)
    where, key = run_tag(twin, mode, seed), record_key(ctx, twin, mode, seed, epochs)
    try:  # read even without --resume: the output folder holds only this comparison's runs (or resumed ones)
        done = stored_record(replace(ctx, resume=True, progress=False), where, key)  # its own line says it
    except EdgepruneError:  # a record of other settings or epochs is not this network's run
        done = None
    own = pruned_at_init(ctx, DIRECT, mode, seed).state_dict() if done is not None else {}
    mine = kept.state_dict()  # torch.equal is False for tensors of other shapes
    same = own.keys() == mine.keys() and all(torch.equal(own[k], mine[k]) for k in own)
    return done if same else None


def run_conventional(
    ctx: RunContext, method: str, mode: str, seed: int, full: nn.Module | None, baseline: RunRecord
) -> RunRecord:
    """Rank the trained full model's filters by ``method`` (l1, nuclear), prune a copy to the target, fine-tune it
    (``full`` may be None only when the run is read back from its record); ``l1+kd``, ``nuclear+kd``: the same
    network, its fine-tuning distilled from ``full``."""
    s, tag = ctx.settings, run_tag(method, mode, seed)
    key = record_key(ctx, method, mode, seed, s.epochs + s.finetune_epochs)
    if (done := stored_record(ctx, tag, key)) is not None:
        return done
    if full is None:  # full_weights_needed said no conventional run was left: its record went missing since
        raise EdgepruneError(f"{ctx.out / tag / RECORD}: disappeared while the comparison ran; run it again")
    calibration = calibration_batch(ctx.data, s.calibration_images, seed)
    pruned = prune(
        copy.deepcopy(full), budget=s.budget(mode), step=s.step, seed=seed, criterion=method.removesuffix(KD),
        input_shape=ctx.shape, selection=s.conventional_layers, calibration=calibration,
    ).model  # fmt: skip
    ctx.log(f"[seed {seed}] {method} {mode}: ranked and pruned the trained model, fine-tuning "
            f"{s.finetune_epochs} epochs")  # fmt: skip
    tune = ctx.train(pruned, s.finetune_epochs, seed, tag, teacher=full if method.endswith(KD) else None)
    pre = TrainResult(baseline.history, baseline.test_accuracy, baseline.train_seconds)
    return save_record(ctx, tag, key, _record(ctx, method, mode, seed, pruned, [pre, tune], baseline.nodes))


def run_direct_kd(ctx: RunContext, mode: str, seed: int, full: nn.Module | None) -> RunRecord:
    """``direct``'s network trained from scratch, distilled from the trained full model ``full`` (None: read back)."""
    s, tag = ctx.settings, run_tag(DIRECT_KD, mode, seed)
    key = record_key(ctx, DIRECT_KD, mode, seed, s.epochs)
    if (done := stored_record(ctx, tag, key)) is not None:
        return done
    if full is None:
        raise EdgepruneError(f"{ctx.out / tag / RECORD}: disappeared while the comparison ran; run it again")
    pruned = pruned_at_init(ctx, DIRECT, mode, seed)
    ctx.log(f"[seed {seed}] {DIRECT_KD} {mode}: pruned at init, training {s.epochs} epochs from the full model")
    result = ctx.train(pruned, s.epochs, seed, tag, teacher=full)
    return save_record(ctx, tag, key, _record(ctx, DIRECT_KD, mode, seed, pruned, [result]))


def run_matched(ctx: RunContext, mode: str, seed: int, mine: list[RunRecord], method: str = DIRECT) -> RunRecord:
    """``method``'s network (direct, searched, uniform, unweighted) trained as many epochs as fit in the conventional
    pipeline's time (``mine``: both runs); a searched one repeats its (deterministic) search, charged first."""
    epochs = matched_epochs(mine, method)
    if method == SEARCHED:
        return run_searched(ctx, mode, seed, epochs, SEARCHED_MATCHED)
    return run_at_init(ctx, matched_name(method), mode, seed, epochs)


def _at_init_methods(settings: CompareSettings) -> list[str]:
    """The methods pruned at initialisation, in table order (without the time-matched one)."""
    return [m for m in AT_INIT if m in (DIRECT, *settings.baselines)]


def _searched(settings: CompareSettings) -> list[str]:
    """The searched method when the settings ask for a candidate search (K > 1)."""
    return [SEARCHED] if settings.candidates > 1 else []


def _matched(settings: CompareSettings) -> list[str]:
    """The methods whose network also trains for the conventional pipeline's time (--time-matched): direct, the
    searched one when there is a search, and ``matched_also``'s."""
    return [DIRECT, *_searched(settings), *settings.matched_also] if settings.time_matched else []


def run_count(settings: CompareSettings) -> int:
    """Every run of a comparison: each seed's full model and, per mode, each method's."""
    s = settings
    per_mode = (len(_at_init_methods(s)) + len(_searched(s)) + len(_finetuned_methods(s)) + len(_from_teacher(s))
                + len(_matched(s)))  # fmt: skip
    return len(s.seeds) * (1 + len(s.targets) * per_mode)


def _conventional_methods(settings: CompareSettings) -> list[str]:
    """The conventional baselines asked for."""
    return [b for b in settings.baselines if b in CONVENTIONAL]


def _finetuned_methods(settings: CompareSettings) -> list[str]:
    """The runs that prune the trained full model and fine-tune: the conventional ones, and distilled (--distill)."""
    plain = _conventional_methods(settings)
    return [*plain, *(m + KD for m in plain if settings.distill)]


def _from_teacher(settings: CompareSettings) -> list[str]:
    """The runs trained from scratch with the full model as teacher: direct+kd with --distill."""
    return [DIRECT_KD] if settings.distill else []


def _check_budgets(ctx: RunContext) -> None:
    """With ``also`` limits, plan every mode's budget once before any training: an unreachable one fails now."""
    s = ctx.settings
    for mode in s.targets if s.also else ():
        prune(ctx.fresh(s.seeds[0]), budget=s.budget(mode), step=s.step, seed=s.seeds[0], input_shape=ctx.shape)


def make_context(
    settings: CompareSettings, data: ImageDataset, out_dir: str | Path, progress: bool = True, resume: bool = False
) -> RunContext:
    """The context of every run of ``settings`` on ``data`` into ``out_dir``."""
    shape = data.input_shape()
    classes = settings.num_classes or data.num_classes
    ref = ModelRef(
        settings.model, dict(settings.model_args), width=settings.width if settings.width != 1 else None
    ).with_data(classes, shape)
    crash_once = os.environ.get(CRASH_ENV) or None
    return RunContext(settings, data, Path(out_dir), ref, shape, resume, progress, crash_once=crash_once)


Batch = tuple[RunRecord, list[RunRecord]]  # a seed's baseline, and the runs of one of its modes


def _runs_here(ctx: RunContext, bar: Counter) -> Iterator[Batch]:
    """Every run, one after the other in this process, counted on ``bar``; yielded per seed and mode."""
    s, done, total = ctx.settings, itertools.count(1), run_count(ctx.settings)

    def go(run: Callable[..., Any], *args: Any) -> Any:
        ctx.log(f"run {next(done)}/{total}")
        result = run(ctx, *args)
        bar.advance()
        return result

    for seed in s.seeds:
        baseline, full = go(run_full, seed)
        for mode in s.targets:
            mine = [go(run_at_init, m, mode, seed, s.epochs) for m in _at_init_methods(s)]
            mine += [go(run_searched, mode, seed, s.epochs) for _ in _searched(s)]
            mine += [go(run_conventional, m, mode, seed, full, baseline) for m in _finetuned_methods(s)]
            mine += [go(run_direct_kd, mode, seed, full) for _ in _from_teacher(s)]
            before = list(mine)  # each time-matched run needs its own network's run and the conventional ones
            mine += [go(run_matched, mode, seed, before, m) for m in _matched(s)]
            yield baseline, mine


def _full_task(ctx: RunContext, seed: int) -> tuple[RunRecord, dict[str, torch.Tensor] | None]:
    """Ray task: :func:`run_full`, returning the trained weights for the seed's conventional runs."""
    record, full = run_full(ctx, seed)
    return record, full.state_dict() if full is not None else None


def _full_model(ctx: RunContext, seed: int, weights: dict[str, torch.Tensor] | None) -> nn.Module | None:
    """The seed's trained full model from the weights its task returned (None when it returned none)."""
    if weights is None:
        return None
    model = ctx.fresh(seed)
    model.load_state_dict(weights)
    return model.eval()  # as train() leaves it


def _conventional_task(
    ctx: RunContext, method: str, mode: str, seed: int, full: tuple[RunRecord, dict[str, torch.Tensor] | None]
) -> RunRecord:
    """Ray task: :func:`run_conventional` on the seed's trained full model (``full``: what its task returned)."""
    baseline, weights = full
    return run_conventional(ctx, method, mode, seed, _full_model(ctx, seed, weights), baseline)


def _direct_kd_task(
    ctx: RunContext, mode: str, seed: int, full: tuple[RunRecord, dict[str, torch.Tensor] | None]
) -> RunRecord:
    """Ray task: :func:`run_direct_kd` with the seed's trained full model as teacher."""
    return run_direct_kd(ctx, mode, seed, _full_model(ctx, seed, full[1]))


def _matched_task(ctx: RunContext, mode: str, seed: int, method: str, *mine: RunRecord) -> RunRecord:
    """Ray task: :func:`run_matched` of ``method``'s network, after the mode's other runs."""
    return run_matched(ctx, mode, seed, list(mine), method)


Plan = list[tuple[int, str, Any, list[Any]]]  # seed, mode, the seed's full-model task, the mode's tasks (ObjectRefs)


def _submit(ray: ModuleType, shared: Any, settings: CompareSettings, options: RayOptions) -> Plan:
    """Submit every run as a Ray task, a conventional one depending on its own seed's full model only."""
    s = settings
    full_task, at_init, searched, conventional, direct_kd, matched = (
        cluster.task(ray, f, options)
        for f in (_full_task, run_at_init, run_searched, _conventional_task, _direct_kd_task, _matched_task)
    )
    plan = []
    for seed in s.seeds:
        full = full_task.remote(shared, seed)
        for mode in s.targets:
            refs = [at_init.remote(shared, m, mode, seed, s.epochs) for m in _at_init_methods(s)]
            refs += [searched.remote(shared, mode, seed, s.epochs) for _ in _searched(s)]
            refs += [conventional.remote(shared, m, mode, seed, full) for m in _finetuned_methods(s)]
            refs += [direct_kd.remote(shared, mode, seed, full) for _ in _from_teacher(s)]
            before = list(refs)  # each time-matched run waits for the mode's other runs only
            refs += [matched.remote(shared, mode, seed, m, *before) for m in _matched(s)]
            plan.append((seed, mode, full, refs))
    return plan


def _runs_on_ray(ctx: RunContext, options: RayOptions, bar: Counter) -> Iterator[Batch]:
    """Every run as a Ray task (a retry resumes from the run's checkpoint), counted on ``bar`` as each finishes;
    yielded in the serial order."""
    with cluster.connected(options) as ray:
        cluster.check_shared_folder(ray, ctx.out)
        ref = replace(ctx.ref, ref=cluster.portable_ref(ctx.ref.ref), remember=False)
        shared = ray.put(replace(ctx, ref=ref, progress=False, resume=True, in_ray=True))
        plan = _submit(ray, shared, ctx.settings, options)
        ctx.log(f"{len(ctx.settings.seeds) + sum(len(p[3]) for p in plan)} runs submitted to Ray ({options.address}, "
                f"{options.cpus_per_run:g} CPU(s) and {options.gpus_per_run:g} GPU(s) per run)")  # fmt: skip
        baselines: dict[int, RunRecord] = {}
        done, total = itertools.count(1), run_count(ctx.settings)
        finished = Waiter(ray.wait, [r for p in plan for r in (p[2], *p[3])], bar)
        for seed, mode, full, refs in plan:
            if seed not in baselines:
                finished.until([full])
                baselines[seed] = cluster.get(ray, full, f"the full model, seed {seed}")[0]
                ctx.log(f"run {next(done)}/{total}: {progress_line(baselines[seed])}")
            finished.until(refs)
            mine = [cluster.get(ray, r, f"a {mode} run, seed {seed}") for r in refs]
            for record in mine:
                ctx.log(f"run {next(done)}/{total}: {progress_line(record)}")
            yield baselines[seed], mine


def run_comparison(
    settings: CompareSettings,
    data: ImageDataset,
    out_dir: str | Path,
    progress: bool = True,
    resume: bool = False,
    ray: RayOptions | None = None,
) -> dict:
    """Run every method x mode x seed; write records and tables; return the summary.

    With ``resume``, runs finished in ``out_dir`` are read back from their checkpoints (their measured
    training seconds included) and an interrupted one continues from its last epoch. The tables are
    rewritten after every mode, so a long comparison shows its finished part while it runs. With
    ``ray``, every run is a Ray task (see :mod:`edgeprune.cluster`): the same runs, the same results
    for the same seeds and threads; ``out_dir`` must be storage every node sees.
    """
    check_settings(settings)
    if ray is not None:
        settings = replace(settings, threads=settings.threads or ray.threads())
    ctx = make_context(settings, data, out_dir, progress, resume)
    _check_budgets(ctx)
    if ray is not None:
        ctx = replace(ctx, out=ctx.out.resolve())
    records: list[RunRecord] = []
    baselines: dict[int, RunRecord] = {}
    with Counter(run_count(settings), "compare", enabled=progress, unit="run") as bar:
        for baseline, mine in _runs_on_ray(ctx, ray, bar) if ray is not None else _runs_here(ctx, bar):
            baselines[baseline.seed] = baseline
            records.extend(mine)
            done = list(baselines.values())
            write_outputs(_summary(records, done, settings, ray, ctx.out), records, done, ctx.out)
    summary = _summary(records, list(baselines.values()), settings, ray, ctx.out)
    write_outputs(summary, records, list(baselines.values()), ctx.out)
    return summary


def _summary(records: list[RunRecord], baselines: list[RunRecord], settings: CompareSettings, ray: RayOptions | None,
             out: Path) -> dict:  # fmt: skip
    """:func:`summarise`, each searched run's candidate table (``search.json``), and with Ray, how runs were placed."""
    summary = summarise(records, baselines, settings)
    searched = [run_tag(r.method, r.mode, r.seed) for r in records if r.method == SEARCHED]
    if searched:
        summary["searches"] = {t: read_json(out / t / SEARCH_FILE, "a search table") for t in searched}
    if ray is not None:
        summary["ray"] = {**asdict(ray), "max_retries": MAX_RETRIES, "note": "one Ray task per run"}
    return summary


def write_outputs(summary: dict, records: list[RunRecord], baselines: list[RunRecord], out: Path) -> None:
    """compare.md, compare.csv, compare.json (with every run's record), compare.png and curves.png."""
    write_compare(summary, [asdict(r) for r in baselines + records], out)
