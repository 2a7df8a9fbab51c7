"""Paired test-set noise of a comparison's accuracy gaps (issue 13): how far a gap could move on other test images.

``edgeprune compare`` records each network's test accuracy; the verdict compares two networks' accuracies
(direct against the better conventional pipeline, the weighted lottery against the unweighted one and width
scaling). Both were scored on the same test images, so their errors correlate and the noise of their gap is
smaller than two independent accuracies' would be. This reloads every finished network of the comparison
(``<run>/model.json`` + ``model.safetensors``), scores it image by image on the comparison's test split, and
for each gap averages the per-image differences over the seeds: the gap is their mean, its standard error
their standard deviation / sqrt(images). The seeds share the test set, so averaging them does not shrink the
test-set part of the noise; this measures it.

Each network's recomputed accuracy is written beside the one the run recorded (a check: they should agree to
an image or two; evaluation here runs at another thread count). Writes ``paired.json`` and ``paired.md`` into
``--out``; ``benchmarks/verdict.py`` reads the JSON.

A study's weights need not outlive the session that trained them (``compare --resume`` carries a study in its
runs' records): ``paired.json`` keeps every network's per-image hits (packed bits), and a later call takes them
back for networks whose weights are gone, when the run's recorded accuracy is still the one they were scored
against. Where a seed's hits were never kept (an earlier paired.json: its per-seed gaps only), a gap over seeds
is the mean of the per-seed gaps (exact) and its standard error the mean of theirs: an upper bound (the standard
deviation of a mean of vectors is at most the mean of their standard deviations), marked ``se_bound``.

    .venv/bin/python benchmarks/paired_accuracy.py runs/conv_vgg16_w025 --data ../shared/data/cifar10.tar.gz \\
        --out docs/results/convergence_vgg16_w025
"""

from __future__ import annotations

import base64
import json
import math
import sys
from pathlib import Path

import torch
from common import parser, runs_provenance, write_report

import edgeprune
from edgeprune.data import ImageDataset, Normalizer, load_dataset
from edgeprune.records import RECORD, run_tag

CONVENTIONAL = ("l1", "nuclear")
# (name of the gap, the network, what it is compared with): "best" is the better conventional network per seed
GAPS = [
    ("direct vs conventional", "direct", "best"),
    ("direct-matched vs conventional", "direct-matched", "best"),
    ("direct vs unweighted", "direct", "unweighted"),
    ("direct vs uniform", "direct", "uniform"),
]


@torch.inference_mode()
def hits(model: torch.nn.Module, data: ImageDataset, batch_size: int = 500) -> torch.Tensor:
    """Per test image, 1.0 where the model's top-1 class is right (preprocessed as training evaluates)."""
    normalize = Normalizer(data.mean, data.std)
    model.eval()
    out = [model(normalize(data.test_x[i : i + batch_size])).argmax(1) == data.test_y[i : i + batch_size]
           for i in range(0, len(data.test_y), batch_size)]  # fmt: skip
    return torch.cat(out).double()


def paired_gap(a: list[torch.Tensor], b: list[torch.Tensor]) -> tuple[float, float]:
    """Mean gap (points) between networks ``a`` and ``b`` over seeds, and its standard error over test images."""
    d = torch.stack([x - y for x, y in zip(a, b)]).mean(0)  # per image, averaged over seeds
    return 100 * float(d.mean()), 100 * float(d.std(unbiased=True)) / math.sqrt(len(d))


def network(method: str, mode: str, seed: int, accuracy: dict[str, float]) -> str | None:
    """The run a gap compares with; "best": the better conventional network of that seed (as the verdict takes)."""
    if method != "best":
        return run_tag(method, mode, seed)
    tags = [run_tag(m, mode, seed) for m in CONVENTIONAL if run_tag(m, mode, seed) in accuracy]
    return max(tags, key=lambda t: accuracy[t], default=None)


