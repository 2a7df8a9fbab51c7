"""Probe bundles: written with the table's grid, run by probe.py with numpy and the runtime only, read back."""

from __future__ import annotations

import ast
import hashlib
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import edgeprune
from edgeprune.backends import probe_runner
from edgeprune.cli import main
from edgeprune.errors import EdgepruneError
from edgeprune.latency import OVERHEAD as OVERHEAD_KEY
from edgeprune.latency import build_table, table_from_probe, write_probe
from edgeprune.lut import TableSettings, grid_widths, load_table, ms_text

SHAPE = (3, 32, 32)
SETTINGS = {"backend": "onnxruntime", "round_to": 32, "near": 0, "ratio": 0.3, "runs": 10, "warmup": 2,
            "processes": 2, "calibration": (0.5,)}  # fmt: skip


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return edgeprune.create("tiny")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("bundle") / "probe"
    return folder, write_probe(tiny(), SHAPE, folder, TableSettings(**SETTINGS), source="tiny")


@pytest.fixture(scope="session")
def runtime_python(tmp_path_factory) -> Path:
    """A fresh virtual environment with only numpy and onnxruntime (about 10 s from the local registry)."""
    folder = tmp_path_factory.mktemp("probe-venv")
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True, capture_output=True)
    python = folder / "bin" / "python"
    pip = subprocess.run([python, "-m", "pip", "install", "-q", "numpy", "onnxruntime"], capture_output=True, text=True)
    if pip.returncode != 0:
        lines = [line for line in pip.stderr.splitlines() if line.strip()] or ["no output"]
        pytest.skip(f"pip cannot install numpy and onnxruntime here (offline?): {lines[-1]}")
    assert subprocess.run([python, "-I", "-c", "import torch"], capture_output=True).returncode != 0
    assert subprocess.run([python, "-I", "-c", "import edgeprune"], capture_output=True).returncode != 0
    return python


def _imports(node: ast.AST) -> set[str]:
    """Top-level names of the modules imported anywhere under ``node``."""
    names = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Import):
            names |= {a.name.split(".")[0] for a in n.names}
        elif isinstance(n, ast.ImportFrom) and n.level == 0:
            names.add(n.module.split(".")[0])
    return names


def test_the_runner_imports_the_standard_library_numpy_and_the_runtime_only():
    tree = ast.parse(Path(probe_runner.__file__).read_text())
    functions = {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef)}
    loaders = {
        "_onnxruntime_loader": {"onnxruntime"},
        "_litert_loader": {"ai_edge_litert"},
        "_executorch_loader": {"executorch", "torch"},
    }  # ExecuTorch's bindings take torch tensors
    for name, allowed in loaders.items():
        assert _imports(functions.pop(name)) == allowed, name
    rest = set().union(*(_imports(f) for f in functions.values()), _imports(ast.Module(
        body=[n for n in tree.body if not isinstance(n, ast.FunctionDef)], type_ignores=[])))  # fmt: skip
    assert rest - {"__future__"} <= set(sys.stdlib_module_names) | {"numpy"}, rest


