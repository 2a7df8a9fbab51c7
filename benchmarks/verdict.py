"""The paper's claims against our runs (issue 13): one verdict table from the committed compare.json files.

Reads each study's ``compare.json`` under ``docs/results/`` (the output of ``edgeprune compare``, committed with
its command) and writes ``docs/results/README.md``: for every claim of the paper (SPEC, "Reference figures",
and the journal's ~60% training-time saving) and every setup, the paper's figure, ours with the scale it was
measured at, a verdict and a link to the run, with a tally of the verdicts; and redraws each study's
``curves.png`` (test accuracy per epoch) from the same file. A study whose compare.json is not there yet is
listed as not run; one with fewer seeds or modes than planned says so.

Verdict rules (stated in the output too):
- accuracy change of the direct network against the full model: *holds* when ours is at most 1 point below
  the paper's figure, else *fails*;
- direct against conventional (train -> rank -> prune -> fine-tune, l1 and nuclear): *holds* when the direct
  network is at most 1 point below the better conventional network, else *fails*;
- training-time saving: *holds* when the direct pipeline needs at least 50% less training time than the l1
  pipeline (pre-training included), else *fails*. Training time = per stage the median epoch time x epochs,
  so that a run paused for a quiet timing elsewhere is not charged for the pause; where the study's networks
  were re-timed with nothing else running (``quiet_times.json`` from ``benchmarks/pipeline_time.py``: per stage
  the quiet step time x epochs), that figure decides and the run's own is shown beside it;
- the complexity weighting against an unweighted lottery and width scaling is ours (the issue's question, not a
  paper claim): the difference in points is reported, *holds* when the weighted network is not below either.
- distillation (``compare --distill``, ours): l1+kd against l1 and direct+kd against direct, each the same
  network at equal epochs with and without the seed's full model as teacher; *holds* when neither is below.
- the paper's accuracy claims are claims at convergence: when the full model is not at its plateau (its test
  accuracy over its last 4 epochs spans more than 1 point, or it trained fewer than 4 epochs) the accuracy
  change and direct-against-conventional claims are *untested at this scale*; our figures are still shown.
With one seed every verdict is marked provisional; "seeds disagree" marks a verdict that some seed's figure alone
would not give. A comparison of two networks' accuracies (direct against
conventional, the weighting) whose distance from its threshold is less than two standard errors of test-set
sampling is marked "within test-set noise": another draw of test images could flip it. The standard error is
the paired one that ``benchmarks/paired_accuracy.py`` measured image by image (``paired.json``), where the study
has it; else ``noise_pts``, an unpaired upper bound.

    .venv/bin/python benchmarks/verdict.py
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path

from common import parser, write_text

from edgeprune.plots import accuracy_curve, plot_learning_curves
from edgeprune.records import steady_seconds

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
MODES = ("params", "flops", "memory")
LABEL = {"params": "PA", "flops": "FA", "memory": "MA"}
# SPEC "Reference figures from the paper": (accuracy change in points, reduction in the mode's own cost, %)
PAPER = {
    "vgg16": {"params": (+1.76, 84.25), "flops": (-3.45, 89.67), "memory": (-8.76, 91.02)},
    "mobilenetv2": {"params": (+0.07, 70.03), "flops": (+0.23, 50.77), "memory": (+0.96, 53.5)},
    "alexnet": {"params": (+0.43, 63.92), "flops": (-1.15, 79.28), "memory": (-3.06, 83.31)},
    "resnet50": {"params": (-0.25, 53.4), "flops": (+0.34, 51.33), "memory": (+2.23, 30.2)},
}
SETUP = {"vgg16": "VGG-16 / CIFAR-10", "mobilenetv2": "MobileNetV2 / CIFAR-10", "alexnet": "AlexNet / CIFAR-100",
         "resnet50": "ResNet-50 / CIFAR-100"}  # fmt: skip
# (folder under docs/results, model, the scale in words, seeds planned, test images)
STUDIES = [
    ("repro_vgg16", "vgg16", "full width, full CIFAR-10, 1 epoch (+1 fine-tuning), SGD one-cycle", 2, 10_000),
    ("convergence_vgg16_w025", "vgg16", "width 0.25, full CIFAR-10, 30 epochs (+30 fine-tuning)", 2, 10_000),
    ("paper_mobilenetv2_w025_c10mini", "mobilenetv2", "width 0.25, CIFAR-10 mini (5,000 / 1,000), 10 epochs (+10)",
     2, 1_000),
    ("paper_alexnet_w05_c100mini", "alexnet", "width 0.5, CIFAR-100 mini (5,000 / 1,000), 10 epochs (+10)", 2,
     1_000),
    ("paper_resnet50_w025_c100mini", "resnet50", "width 0.25, CIFAR-100 mini (5,000 / 1,000), 8 epochs (+8)", 2,
     1_000),
]  # fmt: skip
# (the figure, what it reports, why it is not run here: epoch times measured on this CPU, issue 13)
CITED = [
    ("Nuclear-norm pruning (Yeom et al.), ResNet-56 / CIFAR-10", "94.13% at 40.4% fewer FLOPs, 45.9% fewer params",
     "ResNet-56 trains at 368 images/s here: 150 epochs on full CIFAR-10 are about 5.7 h per network"),
    ("L1 pruning (Li et al.), VGG-16 / CIFAR-10", "93.4% at 34% fewer FLOPs, 64% fewer params",
     "full-width VGG-16 trains at 162 images/s here: 150 epochs are about 13 h per network"),
]  # fmt: skip
WITHIN = 1.0  # points: "at most 1 point below"
PLATEAU_EPOCHS = 4  # the full model is at its plateau when its last 4 epochs span at most WITHIN points
TIME_SAVING = 0.5  # the journal's ~60%, taken as "at least half"


def mean(values: list[float]) -> float:
    """The mean (values non-empty)."""
    return sum(values) / len(values)


def spread(values: list[float]) -> str:
    """Mean, and the range over seeds when there are several."""
    m = mean(values)
    return f"{m:+.2f}" if len(values) == 1 else f"{m:+.2f} ({min(values):+.2f} to {max(values):+.2f})"


def plateau_span(run: dict) -> float | None:
    """How many points the test accuracy spans over a run's last PLATEAU_EPOCHS epochs (None: fewer epochs)."""
    acc = accuracy_curve(run)[-PLATEAU_EPOCHS:]
    return max(acc) - min(acc) if len(acc) == PLATEAU_EPOCHS else None


