"""Issue 30, items 6 and 7: sizes from files and options capped before anything is allocated, run records and latency
tables checked like model.json (schema, ranges, finiteness, the data set's content hash), and one line, never a
traceback, for numbers that overflow.

Every test runs under a data-segment limit (``memory_guard``) a little above what pytest already uses: code that
would allocate gigabytes fails at once instead of taking the machine's memory, and edgeprune's own memory checks see
that room as the memory available, so the tests refuse the same models on any machine."""

from __future__ import annotations

import hashlib
import json
import math
import resource
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from conftest import MINI
from helpers import one_line_error, one_line_message, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import edgeprune
from edgeprune import io as eio
from edgeprune import pipelines, records
from edgeprune.data import ImageDataset, load_dataset
from edgeprune.errors import EdgepruneError
from edgeprune.lut import LatencyTable, LayerTable, load_table

GUARD_BYTES = 768_000_000  # room above the current data segment while a test runs


def _vm_data() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmData:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmData")


@pytest.fixture(autouse=True)
def memory_guard():
    """A soft RLIMIT_DATA of the process's data segment + GUARD_BYTES, restored after the test."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the memory guard needs Linux's /proc and RLIMIT_DATA")
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    limit = _vm_data() + GUARD_BYTES
    resource.setrlimit(resource.RLIMIT_DATA, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    yield
    resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


def no_forward(*args, **kwargs):
    raise AssertionError("the model ran before its size was checked")


def no_measurement(*args, **kwargs):
    raise AssertionError("a measuring process was started before the model's size was checked")


def tiny_folder(tmp_path: Path, input_shape: list[int]) -> Path:
    """A saved tiny model whose model.json then says ``input_shape`` (the weights fit any input size)."""
    folder = tmp_path / "m"
    edgeprune.save(edgeprune.create("tiny"), folder, (3, 32, 32))
    spec = json.loads((folder / "model.json").read_text())
    spec["input_shape"] = input_shape
    (folder / "model.json").write_text(json.dumps(spec))
    return folder


def onnx_file(path: Path, dims: list[int], conv_out: int | None = None) -> Path:
    """A one-node ONNX graph: a 1x1 Conv to ``conv_out`` channels (or a Relu) of an input declared ``dims``."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits, out = [], list(dims)
    if conv_out:
        inits.append(numpy_helper.from_array(np.ones((conv_out, dims[1], 1, 1), np.float32), "w"))
        node = helper.make_node("Conv", ["x", "w"], ["y"])
        out = [dims[0], conv_out, *dims[2:]]
    else:
        node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)], inits)  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


# -- 6. sizes from files and options, capped before allocation ----------------------------------------------------


@pytest.mark.parametrize("command", ["profile", "bench"])
def test_a_model_json_input_shape_beyond_the_input_size_caps_is_refused(tmp_path, capsys, monkeypatch, command):
    """Was: [3, 9000, 9000] passed model.json's check (243M values < 2**28) and profile and bench tried 15.5 GB."""
    monkeypatch.setattr("edgeprune.graph.profile", no_forward)
    monkeypatch.setattr("edgeprune.measure.run_measurement", no_measurement)
    folder = tiny_folder(tmp_path, [3, 9000, 9000])
    code, _, err = run_cli(capsys, command, folder, *(["--backends", "torch"] if command == "bench" else []))
    line = one_line_error(err, code)
    assert "'input_shape' [3, 9000, 9000] has a side of 9000, more than 4096 pixels" in line
    with pytest.raises(EdgepruneError, match="more than 4096 pixels"):
        eio.read_spec(folder)


@pytest.mark.slow
def test_a_model_whose_layer_outputs_exceed_the_memory_is_refused_before_its_forward_pass(tmp_path, capsys,
                                                                                           monkeypatch):  # fmt: skip
    """[3, 2048, 2048] is within the caps, but tiny's feature maps at that size are 4.6 GB: estimated on the meta
    device and refused before profile's forward pass (which held them all)."""
    monkeypatch.setattr("edgeprune.graph.profile", no_forward)
    folder = tiny_folder(tmp_path, [3, 2048, 2048])
    code, _, err = run_cli(capsys, "profile", folder)
    line = one_line_error(err, code)
    assert "needs about 4.6 GB of memory at batch 1" in line and "input and every layer's output 4.6 GB" in line
    assert "refused before allocating it" in line
    code, _, err = run_cli(capsys, "profile", "tiny", "--input-size", "2048")  # the same from an option
    assert "needs about 4.6 GB" in one_line_error(err, code)


