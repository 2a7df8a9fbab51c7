"""Which proxy ranks budget-meeting candidates by the accuracy they reach when trained (issue 26, item 2).

At the convergence study's scale (VGG-16 at width 0.25, full CIFAR-10, 30 epochs of one-cycle SGD from the
seed-0 initialisation), for FA at the paper's 10.33% of the FLOPs and MA at 8.98% of the memory: draw the
candidates ``edgeprune prune --candidates K --candidate-kinds weighted uniform ratio`` draws (K seeds of the
weighted and the unweighted lottery, and width scaling; filled as ``prune`` fills by default), train every one
to 30 epochs, score every one with every proxy, and report each proxy's Spearman rank correlation with the
final test accuracy, the accuracy of the candidate it would keep, and what it costs.

Four stages, each resumable, so the trainings can run where there is an accelerator::

    python benchmarks/proxy_study.py draw --out runs/proxy_study
    python benchmarks/proxy_study.py train --out runs/proxy_study --data ../shared/data/cifar10.tar.gz \
        --device cuda --workers 12
    python benchmarks/proxy_study.py score --out runs/proxy_study --data ../shared/data/cifar10.tar.gz
    python benchmarks/proxy_study.py report --out runs/proxy_study --results docs/results/proxy_study
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from common import RESULTS, json_text, provenance, utc_date, write_report, write_text

MODES = {"flops": 0.1033, "memory": 0.0898}  # the paper's FA and MA reductions, as the convergence study ran them
KINDS = ("weighted", "uniform", "ratio")
PROXIES = ("flops", "params", "synflow", "naswot", "gradnorm", "train:200")
ARCH, WIDTH, CLASSES, SEED, EPOCHS = "vgg16", 0.25, 10, 0, 30


# -- draw ----------------------------------------------------------------------------------------------------


def _job(mode: str):
    """The seed-0 VGG-16 w0.25 and its PruneJob for one mode's budget (as ``edgeprune prune`` starts it)."""
    import torch

    from edgeprune.costs import Budget
    from edgeprune.io import ModelRef, resolve
    from edgeprune.pruning import PruneJob, PruneSettings

    torch.manual_seed(SEED)  # as `edgeprune prune --seed 0` builds the model it prunes
    resolved = resolve(ModelRef(ARCH, width=WIDTH, num_classes=CLASSES))
    model = resolved.model
    settings = PruneSettings(input_shape=resolved.input_shape, fill=True)
    job = PruneJob.start(model, Budget.of(mode, MODES[mode]), settings)
    return model, job, resolved.input_shape


def _search(mode: str, k: int, proxy: str, data=None):
    """``edgeprune.search.search`` for one mode with ``prune``'s settings: every candidate, scored by ``proxy``."""
    from edgeprune.search import search

    model, job, shape = _job(mode)
    found = search(model, job.prof, job.first, k=k, kinds=KINDS, proxy=proxy, seed=SEED, data=data,
                   example=job.example, step=job.step, scores=job.scores, min_filters=job.min_filters,
                   round_to=job.round_to, fill=True)  # fmt: skip
    return model, job, shape, found


def name_of(mode: str, kind: str, seed: int) -> str:
    """A candidate's folder name."""
    return f"{mode}-{kind}-{seed}"


def draw(out: Path, k: int) -> None:
    """Save every candidate of both modes as a model folder at initialisation, and candidates.json."""
    from edgeprune.io import save

    rows = []
    for mode in MODES:
        _, job, shape, found = _search(mode, k, "flops")
        for cand in found.candidates:
            name = name_of(mode, cand.kind, cand.seed)
            save(job.cut(cand.plan), out / "cands" / name, shape)
            rows.append({"name": name, "mode": mode, "target": MODES[mode], "kind": cand.kind, "seed": cand.seed,
                         "costs": cand.costs, "widths": cand.widths()})  # fmt: skip
            print(f"{name}: flops {cand.costs['flops']:.4g} params {cand.costs['params']:.4g}", flush=True)
    write_text(out / "candidates.json", json_text({"k": k, "kinds": KINDS, "candidates": rows}))


# -- train (each candidate a fresh `edgeprune train` process) --------------------------------------------------


def _train_command(folder: Path, run: Path, args: argparse.Namespace) -> list[str]:
    return [sys.executable, "-m", "edgeprune", "train", str(folder), "--data", args.data, "--epochs",
            str(args.epochs), "--seed", str(SEED), "--device", args.device, "--threads", "1", "--out", str(run),
            "--quiet", *(["--resume"] if (run / "checkpoint.safetensors").exists() else [])]  # fmt: skip


def _finished(run: Path) -> dict | None:
    path = run / "train.json"
    return json.loads(path.read_text()) if path.is_file() else None


