"""Nothing corrupt gets in: a model folder's model.json and model.safetensors, corrupt or adversarial, only ever
load or fail with one EdgepruneError line - fast, without a big allocation, and without writing anything.
"""

from __future__ import annotations

import json
import resource
import shutil
import struct
import tempfile
import time
import tracemalloc
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

import edgeprune
from edgeprune.cli import main
from edgeprune.errors import EdgepruneError
from edgeprune.files import tensors_digest
from edgeprune.io import files as io

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
HUGE = [8_000_000, 10**9]


def tiny(channels: int = 4) -> torch.nn.Module:
    """The zoo's tiny CNN, 4 channels wide: conv 3->4->8->16, fc 16->16, head 16->10."""
    torch.manual_seed(0)
    return edgeprune.create("tiny", channels=channels).eval()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """One saved tiny model, never modified: each test works on a copy."""
    folder = tmp_path_factory.mktemp("pristine") / "m"
    io.save(tiny(), folder)
    return folder


@pytest.fixture
def folder(pristine, tmp_path) -> Path:
    """A fresh copy of the saved tiny model."""
    return Path(shutil.copytree(pristine, tmp_path / "m"))


def edit_spec(folder: Path, edit) -> None:
    """Rewrite model.json through ``edit(spec)`` (which changes it in place)."""
    spec = json.loads((folder / "model.json").read_text())
    edit(spec)
    (folder / "model.json").write_text(json.dumps(spec))


def header_of(path: Path) -> tuple[int, dict]:
    """A safetensors file's header length and parsed header."""
    raw = path.read_bytes()
    length = struct.unpack("<Q", raw[:8])[0]
    return length, json.loads(raw[8 : 8 + length])


def rewrite_weights(folder: Path, dtype: torch.dtype | None = None, checksum: bool = True) -> None:
    """Rewrite model.safetensors with its float tensors cast to ``dtype``; with or without a checksum."""
    tensors = load_file(str(folder / "model.safetensors"))
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    metadata = {"format": io.FORMAT}
    if checksum:
        metadata[io.CHECKSUM_KEY] = tensors_digest(tensors)
    save_file(tensors, str(folder / "model.safetensors"), metadata=metadata)


def refused(folder: Path, match: str, **options) -> str:
    """io.load refuses ``folder`` with one line matching ``match``; returns the message."""
    with pytest.raises(EdgepruneError, match=match) as info:
        io.load(folder, **options)
    message = str(info.value)
    assert "\n" not in message and len(message) < 600, message
    return message


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file's bytes and mtime, to show that loading wrote nothing."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def same_outputs(a: torch.nn.Module, b: torch.nn.Module, atol: float = 0.0) -> bool:
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return torch.allclose(a.eval()(x), b.eval()(x), atol=atol, rtol=0)


# -- integrity ---------------------------------------------------------------------------------------------------


def test_save_records_a_checksum_and_an_intact_folder_loads(folder):
    _, header = header_of(folder / "model.safetensors")
    assert header["__metadata__"][io.CHECKSUM_KEY] == tensors_digest(load_file(str(folder / "model.safetensors")))
    assert same_outputs(io.load(folder), tiny())


def test_flipped_bytes_in_the_data_are_caught(folder):
    path = folder / "model.safetensors"
    raw = bytearray(path.read_bytes())
    length = struct.unpack("<Q", raw[:8])[0]
    middle = 8 + length + (len(raw) - 8 - length) // 2
    raw[middle] ^= 0xFF
    raw[middle + 1] ^= 0x01
    path.write_bytes(bytes(raw))
    refused(folder, r"model\.safetensors: checksum mismatch \(the file is corrupt")


def test_a_file_without_a_checksum_still_loads(folder):
    rewrite_weights(folder, checksum=False)
    assert io.CHECKSUM_KEY not in header_of(folder / "model.safetensors")[1]["__metadata__"]
    assert same_outputs(io.load(folder), tiny())