def test_a_billion_classes_is_one_line_before_any_allocation(capsys):
    """Was: a traceback from torch's allocator (768 GB of one linear layer), exit 1."""
    code, _, err = run_cli(capsys, "profile", "tiny", "--num-classes", "1000000000")
    assert "--num-classes" in one_line_error(err, code) and "16777216" in err
    code, _, err = run_cli(capsys, "profile", "tiny", "--in-channels", "1000000000")
    assert "--in-channels" in one_line_error(err, code) and "4096" in err


def test_a_huge_class_count_in_model_args_is_one_line(capsys):
    """Was: exit 2 with torch's message of 40 lines (a C++ stack) for an integer that overflows int64."""
    code, _, err = run_cli(capsys, "profile", "tiny", "--model-args", '{"num_classes": 99999999999999999999999}')
    assert "num_classes must be a positive integer" in one_line_error(err, code)


def test_a_class_count_within_the_cap_but_over_the_memory_is_sized_on_the_meta_device():
    """10 million classes (7.7 GB of tiny's head): built on the meta device first and refused; the real build
    never runs."""
    with pytest.raises(EdgepruneError, match=r"tiny needs about 7\.[0-9] GB .*parameters and buffers 7\.[0-9] GB"):
        eio.resolve("tiny", num_classes=10_000_000)


def test_user_code_is_sized_before_its_forward_pass(tmp_path, capsys, monkeypatch):
    """A factory runs once, as named (not on the meta device: a module it imports there would keep meta tensors);
    its feature maps are estimated on the meta device before profile's forward pass: here a 64x upsampling feeds
    a 64-channel map of 1.1 GB."""
    monkeypatch.setattr("edgeprune.graph.profile", no_forward)
    path = tmp_path / "nets.py"
    path.write_text("from torch import nn\n\ndef net(num_classes: int = 10):\n    return nn.Sequential(\n"
                    "        nn.Upsample(scale_factor=64), nn.Conv2d(3, 64, 1), nn.AdaptiveAvgPool2d(1),\n"
                    "        nn.Flatten(), nn.Linear(64, num_classes))\n")  # fmt: skip
    code, _, err = run_cli(capsys, "profile", f"{path}:net")
    assert "nets.py:net needs about 1.1 GB of memory at batch 1" in one_line_error(err, code)


def test_the_meta_device_sizing_leaves_the_seed_s_weights_as_they_were():
    """The meta build draws no random numbers: a model resolved after seeding has the weights create gives."""
    torch.manual_seed(3)
    expected = edgeprune.create("tiny").state_dict()
    torch.manual_seed(3)
    got = eio.resolve("tiny").model.state_dict()
    assert all(torch.equal(expected[k], got[k]) for k in expected)


@pytest.mark.slow
def test_an_onnx_file_declaring_a_112_gib_input_is_refused_before_any_run(tmp_path, capsys, monkeypatch):
    """Was: profile printed it and bench's measuring process tried to allocate 112 GiB of random input."""
    monkeypatch.setattr("edgeprune.measure.run_measurement", no_measurement)
    path = onnx_file(tmp_path / "huge.onnx", [1, 3, 100_000, 100_000])
    for command in ("profile", "bench"):
        code, _, err = run_cli(capsys, command, path)
        assert "the input [3, 100000, 100000] has a side of 100000, more than 4096 pixels" in one_line_error(err, code)


def test_an_onnx_input_dimension_of_zero_is_one_line(tmp_path, capsys, monkeypatch):
    """Was: bench's measuring process died of ZeroDivisionError (no input bytes to divide its pool by)."""
    monkeypatch.setattr("edgeprune.measure.run_measurement", no_measurement)
    path = onnx_file(tmp_path / "zero.onnx", [1, 3, 0, 32])
    for command in ("profile", "bench"):
        code, _, err = run_cli(capsys, command, path)
        assert "the input [3, 0, 32]" in one_line_error(err, code) and "a dimension of 0" in err