def gaps(compare: dict, correct: dict[str, torch.Tensor], earlier: list[dict]) -> tuple[list[dict], list[dict]]:
    """Every gap of ``GAPS`` whose networks finished for all of a mode's seeds, measured over the seeds together
    where every network's hits are here, else combined from per-seed gaps (``earlier``: those measured before);
    and the per-seed gaps."""
    accuracy = {run_tag(r["method"], r["mode"], r["seed"]): r["test_accuracy"] for r in compare["runs"]}
    seeds = sorted({r["seed"] for r in compare["runs"] if r["method"] == "full"})
    single = {(r["mode"], r["gap"], r["seeds"][0]): r for r in earlier if len(r["seeds"]) == 1}
    rows = []
    for mode in compare["settings"]["targets"]:
        done = [s for s in seeds if run_tag("direct", mode, s) in accuracy]
        for name, first, second in GAPS:
            pairs = [(run_tag(first, mode, s), network(second, mode, s, accuracy)) for s in done]
            if not done or not all(a in accuracy and b for a, b in pairs):
                continue
            measured = [s for s, (a, b) in zip(done, pairs) if a in correct and b in correct]
            for s in measured:  # each seed alone, kept for later calls that lack its hits
                a, b = pairs[done.index(s)]
                single[mode, name, s] = _row(mode, name, [s], [(a, b)], *paired_gap([correct[a]], [correct[b]]),
                                             len(correct[a]))  # fmt: skip
            if len(measured) == len(done):
                gap, se = paired_gap([correct[a] for a, _ in pairs], [correct[b] for _, b in pairs])
                rows.append(_row(mode, name, done, pairs, gap, se, len(correct[pairs[0][0]])))
            elif all((mode, name, s) in single for s in done) and len(done) > 1:
                parts = [single[mode, name, s] for s in done]
                gap, se = (sum(p[k] for p in parts) / len(parts) for k in ("gap_pts", "paired_se_pts"))
                rows.append(_row(mode, name, done, pairs, gap, se, parts[0]["images"], bound=True))
    return rows, [single[k] for k in sorted(single, key=lambda k: (k[2], str(k[0]), str(k[1])))]


def _row(mode: str, name: str, seeds: list[int], pairs: list, gap: float, se: float, images: int,
         bound: bool = False) -> dict:  # fmt: skip
    """One gap's record (``bound``: its standard error is an upper bound, combined from per-seed ones)."""
    return {"mode": mode, "gap": name, "seeds": seeds, "networks": pairs, "gap_pts": gap, "paired_se_pts": se,
            "images": images, **({"se_bound": True} if bound else {})}  # fmt: skip


def pack(hit: torch.Tensor) -> str:
    """Per-image hits as base64 of packed bits (10,000 images: 1,668 characters)."""
    bits = hit.bool().tolist() + [False] * (-len(hit) % 8)
    data = bytes(sum(b << (7 - i) for i, b in enumerate(bits[j : j + 8])) for j in range(0, len(bits), 8))
    return base64.b64encode(data).decode()