def test_truncated_weights_are_refused(folder):
    path = folder / "model.safetensors"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 100])
    refused(folder, r"model\.safetensors: corrupt or truncated")
    path.write_bytes(raw[:5])
    refused(folder, r"model\.safetensors: truncated \(5 bytes")


def test_a_header_length_beyond_the_file_is_refused(folder):
    path = folder / "model.safetensors"
    raw = path.read_bytes()
    path.write_bytes(struct.pack("<Q", len(raw) + 100) + raw[8:])
    refused(folder, r"header length \d+ bytes, the file has \d+ after it")
    path.write_bytes(struct.pack("<Q", 2**64 - 1) + raw[8:])
    refused(folder, r"header length")


# -- dtypes ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64], ids=str)
def test_weights_of_another_dtype_are_refused_unless_cast(folder, dtype):
    rewrite_weights(folder, dtype)
    name = str(dtype).removeprefix("torch.")
    refused(folder, rf"'features\.0\.weight' is {name}, the model takes float32 \(\d+ tensor\(s\) differ; .*allow_cast")
    with pytest.warns(UserWarning, match=rf"cast \d+ tensor\(s\) to the model's dtypes .*{name} -> float32") as seen:
        model = io.load(folder, allow_cast=True)
    assert all("\n" not in str(w.message) for w in seen)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert same_outputs(model, tiny(), atol=1e-2)


# -- model.json against its schema and the weights header ---------------------------------------------------------


def _set(*path, value):
    def edit(spec):
        node = spec
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return edit


BAD_SPECS = {
    "num_classes as a string": (_set("kwargs", "num_classes", value="10"), r"num_classes must be a positive integer"),
    "an unknown kwarg": (_set("kwargs", "depth", value=3), r"zoo model 'tiny' takes no argument 'depth'"),
    "a negative width kwarg": (_set("kwargs", "width", value=-1.0), r"width must be a positive number"),
    "an extra key": (_set("extra", value=1), r"model\.json: unknown key 'extra'"),
    "sha256 for a zoo builder": (_set("sha256", value="0" * 64), r"'sha256' belongs to a file: builder only"),
    "kwargs as a list": (_set("kwargs", value=[1, 2]), r"'kwargs' must be a JSON object, got \[1, 2\]"),
    "kwargs as null": (_set("kwargs", value=None), r"'kwargs' must be a JSON object, got None"),
    "a negative layer width": (
        _set("layers", "features.0", "out_channels", value=-4),
        r"layer 'features\.0': out_channels must be a positive integer",
    ),
    "a float layer width": (_set("layers", "fc", "in_features", value=16.0), r"in_features must be a positive integer"),
    "an unknown layer key": (_set("layers", "fc", "bias", value=True), r"layer 'fc': expected one of"),
    "groups not dividing": (_set("layers", "features.4", "groups", value=3), r"3 groups do not divide 4 -> 8 channels"),
    "input_shape [3, 0, 0]": (_set("input_shape", value=[3, 0, 0]), r"'input_shape' must be a list of 1 to 4 positive"),
    "input_shape of 6 dims": (_set("input_shape", value=[3, 2, 2, 2, 2, 2]), r"'input_shape' must be a list of 1 to 4"),
    "a wrong input channel count": (_set("input_shape", value=[1, 32, 32]), r"input_shape says 1 input channels"),
    "a wrong first conv width": (
        _set("layers", "features.0", "in_channels", value=5),
        r"layer 'features\.0' has 5 -> 4 channels in 1 groups, its weight is \[4, 3, 3, 3\]",
    ),
    "a wrong in_channels kwarg": (_set("kwargs", "in_channels", value=1), r"kwargs in_channels says 1 input channels"),
    "a tensors entry": (_set("tensors", value={"fc.weight": [2]}), r"tensor 'fc\.weight' is \[2\], model\.safetensors"),
    "a builder that is no reference": (_set("builder", value="zoo:"), r"'builder' must be zoo:NAME"),
}


@pytest.mark.parametrize("edit, match", list(BAD_SPECS.values()), ids=list(BAD_SPECS))
def test_a_bad_model_json_is_refused_in_one_line(folder, edit, match):
    edit_spec(folder, edit)
    refused(folder, match)