def test_an_onnx_graph_whose_outputs_exceed_the_memory_is_refused_before_bench_runs_it(tmp_path, capsys,
                                                                                      monkeypatch):  # fmt: skip
    """A 3x4096x4096 input (within the caps) through a 1x1 conv to 1024 channels: a 69 GB output map, from the
    graph's inferred shapes."""
    monkeypatch.setattr("edgeprune.measure.run_measurement", no_measurement)
    path = onnx_file(tmp_path / "wide.onnx", [1, 3, 4096, 4096], conv_out=1024)
    code, _, err = run_cli(capsys, "bench", path)
    assert "wide.onnx needs about 68.9 GB of memory at batch 1" in one_line_error(err, code)


def test_bench_refuses_a_batch_whose_inputs_and_outputs_exceed_the_memory(capsys, monkeypatch):
    """--batch-size multiplies the input and every output: 100,000 tiny inferences at once are 112 GB."""
    monkeypatch.setattr("edgeprune.measure.run_measurement", no_measurement)
    code, _, err = run_cli(capsys, "bench", "tiny", "--backends", "torch", "--batch-size", "100000")
    assert "at batch 100000" in one_line_error(err, code) and "refused before allocating it" in err


def test_every_input_shape_meets_the_same_caps():
    """--input-size's caps hold for model.json, .onnx inputs, latency tables and API shapes alike."""
    from edgeprune import limits

    assert limits.MAX_INPUT_SIZE == __import__("edgeprune.cli.options").cli.options.MAX_INPUT_SIZE == 4096
    assert limits.input_shape_problem([3, 4096, 4096]) is None and limits.input_shape_problem([1, 1 << 20]) is None
    for bad in ([3, 4097, 8], [5000, 8, 8], [4, 4096, 4096], [3, 0, 8], [3.0, 8, 8], [True, 8, 8], [], [1] * 5, "3"):
        assert limits.input_shape_problem(bad) is not None, bad
    with pytest.raises(EdgepruneError, match="more than 4096 pixels"):
        eio.resolve("tiny", input_shape=(3, 9000, 9000))


# -- 7. run records and latency tables, checked like model.json --------------------------------------------------


@pytest.fixture(scope="module")
def mini():
    return load_dataset(str(MINI), 128, 64, progress=False)


def _epoch(n: int, stage: int = 0) -> dict:
    return {"epoch": n, "loss": 2.0, "train_acc": 0.25, "test_acc": 0.3, "epoch_seconds": 1.5, "eval_seconds": 0.1,
            "train_seconds": 1.5 * n, "images_per_s": 85.3, "lr": 0.05, "stage": stage}  # fmt: skip


def _run(method: str, mode: str, accuracy: float = 0.3) -> pipelines.RunRecord:
    return pipelines.RunRecord(method, mode, 0, 1.0 if method == "full" else "0.5", accuracy, 1000, 20000, 9000, 1.5,
                               0.0, 1, [_epoch(1)], [{"hostname": "here", "ray_node_id": None}])  # fmt: skip


SETTINGS = pipelines.CompareSettings(model="tiny", targets={"flops": "0.5"}, baselines=(), epochs=1)


def _with_content_hash(monkeypatch):
    """The data set's content hash, where edgeprune.data does not give one yet (the record key uses it if there)."""
    if not hasattr(ImageDataset, "content_hash"):

        def content(self):
            h = hashlib.sha256()
            for t in (self.train_x, self.train_y, self.test_x, self.test_y):
                h.update(t.contiguous().numpy().tobytes())
            return h.hexdigest()

        monkeypatch.setattr(ImageDataset, "content_hash", property(content), raising=False)


def _swapped(data: ImageDataset) -> ImageDataset:
    """The same data set with two training images of different classes swapped: same name, sizes and classes."""
    i = 0
    j = next(k for k in range(len(data.train_y)) if data.train_y[k] != data.train_y[i])
    x = data.train_x.clone()
    x[[i, j]] = x[[j, i]]
    return ImageDataset(data.name, data.classes, x, data.train_y, data.test_x, data.test_y, data.mean, data.std)


