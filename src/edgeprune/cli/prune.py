"""``edgeprune prune``: prune a model to a budget with Algorithm 1 (the best of K candidate plans, if asked)."""

from __future__ import annotations

import argparse
import json
import sys

from edgeprune.cli import options, targets
from edgeprune.cli.outputs import prepare_out_dir
from edgeprune.errors import EdgepruneError, first_line


def add(sub: argparse._SubParsersAction) -> None:
    """Register ``edgeprune prune``."""
    from edgeprune.costs import cost_help

    p = sub.add_parser(
        "prune",
        parents=[
            options.model(),
            targets.target(
                "with --mode: one limit; else COST=VALUE, repeatable, every limit met at once (--target flops=0.5 "
                "--target memory=4MB --target latency=3ms). A VALUE is a fraction of the model's own cost (0.5) or "
                f"an amount in the cost's unit. Costs: {cost_help()}"
            ),
            options.output("folder for model.json, model.safetensors and report.json"),
            options.json_output("print report.json instead of the table"),
        ],
        help="prune a model to a complexity budget with Algorithm 1",
        description="Complexity-driven pruning (Zawish et al. 2022, Algorithm 1): repeatedly pick a layer at "
        "random with probability proportional to its share of the model's complexity in --mode, remove "
        "--step of its filters by --criterion, until the model fits --target; then give filters back while every "
        "limit holds (--no-fill: stop there, the paper's rule). With --candidates K, K plans per --candidate-kinds "
        "are drawn and the one --proxy ranks best is kept. Writes model.json, model.safetensors and report.json to "
        "--out and prints a before/after table.",
    )
    p.add_argument(
        "--mode",
        default=None,
        help="the cost a single --target limits: params (PA), flops (FA), memory (MA), energy or latency",
    )
    _add_latency(p)
    _add_plan(p)
    _add_search(p)


def _add_latency(p: argparse.ArgumentParser) -> None:
    """The options of a latency target: the table it is planned with, and how often the cut is measured."""
    p.add_argument(
        "--lut",
        metavar="TABLE",
        help="latency table from 'edgeprune lut' (needed by a latency target): plans with it, then "
        "measures the pruned model on the table's backend and threads and re-plans if it misses",
    )
    p.add_argument(
        "--accept-table",
        action="store_true",
        help="use a latency table made on another CPU or backend version (its predictions may be off)",
    )
    p.add_argument(
        "--attempts",
        type=options.positive_int,
        default=4,
        help="with a latency target: cut and measure at most this many times (default 4)",
    )


def _add_plan(p: argparse.ArgumentParser) -> None:
    """The options of one plan: step, seed, criterion, layer choice, widths and the layers kept."""
    p.add_argument(
        "--round-to",
        type=_round_to,
        default=None,
        metavar="N",
        help="every pruned layer keeps a multiple of N filters (fast CPU kernels like 8 or 16); the budget "
        "is met on the rounded widths. auto (the default): the multiple that timing a small probe network shows "
        "this CPU's kernels want on --backend (measured once, about 2 s, then cached); 1: the paper's widths; "
        "with a latency target and no --round-to, the table's",
    )
    p.add_argument(
        "--backend",
        choices=("onnxruntime", "torch"),
        default=None,
        help="the backend --round-to auto and the width warning time kernels on (default onnxruntime if "
        "installed, else torch; with --lut, the table's)",
    )
    p.add_argument(
        "--step",
        type=options.finite,
        default=0.1,
        help="fraction of a picked layer's filters removed per step (default 0.1)",
    )
    p.add_argument(
        "--seed", type=options.seed, default=0, help="random seed; the same seed gives the same result (default 0)"
    )
    p.add_argument(
        "--criterion",
        default="random",
        help="which filters go: random (default, the paper's), l1 or l2 (weight norms, for trained models)",
    )
    p.add_argument(
        "--min-filters", type=options.positive_int, default=1, help="no layer keeps fewer filters than this (default 1)"
    )
    p.add_argument(
        "--selection",
        default="weighted",
        help="how layers are chosen: weighted by their complexity share (default, Algorithm 1), uniform "
        "(Algorithm 1 with an unweighted lottery), or ratio (the same fraction of every layer: width "
        "scaling)",
    )
    p.add_argument("--prune-residual", action="store_true", help="also prune channels tied to residual additions")
    p.add_argument("--keep", action="append", default=[], metavar="LAYER", help=options.KEEP_HELP)
    p.add_argument(
        "--fill",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="after the lottery stops, give filters back while every limit holds (default); --no-fill "
        "stops where the lottery does: Algorithm 1's exact stopping rule",
    )