def train(out: Path, args: argparse.Namespace) -> None:
    """Train every candidate not yet trained, ``workers`` at a time; stop starting new ones at the deadline."""
    rows = json.loads((out / "candidates.json").read_text())["candidates"]
    by_mode = [[r["name"] for r in rows if r["mode"] == mode] for mode in args.modes]
    # the modes interleaved: a run cut short leaves both modes with as many candidates as it can
    names = [n for group in itertools.zip_longest(*by_mode) for n in group if n is not None]
    todo = [n for n in names if _finished(out / "runs" / n) is None]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    start, running, failed = time.monotonic(), {}, []
    (out / "runs").mkdir(parents=True, exist_ok=True)
    while todo or running:
        while todo and len(running) < args.workers and time.monotonic() - start < args.deadline_s:
            name = todo.pop(0)
            log = open(out / "runs" / f"{name}.log", "a")  # noqa: SIM115 - closed when the run ends
            cmd = _train_command(out / "cands" / name, out / "runs" / name, args)
            running[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log,
                             time.monotonic())  # fmt: skip
        if not running:
            break
        time.sleep(1)
        for name, (proc, log, t0) in list(running.items()):
            if proc.poll() is None and time.monotonic() - start < args.kill_s:
                continue
            if proc.poll() is None:
                proc.terminate()  # edgeprune train keeps its last epoch's checkpoint on SIGTERM
                proc.wait()
            log.close()
            del running[name]
            ok = _finished(out / "runs" / name) is not None
            failed += [] if ok else [name]
            print(f"{utc_date('iso')} {name}: {'done' if ok else 'stopped'} in {time.monotonic() - t0:.0f} s",
                  flush=True)  # fmt: skip
    print(f"trained {len(names) - len(todo) - len(failed)} of {len(names)}; unfinished: {failed + todo}")


def collect(runs: Path) -> dict:
    """Every run's per-epoch test accuracy and seconds by candidate name, and whether it finished its schedule."""
    found = {}
    for run in sorted(p for p in runs.glob("*") if (p / "metrics.jsonl").is_file()):
        summary = _finished(run)
        epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        found[run.name] = {"finished": summary is not None, "epochs": len(epochs),
                           "curve": [round(e["test_acc"], 4) for e in epochs],
                           "train_seconds": epochs[-1]["train_seconds"] if epochs else None,
                           "images_per_s": [e["images_per_s"] for e in epochs]}  # fmt: skip
    return found


# -- score ---------------------------------------------------------------------------------------------------


def score(out: Path, args: argparse.Namespace) -> None:
    """Every proxy's score and seconds for every candidate, on this machine (the CPU a user prunes on)."""
    import torch

    from edgeprune.data import load_dataset

    torch.set_num_threads(args.threads)
    data = load_dataset(args.data)
    drawn = {row["name"]: row for row in json.loads((out / "candidates.json").read_text())["candidates"]}
    k = json.loads((out / "candidates.json").read_text())["k"]
    path = out / "scores.json"
    scores = json.loads(path.read_text()) if path.is_file() else {}
    for proxy in args.proxies:
        for mode in args.modes:
            if all(proxy in scores.get(n, {}) for n in drawn if drawn[n]["mode"] == mode):
                continue
            t0 = time.perf_counter()
            *_, found = _search(mode, k, proxy, data)
            for cand in found.candidates:
                name = name_of(mode, cand.kind, cand.seed)
                if any(not math.isclose(v, drawn[name]["costs"][c], rel_tol=1e-9) for c, v in cand.costs.items()):
                    raise SystemExit(f"{name}: drawn again with other costs; the candidates are not reproducible")
                scores.setdefault(name, {})[proxy] = {"score": cand.score, "seconds": round(cand.seconds, 3)}
            write_text(path, json_text(scores))
            print(f"{proxy} {mode}: {time.perf_counter() - t0:.0f} s, load {os.getloadavg()[0]:.1f}", flush=True)


# -- report --------------------------------------------------------------------------------------------------


def _fisher_interval(r: float, n: int) -> tuple[float, float]:
    """An approximate 95% interval of a rank correlation (Fisher z, standard error 1.03 / sqrt(n - 3))."""
    if n <= 3 or abs(r) >= 1:
        return (r, r)
    z, half = math.atanh(r), 1.96 * 1.03 / math.sqrt(n - 3)
    return (math.tanh(z - half), math.tanh(z + half))