def unconverged(full: list[dict]) -> str | None:
    """Why the full models are not at their plateau, or None when they are."""
    spans = [plateau_span(r) for r in full]
    if any(s is None for s in spans):
        return f"full model trained fewer than {PLATEAU_EPOCHS} epochs"
    if mean(spans) > WITHIN:
        return f"full model not at its plateau: its last {PLATEAU_EPOCHS} epochs span {mean(spans):.1f} pts"
    return None


def noise_pts(a: float, b: float, n: int) -> float:
    """Two standard errors (points) of the difference of accuracies ``a`` and ``b`` (fractions) on ``n`` images.

    Computed as if each network were scored on its own draw of n test images: an upper bound for two networks
    scored on the same images (their errors correlate), and not reduced by averaging seeds (they share the set).
    """
    return 200 * math.sqrt((a * (1 - a) + b * (1 - b)) / n)


def paired_noise(path: Path) -> dict[tuple[str, str, tuple[int, ...]], tuple[float, float, bool]]:
    """(gap, two paired standard errors, whether they are an upper bound) in points by (mode, gap, seeds) from
    benchmarks/paired_accuracy.py: a measurement applies to the seeds it was made over only."""
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    rows = [*data.get("per_seed", []), *data["gaps"]]
    return {(r["mode"], r["gap"], tuple(r["seeds"])): (r["gap_pts"], 2 * r["paired_se_pts"], r.get("se_bound", False))
            for r in rows}  # fmt: skip