def _add_search(p: argparse.ArgumentParser) -> None:
    """The candidate search: K plans per kind, ranked by a proxy that may read training images."""
    search = options.search("Algorithm 1's one plan when K is 1", None, "the --selection")
    for action in search._actions:
        p._add_action(action)
    for action in options.data(
        required=False,
        limit_train=True,
        limit_test=False,
        help="training images for the data-using proxies (gradnorm and train:STEPS need them; naswot uses them, "
        "else random inputs); only the training split is read",
    )._actions:
        p._add_action(action)


def run(args: argparse.Namespace) -> int:
    """Prune, save and report."""
    import torch

    from edgeprune.files import write_json
    from edgeprune.io import resolve, save
    from edgeprune.search import prune

    if args.criterion == "nuclear":
        raise EdgepruneError(
            "criterion 'nuclear' needs data: use 'edgeprune compare' (or the Python API with calibration)"
        )
    budget = targets.prune_budget(args.mode, args.target)
    table = _latency_table(args, budget)
    data = options.load_data(args, args.limit_train, None, progress=False) if args.data else None
    torch.manual_seed(args.seed)  # a built model's initial weights come from the same seed as the pruning
    resolved = resolve(options.model_ref(args))
    model, shape = resolved.model, resolved.input_shape
    out = prepare_out_dir(args.out, args.force, "prune")
    granularity = _granularity(args, table)
    kwargs = dict(budget=budget, step=args.step, seed=args.seed, criterion=args.criterion, input_shape=shape,
                  min_filters=args.min_filters, prune_residual=args.prune_residual, selection=args.selection,
                  keep=args.keep, table=table, attempts=args.attempts, fill=args.fill, candidates=args.candidates,
                  candidate_kinds=args.candidate_kinds, proxy=args.proxy, data=data,
                  holdout=args.proxy_holdout)  # fmt: skip
    if granularity:
        result = _prune_on_preferred(prune, model, granularity, kwargs)
    else:
        result = prune(model, round_to=args.round_to, **kwargs)
    report = result.report()
    report["source"] = args.model
    if granularity:
        report["round_to_auto"] = granularity
    warning = None if granularity else _width_warning(report, args, table)  # --round-to 1 or a table's grid
    if warning:
        report["width_warning"] = warning
        sys.stderr.write(f"edgeprune prune: {warning}\n")
    if table is not None:
        report["latency_table"] = {
            "file": str(args.lut),
            "backend": table.backend,
            "threads": table.threads,
            "cpu": table.cpu,
            "backend_version": table.backend_version,
        }
        if _device(table):
            check = f"edgeprune bench {args.model} --probe DIR --with {out}, then bench --from-probe"
            report["latency_table"]["device"] = {**_device(table), "cpu": table.cpu, "check": check}
    save(result.model, out, shape)
    write_json(out / "report.json", report)
    print(json.dumps(report, indent=2) if args.json else _summary(report) + f"\n\nwrote {out}/")
    return _latency_missed(report, out)


def _summary(report: dict) -> str:
    """The before/after table, then the candidate table and the fill summary when the report has them."""
    from edgeprune.report import prune_summary

    parts = [prune_summary(report)]
    auto = report.get("round_to_auto")
    if auto:
        how = "cached" if auto["cached"] else "measured now"
        parts.append(f"--round-to auto: {auto['multiple']} ({auto['backend']}, {auto['threads']} thread(s), {how}): "
                     f"{auto['reason']}")  # fmt: skip
        if "preferred" in auto:
            parts.append(f"  {auto['preferred']} preferred, but the budget is out of reach there; used "
                         f"{auto['multiple']} ({auto['fallback']})")  # fmt: skip
    if "search" in report:
        parts.append(candidate_table(report["search"]))
    if report.get("fill"):
        parts.append(fill_summary(report["fill"]))
    return "\n\n".join(parts)


def candidate_table(search: dict) -> str:
    """Every candidate of the report's ``search`` section: kind, seed, widths, each cost, score, rank, kept."""
    from edgeprune.costs import human

    rows = search["candidates"]
    names = list(rows[0]["costs"]) if rows else []
    head = ["kind", "seed", "channels kept", "narrowest-widest", *names, "score", "rank", "kept"]
    lines = [" | ".join(head)]
    for row in rows:
        w = row["widths"]
        score = "-" if row["score"] is None else f"{row['score']:.6g}"
        lines.append(
            " | ".join(
                [
                    row["kind"],
                    str(row["seed"]),
                    f"{w['channels_kept']}/{w['channels']}",
                    f"{w['narrowest_group']:.2f}-{w['widest_group']:.2f}",
                    *(human(row["costs"][n], n) for n in names),
                    score,
                    str(row["rank"]),
                    "kept" if row["kept"] else "",
                ]
            )
        )
    title = f"{len(rows)} candidates ranked by {search['proxy']} ({search['inputs']}; {search['seconds']:.1f} s)"
    return title + "\n" + "\n".join(lines)


