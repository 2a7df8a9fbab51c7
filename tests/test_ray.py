"""--ray: the same runs as Ray tasks give the same results; a dead worker is retried from its checkpoint; --out
must be shared; Ray is optional. One local Ray instance (2 CPUs) serves the whole module."""

import csv
import json
import shutil
import socket
import sys

import pytest
from conftest import MINI
from safetensors.torch import load_file

import edgeprune
from edgeprune import cluster
from edgeprune.cli import main
from edgeprune.errors import EdgepruneError
from edgeprune.pipelines import CompareSettings, markdown_table, summarise
from edgeprune.records import RunRecord
from edgeprune.sweep import SweepSettings, columns, sweep

COMPARE = ["compare", "tiny", "--data", str(MINI), "--target", "0.5", "--modes", "flops", "--baselines", "l1",
           "--epochs", "1", "--finetune-epochs", "2", "--seeds", "0", "--limit-train", "128", "--limit-test", "64",
           "--batch-size", "64", "--threads", "1", "--quiet"]  # fmt: skip
RUNS = ("full-s0", "direct-flops-s0", "l1-flops-s0")
CRASHED = "l1-flops-s0"  # the run that dies once, after its first fine-tuning epoch's checkpoint


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    ray = pytest.importorskip("ray")
    config = tmp_path_factory.mktemp("ray-edgeprune-config")
    with pytest.MonkeyPatch.context() as mp:  # the workers inherit this environment, not the user's trust list
        mp.setenv("EDGEPRUNE_CONFIG", str(config))
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def compared(ray_local, tmp_path_factory):
    """The same small comparison here and on Ray, where the l1 run's worker dies once mid-fine-tuning."""
    local, remote = tmp_path_factory.mktemp("local"), tmp_path_factory.mktemp("ray")
    assert main([*COMPARE, "--out", str(local)]) == 0
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(cluster.CRASH_ENV, CRASHED)
        assert main([*COMPARE, "--out", str(remote), "--ray", "--cpus-per-run", "1"]) == 0
    return local, remote


def _runs(folder):
    return {(r["method"], r["mode"], r["seed"]): r for r in json.loads((folder / "compare.json").read_text())["runs"]}


@pytest.mark.slow
@pytest.mark.distributed
def test_ray_comparison_equals_the_local_one(compared, ray_local):
    local, remote = compared
    here, there = _runs(local), _runs(remote)
    assert set(here) == set(there) == {("full", "-", 0), ("direct", "flops", 0), ("l1", "flops", 0)}
    for key, run in here.items():
        other = there[key]
        for field in ("test_accuracy", "params", "flops", "memory_bytes", "epochs"):
            assert other[field] == run[field], (key, field)
        assert [h["loss"] for h in other["history"]] == [h["loss"] for h in run["history"]], key
        assert [n["ray_node_id"] for n in run["nodes"]] == [None] * len(run["nodes"])
        node = ray_local.get_runtime_context().get_node_id()
        assert other["nodes"] == [{"hostname": socket.gethostname(), "ray_node_id": node}] * len(run["nodes"])
    for tag in RUNS:  # the trained weights, bit for bit
        a, b = load_file(local / tag / "model.safetensors"), load_file(remote / tag / "model.safetensors")
        assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a), tag
    summary = json.loads((remote / "compare.json").read_text())
    assert summary["ray"]["cpus_per_run"] == 1 and summary["settings"]["threads"] == 1
    assert all(r["train_hosts"] == [socket.gethostname()] for r in summary["rows"])
    assert "machines)" not in (remote / "compare.md").read_text()  # one machine: times comparable, no note
    assert not list(remote.glob(".edgeprune-probe*"))


@pytest.mark.slow
@pytest.mark.distributed
def test_dead_worker_is_retried_from_its_checkpoint(compared):
    _, remote = compared
    lines = (remote / f".crashed-once-{CRASHED}").read_text().splitlines()
    # it died after its first fine-tuning epoch's checkpoint; the retry read that epoch back and trained the second
    assert [line.split(" (")[0] for line in lines] == ["exited after epoch 1", "trained epoch 2"]
    assert lines[0].split("pid ")[1] != lines[1].split("pid ")[1]  # in another worker process
    l1 = _runs(remote)["l1", "flops", 0]
    assert l1["epochs"] == 3 and [h["epoch"] for h in l1["history"] if h["stage"] == 1] == [1, 2]