def judged(gap: list[float], threshold: float, noise: float) -> tuple[bool, bool, bool]:
    """(holds, within noise, seeds disagree) for a mean accuracy gap in points against its threshold."""
    return mean(gap) >= threshold, abs(mean(gap) - threshold) < noise, disagree([g >= threshold for g in gap])


def all_judged(calls: list[tuple[bool, bool, bool]]) -> tuple[bool, bool]:
    """(holds, within noise) of a claim that holds only when every one of ``calls`` (from :func:`judged`) does."""
    holds = all(ok for ok, _, _ in calls)
    # a hold could flip if any margin is within noise; a failure only if every shortfall is
    return holds, any(n for _, n, _ in calls) if holds else all(n for ok, n, _ in calls if not ok)


def seeds_run(scale: str, seeds: list[int], planned: int) -> str:
    """The scale cell: the scale, the seeds a row rests on, and how many were planned when fewer ran."""
    fewer = "" if len(seeds) >= planned else f" (of {planned} planned)"
    return f"{scale}; seeds {', '.join(map(str, seeds))}{fewer}"


def disagree(passes: list[bool]) -> bool:
    """Whether the seeds' own verdicts differ: the mean's verdict then rests on which seeds were run."""
    return len(set(passes)) > 1


def quiet_savings(path: Path) -> dict[tuple[str, int], float]:
    """The savings against l1 re-timed quietly by benchmarks/pipeline_time.py, by (mode, seed); {} if not run."""
    if not path.is_file():
        return {}
    return {(r["mode"], r["seed"]): r["quiet_saving"] for r in json.loads(path.read_text())["savings"]}


def carried_runs(records: Path) -> dict[tuple[str, str, int], dict]:
    """The runs carried in a study's ``records/`` (``benchmarks/carry_records.py save``) by (method, mode, seed):
    a run added after its compare.json was written (a --time-matched extension, one seed at a time) counts too."""
    found = [json.loads(f.read_text())["record"] for f in sorted(records.glob("*.json"))] if records.is_dir() else []
    return {(r["method"], r["mode"], r["seed"]): r for r in found}


def by_run(data: dict) -> dict[tuple[str, str, int], dict]:
    """The runs by (method, mode, seed); the full model's mode is '-'."""
    return {(r["method"], r["mode"], r["seed"]): r for r in data["runs"]}