def test_a_format_1_file_keeps_its_own_keys(folder):
    spec = json.loads((folder / "model.json").read_text())
    v1 = {"format": io.FORMAT_V1, "arch": "tiny", "kwargs": spec["kwargs"], "input_shape": [3, 32, 32]}
    v1["layers"] = io.layer_widths(tiny(), legacy=True)
    (folder / "model.json").write_text(json.dumps(v1))
    assert same_outputs(io.load(folder), tiny())
    (folder / "model.json").write_text(json.dumps({**v1, "tensors": {}}))
    refused(folder, r"unknown key 'tensors' \(a edgeprune-model/1 file has")


def test_a_huge_model_json_and_a_deep_one_are_refused(folder):
    (folder / "model.json").write_text("[" * 100_000 + "]" * 100_000)
    refused(folder, r"model\.json: not valid JSON")
    (folder / "model.json").write_bytes(b" " * (io.MAX_SPEC_BYTES + 1))
    refused(folder, r"too large for a model\.json")


@pytest.fixture
def no_build(monkeypatch):
    """Fail the test if anything gets built or resized: a refusal must come before."""

    def forbidden(*args, **kwargs):
        raise AssertionError("built or resized before the refusal")

    monkeypatch.setattr(io, "build_model", forbidden)
    monkeypatch.setattr(io, "_resize", forbidden)


def refused_fast(folder: Path, match: str) -> None:
    """Refused in well under a second, without allocating more than a few MB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    start = time.perf_counter()
    try:
        refused(folder, match)
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < 1.0 and peak < 16 << 20, (elapsed, peak)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 200 << 10  # KiB on Linux


@pytest.mark.parametrize("width", HUGE)
def test_a_huge_layer_in_model_json_is_refused_before_building(folder, no_build, width):
    def edit(spec):
        spec["layers"]["fc"]["out_features"] = width
        spec["layers"]["head"]["in_features"] = width

    edit_spec(folder, edit)
    refused_fast(folder, r"layer 'fc' has 16 -> \d+ features, its weight is \[16, 16\]|at most 16777216")


@pytest.mark.parametrize("width", HUGE)
def test_a_huge_layer_in_model_json_and_the_header_is_refused(folder, no_build, width):
    path = folder / "model.safetensors"
    length, header = header_of(path)
    header["fc.weight"]["shape"] = [width, 16]
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + path.read_bytes()[8 + length :])
    edit_spec(folder, _set("layers", "fc", "out_features", value=width))
    refused_fast(folder, r"corrupt or truncated header \(tensor 'fc\.weight': F32 \[\d+, 16\] takes|at most 16777216")


@pytest.mark.parametrize("width", HUGE)
def test_a_huge_zoo_argument_is_refused_or_never_allocated(folder, width):
    edit_spec(folder, _set("kwargs", "channels", value=width))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if width > io.MAX_WIDTH:
        refused(folder, r"channels must be a positive integer \(at most 16777216\), got 1000000000")
    else:  # built on the meta device, resized to the recorded widths: only the file's tensors take memory
        assert same_outputs(io.load(folder), tiny())
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 200 << 10


def test_a_huge_layer_of_a_code_builder_is_refused_before_resizing(tmp_path, monkeypatch):
    code = tmp_path / "net.py"
    code.write_text("from torch import nn\n\ndef net(width=4):\n    return nn.Sequential(nn.Conv2d(3, width, 3))\n")
    io.save(edgeprune.models.build.build_model(f"{code}:net"), tmp_path / "m")
    edit_spec(tmp_path / "m", _set("layers", "0", "out_channels", value=8_000_000))
    monkeypatch.setattr(io, "_resize", lambda *a: pytest.fail("resized"))
    refused(tmp_path / "m", r"layer '0' has 3 -> 8000000 channels in 1 groups, its weight is \[4, 3, 3, 3\]")
    edit_spec(tmp_path / "m", _set("kwargs", "width", value="wide"))
    edit_spec(tmp_path / "m", _set("layers", "0", "out_channels", value=4))
    refused(tmp_path / "m", r"net raised TypeError")


# -- fuzzing: only ever a load or one EdgepruneError line, never a write -----------------------------------------

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([0, -1, 1, 3, 4, 16, 8_000_000, 10**9, 2**63, 10**30])
    | st.floats()
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)


def _children(node) -> list:
    """The keys (or indices) of a JSON container; model.json's widths and arguments three times as likely."""
    if isinstance(node, dict):
        return [k for k in node for _ in range(3 if k in ("layers", "kwargs", "input_shape") else 1)]
    return list(range(len(node))) if isinstance(node, list) else []