def analyse(out: Path) -> dict:
    """Per mode and proxy: Spearman with final accuracy, its interval, the kept candidate's accuracy, seconds."""
    from edgeprune.search import spearman

    drawn = json.loads((out / "candidates.json").read_text())["candidates"]
    trained = json.loads((out / "trained.json").read_text())["runs"]
    scores = json.loads((out / "scores.json").read_text())
    result = {}
    for mode in MODES:
        rows = [r for r in drawn if r["mode"] == mode and r["name"] in trained]
        if not rows:
            continue
        # every candidate at the same epoch: the last one all of them reached (the schedule's end when all finished)
        epoch = min(trained[r["name"]]["epochs"] for r in rows)
        acc = [trained[r["name"]]["curve"][epoch - 1] for r in rows]
        for r, a in zip(rows, acc):
            r["test_accuracy"] = a
        per = {}
        for proxy in PROXIES:
            if not all(proxy in scores.get(r["name"], {}) for r in rows) or len(rows) < 3:
                continue
            values = [scores[r["name"]][proxy]["score"] for r in rows]
            rho = spearman(values, acc)
            best = max(range(len(rows)), key=lambda i: (values[i], -i))  # ties to the one drawn first
            seconds = [scores[r["name"]][proxy]["seconds"] for r in rows]
            low, high = _fisher_interval(rho, len(rows))
            per[proxy] = {"spearman": round(rho, 3), "interval95": [round(low, 2), round(high, 2)],
                          "kept": rows[best]["name"], "kept_accuracy": acc[best],
                          "seconds_per_candidate": round(sum(seconds) / len(seconds), 2)}  # fmt: skip
        result[mode] = {"candidates": len(rows), "epoch": epoch,
                        "finished": all(trained[r["name"]]["finished"] for r in rows),
                        "best": max(acc), "mean": sum(acc) / len(acc), "worst": min(acc),
                        "weighted_seed0": acc[[r["name"] for r in rows].index(name_of(mode, "weighted", 0))],
                        "proxies": per,
                        "rows": [{**r, **trained[r["name"]], "scores": scores.get(r["name"], {})}
                                 for r in rows]}  # fmt: skip
    return result


def _markdown(result: dict, head: dict) -> str:
    lines = ["# Which proxy picks the candidate that trains best (VGG-16 w0.25, full CIFAR-10, 30 epochs)", "",
             f"`{head['command']}` at commit {head['commit']}, {head['date']}.", ""]  # fmt: skip
    for mode, r in result.items():
        lines += [f"## {mode} at {MODES[mode]} of the full model: {r['candidates']} candidates", "",
                  f"Test accuracy at epoch {r['epoch']} of the {EPOCHS}-epoch schedule"
                  + ("" if r["finished"] else " (the last epoch every candidate reached: the runs were cut short)")
                  + f": best {100 * r['best']:.2f}%, mean {100 * r['mean']:.2f}%, worst "
                  f"{100 * r['worst']:.2f}%; Algorithm 1's own plan (weighted, seed 0) "
                  f"{100 * (r['weighted_seed0'] or 0):.2f}%.", "",
                  "| proxy | Spearman with final accuracy | 95% interval | kept | its accuracy | s per candidate |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for proxy, p in r["proxies"].items():
            lo, hi = p["interval95"]
            lines.append(f"| {proxy} | {p['spearman']:+.3f} | {lo:+.2f} .. {hi:+.2f} | {p['kept']} | "
                         f"{100 * p['kept_accuracy']:.2f}% | {p['seconds_per_candidate']} |")  # fmt: skip
        lines += ["", "| candidate | FLOPs | params | memory | test accuracy | " + " | ".join(PROXIES) + " |",
                  "|---" * (5 + len(PROXIES)) + "|"]  # fmt: skip
        for row in sorted(r["rows"], key=lambda x: -x["test_accuracy"]):
            cells = [f"{row['scores'][p]['score']:.4g}" if p in row["scores"] else "" for p in PROXIES]
            c = row["costs"]
            lines.append(f"| {row['name']} | {c['flops']:.4g} | {c['params']:.4g} | {c['memory']:.4g} | "
                         f"{100 * row['test_accuracy']:.2f}% | " + " | ".join(cells) + " |")  # fmt: skip
        lines.append("")
    return "\n".join(lines)


def report(out: Path, results: Path) -> None:
    """Write the study's tables and record."""
    head = provenance()
    result = analyse(out)
    write_report(results / "proxy_study", _markdown(result, head), {"provenance": head, "result": result})


def main() -> None:
    """Parse the stage and run it."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("stage", choices=["draw", "train", "collect", "score", "report"])
    p.add_argument("--out", type=Path, default=Path("runs/proxy_study"))
    p.add_argument("--results", type=Path, default=RESULTS / "proxy_study")
    p.add_argument("--candidates", type=int, default=8, help="K seeds per lottery kind (default 8: 17 per mode)")
    p.add_argument("--data", default="../shared/data/cifar10.tar.gz")
    p.add_argument("--epochs", type=int, default=EPOCHS)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--deadline-s", type=float, default=math.inf, help="start no run after this many seconds")
    p.add_argument("--kill-s", type=float, default=math.inf, help="stop runs still going after this many seconds")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--proxies", nargs="+", default=list(PROXIES))
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--runs", type=Path, help="collect: the run folders (default OUT/runs)")
    args = p.parse_args()
    if args.stage == "draw":
        draw(args.out, args.candidates)
    elif args.stage in ("train", "collect"):
        if args.stage == "train":
            train(args.out, args)
        # runs found here replace their records; the others' records are kept (FA trained elsewhere, MA here)
        known = args.out / "trained.json"
        runs = json.loads(known.read_text())["runs"] if known.is_file() else {}
        runs.update(collect(args.runs or args.out / "runs"))
        write_text(known, json_text({"date": utc_date(), "runs": runs}))
    elif args.stage == "score":
        score(args.out, args)
    else:
        report(args.out, args.results)


if __name__ == "__main__":
    main()