def study_claims(folder: str, model: str, scale: str, planned: int, test_images: int) -> list[dict]:
    """The verdict rows of one study (empty when its compare.json is not there)."""
    path = RESULTS / folder / "compare.json"
    if not path.is_file():
        return []
    runs = {**carried_runs(RESULTS / folder / "records"), **by_run(json.loads(path.read_text()))}
    quiet = quiet_savings(RESULTS / folder / "quiet_times.json")
    paired = paired_noise(RESULTS / folder / "paired.json")

    def noise(mode: str, gap: str, a: float, b: float, seeds: list[int]) -> tuple[float, str]:
        """The noise band of gap ``a - b`` over ``seeds``: measured paired where it was, else the unpaired bound;
        and its label."""
        if (mode, gap, tuple(seeds)) not in paired:
            return (bound := noise_pts(a, b, test_images)), f"noise ±{bound:.1f}, unpaired bound"
        measured, band, bounded = paired[mode, gap, tuple(seeds)]
        if abs(measured - 100 * (a - b)) > 0.01:  # the networks were scored again: the gap must come out the same
            sys.exit(f"{folder}/paired.json: its {mode} '{gap}' gap {measured:+.2f} is not the runs' "
                     f"{100 * (a - b):+.2f}; run benchmarks/paired_accuracy.py again")  # fmt: skip
        return band, f"paired noise {'≤' if bounded else ''}±{band:.1f}"

    seeds = sorted({s for (m, _, s) in runs if m == "full"})
    rows = []
    for mode in MODES:
        done = [s for s in seeds if ("direct", mode, s) in runs]
        if not done:
            continue
        link = f"[{folder}]({folder}/)"
        where = seeds_run(scale, done, planned)
        provisional = len(done) < 2
        full = {s: runs["full", "-", s] for s in done}
        untested = unconverged(list(full.values()))
        direct = {s: runs["direct", mode, s] for s in done}
        delta = [100 * (direct[s]["test_accuracy"] - full[s]["test_accuracy"]) for s in done]
        cut = 100 * (1 - mean([direct[s][_key(mode)] / full[s][_key(mode)] for s in done]))
        paper_delta, paper_cut = PAPER[model][mode]
        rows.append(_row(f"{SETUP[model]} {LABEL[mode]}: accuracy change of the direct network",
                         f"{paper_delta:+.2f} pts at {paper_cut:.2f}% fewer {mode}",
                         f"{spread(delta)} pts at {cut:.2f}%", where,
                         mean(delta) >= paper_delta - WITHIN, False, provisional, link, untested,
                         disagree([d >= paper_delta - WITHIN for d in delta])))  # fmt: skip
        conventional = [m for m in ("l1", "nuclear") if all((m, mode, s) in runs for s in done)]
        if conventional:
            best = [max(100 * runs[m, mode, s]["test_accuracy"] for m in conventional) for s in done]
            gap = [100 * direct[s]["test_accuracy"] - b for s, b in zip(done, best)]
            band, shown = noise(mode, "direct vs conventional", mean([direct[s]["test_accuracy"] for s in done]),
                                mean(best) / 100, done)  # fmt: skip
            versus = f"{spread(gap)} pts against the better of {' / '.join(conventional)} ({shown})"
            claim = f"{SETUP[model]} {LABEL[mode]}: direct matches train -> prune -> fine-tune"
            holds, near, split = judged(gap, -WITHIN, band)
            rows.append(_row(claim, "comparable accuracy", versus, where, holds, near, provisional, link, untested,
                             split))  # fmt: skip
        for timed_method, who in (
            ("direct-matched", "direct"),
            ("searched-matched", "the searched network"),
            ("uniform-matched", "width scaling"),
        ):
            if not conventional or not (timed := [s for s in done if (timed_method, mode, s) in runs]):
                continue  # the seeds whose time-matched run is in (a long study adds them one seed at a time)
            matched = [runs[timed_method, mode, s]["test_accuracy"] for s in timed]
            best_timed = [b for s, b in zip(done, best) if s in timed]
            gap = [100 * a - b for a, b in zip(matched, best_timed)]
            band, shown = noise(mode, f"{timed_method} vs conventional", mean(matched), mean(best_timed) / 100, timed)
            claim = f"{SETUP[model]} {LABEL[mode]}: at equal training time, {who} matches conventional (ours)"
            versus = f"{spread(gap)} pts against the better of {' / '.join(conventional)} ({shown})"
            when = seeds_run(scale, timed, planned)
            holds, near, split = judged(gap, -WITHIN, band)
            rows.append(_row(claim, "-", versus, when, holds, near, len(timed) < 2, link, split=split))
        if searched := [s for s in done if ("searched", mode, s) in runs]:
            rows.append(searched_row(runs, mode, searched, f"{SETUP[model]} {LABEL[mode]}", scale, planned, link,
                                     lambda gap, a, b, m=mode, s=searched: noise(m, gap, a, b, s)))  # fmt: skip
        if all(("l1", mode, s) in runs for s in done):
            saving = [1 - steady_seconds(direct[s]["history"]) / steady_seconds(runs["l1", mode, s]["history"])
                      for s in done]  # fmt: skip
            ours = f"{100 * mean(saving):.0f}% (epoch times in the run)"
            if len(re_timed := [quiet[mode, s] for s in done if (mode, s) in quiet]) == len(done):
                ours = f"{100 * mean(re_timed):.0f}% re-timed quietly ({100 * mean(saving):.0f}% in the run)"
                saving = re_timed
            rows.append(_row(f"{SETUP[model]} {LABEL[mode]}: training time saved against l1",
                             "about 60% (journal)", ours, where, mean(saving) >= TIME_SAVING, False, provisional,
                             link, split=disagree([x >= TIME_SAVING for x in saving])))  # fmt: skip
        if taught := [s for s in done if all((m, mode, s) in runs for m in ("l1", "l1+kd", "direct+kd"))]:
            rows.append(distill_row(runs, mode, taught, f"{SETUP[model]} {LABEL[mode]}", scale, planned, link,
                                    lambda gap, a, b, m=mode, s=taught: noise(m, gap, a, b, s)))  # fmt: skip
        others = [m for m in ("unweighted", "uniform") if all((m, mode, s) in runs for s in done)]
        if others:
            text, holds, near, split = not_below(runs, "direct", others, mode, done,
                                                 lambda gap, a, b, m=mode, s=done: noise(m, gap, a, b, s))  # fmt: skip
            rows.append(_row(f"{SETUP[model]} {LABEL[mode]}: the complexity weighting helps (ours)", "-", text,
                             where, holds, near, provisional, link, split=split))  # fmt: skip
    return rows


