"""User models named by reference (package.module:factory, path/file.py:factory): build, save/load, trust, CLI."""

import json
import uuid
from pathlib import Path

import pytest
import torch
from helpers import run_cli
from torch import nn

import edgeprune
from edgeprune.errors import EdgepruneError
from edgeprune.io import layer_widths, load, save
from edgeprune.models.build import build_model, set_builder
from edgeprune.refs import parse_reference, trust_path

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT / "data" / "cifar10-mini.tar.gz"

MODELS = '''
import torch
from torch import nn


class Net(nn.Module):
    """conv -> GroupNorm -> ConvTranspose2d (upsampling) -> conv + BatchNorm -> pooled linear classifier."""

    def __init__(self, widths=(16, 16, 32), num_classes=10, in_channels=3):
        super().__init__()
        a, b, c = widths
        self.stem = nn.Conv2d(in_channels, a, 3, stride=2, padding=1)
        self.norm = nn.GroupNorm(4, a)
        self.up = nn.ConvTranspose2d(a, b, 2, stride=2)
        self.conv = nn.Conv2d(b, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x):
        x = torch.relu(self.norm(self.stem(x)))
        x = torch.relu(self.bn(self.conv(torch.relu(self.up(x)))))
        return self.head(x.mean((2, 3)))


def net(widths=(16, 16, 32), num_classes=10, in_channels=3):
    return Net(widths, num_classes, in_channels)


def segnet():
    return nn.Conv2d(3, 4, 1)


def broken(depth=3):
    raise ValueError(f"depth {depth} is not supported\\nsecond line")


def not_a_model():
    return 42
'''


@pytest.fixture
def models_py(tmp_path):
    path = tmp_path / "models.py"
    path.write_text(MODELS)
    return path


def same_outputs(a: nn.Module, b: nn.Module, shape=(2, 3, 32, 32)) -> bool:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


# -- references --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, kind, target, attr",
    [
        ("vgg16", "zoo", "vgg16", ""),
        ("zoo:vgg16", "zoo", "vgg16", ""),
        ("pkg.mod:make", "py", "pkg.mod", "make"),
        ("py:pkg.mod:Net.small", "py", "pkg.mod", "Net.small"),
        ("/abs/models.py:net", "file", "/abs/models.py", "net"),
        ("file:/abs/models.py:net", "file", "/abs/models.py", "net"),
    ],
)
def test_reference_forms(text, kind, target, attr):
    ref = parse_reference(text)
    assert (ref.kind, ref.target, ref.attr) == (kind, target, attr)
    assert parse_reference(ref.builder) == ref  # the canonical form parses back to itself


def test_relative_file_reference_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert parse_reference("sub/models.py:net").builder == f"file:{tmp_path}/sub/models.py:net"


# -- save / load ---------------------------------------------------------------------------------------


def test_resized_layers_round_trip_identical(models_py, tmp_path):
    ref = f"{models_py}:net"
    full = build_model(ref, {"widths": [16, 16, 32]})
    assert full.edgeprune_builder["builder"] == f"file:{models_py}:net" and len(full.edgeprune_builder["sha256"]) == 64
    # a "pruned" model: narrower conv, GroupNorm, ConvTranspose and BatchNorm layers than the builder makes
    small = build_model(ref, {"widths": [8, 12, 20]})
    set_builder(small, ref, {"widths": [16, 16, 32]}, input_shape=(3, 32, 32))
    save(small, tmp_path / "m")
    spec = json.loads((tmp_path / "m" / "model.json").read_text())
    assert spec["format"] == "edgeprune-model/2" and spec["kwargs"] == {"widths": [16, 16, 32]}
    assert spec["layers"]["norm"] == {"num_groups": 4, "num_channels": 8}
    assert spec["layers"]["up"] == {"in_channels": 8, "out_channels": 12, "groups": 1}
    loaded = load(tmp_path / "m")
    assert layer_widths(loaded) == layer_widths(small)
    assert same_outputs(loaded, small)


