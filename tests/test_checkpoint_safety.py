"""Training checkpoints are never trusted when corrupt: checksums, a checked schema, one-line errors, no writes."""

from __future__ import annotations

import hashlib
import json
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import assert_one_line_error, small_model, synthetic
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

import edgeprune
import edgeprune.train.loop as train_module
from edgeprune.cli import main
from edgeprune.data import ImageDataset
from edgeprune.errors import EdgepruneError
from edgeprune.io import save
from edgeprune.train import CHECKPOINT_FILE, TrainConfig, load_checkpoint, make_optimizer, train

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT / "data" / "cifar10-mini.tar.gz"
CONFIG = TrainConfig(epochs=2, batch_size=8, seed=0)


def stop_after_first_epoch(record: dict) -> None:
    """A training callback that interrupts the run after its first epoch."""
    if record["epoch"] == 1:
        raise KeyboardInterrupt


@pytest.fixture(scope="module")
def data() -> ImageDataset:
    """The tiny data set, shared."""
    return synthetic()


@pytest.fixture(scope="module")
def pristine(data, tmp_path_factory) -> bytes:
    """The bytes of a checkpoint after epoch 1 of a 2-epoch run (SGD with momentum: optimiser tensors)."""
    out = tmp_path_factory.mktemp("pristine")
    with pytest.raises(KeyboardInterrupt):
        train(
            small_model(num_classes=2),
            data,
            CONFIG,
            out_dir=out,
            progress=False,
            threads=1,
            callback=stop_after_first_epoch,
        )
    return (out / CHECKPOINT_FILE).read_bytes()


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A safetensors file's tensors and metadata."""
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def rewrite(
    path: Path,
    state: Callable[[dict], object] | None = None,  # edits the state in place
    tensors: Callable[[dict[str, torch.Tensor]], None] | None = None,
    text: str | None = None,
    rehash: bool = True,
) -> None:
    """Rewrite a checkpoint's JSON state (or its text) and tensors; with ``rehash``, recompute its checksums."""
    # Recomputed checksums stand for a checkpoint that a buggy or hand-edited writer made consistent:
    # what is wrong in it must then be refused by the schema checks, not by the checksums.
    data, metadata = read(path)
    if tensors is not None:
        tensors(data)
    if text is None:
        meta = json.loads(metadata["state"])
        if state is not None:
            state(meta)
        text = json.dumps(meta)
    metadata["state"] = text
    if rehash and "tensors_sha256" in metadata:
        metadata["tensors_sha256"] = edgeprune.files.tensors_digest(data)
    if rehash and "state_sha256" in metadata:
        metadata["state_sha256"] = hashlib.sha256(text.encode()).hexdigest()
    save_file(data, str(path), metadata=metadata)


def load_into_fresh(path: Path) -> dict:
    """``load_checkpoint`` into a fresh model, optimiser and generator; the global RNG is restored afterwards."""
    model = small_model(seed=7, num_classes=2)
    optimizer = make_optimizer(model, CONFIG)
    rng = torch.get_rng_state()
    try:
        return load_checkpoint(path, model, optimizer, torch.Generator())
    finally:
        torch.set_rng_state(rng)


@pytest.fixture
def ckpt(tmp_path, pristine) -> Path:
    """A fresh copy of the checkpoint."""
    path = tmp_path / CHECKPOINT_FILE
    path.write_bytes(pristine)
    return path


def flip_middle(path: Path, count: int = 64) -> None:
    """Invert ``count`` bytes in the middle of the tensor data, leaving the header intact."""
    raw = bytearray(path.read_bytes())
    start = 8 + struct.unpack("<Q", raw[:8])[0]
    middle = start + (len(raw) - start) // 2
    for i in range(middle, middle + count):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


# -- integrity --------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_good_checkpoint_loads_and_resumes(ckpt, data):
    state = load_into_fresh(ckpt)
    assert state["epoch"] == 1 and state["step"] == 4
    result = train(
        small_model(seed=3, num_classes=2), data, CONFIG, out_dir=ckpt.parent, resume=True, progress=False, threads=1
    )
    assert [r["epoch"] for r in result.history] == [1, 2]