def test_resume_refuses_records_made_on_data_whose_images_were_swapped_between_classes(tmp_path, mini, monkeypatch):
    """Was: compare --resume read back every record; the data signature (name, sizes, classes, shape) had no
    content hash."""
    _with_content_hash(monkeypatch)
    ctx = pipelines.make_context(SETTINGS, mini, tmp_path, progress=False, resume=True)
    key = pipelines.record_key(ctx, "direct", "flops", 0, 1)
    pipelines.save_record(ctx, "direct-flops-s0", key, _run("direct", "flops"))
    assert pipelines.stored_record(ctx, "direct-flops-s0", key) == _run("direct", "flops")  # the same data: read
    other = pipelines.make_context(SETTINGS, _swapped(mini), tmp_path, progress=False, resume=True)
    with pytest.raises(EdgepruneError, match="recorded on other data: same name and sizes, other images or labels"):
        pipelines.stored_record(other, "direct-flops-s0", pipelines.record_key(other, "direct", "flops", 0, 1))


def _write_saved(ctx, tag: str, record: dict) -> Path:
    key = pipelines.record_key(ctx, record["method"], record["mode"], record["seed"], record["epochs"])
    path = ctx.out / tag / pipelines.RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"format": records.RECORD_FORMAT, "key": key, "record": record}))
    return path


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"test_accuracy": 7.0}, r"test_accuracy must be a fraction in \[0, 1\], got 7.0"),
        ({"train_seconds": -5.0}, "train_seconds must be a number of seconds >= 0"),
        ({"test_accuracy": float("nan")}, "test_accuracy must be a fraction"),
        ({"params": 1e300}, "params must be an integer >= 0"),
        ({"epochs": 3}, "history must be one entry per epoch"),
        ({"history": [{**_epoch(1), "epoch_seconds": -1.0}]}, r"history\[0\].epoch_seconds must be a finite number"),
        ({"history": [{**_epoch(1), "test_acc": 55.0}]}, r"history\[0\].test_acc"),
        ({"nodes": [{"hostname": 7}]}, "a node must be"),
        ({"seed": 1}, "its record is of another run"),
    ],
)
def test_a_record_with_out_of_range_values_is_refused(tmp_path, mini, edit, message):
    """Was: a record.json with accuracy 7.0 and negative seconds was read; compare.md showed 700.00 %."""
    ctx = pipelines.make_context(SETTINGS, mini, tmp_path, progress=False, resume=True)
    record = {**asdict(_run("direct", "flops")), **edit}
    key = pipelines.record_key(ctx, "direct", "flops", 0, 1)
    path = ctx.out / "direct-flops-s0" / pipelines.RECORD
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"format": records.RECORD_FORMAT, "key": key, "record": record}))
    with pytest.raises(EdgepruneError, match=message) as e:
        pipelines.stored_record(ctx, "direct-flops-s0", key)
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_compare_resume_refuses_a_record_of_700_percent(tmp_path, mini, capsys, monkeypatch):
    """The command itself: one line, exit 2, nothing trained, no compare.md of 700.00 %."""
    monkeypatch.setattr(pipelines, "train", no_forward)
    ctx = pipelines.make_context(SETTINGS, mini, tmp_path, progress=False, resume=True)
    _write_saved(ctx, "full-s0", asdict(_run("full", "-")))
    _write_saved(ctx, "direct-flops-s0", asdict(_run("direct", "flops", accuracy=7.0)))
    code, _, err = run_cli(capsys, "compare", "tiny", "--data", MINI, "--target", "0.5", "--modes", "flops",
                           "--baselines", "--epochs", "1", "--limit-train", "128", "--limit-test", "64", "--out",
                           tmp_path, "--resume", "--quiet")  # fmt: skip
    assert "direct-flops-s0/record.json: not a run record" in one_line_error(err, code)
    assert "test_accuracy must be a fraction in [0, 1], got 7.0" in err
    assert not (tmp_path / "compare.md").exists()


DEEP = "[" * 5000 + "]" * 5000