@pytest.mark.slow
def test_pruned_copy_remembers_its_builder(models_py, tmp_path):
    model = build_model(f"{models_py}:net")
    result = edgeprune.prune(model, "params", 0.6, input_shape=(3, 32, 32))
    assert result.model.edgeprune_builder == model.edgeprune_builder
    edgeprune.save(result.model, tmp_path / "p")  # nothing more to pass
    assert same_outputs(edgeprune.load(tmp_path / "p"), result.model)


def test_save_with_an_explicit_builder(models_py, tmp_path):
    from edgeprune.models.build import load_factory

    plain = load_factory(f"{models_py}:net")(widths=(8, 8, 16), num_classes=5)  # no builder attribute
    with pytest.raises(EdgepruneError, match=r"no known builder: pass builder="):
        edgeprune.save(plain, tmp_path / "x")
    edgeprune.save(
        plain, tmp_path / "x", builder=f"{models_py}:net", kwargs={"num_classes": 5}, input_shape=(3, 64, 64)
    )
    assert edgeprune.io.input_shape_of(tmp_path / "x") == (3, 64, 64)
    assert same_outputs(edgeprune.load(tmp_path / "x"), plain, (2, 3, 64, 64))


@pytest.mark.slow
def test_format_1_model_json_still_loads(tmp_path):
    model = edgeprune.prune(edgeprune.create("tiny"), "params", 0.5).model
    edgeprune.save(model, tmp_path)
    spec = json.loads((tmp_path / "model.json").read_text())
    v1 = {"format": "edgeprune-model/1", "arch": "tiny", "kwargs": spec["kwargs"], "input_shape": [3, 32, 32],
          "layers": layer_widths(model, legacy=True)}  # fmt: skip
    (tmp_path / "model.json").write_text(json.dumps(v1))
    loaded = edgeprune.load(tmp_path)
    assert loaded.edgeprune_builder["builder"] == "zoo:tiny" and same_outputs(loaded, model)


# -- trust ---------------------------------------------------------------------------------------------


@pytest.fixture
def saved_file_model(models_py, tmp_path, monkeypatch):
    """A folder saved from models.py:net, then a fresh trust list: this user never named the reference."""
    model = build_model(f"{models_py}:net")
    save(model, tmp_path / "m")
    monkeypatch.setenv("EDGEPRUNE_CONFIG", str(tmp_path / "other-user"))
    return tmp_path / "m", model


@pytest.mark.slow
def test_naming_a_reference_records_it_in_the_trust_list(models_py, capsys):
    assert run_cli(capsys, "profile", f"{models_py}:net")[0] == 0
    entries = json.loads(trust_path().read_text())["trusted"]
    assert [(e["builder"], len(e["sha256"])) for e in entries] == [(f"file:{models_py}:net", 64)]


def test_untrusted_code_builder_is_refused_with_how_to_vouch(saved_file_model, models_py, capsys):
    folder, _ = saved_file_model
    with pytest.raises(EdgepruneError, match="not vouched for") as e:
        load(folder)
    assert f"file:{models_py}:net" in str(e.value) and "--trust-code" in str(e.value) and "\n" not in str(e.value)
    code, _, err = run_cli(capsys, "profile", folder)
    assert code == 2 and err.count("\n") == 1 and "--model" in err and "--trust-code" in err


@pytest.mark.slow
def test_three_ways_to_vouch(saved_file_model, models_py, capsys):
    folder, model = saved_file_model
    assert same_outputs(load(folder, trust_code=True), model)  # (c) the explicit flag
    assert run_cli(capsys, "profile", folder, "--trust-code")[0] == 0
    assert not trust_path().exists()  # a one-time flag records nothing
    assert same_outputs(load(folder, builder=f"{models_py}:net"), model)  # (b) naming it again now
    assert run_cli(capsys, "profile", folder, "--model", f"{models_py}:net")[0] == 0
    assert same_outputs(load(folder), model)  # (a) ...which put it in the trust list


