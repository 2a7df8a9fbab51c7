"""The nuclear criterion against hand-computed values, and `compare` against its own records."""

import csv
import json
import statistics
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import edgeprune
from edgeprune.cli import main
from edgeprune.criteria import filter_scores, nuclear_norms

MINI = Path(__file__).resolve().parents[1] / "data" / "cifar10-mini.tar.gz"


def test_nuclear_norm_of_known_singular_values():
    # batch N=2, 2 channels, maps 1x2: channel 0 stacks to [[3, 0], [0, 4]] (singular values 3, 4),
    # channel 1 to [[1, 1], [1, 1]] (rank one, singular value 2).
    maps = torch.tensor([[[[3.0, 0.0]], [[1.0, 1.0]]], [[[0.0, 4.0]], [[1.0, 1.0]]]])
    assert np.allclose(nuclear_norms(maps), [7.0, 2.0])


def test_nuclear_scores_hook_the_layer_output():
    conv = nn.Conv2d(1, 3, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -2.0, 0.5]).view(3, 1, 1, 1))
    model = nn.Sequential(conv, nn.Flatten(), nn.Linear(3 * 4, 2))
    x = torch.randn(5, 1, 2, 2)
    scores = filter_scores(model, [("0", None)], "nuclear", x)["0"]
    base = torch.linalg.svdvals(x.view(5, 4).double()).sum().item()
    assert np.allclose(scores, [base, 2 * base, 0.5 * base])


def test_nuclear_criterion_prunes_the_lowest_energy_channels():
    model = edgeprune.create("tiny")
    with torch.no_grad():
        model.features[0].weight.copy_(model.features[0].weight[:1].expand(48, -1, -1, -1))  # equal filters...
        model.features[1].weight.copy_(torch.linspace(0.01, 1.0, 48))  # ...so BN scales alone order the energies
        model.features[1].bias.zero_()
    batch = torch.randn(16, 3, 32, 32)
    # ratio selection prunes every layer, features.0 included, whatever the seed draws
    plan = edgeprune.prune(model, "flops", 0.7, criterion="nuclear", calibration=batch, selection="ratio").plan
    kept, removed = plan.keep["features.0"], sorted(set(range(48)) - set(plan.keep["features.0"]))
    assert removed and max(removed) < min(kept)


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp")
    argv = ["compare", "tiny", "--data", str(MINI), "--target", "params=0.5", "flops=0.4", "--modes", "params",
            "flops", "--epochs", "1", "--finetune-epochs", "1", "--seeds", "0", "1", "--limit-train", "256",
            "--limit-test", "128", "--batch-size", "64", "--calibration-images", "32", "--out", str(out), "--force",
            "--quiet"]  # fmt: skip
    assert main(argv) == 0
    return out