Noise = Callable[[str, float, float], tuple[float, str]]  # (gap's name, a, b) -> the band of a - b and its label


def not_below(runs: dict, method: str, others: list[str], mode: str, seeds: list[int], noise: Noise) -> tuple[
        str, bool, bool, bool]:  # fmt: skip
    """``method`` against each of ``others`` over ``seeds``: (the gaps as text, holds: below none of them, within
    noise, seeds disagree)."""
    ours = [runs[method, mode, s]["test_accuracy"] for s in seeds]
    gaps = {m: [100 * (a - runs[m, mode, s]["test_accuracy"]) for a, s in zip(ours, seeds)] for m in others}
    bands = {m: noise(f"{method} vs {m}", mean(ours), mean([runs[m, mode, s]["test_accuracy"] for s in seeds]))
             for m in others}  # fmt: skip
    holds, near = all_judged([judged(gaps[m], 0.0, bands[m][0]) for m in others])
    split = disagree([all(gaps[m][i] >= 0 for m in others) for i in range(len(seeds))])
    return "; ".join(f"{spread(g)} pts vs {m} ({bands[m][1]})" for m, g in gaps.items()), holds, near, split


def searched_row(runs: dict, mode: str, seeds: list[int], setup: str, scale: str, planned: int, link: str,
                 noise: Noise) -> dict:  # fmt: skip
    """Issue 26's verdict: the searched network (``compare --candidates K``, the search's seconds in its time)
    against the weighted lottery it searched, the unweighted lottery and width scaling at equal epochs; holds
    when it is below none of them."""
    others = [m for m in ("direct", "unweighted", "uniform") if all((m, mode, s) in runs for s in seeds)]
    text, holds, near, split = not_below(runs, "searched", others, mode, seeds, noise)
    ours = [runs["searched", mode, s] for s in seeds]
    search = mean([r["train_seconds"] - sum(h["epoch_seconds"] for h in r["history"]) for r in ours])
    where = seeds_run(scale, seeds, planned)
    return _row(f"{setup}: the searched network beats the lotteries and width scaling at equal epochs (ours)", "-",
                f"{text}; search {search:.1f} s, counted in its time", where, holds, near, len(seeds) < 2, link,
                split=split)  # fmt: skip