def test_a_folder_cannot_vouch_for_its_own_code(tmp_path, capsys):
    marker = tmp_path / "pwned"
    folder = tmp_path / "evil"
    folder.mkdir()
    spec = {"format": "edgeprune-model/2", "builder": "py:os:system", "kwargs": {"command": f"touch {marker}"},
            "input_shape": [3, 32, 32], "layers": {}, "tensors": {}}  # fmt: skip
    (folder / "model.json").write_text(json.dumps(spec))
    (folder / "model.safetensors").write_bytes(b"")
    code, _, err = run_cli(capsys, "profile", folder)
    assert code == 2 and "py:os:system" in err and err.count("\n") == 1
    with pytest.raises(EdgepruneError, match="not vouched for"):
        load(folder)
    assert not marker.exists()


@pytest.mark.slow
def test_changed_file_is_refused_naming_both_hashes(saved_file_model, models_py, capsys):
    folder, model = saved_file_model
    before = json.loads((folder / "model.json").read_text())["sha256"]
    models_py.write_text(MODELS + "\n# edited\n")
    from edgeprune.files import sha256_file

    after = sha256_file(models_py)
    with pytest.raises(EdgepruneError, match="has changed since the model was saved") as e:
        load(folder, trust_code=True)
    assert before in str(e.value) and after in str(e.value) and "--allow-changed-code" in str(e.value)
    # naming it again vouches for the edited file once (issue 30): it loads, saying it still builds the architecture
    with pytest.warns(UserWarning, match="still builds the recorded architecture"):
        code, _, err = run_cli(capsys, "profile", folder, "--model", f"{models_py}:net")
    assert code == 0, err
    assert same_outputs(load(folder, allow_changed=True, trust_code=True), model)
    assert run_cli(capsys, "profile", folder, "--allow-changed-code", "--model", f"{models_py}:net")[0] == 0


# -- the CLI -------------------------------------------------------------------------------------------


def test_py_reference_through_cli_prune_and_load(tmp_path, monkeypatch, capsys):
    module = f"user_models_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(MODELS)
    monkeypatch.chdir(tmp_path)  # the current folder is importable, as for uvicorn's module:app
    code, _, err = run_cli(capsys, "prune", f"{module}:net", "--model-args", '{"num_classes": 7}', "--mode", "flops",
                           "--target", "0.5", "--out", tmp_path / "p")  # fmt: skip
    assert code == 0, err
    spec = json.loads((tmp_path / "p" / "model.json").read_text())
    assert spec["builder"] == f"py:{module}:net" and spec["kwargs"] == {"num_classes": 7} and "sha256" not in spec
    report = json.loads((tmp_path / "p" / "report.json").read_text())
    model = edgeprune.load(tmp_path / "p")  # trusted: the prune command named it
    assert sum(p.numel() for p in model.parameters()) == report["after"]["params"]
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 7)


@pytest.mark.slow
def test_file_reference_through_prune_train_bench_export(models_py, tmp_path, capsys):
    ref = f"{models_py}:net"
    code, _, err = run_cli(capsys, "prune", ref, "--mode", "params", "--target", "0.5", "--out", tmp_path / "p")
    assert code == 0, err
    code, out, err = run_cli(capsys, "train", tmp_path / "p", "--data", MINI, "--epochs", 1, "--limit-train", 128,
                             "--limit-test", 64, "--batch-size", 64, "--quiet")  # fmt: skip
    assert code == 0, err
    assert json.loads((tmp_path / "p" / "model.json").read_text())["builder"] == f"file:{models_py}:net"
    code, out, err = run_cli(capsys, "bench", tmp_path / "p", "--runs", 2, "--warmup", 1, "--json")
    assert code == 0, err
    assert set(json.loads(out)["backends"]) == {"torch", "onnxruntime"}
    code, _, err = run_cli(capsys, "export", tmp_path / "p", "--onnx", tmp_path / "m.onnx")
    assert code == 0 and (tmp_path / "m.onnx").is_file(), err


