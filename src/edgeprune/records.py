"""Run records: ``record.json``, what one finished comparison run measured and the settings that decided it.

A record is written atomically when a run finishes (``save_record``) and read back by ``--resume``
(``stored_record``), refused with one line when it is malformed, out of range (``check_record``), or of
other settings or data than the run's key (``edgeprune.pipelines.record_key``). A study carries over to
another machine or session in these small files, without its weights (a conventional run still to do
retrains its seed's full model, deterministically, when no checkpoint of it is left).
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from edgeprune import limits
from edgeprune.cluster import NOT_COMPARABLE, hosts
from edgeprune.complexity import reduction
from edgeprune.costs import STATIC
from edgeprune.errors import EdgepruneError
from edgeprune.files import write_json
from edgeprune.train import TrainResult, describe_difference
from edgeprune.train.busy import load_figures

DIRECT = "direct"
MATCHED = "direct-matched"  # the direct pipeline trained as long as the conventional one
SEARCHED = "searched"  # the direct pipeline on the best of K candidate plans (compare --candidates K)
SEARCHED_MATCHED = SEARCHED + "-matched"  # the searched network trained as long as the conventional pipeline
CONVENTIONAL = ("l1", "nuclear")
KD = "+kd"  # a method distilled from its seed's trained full model: l1+kd, nuclear+kd, direct+kd
DIRECT_KD = DIRECT + KD
RECORD = "record.json"  # a finished run's record, in its folder
RECORD_FORMAT = "edgeprune-run-record/1"
MAX_SECONDS = 1e9  # any duration in a record (31 years): finite sums, never an overflow
MAX_COUNT = 2**62  # parameters, FLOPs and bytes in a record


@dataclass
class RunRecord:
    """What one pipeline run measured: accuracy, complexity, every second of training, and where it ran."""

    method: str
    mode: str
    seed: int
    target: float
    test_accuracy: float
    params: int
    flops: int
    memory_bytes: int
    train_seconds: float  # all epochs of this pipeline, pre-training included
    pretrain_seconds: float
    epochs: int  # all epochs of this pipeline, pre-training included
    history: list[dict]
    nodes: list[dict] = field(default_factory=list)  # per training stage: hostname, Ray node id (None outside Ray)


def new_record(method: str, mode: str, seed: int, *, target: float | str, totals: dict[str, int],
               runs: list[TrainResult], nodes: list[dict]) -> RunRecord:  # fmt: skip
    """The record of a run whose training stages are ``runs`` (in order), its cut model's ``totals`` and ``nodes``."""
    history = [dict(h, stage=i) for i, r in enumerate(runs) for h in r.history]
    return RunRecord(
        method, mode, seed, target, runs[-1].test_accuracy, totals["params"], totals["flops"], totals["memory_bytes"],
        sum(r.train_seconds for r in runs), runs[0].train_seconds if len(runs) > 1 else 0.0, len(history), history,
        nodes,
    )  # fmt: skip


def matched_name(method: str) -> str:
    """The time-matched run of ``method``'s network: direct-matched, searched-matched, uniform-matched..."""
    return f"{method}-matched"