def distill_row(runs: dict, mode: str, seeds: list[int], setup: str, scale: str, planned: int, link: str,
                noise: Noise) -> dict:  # fmt: skip
    """Issue 26's verdict on distillation at convergence (``compare --distill``): each network trained with the
    seed's full model as teacher against the same network trained without one, at equal epochs; holds when
    neither distilled network is below its plain twin."""
    pairs = [("l1+kd", "l1"), ("direct+kd", "direct")]
    acc = {m: [runs[m, mode, s]["test_accuracy"] for s in seeds] for pair in pairs for m in pair}
    gaps = {kd: [100 * (a - b) for a, b in zip(acc[kd], acc[plain])] for kd, plain in pairs}
    bands = {kd: noise(f"{kd} vs {plain}", mean(acc[kd]), mean(acc[plain])) for kd, plain in pairs}
    holds, near = all_judged([judged(gaps[kd], 0.0, bands[kd][0]) for kd, _ in pairs])
    split = disagree([all(gaps[kd][i] >= 0 for kd, _ in pairs) for i in range(len(seeds))])
    text = "; ".join(f"{kd} {spread(gaps[kd])} pts vs {plain} ({bands[kd][1]})" for kd, plain in pairs)
    where = seeds_run(scale, seeds, planned)
    return _row(f"{setup}: distilling from the full model lifts the network at equal epochs (ours)", "-", text,
                where, holds, near, len(seeds) < 2, link, split=split)  # fmt: skip


def _key(mode: str) -> str:
    """The record's field of a mode's cost."""
    return {"params": "params", "flops": "flops", "memory": "memory_bytes"}[mode]


def _row(
    claim: str,
    paper: str,
    ours: str,
    scale: str,
    holds: bool,
    noisy: bool,
    provisional: bool,
    link: str,
    untested: str | None = None,
    split: bool = False,
) -> dict:
    """One verdict row; ``untested`` (a reason) overrides holds/fails; ``noisy``: within test-set noise;
    ``split``: the seeds alone would not all give this verdict."""
    verdict = f"untested at this scale ({untested})" if untested else "holds" if holds else "fails"
    notes = [] if untested else (["within test-set noise"] * noisy + ["seeds disagree"] * split
                                 + ["provisional: one seed"] * provisional)  # fmt: skip
    return {"claim": claim, "paper": paper, "ours": ours, "scale": scale,
            "verdict": verdict + (f" ({'; '.join(notes)})" if notes else ""), "run": link}  # fmt: skip


def draw_curves(folder: str, model: str, scale: str) -> str | None:
    """Redraw a study's curves.png from its committed compare.json; the markdown line linking it, or None."""
    path = RESULTS / folder / "compare.json"
    if not path.is_file():
        return None
    runs = json.loads(path.read_text())["runs"]
    plot_learning_curves(runs, RESULTS / folder / "curves.png", f"{SETUP[model]}: {scale}")
    return f"- [{SETUP[model]}, {scale}]({folder}/curves.png)"