def test_flipped_bytes_mid_file_are_a_checksum_error_and_resume_writes_nothing(ckpt, data):
    flip_middle(ckpt)
    assert_one_line_error(lambda: load_into_fresh(ckpt), str(ckpt), "checksum mismatch", "corrupt")
    before = snapshot(ckpt.parent)
    model = small_model(seed=3, num_classes=2)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    assert_one_line_error(
        lambda: train(model, data, CONFIG, out_dir=ckpt.parent, resume=True, progress=False, threads=1),
        "checksum mismatch, the checkpoint is corrupt; delete it or train without --resume",
    )
    assert snapshot(ckpt.parent) == before
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())  # the model is untouched too


def test_edited_state_without_new_checksums_is_a_checksum_error(ckpt):
    rewrite(ckpt, state=lambda s: s.update(epoch=2), rehash=False)
    assert_one_line_error(lambda: load_into_fresh(ckpt), "checksum mismatch")


@pytest.mark.slow
def test_cli_resume_from_a_corrupt_checkpoint_fails_in_one_line_and_changes_nothing(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "pruned"
    save(edgeprune.create("tiny", channels=4), folder)
    argv = [
        "train", str(folder), "--data", str(MINI), "--epochs", "2", "--limit-train", "64", "--limit-test", "20",
        "--batch-size", "32", "--quiet", "--threads", "1",
    ]  # fmt: skip
    write_metrics = train_module._write_metrics

    def interrupt_after_epoch_1(out: Path, history: list[dict]) -> None:
        write_metrics(out, history)
        if len(history) == 1:
            raise KeyboardInterrupt  # as Ctrl-C right after the first checkpoint

    monkeypatch.setattr(train_module, "_write_metrics", interrupt_after_epoch_1)
    assert main(argv) == 130
    monkeypatch.undo()
    assert (folder / CHECKPOINT_FILE).is_file()
    flip_middle(folder / CHECKPOINT_FILE)
    before = snapshot(folder)
    capsys.readouterr()
    code = main([*argv, "--resume"])
    out, err = capsys.readouterr()
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("edgeprune train: error: ")
    assert "checksum mismatch, the checkpoint is corrupt; delete it or train without --resume" in err
    assert "test accuracy" not in out
    assert snapshot(folder) == before  # model, metrics and checkpoint byte-identical, nothing added


# -- schema -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key", ["format", "config", "data", "epoch", "step", "history", "train_seconds", "optim_groups", "optim_scalars"]
)
def test_missing_state_key(ckpt, key):
    rewrite(ckpt, state=lambda s: s.pop(key))
    assert_one_line_error(lambda: load_into_fresh(ckpt), str(ckpt))


@pytest.mark.parametrize("key", ["tensors_sha256", "state_sha256", "state"])
def test_missing_metadata_key(ckpt, key):
    tensors, metadata = read(ckpt)
    assert key in metadata
    del metadata[key]
    save_file(tensors, str(ckpt), metadata=metadata)
    assert_one_line_error(lambda: load_into_fresh(ckpt), str(ckpt))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("epoch", "1"),
        ("epoch", True),
        ("epoch", 1.0),
        ("epoch", -1),
        ("epoch", 5),  # more epochs than records in the history
        ("step", "4"),
        ("step", None),
        ("optim_groups", {"params": [0]}),
        ("optim_groups", "sgd"),
        ("optim_scalars", []),
        ("history", "none"),
        ("history", [None]),
        ("train_seconds", "1.5"),
        ("train_seconds", float("inf")),
        ("config", ["epochs", 2]),
        ("data", None),
        ("format", 1),
    ],
)
def test_wrong_types_and_ranges(ckpt, key, value):
    rewrite(ckpt, state=lambda s: s.update({key: value}))
    assert_one_line_error(lambda: load_into_fresh(ckpt), str(ckpt), key if key != "format" else "not an")


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"val_acc": 7.0}, "validation accuracy outside"),
        ({"test_acc": -0.1}, "test accuracy outside"),
        ({"test_acc": None}, "malformed"),  # no accuracy left at all
    ],
)
def test_history_accuracies_are_range_checked(ckpt, change, says):
    def edit(state: dict) -> None:
        record = state["history"][0]
        record.update({k: v for k, v in change.items() if v is not None})
        for key in [k for k, v in change.items() if v is None]:
            record.pop(key, None)
            record.pop("val_acc", None)

    rewrite(ckpt, state=edit)
    assert_one_line_error(lambda: load_into_fresh(ckpt), str(ckpt), says)