def unpack(text: str, images: int) -> torch.Tensor:
    """:func:`pack`'s inverse: ``images`` hits as 0.0 / 1.0."""
    data = base64.b64decode(text)
    return torch.tensor([(data[i // 8] >> (7 - i % 8)) & 1 for i in range(images)], dtype=torch.float64)


def finished_runs(folder: Path, compare: dict) -> list[dict]:
    """The comparison's runs: those in its compare.json, and those finished since (their ``record.json``), so that
    a network is scored while its weights are still here, before its mode's table is written."""
    runs = {run_tag(r["method"], r["mode"], r["seed"]): r for r in compare["runs"]}
    for path in sorted(folder.glob(f"*/{RECORD}")):
        runs.setdefault(path.parent.name, json.loads(path.read_text())["record"])
    return list(runs.values())


def kept_hits(previous: dict, compare: dict, data: ImageDataset) -> dict[str, torch.Tensor]:
    """The hits an earlier paired.json kept, for networks whose record still has the accuracy they were scored at."""
    if previous.get("data") != data.name or previous.get("images") != len(data.test_y):
        return {}
    accuracy = {run_tag(r["method"], r["mode"], r["seed"]): r["test_accuracy"] for r in compare["runs"]}
    hits = {}
    for tag, text in previous.get("hits", {}).items():
        check = previous["checks"].get(tag, {})
        if tag in accuracy and check.get("recorded") == accuracy[tag]:
            hits[tag] = unpack(text, len(data.test_y))
    return hits


def _table(rows: list[dict]) -> list[str]:
    """Gap rows as Markdown table lines."""
    return [
        "| mode | gap | seeds | gap (pts) | paired s.e. (pts) | 2 s.e. |",
        "|---|---|---|---|---|---|",
        *(f"| {r['mode']} | {r['gap']} | {', '.join(map(str, r['seeds']))} | {r['gap_pts']:+.2f} | "
          f"{'≤ ' if r.get('se_bound') else ''}{r['paired_se_pts']:.2f} | ±{2 * r['paired_se_pts']:.2f} |"
          for r in rows),
    ]  # fmt: skip


def markdown(meta: dict, checks: dict[str, dict], rows: list[dict], singles: list[dict]) -> str:
    """The report."""
    worst = max(abs(c["recomputed"] - c["recorded"]) for c in checks.values())
    kept = sum(bool(c.get("kept")) for c in checks.values())
    return "\n".join([
        f"# Paired test-set noise of `{meta['runs']}`",
        "",
        f"`{meta['command']}`",
        "",
        f"{meta['date']}, commit {meta['commit']}, {meta['images']} test images of {meta['data']}. The gap is the "
        "mean over seeds of two networks' accuracies on the same images; its standard error is the standard "
        "deviation of the per-image differences (averaged over seeds) / sqrt(images). Two standard errors is "
        "the noise band `benchmarks/verdict.py` uses.",
        "",
        *_table(rows),
        "",
        *(["'≤': no per-image hits of some seed were kept (its gaps were measured before hits were), so the "
           "standard error is the mean of the per-seed ones, an upper bound; the gap itself is exact.", ""]
          if any(r.get("se_bound") for r in rows) else []),
        *(["Each seed alone:", "", *_table(singles), ""] if any(len(r["seeds"]) > 1 for r in rows) else []),
        f"Check: every network's accuracy recomputed against the run's record, {len(checks)} networks "
        f"({kept} from hits kept in an earlier paired.json, their weights gone), largest difference "
        f"{100 * worst:.2f} points.",
        "",
    ])  # fmt: skip


def main() -> None:
    """Score one comparison's networks image by image and write paired.json/.md."""
    p = parser(__doc__, out={"required": True, "help": "folder for paired.json and paired.md"})
    p.add_argument("runs", help="the comparison's --out folder (with compare.json and a folder per run)")
    p.add_argument("--data", required=True, help="the comparison's data set (its test split is scored)")
    args = p.parse_args()
    folder = Path(args.runs)
    compare = json.loads((folder / "compare.json").read_text())
    compare["runs"] = finished_runs(folder, compare)
    data = load_dataset(args.data)
    target = Path(args.out) / "paired"
    previous = json.loads(target.with_suffix(".json").read_text()) if target.with_suffix(".json").is_file() else {}
    correct, checks = {}, {}
    for r in compare["runs"]:
        tag = run_tag(r["method"], r["mode"], r["seed"])
        if r["method"] == "full" or not (folder / tag / "model.safetensors").is_file():
            continue
        correct[tag] = hits(edgeprune.load(folder / tag), data)
        checks[tag] = {"recorded": r["test_accuracy"], "recomputed": float(correct[tag].mean())}
    for tag, hit in kept_hits(previous, compare, data).items():
        if tag not in correct:  # its weights are gone: the hits scored when they were here
            correct[tag] = hit
            checks[tag] = {**previous["checks"][tag], "kept": True}
    if not correct:
        sys.exit(f"{folder}: no finished runs with a saved model")
    if max(abs(c["recomputed"] - c["recorded"]) for c in checks.values()) > 0.01:
        sys.exit(f"{args.data}: recomputed accuracies differ from the runs' by more than a point: not their test set?")
    same = previous.get("data") == data.name and previous.get("images") == len(data.test_y)
    rows, singles = gaps(compare, correct, [*previous.get("gaps", []), *previous.get("per_seed", [])] if same else [])
    meta = {**runs_provenance(folder), "data": data.name, "images": len(data.test_y)}
    kept = {t: pack(h) for t, h in sorted(correct.items())}
    record = {**meta, "checks": checks, "gaps": rows, "per_seed": singles, "hits": kept}
    write_report(target, markdown(meta, checks, rows, singles), record, indent=1, newline=False, echo=True)


if __name__ == "__main__":
    main()