def fill_summary(fill: dict) -> str:
    """The report's ``fill`` section in a line: channels given back, and to which layers."""
    groups = ", ".join(f"{name} +{n}" for name, n in fill["groups"].items()) or "none"
    return f"fill: {fill['channels_given_back']} channels given back ({groups})"


def _latency_missed(report: dict, out: object) -> int:
    """1 (the files stay: the user may still want the nearest model) when a latency target was missed, else 0."""
    latency = report.get("latency")
    how = "predicted by the device table" if (report.get("latency_table") or {}).get("device") else "measured"
    if latency and not latency["met"]:
        sys.stderr.write(
            f"edgeprune prune: latency target missed after {len(latency['attempts'])} attempt(s): {how} "
            f"{latency['measured_ms']:.3f} ms > {latency['limit_ms']:.3f} ms (model kept in {out})\n"
        )
        return 1
    return 0


def _round_to(text: str) -> int | str:
    """``auto`` or a positive integer."""
    return "auto" if text.strip().lower() == "auto" else options.positive_int(text)


def _backend(args: argparse.Namespace, table: object) -> str:
    """The backend kernels are timed on: --backend, else the latency table's, else onnxruntime if installed."""
    from edgeprune.granularity import default_backend

    if args.backend:
        return args.backend
    if table is not None and getattr(table, "backend", None) in ("onnxruntime", "torch"):
        return table.backend
    return default_backend()


def _granularity(args: argparse.Namespace, table: object) -> dict | None:
    """With --round-to auto (the default without a latency table): the multiple measured (or cached) for this CPU."""
    if args.round_to != "auto" and (args.round_to is not None or table is not None):
        return None
    from edgeprune.granularity import preferred_multiple

    threads = getattr(table, "threads", None) or 1
    return preferred_multiple(_backend(args, table), threads).as_dict()


def _prune_on_preferred(prune, model, granularity: dict, kwargs: dict):  # noqa: ANN001, ANN202
    """Prune on auto's multiple; when the budget is out of reach there, on the next smaller one that reaches it.

    A thin model (ResNet-56's 16-filter stages at FA 0.5) cannot keep whole multiples of 16 under the budget;
    the preferred multiple is recorded beside the one used, and why.
    """
    from edgeprune.errors import UnreachableError
    from edgeprune.granularity import fallback_multiples

    preferred = granularity["multiple"]
    for multiple in fallback_multiples(preferred):
        try:
            result = prune(model, round_to=multiple, **kwargs)
        except UnreachableError as e:
            if multiple == 1:
                raise
            granularity["fallback"] = f"--round-to {multiple}: {first_line(e)}"
            continue
        if multiple != preferred:
            granularity["multiple"], granularity["preferred"] = multiple, preferred
        return result
    raise AssertionError("unreachable: fallback_multiples ends at 1")


def _width_warning(report: dict, args: argparse.Namespace, table: object) -> str | None:
    """The one-line warning when pruned widths are off the backend's preferred multiple (cached, else 8)."""
    from edgeprune.granularity import FALLBACK_MULTIPLE, cached_multiple, runtime_version, width_warning

    if report.get("settings", {}).get("round_to", 1) > 1:
        return None
    backend = _backend(args, table)
    threads = getattr(table, "threads", None) or 1
    multiple = cached_multiple(backend, runtime_version(backend), threads)
    widths = {r["name"]: r["filters_after"] for r in report["layers"] if r["filters_after"] < r["filters_before"]}
    return width_warning(widths, multiple or FALLBACK_MULTIPLE, backend, measured=multiple is not None)


def _latency_table(args: argparse.Namespace, budget: dict[str, str]):  # noqa: ANN202 - lut.LatencyTable | None
    """The --lut table when a latency target needs it, checked against this machine (unless --accept-table)."""
    if args.lut is None:
        return None
    from edgeprune.lut import load_table

    if "latency" not in budget:
        raise EdgepruneError("--lut is for a latency target (--target latency=3ms)")
    table = load_table(args.lut)
    if not args.accept_table and not _device(table):  # a probe's table is another machine's on purpose
        table.check_machine()
    return table


def _device(table: object) -> dict | None:
    """The device a probe's latency table was measured on (platform, machine), None for a table made here."""
    settings = getattr(table, "settings", None) or {}
    probe = settings.get("probe")
    return probe if isinstance(probe, dict) else None