def matched_epochs(runs: list[RunRecord], method: str = DIRECT) -> int:
    """Epochs of ``method``'s network (direct, searched, uniform, unweighted) that fit in the conventional
    pipeline's measured time (l1 first), at least 1; both timed by ``steady_seconds``, so that a pause in either
    does not skew the match; a searched run's search seconds (its time beyond its epochs) are charged first."""
    own = next(r for r in runs if r.method == method)
    reference = next(r for m in CONVENTIONAL for r in runs if r.method == m)
    search = max(0.0, own.train_seconds - sum(h["epoch_seconds"] for h in own.history)) if method == SEARCHED else 0.0
    return max(1, int((steady_seconds(reference.history) - search) // (steady_seconds(own.history) / own.epochs)))


def steady_seconds(history: list[dict]) -> float:
    """Training seconds charged per stage as its median epoch time x its epochs: a paused or crowded epoch (a
    shared machine) does not count. ``history``: the per-epoch records, with their ``stage``."""
    stages: dict[int, list[float]] = {}
    for h in history:
        stages.setdefault(h.get("stage", 0), []).append(h["epoch_seconds"])
    return sum(statistics.median(s) * len(s) for s in stages.values())


def run_tag(method: str, mode: str, seed: int) -> str:
    """A run's folder in the output folder: ``full-s0``, ``direct-flops-s0``, ``l1-params-s1``..."""
    return f"full-s{seed}" if method == "full" else f"{method}-{mode}-s{seed}"


def progress_line(record: RunRecord) -> str:
    """A progress line for a run done elsewhere."""
    where = record.nodes[-1]["hostname"] if record.nodes else "?"
    return (f"[seed {record.seed}] {record.method} {record.mode}: test accuracy {100 * record.test_accuracy:.2f}% "
            f"after {record.epochs} epochs, {record.train_seconds:.0f} s on {where}")  # fmt: skip


def train_hosts(runs: list[RunRecord]) -> list[str]:
    """The machines the runs' training stages ran on."""
    return hosts([n for r in runs for n in r.nodes])


class RecordContext(Protocol):
    """What reading and writing a run's record needs of a comparison's context (``pipelines.RunContext``)."""

    out: Path  # the comparison's output folder: a run's record is out/<run tag>/record.json
    resume: bool  # read finished runs back

    def log(self, text: str) -> None:
        """One progress line."""
        ...


def stored_record(ctx: RecordContext, tag: str, key: dict) -> RunRecord | None:
    """The run's record in ``out/tag/record.json`` when resuming, else None; a record that is malformed, out of range
    or of other settings or data (its content hash) is refused, not rerun over."""
    path = ctx.out / tag / RECORD
    if not ctx.resume or not path.is_file():
        return None
    saved = limits.read_json(path, "a run record")
    try:
        if not isinstance(saved, dict) or saved.get("format") != RECORD_FORMAT:
            raise ValueError(f"format {_shown(saved.get('format') if isinstance(saved, dict) else saved)}")
        if set(saved) != {"format", "key", "record"} or not isinstance(saved["key"], dict):
            raise ValueError("expected format, key and record")
        stored, record = saved["key"], check_record(saved["record"])
    except ValueError as e:
        raise EdgepruneError(f"{path}: not a run record of this version ({e}); delete it to rerun the run") from None
    if stored != key:
        raise EdgepruneError(f"{path}: {_key_difference(stored, key)}; resume with the same settings and data or "
                             "use another --out")  # fmt: skip
    ran = (key["method"], key["mode"], key["seed"], sum(key["epochs"]) if isinstance(key["epochs"], list) else
           key["epochs"])  # fmt: skip
    if (record.method, record.mode, record.seed, record.epochs) != ran:  # a record edited, or copied from another run
        raise EdgepruneError(f"{path}: its record is of another run ({record.method} {record.mode}, seed "
                             f"{record.seed}, {record.epochs} epochs) than its key; delete it to rerun it")  # fmt: skip
    ctx.log(f"[seed {record.seed}] {record.method} {record.mode}: read back from {tag}/{RECORD}")
    return record


def _key_difference(stored: dict, key: dict) -> str:
    """Why a record's key is not this run's: other data (its content hash) or other settings."""
    old, new = stored.get("data"), key.get("data")
    if isinstance(old, dict) and isinstance(new, dict) and "content_hash" in new:
        old_sizes, new_sizes = ({k: v for k, v in d.items() if k != "content_hash"} for d in (old, new))
        if old_sizes == new_sizes and {**stored, "data": None} == {**key, "data": None}:
            if "content_hash" not in old:
                return ("recorded without the data set's content hash (an older edgeprune): nothing shows it ran on "
                        "this data")  # fmt: skip
            return (f"recorded on other data: same name and sizes, other images or labels (content hash "
                    f"{_shown(old['content_hash'])} then, {new['content_hash'][:16]}... now)")  # fmt: skip
    return f"recorded with other settings ({describe_difference(stored, key)})"


def _shown(value: object) -> str:
    """A value from a file for a one-line message, cut short."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# every run a record may hold: the full model, pipelines.AT_INIT's and pipelines.CONVENTIONAL's methods, and the
# distilled ones (pipelines.KD)
RUN_METHODS = ("full", "direct", "unweighted", "uniform", "direct-matched", "l1", "nuclear", "l1+kd", "nuclear+kd",
               "direct+kd", SEARCHED, SEARCHED_MATCHED, "uniform-matched", "unweighted-matched")  # fmt: skip
_HISTORY_RANGES = {"epoch": (1, limits.MAX_EPOCHS), "stage": (0, 1), "test_acc": (0, 1), "train_acc": (0, 1),
                   "epoch_seconds": (0, MAX_SECONDS), "eval_seconds": (0, MAX_SECONDS),
                   "train_seconds": (0, MAX_SECONDS), "images_per_s": (0, MAX_COUNT), "lr": (0, MAX_COUNT),
                   "load_1m": (0, MAX_COUNT), "cores": (1, MAX_COUNT)}  # fmt: skip
_INTEGERS = ("epoch", "stage", "cores")  # the history's counts (edgeprune.train.busy records the cores)


def check_record(data: object) -> RunRecord:
    """A run record read from a file: exactly RunRecord's fields, each typed, finite and in range (accuracy a
    fraction in [0, 1], seconds >= 0, epochs the history's length); ValueError (one line) names the first bad one."""
    if not isinstance(data, dict):
        raise ValueError(f"a record is an object, got {_shown(data)}")
    names = [f.name for f in dataclasses.fields(RunRecord)]
    missing, extra = [n for n in names[:-1] if n not in data], sorted(set(data) - set(names), key=str)
    if missing or extra:
        raise ValueError(f"missing '{missing[0]}'" if missing else f"unknown field {_shown(extra[0])}")
    d = data
    checks = [
        ("method", isinstance(d["method"], str) and d["method"] in RUN_METHODS, f"one of {', '.join(RUN_METHODS)}"),
        ("mode", d["mode"] == "-" if d["method"] == "full" else isinstance(d["mode"], str) and d["mode"] in STATIC,
         "'-' for the full model, else a cost"),
        ("seed", limits.is_int(d["seed"], 0, 2**32 - 1), "an integer in [0, 2**32 - 1]"),
        ("target", limits.is_number(d["target"], 0, MAX_COUNT) or (isinstance(d["target"], str)
                                                                    and 0 < len(d["target"]) <= 64), "a target"),
        ("test_accuracy", limits.is_number(d["test_accuracy"], 0, 1), "a fraction in [0, 1]"),
        *((k, limits.is_int(d[k], 0, MAX_COUNT), "an integer >= 0") for k in ("params", "flops", "memory_bytes")),
        *((k, limits.is_number(d[k], 0, MAX_SECONDS), "a number of seconds >= 0")
          for k in ("train_seconds", "pretrain_seconds")),
        ("epochs", limits.is_int(d["epochs"], 1, limits.MAX_EPOCHS), f"an integer in [1, {limits.MAX_EPOCHS}]"),
        ("history", isinstance(d["history"], list) and len(d["history"]) == d["epochs"], "one entry per epoch"),
        ("nodes", isinstance(d.get("nodes", []), list), "a list"),
    ]  # fmt: skip
    for name, ok, expected in checks:
        if not ok:
            raise ValueError(f"{name} must be {expected}, got {_shown(d.get(name))}")
    if d["pretrain_seconds"] > d["train_seconds"]:
        raise ValueError(f"pretrain_seconds {d['pretrain_seconds']} exceeds train_seconds {d['train_seconds']}")
    for i, h in enumerate(d["history"]):
        _check_epoch(i, h)
    for node in d.get("nodes", []):
        if not (isinstance(node, dict) and isinstance(node.get("hostname"), str)
                and all(isinstance(v, str) or v is None for v in node.values())):  # fmt: skip
            raise ValueError(f"a node must be {{hostname, ray_node_id}}, got {_shown(node)}")
    return RunRecord(**{k: v for k, v in d.items()})


def _check_epoch(i: int, h: object) -> None:
    """One epoch of a record's history: finite numbers (or null), the known ones in range, epoch_seconds present."""
    if not isinstance(h, dict) or not isinstance(h.get("epoch_seconds"), (int, float)):
        raise ValueError(f"history[{i}] must be an object with epoch_seconds, got {_shown(h)}")
    for k, v in h.items():
        low, high = _HISTORY_RANGES.get(k, (-MAX_COUNT, MAX_COUNT))
        integer = k in _INTEGERS
        if integer:
            ok = limits.is_int(v, low, high)
        else:
            ok = (v is None and k != "epoch_seconds") or limits.is_number(v, low, high)
        if not ok:  # training stops at a non-finite loss: a legitimate record holds finite numbers only
            raise ValueError(f"history[{i}].{k} must be {'an integer' if integer else 'a finite number'} in "
                             f"[{low:g}, {high:g}], got {_shown(v)}")  # fmt: skip


def _mean_std(values: list[float]) -> tuple[float, float]:
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if len(values) > 1 else 0.0


def summarise(records: list[RunRecord], baselines: list[RunRecord], settings: Any) -> dict:
    """The paper's table: baseline figures, then per method and mode the changes, mean and std over seeds."""
    base_acc = {b.seed: b.test_accuracy for b in baselines}
    b0 = baselines[0]
    rows = []
    for mode in settings.targets:
        reference = [r for r in records if r.mode == mode and r.method == "l1"] or [
            r for r in records if r.mode == mode and r.method in CONVENTIONAL
        ]
        ref_seconds = _mean_std([steady_seconds(r.history) for r in reference])[0] if reference else None
        ref_loaded = load_figures([r.history for r in reference])["under_load"]
        for method in dict.fromkeys(r.method for r in records if r.mode == mode):
            runs = [r for r in records if r.mode == mode and r.method == method]
            delta = _mean_std([100 * (r.test_accuracy - base_acc[r.seed]) for r in runs])
            acc = _mean_std([100 * r.test_accuracy for r in runs])
            seconds = _mean_std([r.train_seconds for r in runs])
            steady = _mean_std([steady_seconds(r.history) for r in runs])
            row = {
                "method": method,
                "mode": mode,
                "target": runs[0].target,
                "seeds": [r.seed for r in runs],
                "accuracy_pct": acc,
                "accuracy_change_pts": delta,
                "flops_reduction_pct": _mean_std([reduction(b0.flops, r.flops) for r in runs]),
                "memory_reduction_pct": _mean_std([reduction(b0.memory_bytes, r.memory_bytes) for r in runs]),
                "params_reduction_pct": _mean_std([reduction(b0.params, r.params) for r in runs]),
                "epochs": _span([r.epochs for r in runs]),
                "train_seconds": seconds,
                "steady_seconds": steady,
                "train_hosts": train_hosts(runs),
                "time_ratio_to_conventional": steady[0] / ref_seconds if ref_seconds else None,
                **load_figures([r.history for r in runs]),
            }
            row["ratio_under_load"] = bool(ref_seconds) and (row["under_load"] or ref_loaded)
            rows.append(row)
    return {
        "settings": asdict(settings),
        "baseline": {
            "accuracy_pct": _mean_std([100 * b.test_accuracy for b in baselines]),
            "flops": b0.flops,
            "memory_mb": b0.memory_bytes / 1e6,
            "params_m": b0.params / 1e6,
            "train_seconds": _mean_std([b.train_seconds for b in baselines]),
            "train_hosts": train_hosts(baselines),
            "epochs": b0.epochs,
            "seeds": [b.seed for b in baselines],
            **load_figures([b.history for b in baselines]),
        },
        "rows": rows,
        "conventions": "accuracy change in points against the full model trained as long as the direct pipeline; "
        "reductions against the full model; training time = every epoch's seconds, pre-training included; steady time "
        "= per stage the median epoch x epochs (a paused or crowded epoch does not count); time ratio = mean steady "
        "time / the l1 conventional pipeline's, measured in the same run; FLOPs = multiply-adds (MACs); MB = 10^6 bytes"
        + (f"; {MATCHED} = the direct pipeline's network trained for as many epochs as fit in the conventional "
           "pipeline's measured time" if settings.time_matched else "")
        + (f"; l1+kd, nuclear+kd = the conventional pipeline, its fine-tuning distilled from its own pre-trained full "
           f"model; {DIRECT_KD} = the direct network trained from scratch with that full model as teacher, its "
           "training time without the teacher's (a user who already has a trained model); alpha "
           f"{settings.distill_alpha:g}, temperature {settings.distill_temperature:g}" if settings.distill else "")
        + (f"; {SEARCHED} = the direct pipeline on the best of {settings.candidates} candidate plans per kind "
           f"({', '.join(settings.candidate_kinds)}) ranked by {settings.proxy}; its training time includes the "
           "search's seconds" if getattr(settings, "candidates", 1) > 1 else "")
        + (f"; {SEARCHED_MATCHED} = the searched network trained for as many epochs as fit in the conventional "
           "pipeline's measured time, less its search's seconds"
           if settings.time_matched and getattr(settings, "candidates", 1) > 1 else "")
        + "".join(f"; {matched_name(m)} = {m}'s network trained as long, likewise" for m in
                  getattr(settings, "matched_also", ()) if settings.time_matched)
        + (f"; every pruned network also meets {', '.join(f'{k} <= {v}' for k, v in settings.also.items())}"
           if settings.also else "")
        + (f"; training time '(N machines)': {NOT_COMPARABLE.format(n='N', hosts='in train_hosts')}"
           if any(len(r["train_hosts"]) > 1 for r in rows) or len(train_hosts(baselines)) > 1 else ""),
    }  # fmt: skip


def _span(values: list[int]) -> int | str:
    """One number when every seed agrees, else 'min-max'."""
    return values[0] if min(values) == max(values) else f"{min(values)}-{max(values)}"


def save_record(ctx: RecordContext, tag: str, key: dict, record: RunRecord) -> RunRecord:
    """Write the finished run's ``record.json`` (atomically) and return the record."""
    (ctx.out / tag).mkdir(parents=True, exist_ok=True)
    write_json(ctx.out / tag / RECORD, {"format": RECORD_FORMAT, "key": key, "record": asdict(record)})
    return record


__all__ = [
    "MAX_COUNT",
    "MAX_SECONDS",
    "RECORD",
    "RECORD_FORMAT",
    "RUN_METHODS",
    "RecordContext",
    "RunRecord",
    "check_record",
    "matched_epochs",
    "new_record",
    "progress_line",
    "run_tag",
    "save_record",
    "steady_seconds",
    "stored_record",
    "summarise",
    "train_hosts",
]