def test_a_5000_deep_record_or_table_is_one_line(tmp_path, mini, capsys):
    """Was: RecursionError inside json (a traceback)."""
    ctx = pipelines.make_context(SETTINGS, mini, tmp_path, progress=False, resume=True)
    path = tmp_path / "direct-flops-s0" / pipelines.RECORD
    path.parent.mkdir()
    for text in (DEEP, '{"format": "edgeprune-run-record/1", "key": {}, "record": ' + DEEP + "}"):
        path.write_text(text)
        with pytest.raises(EdgepruneError, match="nested") as e:
            pipelines.stored_record(ctx, "direct-flops-s0", {})
        assert "\n" not in str(e.value)
    table = tmp_path / "deep.json"
    table.write_text(DEEP)
    with pytest.raises(EdgepruneError, match="not a latency table"):
        load_table(table)
    code, _, err = run_cli(capsys, "prune", "tiny", "--target", "latency=3ms", "--lut", table, "--out", tmp_path / "o")
    assert "nested too deeply" in one_line_error(err, code)


def _table() -> LatencyTable:
    layers = {"features.0": LayerTable("conv", [3], [16, 32, 48], [[0.1, 0.2, 0.3]]),
              "fc": LayerTable("linear", [96, 192], [192], [[0.01], [0.02]], block={"kind": "linear"})}  # fmt: skip
    return LatencyTable("tiny", [3, 32, 32], "onnxruntime", "1.20.0", 1, "a CPU", 16, 1.0, 0.4, layers,
                        {"processes": 3, "spin": False, "points": 5}, 12.0, "2025-01-01T00:00:00",
                        [[0.5, 0.6], [1.0, 1.0]])  # fmt: skip


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d.update(rest_ms=float("nan")),
        lambda d: d.update(threads=1.5),
        lambda d: d.update(threads=True),
        lambda d: d.update(round_to="16"),
        lambda d: d.update(input_shape=[3, 9000, 9000]),
        lambda d: d.update(parent_ms=1e300),
        lambda d: d.update(surprise=1),
        lambda d: d["settings"].update(processes=10**9),
        lambda d: d["layers"]["fc"].update(calls=True),
        lambda d: d["layers"]["fc"].update(c_in=[96.5, 192]),
        lambda d: d["layers"]["fc"].update(ms=[["0.01"], [0.02]]),
        lambda d: d["layers"]["fc"].update(kind=5),
        lambda d: d.update(backend="tensorflow"),
    ],
)
def test_a_latency_table_with_bad_types_or_ranges_is_refused(tmp_path, edit):
    """Was: read as it was (NaN rest, 1.5 threads, a billion recalibration processes, a 9000-pixel input)."""
    data = _table().to_dict()
    edit(data)
    (tmp_path / "t.json").write_text(json.dumps(data))
    with pytest.raises(EdgepruneError, match="malformed latency table") as e:
        load_table(tmp_path / "t.json")
    assert "\n" not in str(e.value)


def test_a_valid_table_reads_back_unchanged(tmp_path):
    _table().save(tmp_path / "t.json")
    assert load_table(tmp_path / "t.json") == _table()