def test_the_bundle_holds_the_grid_its_files_and_their_hashes(bundle):
    folder, manifest = bundle
    assert (folder / "probe.py").read_bytes() == Path(probe_runner.__file__).read_bytes()
    assert json.loads((folder / "manifest.json").read_text()) == manifest
    assert manifest["backend"] == "onnxruntime" and manifest["edgeprune"] == edgeprune.__version__
    fc = manifest["layers"]["fc"]
    assert fc["c_in"] == fc["c_out"] == grid_widths(192, 32, near=0, ratio=0.3)
    assert manifest["layers"]["head"]["c_out"] == [10] and manifest["layers"]["features.0"]["c_in"] == [3]
    groups = {g["name"]: g["artifacts"] for g in manifest["groups"]}
    assert set(groups) == {f"layer {n}" for n in manifest["layers"]} | {"calibration"}
    assert set(groups["layer fc"]) == {f"{i}x{o}" for i in fc["c_in"] for o in fc["c_out"]} | {OVERHEAD_KEY}
    assert set(groups["calibration"]) == {"parent", *manifest["calibration"]} and "floor" in manifest["calibration"]
    for entry in (e for g in groups.values() for e in g.values()):
        data = (folder / entry["file"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["bytes"] == len(data)
    floor = manifest["calibration"]["floor"]
    assert all(c_out in (32, 10) for _, c_out in floor.values())  # one quantum of 32, the head's 10 classes


def _fake_measurements(folder: Path, manifest: dict) -> dict:
    """Measurements of the bundle a test can check: each file its own known round medians."""
    groups = {}
    for g, group in enumerate(manifest["groups"]):
        groups[group["name"]] = {
            key: {
                "median": [
                    0.005 + 0.001 * r if key == OVERHEAD_KEY else 0.02 * (1 + g) + 0.001 * i + 0.003 * r
                    for r in range(3)
                ],
                "p90": [1.0] * 3,
            }
            for i, key in enumerate(group["artifacts"])
        }
    for key, ms in {"parent": 0.2, "floor": 0.05, "uniform 0.5": 0.11}.items():  # the parent slowest, the floor fastest
        groups["calibration"][key]["median"] = [ms + 0.004 * r for r in (0, 2, 1)]
    digest = hashlib.sha256((folder / "manifest.json").read_bytes()).hexdigest()
    device = {"platform": "Linux-test", "machine": "aarch64", "cpu": "Test CPU", "python": "3.11",
              "backend": "onnxruntime", "runtime_version": "9.9", "threads": 4}  # fmt: skip
    return {"format": 1, "kind": probe_runner.KIND, "manifest_sha256": digest, "device": device,
            "timing": {"runs": 10, "warmup": 2, "rounds": 3}, "seconds": 1.0, "groups": groups}  # fmt: skip


def test_a_table_from_measurements_is_their_medians_less_the_overhead(bundle, tmp_path):
    folder, manifest = bundle
    data = _fake_measurements(folder, manifest)
    (tmp_path / "m.json").write_text(json.dumps(data))
    table = table_from_probe(tiny(), tmp_path / "m.json", folder, source="tiny")
    assert (table.cpu, table.backend_version, table.threads, table.backend) == ("Test CPU", "9.9", 4, "onnxruntime")
    timed = data["groups"]["layer features.4"]
    over = timed[OVERHEAD_KEY]["median"]
    layer = table.layers["features.4"]
    i, o = layer.c_in[0], layer.c_out[-1]
    want = statistics.median(v - w for v, w in zip(timed[f"{i}x{o}"]["median"], over))
    assert layer.at(i, o) == pytest.approx(want)
    models = data["groups"]["calibration"]
    parent = statistics.median(models["parent"]["median"])
    assert table.parent_ms == pytest.approx(parent) and [pytest.approx(parent)] * 2 in table.calibration
    floor = parent * statistics.median(a / b for a, b in zip(models["floor"]["median"], models["parent"]["median"]))
    assert table.floor_ms == pytest.approx(floor)
    assert table.settings["probe"]["machine"] == "aarch64"


@pytest.mark.parametrize(
    ("edit", "match"),
    [(lambda d: d.update(manifest_sha256="0" * 64), "measurements of another bundle"),
     (lambda d: d["groups"]["layer fc"][OVERHEAD_KEY].update(median=[0.1, float("nan"), 0.1]), "finite positive"),
     (lambda d: d["groups"]["calibration"]["parent"].update(median=[0.1, -1.0, 0.1]), "finite positive"),
     (lambda d: d["groups"].pop("layer fc"), "group 'layer fc' is missing"),
     (lambda d: d["device"].update(threads=0), "threads 0")],
)  # fmt: skip
def test_bad_or_foreign_measurements_are_one_line_at_the_cli(bundle, tmp_path, capsys, edit, match):
    folder, manifest = bundle
    data = _fake_measurements(folder, manifest)
    edit(data)
    (tmp_path / "m.json").write_text(json.dumps(data))
    code = main(["lut", "tiny", "--from-probe", str(tmp_path / "m.json"), "--bundle", str(folder), "--out",
                 str(tmp_path / "t.json")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and match in err and err.count("\n") == 1 and not (tmp_path / "t.json").exists()


def test_measurements_of_another_model_are_refused(bundle, tmp_path):
    folder, manifest = bundle
    (tmp_path / "m.json").write_text(json.dumps(_fake_measurements(folder, manifest)))
    with pytest.raises(EdgepruneError, match="written for another model"):
        table_from_probe(edgeprune.create("tiny", width=0.5), tmp_path / "m.json", folder)


def test_the_runner_refuses_a_changed_file_in_one_line(bundle, tmp_path):
    folder, manifest = bundle
    copy = shutil.copytree(folder, tmp_path / "device")
    victim = copy / manifest["groups"][0]["artifacts"]["3x32"]["file"]
    victim.write_bytes(victim.read_bytes()[:-1] + b"\0")
    proc = subprocess.run([sys.executable, "-I", "probe.py"], cwd=copy, capture_output=True, text=True)
    assert proc.returncode == 2 and "SHA-256 differs" in proc.stderr and proc.stderr.count("\n") == 1
    assert not (copy / "measurements.json").exists()


def test_a_probe_for_torch_is_refused(capsys, tmp_path):
    code = main(["lut", "tiny", "--backend", "torch", "--probe", str(tmp_path / "p")])
    assert code == 2 and "not 'torch'" in capsys.readouterr().err and not (tmp_path / "p").exists()


def test_small_times_print_with_digits_not_zeros():
    assert ms_text(1.23456) == "1.235 ms" and ms_text(0.0456) == "45.6 µs" and ms_text(0.0000123) == "0.0123 µs"
    assert ms_text(0.0004, 0.0001) == "0.1-0.4 µs" and ms_text(0.5, 0.05) == "0.050-0.500 ms"
    assert "0.000" not in ms_text(0.00004) and ms_text(0.0) == "0 µs"


@pytest.mark.slow
def test_a_probe_round_trip_gives_the_table_built_here(bundle, runtime_python, tmp_path, capsys):
    folder, manifest = bundle
    device = shutil.copytree(folder, tmp_path / "device")  # what is copied to the device
    proc = subprocess.run([runtime_python, "-I", "probe.py", "--threads", "1", "--quiet"], cwd=device,
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "probe-table.json"
    code = main(["lut", "tiny", "--from-probe", str(device / "measurements.json"), "--bundle", str(folder),
                 "--out", str(out)])  # fmt: skip
    assert code == 0 and f"wrote {out}" in capsys.readouterr().out
    probed = load_table(out)
    direct = build_table(tiny(), SHAPE, TableSettings(**SETTINGS), source="tiny")
    for field in ("model", "input_shape", "backend", "backend_version", "threads", "cpu", "round_to"):
        assert getattr(probed, field) == getattr(direct, field), field
    assert set(probed.layers) == set(direct.layers) and probed.settings["grid"] == direct.settings["grid"]
    for name, layer in direct.layers.items():
        other = probed.layers[name]
        assert (other.kind, other.c_in, other.c_out, other.depthwise, other.calls, other.block) == (
            layer.kind, layer.c_in, layer.c_out, layer.depthwise, layer.calls, layer.block)  # fmt: skip
    assert len(probed.calibration) >= 2 and len(direct.calibration) >= 2
    for target in (0.8, 0.5, 0.25):
        prof = edgeprune.profile(edgeprune.prune(tiny(), "flops", target, round_to=32).model)
        a, b = probed.predict(prof), direct.predict(prof)
        assert 1 / 3 < a / b < 3, (target, a, b)  # within noise; milliseconds against seconds would be 1000x


def _small() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(32, 10))  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(("backend", "suffix"), [("executorch", ".pte"), ("litert", ".tflite")])
def test_edge_bundles_run_and_read_back(backend, suffix, tmp_path):
    from edgeprune.edge_runtime import available

    if not available(backend):
        pytest.skip(f"the {backend} runtime is not installed")
    settings = TableSettings(backend=backend, round_to=16, near=0, ratio=0.3, runs=3, warmup=1, processes=1,
                             calibration=())  # fmt: skip
    manifest = write_probe(_small(), (3, 8, 8), tmp_path / "b", settings)
    files = [e["file"] for g in manifest["groups"] for e in g["artifacts"].values()]
    assert len(files) == 2 + 1 + 2 + 1 + 1 and all(f.endswith(suffix) for f in files)  # 2 blocks + overhead each
    script = "import runpy, sys; sys.argv = ['probe.py', '--quiet']; runpy.run_path('probe.py', run_name='__main__')"
    proc = subprocess.run([sys.executable, "-I", "-c", f"{script}; print('torch' in sys.modules)"],
                          cwd=tmp_path / "b", capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    # LiteRT's probe runs without torch; ExecuTorch's Python bindings bring it themselves
    assert proc.stdout.strip().splitlines()[-1] == str(backend == "executorch")
    table = table_from_probe(_small(), tmp_path / "b" / "measurements.json", tmp_path / "b")
    assert table.backend == backend and table.layers["0"].c_out == [16, 32] and table.layers["4"].c_in == [16, 32]
    assert table.parent_ms > 0 and table.calibration == []


@pytest.mark.slow
def test_a_bench_probe_times_a_model_and_its_variants_interleaved(bundle, tmp_path, capsys):
    from edgeprune.backends.probe import models_from_probe, write_models_probe

    models = {"full": _small(), "half": nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
              nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))}  # fmt: skip
    timing = {"runs": 5, "warmup": 1, "rounds": 2}
    manifest = write_models_probe(models, (3, 8, 8), tmp_path / "b", "onnxruntime", timing=timing)
    assert [list(g["artifacts"]) for g in manifest["groups"]] == [["full", "half"]]
    proc = subprocess.run([sys.executable, "-I", "probe.py", "--quiet"], cwd=tmp_path / "b", capture_output=True,
                          text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    raw = json.loads((tmp_path / "b" / "measurements.json").read_text())["groups"]["models"]
    result = models_from_probe(tmp_path / "b" / "measurements.json", tmp_path / "b")
    half, full = raw["half"]["median"], raw["full"]["median"]
    assert len(half) == 2 and result["models"]["half"]["median_ms"] == pytest.approx(statistics.median(half))
    assert result["models"]["half"]["ratio"] == pytest.approx(statistics.median(h / f for h, f in zip(half, full)))
    assert result["models"]["full"]["ratio"] == 1.0 and result["device"]["threads"] == 1
    code = main(["bench", "tiny", "--from-probe", str(tmp_path / "b" / "measurements.json")])
    out = capsys.readouterr().out
    assert code == 0 and "half: " in out and "x the first" in out and "0.000" not in out
    with pytest.raises(EdgepruneError, match="not bench's"):  # a latency table's bundle
        models_from_probe(tmp_path / "b" / "measurements.json", bundle[0])


def test_prune_plans_for_the_device_by_its_table_and_measures_nothing_here(bundle, tmp_path, capsys, monkeypatch):
    folder, manifest = bundle
    (tmp_path / "m.json").write_text(json.dumps(_fake_measurements(folder, manifest)))
    table = table_from_probe(tiny(), tmp_path / "m.json", folder, source="tiny")
    table.save(tmp_path / "device.json")
    import edgeprune.latency

    def no_timing(*args, **kwargs):
        raise AssertionError("a device table's cut was timed on this machine")

    monkeypatch.setattr(edgeprune.latency, "measure_relative", no_timing)
    limit = 0.8 * table.parent_ms
    code = main(
        [
            "prune",
            "tiny",
            "--target",
            f"latency={limit}ms",
            "--lut",
            str(tmp_path / "device.json"),
            "--out",
            str(tmp_path / "cut"),
        ]
    )  # fmt: skip  (no --accept-table: the table names the device)
    out, err = capsys.readouterr()
    assert code in (0, 1), err
    report = json.loads((tmp_path / "cut" / "report.json").read_text())
    latency, device = report["latency"], report["latency_table"]["device"]
    assert device["cpu"] == "Test CPU" and device["machine"] == "aarch64" and "--probe" in device["check"]
    assert latency["measured_ms"] == pytest.approx(latency["predicted_ms"])  # judged by the prediction
    assert "latency predicted (device table, Test CPU" in out and "latency measured: not here" in out
    assert (latency["met"], code) in ((True, 0), (False, 1))
    # a table made here, but on another CPU, is still refused without --accept-table
    here = load_table(tmp_path / "device.json")
    here.settings.pop("probe")
    here.save(tmp_path / "other.json")
    code = main(["prune", "tiny", "--target", f"latency={limit}ms", "--lut", str(tmp_path / "other.json"),
                 "--out", str(tmp_path / "cut2")])  # fmt: skip
    assert code == 2 and "--accept-table" in capsys.readouterr().err