@pytest.mark.slow
def test_train_a_reference_sizes_it_for_the_data(models_py, tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", f"{models_py}:net", "--data", MINI, "--epochs", 1, "--limit-train", 64,
                           "--limit-test", 32, "--batch-size", 32, "--quiet")  # fmt: skip
    assert code == 2 and err.strip().endswith(f"--out is required when training a model built by {models_py}:net")
    code, _, err = run_cli(capsys, "train", f"{models_py}:net", "--data", MINI, "--epochs", 1, "--limit-train", 64,
                           "--limit-test", 32, "--batch-size", 32, "--quiet", "--out", tmp_path / "t")  # fmt: skip
    assert code == 0, err
    assert json.loads((tmp_path / "t" / "model.json").read_text())["kwargs"] == {"num_classes": 10, "in_channels": 3}


@pytest.mark.slow
def test_train_refuses_a_model_that_is_not_a_classifier(models_py, tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", f"{models_py}:segnet", "--data", MINI, "--epochs", 1, "--limit-train",
                           64, "--limit-test", 32, "--quiet", "--out", tmp_path / "t")  # fmt: skip
    assert code == 2 and err.count("\n") == 1 and "classification models with one (N, classes) output" in err
    assert not (tmp_path / "t" / "checkpoint.pt").exists() and not list((tmp_path / "t").glob("*.json"))


def test_train_with_out_dir_refuses_a_model_without_builder_before_training(tmp_path):
    from edgeprune.data import load_dataset
    from edgeprune.train import TrainConfig, train

    data = load_dataset(MINI, limit_train=32, limit_test=16)
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    with pytest.raises(EdgepruneError, match="no known builder"):
        train(plain, data, TrainConfig(epochs=1), out_dir=tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


@pytest.mark.slow
def test_sweep_takes_a_reference(models_py, tmp_path, capsys):
    code, _, err = run_cli(capsys, "sweep", f"{models_py}:net", "--modes", "params", "--targets", "0.5", "--backends",
                           "onnxruntime", "--runs", 2, "--warmup", 1, "--out", tmp_path / "s")  # fmt: skip
    assert code == 0, err
    result = json.loads((tmp_path / "s" / "results.json").read_text())
    assert result["model"] == f"{models_py}:net" and len(result["rows"]) == 2


@pytest.mark.slow
def test_zoo_width_option(capsys):
    sizes = {}
    for width in ("1", "0.5"):
        code, out, _ = run_cli(capsys, "profile", "tiny", "--width", width, "--json")
        assert code == 0
        sizes[width] = json.loads(out)["total"]["params"]
    assert sizes["0.5"] < sizes["1"] / 3


def test_compare_refuses_a_model_folder(tmp_path, capsys):
    edgeprune.save(edgeprune.create("tiny"), tmp_path / "m")
    code, _, err = run_cli(
        capsys, "compare", tmp_path / "m", "--data", MINI, "--target", "0.5", "--out", tmp_path / "o"
    )
    assert code == 2 and "trains from scratch" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "model, extra, message",
    [
        ("no_such_module_xyz:net", [], "cannot import module 'no_such_module_xyz'"),
        ("{dir}/missing.py:net", [], "missing.py: no such file"),
        ("{dir}/models.py:nope", [], "has no attribute 'nope'"),
        ("{dir}/models.py:broken", [], "raised ValueError: depth 3 is not supported"),
        ("{dir}/models.py:not_a_model", [], "returned int, not a torch.nn.Module"),
        ("{dir}/models.py:net", ["--model-args", "{bad"], "--model-args is not valid JSON"),
        ("{dir}/models.py:net", ["--model-args", "[1, 2]"], "--model-args must be a JSON object"),
        ("{dir}/models.py:net", ["--model-args", '{"depth": 3}'], "does not accept these arguments"),
        ("{dir}/models.py:net", ["--width", "0.5"], "does not accept these arguments"),
        ("{dir}/models.py", [], "name the factory too"),
        ("{dir}/syntax.py:net", [], "running it raised SyntaxError"),
        ("{dir}/models.py:Net.nope", [], "has no attribute 'Net.nope'"),
    ],
)
def test_bad_references_give_one_line_errors(models_py, capsys, model, extra, message):
    (models_py.parent / "syntax.py").write_text("def net(:\n")
    code, out, err = run_cli(capsys, "profile", model.format(dir=models_py.parent), *extra)
    assert code == 2 and message in err and err.count("\n") == 1 and not out, err