@pytest.mark.parametrize("state", ["{not json", "[1, 2]", "null", '"text"', "[" * 100_000])
def test_non_json_or_non_object_state(ckpt, state):
    rewrite(ckpt, text=state)
    assert_one_line_error(lambda: load_into_fresh(ckpt), str(ckpt))


@pytest.mark.parametrize(
    ("name", "change"),
    [
        ("rng.torch", lambda t: t[:100].clone()),
        ("rng.generator", lambda t: t[:-1].clone()),
        ("rng.torch", lambda t: t.to(torch.int64)),
        ("rng.generator", lambda t: t.float()),
        ("rng.torch", lambda t: torch.zeros_like(t)),  # right size, not an mt19937 state
        ("rng.generator", None),  # missing
    ],
)
def test_bad_rng_state(ckpt, name, change):
    def edit(tensors: dict[str, torch.Tensor]) -> None:
        if change is None:
            del tensors[name]
        else:
            tensors[name] = change(tensors[name])

    rewrite(ckpt, tensors=edit)
    assert_one_line_error(lambda: load_into_fresh(ckpt), str(ckpt), name)


def first_optim_tensor(tensors: dict[str, torch.Tensor]) -> str:
    """The name of the first optimiser tensor."""
    return next(k for k in sorted(tensors) if k.startswith("optim."))


@pytest.mark.parametrize(
    ("state", "tensors"),
    [
        (lambda s: s["optim_groups"].pop(), None),
        (lambda s: s["optim_groups"][0].update(params=[0, 1]), None),
        (lambda s: s["optim_groups"][0].update(momentum="0.9"), None),
        (lambda s: s["optim_groups"][1].update(nesterov=False), None),
        (lambda s: s["optim_groups"][0].pop("lr"), None),
        (lambda s: s["optim_groups"][0].update(lr=-1.0), None),
        (lambda s: s["optim_scalars"].update({"0": {"momentum_buffer": "x"}}), None),
        (lambda s: s["optim_scalars"].update({"999": {}}), None),
        (lambda s: s["optim_scalars"].update({"a": {}}), None),
        (lambda s: s["optim_scalars"].update({"0": []}), None),
        (None, lambda t: t.update({first_optim_tensor(t): torch.zeros(3, 5)})),
        (None, lambda t: t.update({"optim.999.momentum_buffer": torch.zeros(3)})),
        (None, lambda t: t.update({"optim.0": torch.zeros(3)})),
        (None, lambda t: t.update({"optim.x.momentum_buffer": torch.zeros(3)})),
        (None, lambda t: t.update({first_optim_tensor(t): t[first_optim_tensor(t)].long()})),
        (None, lambda t: t.update({"extra": torch.zeros(1)})),
    ],
)
def test_optimizer_state_that_does_not_fit(ckpt, state, tensors):
    rewrite(ckpt, state=state, tensors=tensors)
    assert_one_line_error(lambda: load_into_fresh(ckpt), str(ckpt))


@pytest.mark.parametrize(
    "change",
    [
        lambda t: t.update({"model.head.weight": torch.zeros(3, 16)}),
        lambda t: t.update({"model.head.weight": t["model.head.weight"].double()}),
        lambda t: t.pop("model.head.bias"),
        lambda t: t.update({"model.head.bias": torch.full((2,), float("nan"))}),
    ],
)
def test_model_tensors_that_do_not_fit(ckpt, change):
    rewrite(ckpt, tensors=change)
    assert_one_line_error(lambda: load_into_fresh(ckpt), str(ckpt))


def test_failed_load_changes_neither_model_nor_optimizer_nor_rng(ckpt):
    rewrite(ckpt, tensors=lambda t: t.update({"rng.generator": torch.zeros_like(t["rng.generator"])}))
    model = small_model(seed=7, num_classes=2)
    optimizer = make_optimizer(model, CONFIG)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    with pytest.raises(EdgepruneError):
        load_checkpoint(ckpt, model, optimizer, torch.Generator())
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert optimizer.state_dict()["state"] == {} and torch.equal(torch.get_rng_state(), rng)