# -- fuzzing: garbage, deep and edited numbers give a valid result or one EdgepruneError line --------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)
NUMBERS = st.one_of(
    st.floats(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.just(10**400),
    st.booleans(),
    st.none(),
    st.text(max_size=4),
    st.just(-0.0),
    st.just(1e308),
    st.lists(st.integers(), max_size=2),
)


def _leaves(value: object, path: tuple = ()) -> list[tuple]:
    if isinstance(value, dict):
        return [leaf for k, v in value.items() for leaf in _leaves(v, (*path, k))] or [path]
    if isinstance(value, list):
        return [leaf for i, v in enumerate(value) for leaf in _leaves(v, (*path, i))] or [path]
    return [path]


def _set(value: object, path: tuple, new: object) -> object:
    if not path:
        return new
    *head, last = path
    node = value
    for k in head:
        node = node[k]
    node[last] = new
    return value


def _document(draw, valid: dict) -> str:
    """A file's text: garbage, random JSON, deep nesting, or ``valid`` with one value replaced."""
    kind = draw(st.sampled_from(["garbage", "json", "deep", "edit", "edit", "edit"]))
    if kind == "garbage":
        return draw(st.binary(max_size=64)).decode("latin-1")
    if kind == "json":
        return json.dumps(draw(JSON))
    if kind == "deep":
        depth = draw(st.integers(min_value=30, max_value=6000))
        return '{"format": 1, "kind": "x", "layers": ' + "[" * depth + "]" * depth + "}"
    doc = json.loads(json.dumps(valid))
    path = draw(st.sampled_from(_leaves(doc)))
    return json.dumps(_set(doc, path, draw(NUMBERS | JSON)))


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_fuzzed_latency_tables_load_valid_or_fail_in_one_line(tmp_path, data):
    path = tmp_path / "t.json"
    path.write_text(_document(data.draw, _table().to_dict()), encoding="utf-8", errors="surrogatepass")
    try:
        table = load_table(path)
    except EdgepruneError as e:
        assert one_line_message(e)
        return
    numbers = [table.parent_ms, table.rest_ms, table.build_seconds, *(v for p in table.calibration for v in p)]
    numbers += [v for layer in table.layers.values() for row in layer.ms for v in row]
    assert all(isinstance(v, float) and math.isfinite(v) for v in numbers)
    assert table.parent_ms > 0 and table.threads >= 1 and table.round_to >= 1
    for layer in table.layers.values():  # what pruning asks of a table: finite answers
        assert math.isfinite(layer.at(max(layer.c_in), max(layer.c_out))) and layer.calls >= 1
    assert math.isfinite(table.calibrated(1.0)) and math.isfinite(table.table_ms_for(1.0)) and table.scale > 0


@pytest.fixture(scope="module")
def record_ctx(mini, tmp_path_factory):
    out = tmp_path_factory.mktemp("records")
    ctx = pipelines.make_context(SETTINGS, mini, out, progress=False, resume=True)
    return ctx, pipelines.record_key(ctx, "direct", "flops", 0, 1)


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_fuzzed_run_records_read_valid_or_fail_in_one_line(record_ctx, data):
    ctx, key = record_ctx
    valid = {"format": records.RECORD_FORMAT, "key": key, "record": asdict(_run("direct", "flops"))}
    path = ctx.out / "direct-flops-s0" / pipelines.RECORD
    path.parent.mkdir(exist_ok=True)
    path.write_text(_document(data.draw, valid), encoding="utf-8", errors="surrogatepass")
    try:
        record = pipelines.stored_record(ctx, "direct-flops-s0", key)
    except EdgepruneError as e:
        assert one_line_message(e)
        return
    assert 0 <= record.test_accuracy <= 1 and record.epochs == len(record.history) >= 1
    assert all(math.isfinite(v) and v >= 0 for v in (record.train_seconds, record.pretrain_seconds))
    assert all(isinstance(v, int) and v >= 0 for v in (record.params, record.flops, record.memory_bytes))
    base = _run("full", "-")
    summary = pipelines.summarise([record], [base], SETTINGS)  # what compare does with it: no other exception
    assert "| direct |" in pipelines.markdown_table(summary)


# -- one line, never a traceback ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "option, message",
    [
        (["--warmup-epochs", "1e308"], "--warmup-epochs must be at most 1e+06"),
        (["--lr", "1e308"], "--lr must be at most 1e+06"),
        (["--threads", "100000000000000000000"], "--threads must be at most"),
    ],
)
def test_train_numbers_that_overflow_are_one_line(tmp_path, capsys, option, message):
    """Was: OverflowError (warm-up steps), torch's float conversion or thread count: a traceback, exit 1."""
    code, _, err = run_cli(capsys, "train", "tiny", "--data", MINI, "--epochs", "1", "--limit-train", "64",
                           "--limit-test", "32", "--quiet", "--out", tmp_path / "o", *option)  # fmt: skip
    assert message in one_line_error(err, code)


@pytest.mark.slow
@pytest.mark.parametrize(
    "round_to, floor",
    [
        ("32", "with every prunable layer at 32 filters (multiples of round-to 32)"),
        ("1000", "with no prunable layer wide enough to cut to a multiple of 1,000 filters"),
    ],
)
def test_an_unreachable_target_states_the_real_floor(tmp_path, capsys, round_to, floor):
    """Was: 'with every prunable layer at 1 filter(s) the smallest reachable is ...' at any --round-to."""
    code, _, err = run_cli(capsys, "prune", "tiny", "--target", "flops=0.01", "--round-to", round_to, "--out",
                           tmp_path / "o")  # fmt: skip
    line = one_line_error(err, code)
    assert "unreachable: the smallest reachable is" in line and floor in line and "1 filter(s)" not in line