@pytest.mark.slow
def test_compare_writes_every_row_and_column(comparison):
    rows = list(csv.DictReader((comparison / "compare.csv").open()))
    assert {(r["method"], r["mode"]) for r in rows} == {
        (m, mode) for m in ("direct", "l1", "nuclear", "uniform", "unweighted") for mode in ("params", "flops")
    }
    md = (comparison / "compare.md").read_text()
    for column in (
        "Δ accuracy",
        "FLOPs ↓",
        "memory ↓",
        "params ↓",
        "training time",
        "steady time",
        "time / conventional",
        "Baseline",
    ):
        assert column in md
    assert (comparison / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert (comparison / "curves.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_the_printed_table_fits_100_columns_and_names_the_rest(comparison):
    from edgeprune.report import markdown_table, terminal_table

    summary = json.loads((comparison / "compare.json").read_text())
    text = terminal_table(summary, "out/compare.md")
    assert max(map(len, text.splitlines())) <= 100
    md_rows = [line.split(" | ") for line in markdown_table(summary).splitlines() if line.startswith("| ")][1:]
    printed = [line.split() for line in text.splitlines() if line.split()[:1] in ([r[0][2:]] for r in md_rows)]
    assert [(p[0], p[1], p[3]) for p in printed] == [
        (r[0][2:], r[1], r[3].split()[0]) for r in md_rows
    ]  # method, mode, acc
    assert text.splitlines()[-1].endswith("steady time (s): in out/compare.md")


@pytest.mark.slow
def test_learning_curves_count_the_whole_pipeline(comparison):
    """A conventional run's curve is its pre-training (the full model's curve), then its fine-tuning."""
    from edgeprune.plots import accuracy_curve

    runs = json.loads((comparison / "compare.json").read_text())["runs"]
    full = {r["seed"]: accuracy_curve(r) for r in runs if r["method"] == "full"}
    for r in runs:
        if r["method"] in ("l1", "nuclear"):
            assert len(accuracy_curve(r)) == 2 and accuracy_curve(r)[:1] == full[r["seed"]]
        elif r["method"] != "full":
            assert len(accuracy_curve(r)) == 1


def stage_medians_x_epochs(history: list[dict]) -> float:
    """Steady training time, computed here independently: per stage, the median epoch time x its epochs."""
    stages = sorted({h["stage"] for h in history})
    return sum(
        float(np.median([h["epoch_seconds"] for h in history if h["stage"] == s]))
        * sum(h["stage"] == s for h in history)
        for s in stages
    )


@pytest.mark.slow
def test_compare_table_matches_run_records(comparison):
    data = json.loads((comparison / "compare.json").read_text())
    runs, rows = (
        data["runs"],
        {(r["method"], r["mode"]): r for r in csv.DictReader((comparison / "compare.csv").open())},
    )
    assert data["settings"]["calibration_images"] == 32  # the setting the nuclear ranking reads
    full = {r["seed"]: r for r in runs if r["method"] == "full"}
    for (method, mode), row in rows.items():
        mine = [r for r in runs if r["method"] == method and r["mode"] == mode]
        assert sorted(r["seed"] for r in mine) == [0, 1]
        change = [100 * (r["test_accuracy"] - full[r["seed"]]["test_accuracy"]) for r in mine]
        assert float(row["accuracy_change_pts"]) == pytest.approx(np.mean(change))
        assert float(row["accuracy_change_pts_std"]) == pytest.approx(np.std(change, ddof=1))
        seconds = [r["train_seconds"] for r in mine]
        assert float(row["train_seconds"]) == pytest.approx(np.mean(seconds))
        steady = [stage_medians_x_epochs(r["history"]) for r in mine]
        assert float(row["steady_seconds"]) == pytest.approx(np.mean(steady))
        l1 = np.mean([stage_medians_x_epochs(r["history"]) for r in runs if r["method"] == "l1" and r["mode"] == mode])
        assert float(row["time_ratio_to_conventional"]) == pytest.approx(np.mean(steady) / l1)
        for r in mine:  # every epoch counted, pre-training included for the conventional pipelines
            assert r["train_seconds"] == pytest.approx(sum(h["epoch_seconds"] for h in r["history"]), abs=0.01)
            assert r["epochs"] == (2 if method in ("l1", "nuclear") else 1)
            key = {"params": "params", "flops": "flops"}[mode]
            target = {"params": 0.5, "flops": 0.4}[mode] * full[r["seed"]][key]
            assert r[key] <= target
        params_cut = [100 * (1 - r["params"] / full[0]["params"]) for r in mine]
        assert float(row["params_reduction_pct"]) == pytest.approx(np.mean(params_cut))


def test_compare_rejects_bad_targets(tmp_path, capsys):
    code = main(["compare", "tiny", "--data", str(MINI), "--target", "params=0.5", "--modes", "params", "flops",
                 "--out", str(tmp_path / "o")])  # fmt: skip
    assert code == 2 and "no value for mode(s) flops" in capsys.readouterr().err


@pytest.mark.slow
def test_compare_resume_reuses_finished_runs(tmp_path):
    common = ["compare", "tiny", "--data", str(MINI), "--target", "params=0.5", "flops=0.4", "--baselines", "l1",
              "--epochs", "1", "--finetune-epochs", "1", "--limit-train", "128", "--limit-test", "64",
              "--batch-size", "64", "--out", str(tmp_path), "--quiet"]  # fmt: skip
    assert main([*common, "--modes", "flops"]) == 0
    first = {(r["method"], r["mode"]): r for r in json.loads((tmp_path / "compare.json").read_text())["runs"]}
    assert main([*common, "--modes", "flops"]) == 2  # a non-empty folder is refused without --resume
    assert main([*common, "--modes", "flops", "params", "--resume"]) == 0
    second = {(r["method"], r["mode"]): r for r in json.loads((tmp_path / "compare.json").read_text())["runs"]}
    assert set(second) == set(first) | {("direct", "params"), ("l1", "params")}
    for key, run in first.items():  # read back from checkpoints, not retrained: same measured seconds and accuracy
        assert second[key]["train_seconds"] == run["train_seconds"]
        assert second[key]["test_accuracy"] == run["test_accuracy"]
        assert second[key]["params"] == run["params"]
    assert main([*common, "--modes", "flops", "params", "--resume", "--time-matched"]) == 0
    third = {(r["method"], r["mode"]): r for r in json.loads((tmp_path / "compare.json").read_text())["runs"]}
    for mode in ("flops", "params"):
        direct, l1, matched = (third[m, mode] for m in ("direct", "l1", "direct-matched"))
        assert direct == second["direct", mode] and l1 == second["l1", mode]
        assert (matched["params"], matched["flops"]) == (direct["params"], direct["flops"])  # the same network
        steady = {}  # per stage the median epoch time x epochs: paused epochs are not charged
        for name, run in (("l1", l1), ("direct", direct)):
            stages = {h["stage"] for h in run["history"]}
            steady[name] = sum(statistics.median(h["epoch_seconds"] for h in run["history"] if h["stage"] == st)
                               * sum(h["stage"] == st for h in run["history"]) for st in stages)  # fmt: skip
        assert matched["epochs"] == max(1, int(steady["l1"] // steady["direct"]))
        assert len(matched["history"]) == matched["epochs"]


def test_time_matched_needs_a_conventional_pipeline(tmp_path, capsys):
    code = main(["compare", "tiny", "--data", str(MINI), "--target", "0.5", "--baselines", "uniform",
                 "--time-matched", "--out", str(tmp_path / "o")])  # fmt: skip
    assert code == 2 and "needs a conventional pipeline" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--time-matched-also", "uniform"], "needs --time-matched"),
     (["--time-matched", "--time-matched-also", "unweighted"], "name baselines pruned at initialisation"),
     (["--time-matched", "--time-matched-also", "l1"], "name baselines pruned at initialisation")],
)  # fmt: skip
def test_time_matched_also_names_a_running_baseline(tmp_path, capsys, extra, message):
    code = main(["compare", "tiny", "--data", str(MINI), "--target", "0.5", "--baselines", "l1", "uniform",
                 "--out", str(tmp_path / "o"), *extra])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_compare_also_meets_extra_limits_in_every_pruned_network(tmp_path, capsys):
    argv = ["compare", "tiny", "--data", str(MINI), "--target", "0.6", "--modes", "flops", "--also", "memory=0.3",
            "--baselines", "l1", "uniform", "unweighted", "--epochs", "1", "--finetune-epochs", "1",
            "--limit-train", "128", "--limit-test", "64", "--batch-size", "64", "--out", str(tmp_path / "o"),
            "--quiet"]  # fmt: skip
    assert main(argv) == 0
    result = json.loads((tmp_path / "o" / "compare.json").read_text())
    full_memory = edgeprune.profile(edgeprune.create("tiny")).totals()["memory_bytes"]
    runs = [r for r in result["runs"] if r["method"] != "full"]
    assert {r["method"] for r in runs} == {"direct", "l1", "uniform", "unweighted"}
    for r in runs:  # memory bound: FLOPs alone at 0.6 would leave far more than 30% of the memory
        assert r["memory_bytes"] <= 0.3 * full_memory and r["flops"] <= 0.6 * result["runs"][0]["flops"]
    assert "every pruned network also meets memory <= 0.3" in (tmp_path / "o" / "compare.md").read_text()
    argv[argv.index("memory=0.3")] = "params=10"  # 10 parameters: unreachable, refused before any training
    argv[argv.index(str(tmp_path / "o"))] = str(tmp_path / "p")
    assert main(argv) == 2 and "unreachable" in capsys.readouterr().err
    assert not (tmp_path / "p" / "full-s0").exists()


@pytest.mark.slow
def test_compare_resumes_from_run_records_alone(tmp_path, monkeypatch, capsys):
    """A study carried over as its runs' record.json files: read back without training; a conventional run
    still to do retrains its seed's full model, to the same figures (deterministic)."""
    from edgeprune import pipelines

    common = ["compare", "tiny", "--data", str(MINI), "--target", "params=0.5", "flops=0.4", "--baselines", "l1",
              "unweighted", "--epochs", "1", "--finetune-epochs", "1", "--limit-train", "128", "--limit-test", "64",
              "--batch-size", "64", "--out", str(tmp_path), "--quiet"]  # fmt: skip
    assert main([*common, "--modes", "flops"]) == 0
    first = json.loads((tmp_path / "compare.json").read_text())
    for path in sorted(tmp_path.rglob("*"), reverse=True):  # keep the records only: no weights, no checkpoints
        if path.is_file() and path.name != "record.json":
            path.unlink()
    assert sorted(p.parent.name for p in tmp_path.rglob("record.json")) == [
        "direct-flops-s0", "full-s0", "l1-flops-s0", "unweighted-flops-s0"]  # fmt: skip

    def no_training(*args, **kwargs):
        raise AssertionError("trained a run that has a record")

    monkeypatch.setattr(pipelines, "train", no_training)
    assert main([*common, "--modes", "flops", "--resume"]) == 0
    again = json.loads((tmp_path / "compare.json").read_text())
    assert again["runs"] == first["runs"] and again["rows"] == first["rows"]
    monkeypatch.undo()

    assert main([*common, "--modes", "flops", "params", "--resume"]) == 0  # l1-params needs the full weights
    third = {(r["method"], r["mode"]): r for r in json.loads((tmp_path / "compare.json").read_text())["runs"]}
    retrained = json.loads((tmp_path / "full-s0" / "record.json").read_text())["record"]
    assert retrained["test_accuracy"] == first["runs"][0]["test_accuracy"]  # the same network again
    assert retrained["history"][-1]["loss"] == first["runs"][0]["history"][-1]["loss"]
    for r in first["runs"][1:]:
        assert third[r["method"], r["mode"]] == r
    assert {("direct", "params"), ("l1", "params"), ("unweighted", "params")} <= set(third)

    capsys.readouterr()
    code = main([*common[:-3], "--epochs", "2", "--out", str(tmp_path), "--quiet", "--modes", "flops", "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and "record.json: recorded with other settings" in err and "epochs" in err
    (tmp_path / "direct-flops-s0" / "record.json").write_text("{}")
    assert main([*common, "--modes", "flops", "--resume"]) == 2
    assert "direct-flops-s0/record.json: not a run record" in capsys.readouterr().err

    # a study from before records: its compare.json's runs become records, read back as they were
    older = tmp_path / "older"
    data = edgeprune.data.load_dataset(str(MINI), 128, 64, progress=False)
    assert sorted(pipelines.records_from_summary(first, data, older)) == [
        "direct-flops-s0", "full-s0", "l1-flops-s0", "unweighted-flops-s0"]  # fmt: skip
    monkeypatch.setattr(pipelines, "train", no_training)
    assert main([*common[:-3], "--out", str(older), "--quiet", "--modes", "flops", "--resume"]) == 0
    assert json.loads((older / "compare.json").read_text())["runs"] == first["runs"]
    # the Ray tasks' side of it: no full weights shipped when no conventional run needs them
    settings = pipelines.CompareSettings(**first["settings"])
    ctx = pipelines.make_context(settings, data, older, progress=False, resume=True)
    baseline, weights = pipelines._full_task(ctx, 0)
    assert weights is None and asdict(baseline) == first["runs"][0]
    l1 = pipelines._conventional_task(ctx, "l1", "flops", 0, (baseline, weights))
    assert asdict(l1) == next(r for r in first["runs"] if (r["method"], r["mode"]) == ("l1", "flops"))


@pytest.mark.slow
def test_compare_candidates_adds_a_searched_row(tmp_path, capsys):
    """--candidates 3: one more method, the direct pipeline on the kept plan, its time counting the search's
    seconds; its record key names the search, --resume reads it back; run i/N counts every run."""
    from edgeprune import pipelines

    common = ["compare", "tiny", "--data", str(MINI), "--target", "flops=0.4", "--modes", "flops", "--baselines",
              "uniform", "--epochs", "1", "--limit-train", "128", "--limit-test", "64", "--batch-size", "64",
              "--out", str(tmp_path), "--candidates", "3"]  # fmt: skip
    assert main(common) == 0
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("run ")] == [f"run {i}/4" for i in range(1, 5)]
    result = json.loads((tmp_path / "compare.json").read_text())
    runs = {r["method"]: r for r in result["runs"]}
    assert set(runs) == {"full", "direct", "uniform", "searched"}
    table = json.loads((tmp_path / "searched-flops-s0" / "search.json").read_text())
    assert result["searches"]["searched-flops-s0"] == table and len(table["candidates"]) == 3
    kept = [c for c in table["candidates"] if c["kept"]]
    assert len(kept) == 1 and kept[0]["rank"] == 1 and kept[0]["seed"] == table["kept"]["seed"]
    # the flops proxy keeps the candidate with the most FLOPs, and every candidate meets the budget
    assert kept[0]["costs"]["flops"] == max(c["costs"]["flops"] for c in table["candidates"])
    full_flops = edgeprune.profile(edgeprune.create("tiny")).totals()["flops"]
    assert all(c["costs"]["flops"] <= 0.4 * full_flops for c in table["candidates"])
    searched = runs["searched"]
    assert searched["flops"] == kept[0]["costs"]["flops"] <= 0.4 * runs["full"]["flops"]
    epoch_seconds = sum(h["epoch_seconds"] for h in searched["history"])
    assert searched["train_seconds"] >= table["search_seconds"] > 0
    assert searched["train_seconds"] >= epoch_seconds + table["search_seconds"] - 1e-3
    assert "its training time includes the search's seconds" in (tmp_path / "compare.md").read_text()
    keys = {m: json.loads((tmp_path / f"{m}-flops-s0" / pipelines.RECORD).read_text())["key"]
            for m in ("direct", "searched")}  # fmt: skip
    assert keys["searched"]["search"] == {"candidates": 3, "kinds": ["weighted"], "proxy": "flops", "holdout": 0.1}
    assert "search" not in keys["direct"]
    assert main([*common, "--resume"]) == 0
    again = {r["method"]: r for r in json.loads((tmp_path / "compare.json").read_text())["runs"]}
    assert again["searched"] == searched  # read back, not searched and trained again
    assert "searched flops: read back" in capsys.readouterr().out
    assert main([*common[:-1], "4", "--resume"]) == 2  # other search settings: refused, never mixed
    assert "other settings" in capsys.readouterr().err


@pytest.mark.slow
def test_time_matched_searched_network_is_the_searched_one_trained_longer(tmp_path, capsys):
    """--candidates with --time-matched: searched-matched is the searched plan (the search is deterministic),
    trained the epochs that fit in l1's steady time less the search's seconds."""
    from edgeprune.records import steady_seconds

    argv = ["compare", "tiny", "--data", str(MINI), "--target", "flops=0.4", "--modes", "flops", "--baselines", "l1",
            "uniform", "--epochs", "1", "--finetune-epochs", "2", "--limit-train", "128", "--limit-test", "64",
            "--batch-size", "64", "--out", str(tmp_path), "--candidates", "3", "--time-matched",
            "--time-matched-also", "uniform", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    result = json.loads((tmp_path / "compare.json").read_text())
    runs = {r["method"]: r for r in result["runs"]}
    assert set(runs) == {"full", "direct", "uniform", "searched", "l1", "direct-matched", "searched-matched",
                         "uniform-matched"}  # fmt: skip
    width, width_matched = runs["uniform"], runs["uniform-matched"]  # width scaling, trained as long as l1
    assert (width_matched["params"], width_matched["nodes"]) == (width["params"], width["nodes"])
    per_epoch = steady_seconds(width["history"]) / width["epochs"]
    assert width_matched["epochs"] == max(1, int(steady_seconds(runs["l1"]["history"]) // per_epoch))
    searched, matched = runs["searched"], runs["searched-matched"]
    tables = [
        json.loads((tmp_path / f"{m}-flops-s0" / "search.json").read_text()) for m in ("searched", "searched-matched")
    ]
    assert tables[0]["kept"] == tables[1]["kept"]
    assert (matched["params"], matched["flops"], matched["nodes"]) == (
        searched["params"],
        searched["flops"],
        searched["nodes"],
    )
    search = searched["train_seconds"] - sum(h["epoch_seconds"] for h in searched["history"])
    per_epoch = steady_seconds(searched["history"]) / searched["epochs"]
    assert matched["epochs"] == max(1, int((steady_seconds(runs["l1"]["history"]) - search) // per_epoch))
    assert len(matched["history"]) == matched["epochs"]
    assert "searched-matched = the searched network" in (tmp_path / "compare.md").read_text()


def test_compare_k1_keeps_methods_and_columns():
    """Without --candidates, no searched method, the same run count and the same table columns as before."""
    from edgeprune import pipelines

    plain = pipelines.CompareSettings(model="tiny", targets={"flops": 0.5, "params": 0.5}, seeds=(0, 1))
    assert pipelines.run_count(plain) == 2 * (1 + 2 * 5)  # full + direct, unweighted, uniform, l1, nuclear
    searched = pipelines.CompareSettings(model="tiny", targets={"flops": 0.5}, baselines=("l1",), candidates=2,
                                         time_matched=True)  # fmt: skip
    assert pipelines.run_count(searched) == 1 + 5  # direct, searched, l1, direct-matched, searched-matched
    epoch = [{"epoch_seconds": 1.0}]
    records = [pipelines.RunRecord("full", "-", 0, 1.0, 0.5, 100, 1000, 400, 1.0, 0.0, 1, epoch),
               pipelines.RunRecord("direct", "flops", 0, 0.5, 0.4, 50, 500, 200, 1.0, 0.0, 1, epoch)]  # fmt: skip
    summary = pipelines.summarise(records[1:], records[:1], plain)
    assert "searched" not in summary["conventions"] and "searches" not in summary
    assert [r["method"] for r in summary["rows"]] == ["direct"]


def test_compare_refuses_bad_search_settings(tmp_path, capsys):
    base = ["compare", "tiny", "--data", str(MINI), "--target", "0.5", "--out", str(tmp_path / "o")]
    assert main([*base, "--candidates", "2", "--proxy", "nope"]) == 2
    assert "unknown proxy 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main([*base, "--candidates", "0"])
    assert exit_.value.code == 2 and "--candidates: must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "o" / "full-s0").exists()


@pytest.mark.parametrize("own_plan", [True, False])
def test_searched_run_reads_back_the_direct_run_when_it_kept_that_very_network(tmp_path, monkeypatch, own_plan):
    """A search that keeps the seed's own plan (weight for weight the direct network) reads the direct run's record
    back, its time plus the search's, instead of training the same network again; another plan trains."""
    from edgeprune import pipelines
    from edgeprune.search import prune as real_search

    argv = ["compare", "tiny", "--data", str(MINI), "--target", "flops=0.4", "--modes", "flops", "--baselines",
            "uniform", "--epochs", "1", "--limit-train", "128", "--limit-test", "64", "--batch-size", "64",
            "--out", str(tmp_path), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    first = json.loads((tmp_path / "compare.json").read_text())
    direct = next(r for r in first["runs"] if r["method"] == "direct")
    settings = pipelines.CompareSettings(**{**first["settings"], "candidates": 2})
    data = edgeprune.data.load_dataset(str(MINI), limit_train=128, limit_test=64)
    ctx = pipelines.make_context(settings, data, tmp_path, progress=False)  # direct's run is read without --resume

    def one_candidate(*args, **kwargs):  # a search that keeps Algorithm 1's draw of the run's seed or the next one
        seed = kwargs["seed"] + (0 if own_plan else 1)
        found = real_search(*args, **{**kwargs, "candidates": 1, "seed": seed})  # K = 1: that draw, plan for plan
        found.plan.search = {"kept": {"kind": "weighted", "seed": seed}, "candidates": [{"seed": seed}]}
        return found

    monkeypatch.setattr(pipelines, "search_prune", one_candidate)
    searched = asdict(pipelines.run_searched(ctx, "flops", 0, 1))
    table = json.loads((tmp_path / "searched-flops-s0" / "search.json").read_text())
    trained = (tmp_path / "searched-flops-s0" / "metrics.jsonl").exists()
    if own_plan:
        assert table["same_network_as"] == "direct-flops-s0" and not trained
        assert {**searched, "method": "direct", "train_seconds": direct["train_seconds"]} == direct
        assert searched["train_seconds"] == pytest.approx(direct["train_seconds"] + table["search_seconds"], abs=1e-3)
    else:
        assert "same_network_as" not in table and trained and searched["history"] != direct["history"]