def test_resume_refuses_a_step_that_does_not_fit_the_run(ckpt, data):
    rewrite(ckpt, state=lambda s: s.update(step=3))
    before = snapshot(ckpt.parent)
    assert_one_line_error(
        lambda: train(
            small_model(num_classes=2), data, CONFIG, out_dir=ckpt.parent, resume=True, progress=False, threads=1
        ),
        "epoch 1, step 3",
    )
    assert snapshot(ckpt.parent) == before


def test_a_checkpoint_from_before_checksums_still_resumes(ckpt, data):
    tensors, metadata = read(ckpt)
    state = json.loads(metadata["state"])
    state["format"] = "edgeprune-checkpoint/1"
    save_file(tensors, str(ckpt), metadata={"state": json.dumps(state)})
    assert load_into_fresh(ckpt)["epoch"] == 1
    result = train(
        small_model(num_classes=2), data, CONFIG, out_dir=ckpt.parent, resume=True, progress=False, threads=1
    )
    assert [r["epoch"] for r in result.history] == [1, 2]


# -- fuzzing ----------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def paths(value: object, prefix: tuple = (), depth: int = 3) -> list[tuple]:
    """Every key path into nested dicts and lists, up to ``depth`` deep."""
    if depth == 0:
        return []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    found = []
    for key, child in items:
        found.append((*prefix, key))
        found += paths(child, (*prefix, key), depth - 1)
    return found


def mutate(state: dict, path: tuple, delete: bool, value: object) -> None:
    """Delete the item at ``path`` or replace it with ``value``."""
    parent = state
    for key in path[:-1]:
        parent = parent[key]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value


def check_only_edgeprune_errors(pristine: bytes, change: Callable[[Path], None], same: bool = False) -> None:
    """Loading a changed copy gives EdgepruneError or works (``same``: with the pristine content); writes nothing."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / CHECKPOINT_FILE
        path.write_bytes(pristine)
        change(path)
        before = snapshot(Path(tmp))
        try:
            state = load_into_fresh(path)
        except EdgepruneError as e:
            assert "\n" not in str(e) and str(path) in str(e)
        else:
            if same:
                tensors, metadata = read_bytes(pristine)
                assert state == json.loads(metadata["state"])
                loaded, _ = read(path)
                assert loaded.keys() == tensors.keys() and all(torch.equal(loaded[k], v) for k, v in tensors.items())
        assert snapshot(Path(tmp)) == before


@pytest.mark.slow
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(draw=st.data())
def test_fuzz_json_state_mutations_give_edgeprune_errors_only(pristine, draw):
    tensors, metadata = read_bytes(pristine)
    state = json.loads(metadata["state"])
    for _ in range(draw.draw(st.integers(1, 4), label="mutations")):
        where = paths(state)
        if not where:
            break
        path = draw.draw(st.sampled_from(where), label="path")
        mutate(state, path, draw.draw(st.booleans(), label="delete"), draw.draw(JSON, label="value"))
    rehash = draw.draw(st.sampled_from([True, True, True, False]), label="rehash")
    check_only_edgeprune_errors(pristine, lambda p: rewrite(p, text=json.dumps(state), rehash=rehash))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(draw=st.data())
def test_fuzz_header_byte_changes_give_edgeprune_errors_only(pristine, draw):
    header_end = 8 + struct.unpack("<Q", pristine[:8])[0]
    changes = draw.draw(
        st.lists(st.tuples(st.integers(0, header_end - 1), st.integers(0, 255)), min_size=1, max_size=6),
        label="changes",
    )

    def change(path: Path) -> None:
        raw = bytearray(pristine)
        for i, byte in changes:
            raw[i] = byte
        path.write_bytes(bytes(raw))

    check_only_edgeprune_errors(pristine, change, same=True)


def read_bytes(raw: bytes) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A checkpoint's tensors and metadata, from its bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / CHECKPOINT_FILE
        path.write_bytes(raw)
        return read(path)