@pytest.mark.slow
@pytest.mark.distributed
def test_time_matched_runs_on_ray_after_their_own_networks(compared, tmp_path):
    """--time-matched with a search and --time-matched-also on Ray: each matched run waits for its network's run
    and l1's, trains the epochs that fit in l1's time, and the finished runs are read back, not retrained."""
    from edgeprune.records import steady_seconds

    _, remote = compared
    folder = tmp_path / "more"
    shutil.copytree(remote, folder)
    extra = ["--baselines", "l1", "uniform", "--candidates", "2", "--time-matched", "--time-matched-also", "uniform"]
    assert main([*COMPARE, *extra, "--out", str(folder), "--ray", "--cpus-per-run", "1", "--resume"]) == 0
    runs = {m: r for (m, _, _), r in _runs(folder).items()}
    assert set(runs) == {"full", "direct", "uniform", "searched", "l1", "direct-matched", "searched-matched",
                         "uniform-matched"}  # fmt: skip
    assert runs["l1"] == _runs(remote)["l1", "flops", 0]  # read back
    reference = steady_seconds(runs["l1"]["history"])
    for method in ("direct", "uniform"):
        own = runs[method]
        assert runs[f"{method}-matched"]["epochs"] == max(1, int(reference // (steady_seconds(own["history"])
                                                                                / own["epochs"])))  # fmt: skip
    assert runs["searched-matched"]["params"] == runs["searched"]["params"]


@pytest.mark.slow
@pytest.mark.distributed
def test_out_must_be_seen_by_every_node(ray_local, tmp_path, monkeypatch, capsys):
    cluster.check_shared_folder(ray_local, tmp_path)  # one local node: it sees the folder
    assert not list(tmp_path.iterdir())  # probe files removed
    (tmp_path / f"{cluster.PROBE}-abc").write_text("other")
    assert "different file" in cluster.probe_here(str(tmp_path), "abc", "n1")
    assert "does not see" in cluster.probe_here(str(tmp_path / "elsewhere"), "abc", "n1")
    monkeypatch.setattr(cluster, "_probe_nodes", lambda ray, folder, token: {"far (n2)": "does not see it", "vm": None})
    out = tmp_path / "o"
    assert main([*COMPARE, "--out", str(out), "--ray"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "must be a folder every Ray node sees (shared storage): far (n2)" in err
    with pytest.raises(EdgepruneError, match="shared storage"):
        cluster.check_shared_folder(ray_local, tmp_path)


@pytest.mark.slow
@pytest.mark.distributed
def test_sweep_on_ray_records_its_nodes(ray_local, tmp_path):
    result = sweep("tiny", SweepSettings(tmp_path, modes=["flops"], targets=[0.5], backends=["onnxruntime"], runs=2,
                                         warmup=0, log=None, ray=cluster.RayOptions()))  # fmt: skip
    rows = result["rows"]
    assert [(r["mode"], r["target"]) for r in rows] == [("unpruned", 1.0), ("flops", 0.5)]
    expected = edgeprune.prune(edgeprune.create("tiny"), "flops", 0.5, seed=0).model  # independent recount
    totals = edgeprune.profile(expected, (3, 32, 32)).totals()
    assert (rows[1]["params"], rows[1]["flops"]) == (totals["params"], totals["flops"])
    node = ray_local.get_runtime_context().get_node_id()
    assert all(r["node"] == socket.gethostname() and r["ray_node_id"] == node for r in rows)
    assert result["settings"]["ray"]["cpus_per_run"] == 1 and result["settings"]["threads"] == 1
    assert "not comparable" in result["conventions"]["nodes"]
    with open(tmp_path / "results.csv") as f:
        assert csv.DictReader(f).fieldnames == columns(["onnxruntime"], nodes=True)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".edgeprune")]  # points' files cleaned up


@pytest.mark.parametrize("command", ["compare", "sweep"])
def test_ray_missing_is_one_line(command, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    args = COMPARE if command == "compare" else ["sweep", "tiny"]
    assert main([*args, "--out", str(tmp_path / "o"), "--ray"]) == 2
    assert capsys.readouterr().err == f"edgeprune {command}: error: --ray needs Ray: pip install 'edgeprune[ray]'\n"
    assert not (tmp_path / "o").exists()
    assert main([*args, "--out", str(tmp_path / "o"), "--cpus-per-run", "2"]) == 2
    assert "need --ray" in capsys.readouterr().err


def _record(method, seed, host, seconds):
    return RunRecord(method, "flops" if method != "full" else "-", seed, 0.5, 0.5, 10, 10, 40, seconds, 0.0, 1, [],
                     [{"hostname": host, "ray_node_id": None}])  # fmt: skip


def test_table_says_when_runs_ran_on_different_machines():
    settings = CompareSettings(model="tiny", targets={"flops": 0.5}, baselines=(), seeds=(0, 1))
    baselines = [_record("full", 0, "a", 4.0), _record("full", 1, "a", 4.0)]
    records = [_record("direct", 0, "a", 2.0), _record("direct", 1, "b", 3.0)]
    summary = summarise(records, baselines, settings)
    assert summary["rows"][0]["train_hosts"] == ["a", "b"] and summary["baseline"]["train_hosts"] == ["a"]
    md = markdown_table(summary)
    assert "| 2 ± 1 (2 machines) |" in md and "training 4 s\n" in md
    assert "not comparable" in summary["conventions"]