def _nearby(value) -> st.SearchStrategy:
    """A replacement for ``value``: often a near miss of the same kind (wrong sign, type, size), else any JSON."""
    if isinstance(value, int) and not isinstance(value, bool):
        near = [10**9, 8_000_000, 10**30, 0, -value, value + 1, value * 1000, str(value), float(value), None, [value]]
        return st.sampled_from(near) | JSON_VALUES
    if isinstance(value, list):
        return st.sampled_from([[], value[:1], value * 2, [*value[:-1], 0], dict(enumerate(value))]) | JSON_VALUES
    return JSON_VALUES


def _mutate(spec, data) -> object:
    """One random change at a random depth of a JSON document: a value replaced, a key deleted or a key added."""
    parent, key = None, None
    node = spec
    while _children(node) and (parent is None or data.draw(st.booleans())):
        parent, key = node, data.draw(st.sampled_from(_children(node)))
        node = parent[key]
    op = data.draw(st.sampled_from(["replace", "replace", "delete", "add"]))
    if op == "replace" and parent is None:
        return data.draw(JSON_VALUES)
    if op == "replace":
        parent[key] = data.draw(_nearby(node))
    elif op == "delete" and isinstance(parent, dict):
        del parent[key]
    elif op == "add" and isinstance(node, dict):
        node[data.draw(st.text(max_size=12))] = data.draw(JSON_VALUES)
    return spec


def load_is_safe(folder: Path) -> None:
    """io.load succeeds or raises one EdgepruneError line, and leaves the folder as it was."""
    before = snapshot(folder)
    try:
        io.load(folder)
    except EdgepruneError as e:
        assert "\n" not in str(e) and len(str(e)) < 1000, str(e)
    assert snapshot(folder) == before


@pytest.mark.slow
@FUZZ
@given(data=st.data())
def test_fuzzed_model_json_loads_or_fails_in_one_line(pristine, data):
    spec = json.loads((pristine / "model.json").read_text())
    for _ in range(data.draw(st.integers(1, 3))):
        spec = _mutate(spec, data)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(shutil.copytree(pristine, Path(tmp) / "m"))
        (folder / "model.json").write_text(json.dumps(spec))
        load_is_safe(folder)


@pytest.mark.slow
@FUZZ
@given(data=st.data())
def test_fuzzed_weights_header_loads_or_fails_in_one_line(pristine, data):
    raw = bytearray((pristine / "model.safetensors").read_bytes())
    end = 8 + struct.unpack("<Q", raw[:8])[0]
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["set", "flip", "truncate", "insert"]))
        at = data.draw(st.integers(0, min(end, len(raw)) - 1)) if raw and end else 0
        if op == "set" and raw:
            raw[at] = data.draw(st.sampled_from(list(b'0123456789[]{}":,-e. ')) | st.integers(0, 255))
        elif op == "flip" and raw:
            raw[at] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "truncate":
            raw = raw[: data.draw(st.integers(0, len(raw)))]
        else:
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=4))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(shutil.copytree(pristine, Path(tmp) / "m"))
        (folder / "model.safetensors").write_bytes(bytes(raw))
        load_is_safe(folder)


# -- the CLI -----------------------------------------------------------------------------------------------------


def test_the_cli_reports_a_corrupt_folder_in_one_line(folder, capsys):
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-10])
    assert main(["profile", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("edgeprune profile: error: ") and "truncated" in err, err