def tally(rows: list[dict]) -> list[str]:
    """A count of verdicts per kind of claim, so the table can be read at a glance."""
    kinds = list(dict.fromkeys(r["claim"].split(": ", 1)[1] for r in rows))
    head = [
        "claim, over every setup and mode (provisional verdicts counted)",
        "holds",
        "fails",
        "untested at this scale",
        "of holds + fails, within test-set noise",
        "of holds + fails, seeds disagree",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for kind in kinds:
        verdicts = [r["verdict"] for r in rows if r["claim"].split(": ", 1)[1] == kind]
        counts = [sum(v.startswith(word) for v in verdicts) for word in ("holds", "fails", "untested")]
        counts.append(sum("within test-set noise" in v for v in verdicts))
        counts.append(sum("seeds disagree" in v for v in verdicts))
        lines.append(f"| {kind} | " + " | ".join(map(str, counts)) + " |")
    return [*lines, ""] if rows else []


def markdown(rows: list[dict], missing: list[tuple[str, str, str]], curves: list[str]) -> str:
    """The verdict page."""
    head = ["claim", "paper", "ours", "scale", "verdict", "run"]
    lines = [
        "# Results: the paper's claims at the scale we can run",
        "",
        "Written by `python benchmarks/verdict.py` from the committed `compare.json` of each run, and the run records "
        "carried in its `records/` (a time-matched run added one seed at a time; each run's folder "
        'has its command, commit, machine and date). Paper figures: SPEC, "Reference figures from the paper" '
        "(150 epochs, RMSprop, 5 seeds). Rules: an accuracy change holds when ours is at most 1 point below the "
        "paper's; direct against conventional holds when the direct network is at most 1 point below the better "
        "of l1 / nuclear; the training-time saving holds at 50% or more against the l1 pipeline (pre-training "
        "included; per stage the median epoch time x epochs, so paused epochs are not charged; where a study was "
        "re-timed quietly by `benchmarks/pipeline_time.py`, its quiet step times x epochs decide); the complexity "
        "weighting holds when the weighted lottery is not below the unweighted lottery nor width scaling; "
        "distillation holds when neither distilled network (l1+kd, direct+kd: the seed's full model as teacher) "
        "is below the same network trained without a teacher, at equal epochs. The "
        "paper's accuracy claims are claims at convergence: where the full model is not at its plateau (its last "
        "4 epochs span more than 1 point) they are untested at that scale, and our figures are shown beside the "
        'verdict. One seed makes a verdict provisional; "seeds disagree" marks a verdict that some seed alone '
        "would not give (the mean decides, but another seed could move it). A comparison of two of our networks "
        'is marked "within '
        'test-set noise" when its distance from its threshold is under two standard errors of test-set sampling '
        "(paired noise ±x: measured image by image by `benchmarks/paired_accuracy.py`; where a study lacks it, "
        "noise ±x: 2 sqrt((a(1-a) + b(1-b)) / n) for accuracies a, b on n test images, an upper bound for two "
        "networks scored on the same images; averaging seeds does not shrink it, the seeds share the test set).",
        "",
        *tally(rows),
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *("| " + " | ".join(r[k] for k in head) + " |" for r in rows),
        "",
    ]
    lines += [
        "The figures the paper cites for its conventional baselines (SPEC) are beyond this machine's time; our l1 "
        "and nuclear pipelines are the ones in the table above, at its scales:",
        "",
        "| figure cited | reported | verdict |",
        "|---|---|---|",
        *(f"| {claim} | {figure} | untested at this scale ({why}) |" for claim, figure, why in CITED),
        "",
    ]
    if missing:
        lines += ["Not run yet (no compare.json committed):", ""]
        lines += [f"- {SETUP[model]}: {scale} (`docs/results/{folder}`)" for folder, model, scale in missing]
        lines.append("")
    if curves:
        lines += [
            "## Learning curves",
            "",
            "Test accuracy per epoch, drawn from the same compare.json files "
            "(a conventional pipeline's curve is its pre-training, then its fine-tuning):",
            "",
            *curves,
            "",
        ]
    others = sorted(p.name for p in RESULTS.glob("*.md") if p.name != "README.md")
    lines += ["## Other results in this folder", "", *(f"- [{name}]({name})" for name in others), ""]
    return "\n".join(lines)


def main() -> None:
    """Build the verdict page."""
    p = parser(
        __doc__, out={"default": str(RESULTS / "README.md"), "help": "where to write (default docs/results/...)"}
    )
    args = p.parse_args()
    rows, missing, curves = [], [], []
    for folder, model, scale, planned, test_images in STUDIES:
        found = study_claims(folder, model, scale, planned, test_images)
        rows += found
        if not found:
            missing.append((folder, model, scale))
        elif line := draw_curves(folder, model, scale):
            curves.append(line)
    text = markdown(rows, missing, curves)
    write_text(Path(args.out), text)
    print(text)


if __name__ == "__main__":
    main()
