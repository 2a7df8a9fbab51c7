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

    .venv/bin/python benchmarks/paired_accuracy.py runs/conv_vgg16_w025 --data ../shared/data/cifar10.tar.gz \\
        --out docs/results/convergence_vgg16_w025
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
from pipeline_time import provenance, write_both  # this folder's: the same header and file pair

import edgeprune
from edgeprune.data import ImageDataset, load_dataset
from edgeprune.pipelines import run_tag
from edgeprune.train import Normalizer

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


def network(method: str, mode: str, seed: int, accuracy: dict[str, float], correct: dict) -> str | None:
    """The run a gap compares with; "best": the better conventional network of that seed (as the verdict takes)."""
    if method != "best":
        return run_tag(method, mode, seed)
    tags = [run_tag(m, mode, seed) for m in CONVENTIONAL if run_tag(m, mode, seed) in correct]
    return max(tags, key=lambda t: accuracy[t], default=None)


def gaps(compare: dict, correct: dict[str, torch.Tensor]) -> list[dict]:
    """Every gap of ``GAPS`` whose networks finished for all of a mode's seeds."""
    accuracy = {run_tag(r["method"], r["mode"], r["seed"]): r["test_accuracy"] for r in compare["runs"]}
    seeds = sorted({r["seed"] for r in compare["runs"] if r["method"] == "full"})
    rows = []
    for mode in compare["settings"]["targets"]:
        done = [s for s in seeds if run_tag("direct", mode, s) in correct]
        for name, first, second in GAPS:
            pairs = [(run_tag(first, mode, s), network(second, mode, s, accuracy, correct)) for s in done]
            if not done or not all(a in correct and b in correct for a, b in pairs):
                continue
            gap, se = paired_gap([correct[a] for a, _ in pairs], [correct[b] for _, b in pairs])
            rows.append({"mode": mode, "gap": name, "seeds": done, "networks": pairs, "gap_pts": gap,
                         "paired_se_pts": se, "images": len(correct[pairs[0][0]])})  # fmt: skip
    return rows


def markdown(meta: dict, checks: dict[str, dict], rows: list[dict]) -> str:
    """The report."""
    worst = max(abs(c["recomputed"] - c["recorded"]) for c in checks.values())
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
        "| mode | gap | seeds | gap (pts) | paired s.e. (pts) | 2 s.e. |",
        "|---|---|---|---|---|---|",
        *(f"| {r['mode']} | {r['gap']} | {', '.join(map(str, r['seeds']))} | {r['gap_pts']:+.2f} | "
          f"{r['paired_se_pts']:.2f} | ±{2 * r['paired_se_pts']:.2f} |" for r in rows),
        "",
        f"Check: every network's accuracy recomputed here against the run's record, {len(checks)} networks, "
        f"largest difference {100 * worst:.2f} points.",
        "",
    ])  # fmt: skip


def main() -> None:
    """Score one comparison's networks image by image and write paired.json/.md."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", help="the comparison's --out folder (with compare.json and a folder per run)")
    p.add_argument("--data", required=True, help="the comparison's data set (its test split is scored)")
    p.add_argument("--out", required=True, help="folder for paired.json and paired.md")
    args = p.parse_args()
    folder = Path(args.runs)
    compare = json.loads((folder / "compare.json").read_text())
    data = load_dataset(args.data)
    correct, checks = {}, {}
    for r in compare["runs"]:
        tag = run_tag(r["method"], r["mode"], r["seed"])
        if r["method"] == "full" or not (folder / tag / "model.safetensors").is_file():
            continue
        correct[tag] = hits(edgeprune.load(folder / tag), data)
        checks[tag] = {"recorded": r["test_accuracy"], "recomputed": float(correct[tag].mean())}
    if not correct:
        sys.exit(f"{folder}: no finished runs with a saved model")
    if max(abs(c["recomputed"] - c["recorded"]) for c in checks.values()) > 0.01:
        sys.exit(f"{args.data}: recomputed accuracies differ from the runs' by more than a point: not their test set?")
    rows = gaps(compare, correct)
    meta = {**provenance(folder), "data": data.name, "images": len(data.test_y)}
    write_both(Path(args.out) / "paired", {**meta, "checks": checks, "gaps": rows}, markdown(meta, checks, rows))


if __name__ == "__main__":
    main()
