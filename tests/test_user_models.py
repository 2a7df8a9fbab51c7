"""Any PyTorch CNN, end to end (issue 10): user-written architectures (tests/archs.py) through profile, prune,
save -> load and ONNX export, plus one regression test per failure listed at the top of the issue.

Every count is checked against an independent one: FLOPs against torch's ``FlopCounterMode / 2`` (multiply-adds
counted once), parameters against ``sum(p.numel())``. Pruned models are computed once per session and shared.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from archs import ALL, ARCHS, EXTRA  # tests/ is on sys.path (pytest's rootdir-relative import)
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import edgeprune
from edgeprune.errors import EdgepruneError
from edgeprune.export import export_onnx
from edgeprune.trace import record_shapes

ARCH_FILE = Path(__file__).resolve().with_name("archs.py")
MODES = ("params", "flops", "memory")
TOTAL_KEY = {"params": "params", "flops": "flops", "memory": "memory_bytes"}
# The band for its six architectures: at most 2% under the target. The failure nets are tiny (a
# single filter can be several % of them), so they, and the regression tests, need to fit the target and
# undershoot it by at most 10%.
BAND = {name: 0.98 for name in ARCHS}
# Pruned in every mode at 0.5; the failure nets whose pruning has a test of its own are left out here.
PRUNE_CASES = [pytest.param(name, mode, id=f"{name}-{mode}") for name in ARCHS for mode in MODES]
PRUNE_CASES += [pytest.param(n, "flops", id=n) for n in ("twice", "aux_last", "chunk_net", "upsample_net", "nested")]

_PRUNED: dict[tuple[str, str], object] = {}
_PROFILES: dict[str, object] = {}
_OUTPUTS: dict[str, tuple[torch.Tensor, ...]] = {}


def build(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    """A fresh (seeded) instance of the architecture ``name`` in eval mode, and its input shape."""
    factory, kwargs, shape = ALL[name]
    torch.manual_seed(0)
    return factory(**kwargs).eval(), shape


def example(shape: tuple[int, ...], batch: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed))


def as_tuple(out: object) -> tuple[torch.Tensor, ...]:
    """A model's outputs as a tuple of tensors (a tensor, a tuple/list, or a dict in key order)."""
    if isinstance(out, torch.Tensor):
        return (out,)
    if isinstance(out, dict):
        return tuple(out[k] for k in sorted(out))
    return tuple(out)


def run(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    with torch.inference_mode():
        return as_tuple(model.eval()(x))


def run_counted(model: nn.Module, x: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], float]:
    """The model's outputs on ``x`` and its multiply-adds per input by torch's FLOP counter (2 per MAC)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = as_tuple(model.eval()(x))
    return out, counter.get_total_flops() / 2 / len(x)


def torch_flops(model: nn.Module, shape: tuple[int, ...]) -> float:
    """Multiply-adds of one input, counted by torch's own FLOP counter."""
    return run_counted(model, torch.zeros(1, *shape))[1]


def output_shapes(name: str) -> tuple[torch.Tensor, ...]:
    """The unpruned model's outputs on one example (for their shapes), once per session."""
    if name not in _OUTPUTS:
        model, shape = build(name)
        _OUTPUTS[name] = run(model, example(shape))
    return _OUTPUTS[name]


def profile_of(name: str):
    """``edgeprune.profile`` of the unpruned architecture ``name``, once per session."""
    if name not in _PROFILES:
        _PROFILES[name] = edgeprune.profile(*build(name))
    return _PROFILES[name]


def totals(model: nn.Module, shape: tuple[int, ...]) -> dict[str, int]:
    """The totals of ``edgeprune.profile`` (its counting pass only: the group analysis is not needed to count)."""
    return record_shapes(model, torch.zeros(1, *shape)).totals()


def pruned(name: str, mode: str):
    """``edgeprune.prune(model, mode, 0.5)`` for architecture ``name``, once per session (or the error it raised)."""
    key = (name, mode)
    if key not in _PRUNED:
        model, shape = build(name)
        try:
            _PRUNED[key] = edgeprune.prune(model, mode, 0.5, input_shape=shape, seed=0)
        except Exception as e:  # kept, so every test that needs it reports the same failure
            _PRUNED[key] = e
    result = _PRUNED[key]
    if isinstance(result, Exception):
        raise result
    return result


def check_prune_result(name: str, result, mode: str, fraction: float, band: float = 0.9) -> dict[str, int]:
    """The pruned model fits the target, at most ``1 - band`` under it, keeps every output's shape, and its
    recount matches torch's FLOP counter and numel. Returns the recounted totals."""
    shape = ALL[name][2]
    key = TOTAL_KEY[mode]
    target = fraction * profile_of(name).totals()[key]
    after = totals(result.model, shape)
    assert after[key] <= target, f"{name}: {mode} {after[key]:,} is over the target {target:,.0f}"
    assert after[key] >= band * target, (
        f"{name}: {mode} {after[key]:,} is {1 - after[key] / target:.1%} under the target {target:,.0f} "
        f"(allowed {1 - band:.0%})"
    )
    assert after["params"] == sum(p.numel() for p in result.model.parameters())
    got, flops = run_counted(result.model, example(shape))
    assert [o.shape for o in got] == [o.shape for o in output_shapes(name)]
    assert all(torch.isfinite(o).all() for o in got)
    assert abs(after["flops"] - flops) <= 0.005 * flops, f"{name}: pruned recount {after['flops']:,} vs {flops:,.0f}"
    return after


# -- 1. profile: totals against independent counts ------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ALL))
def test_profile_totals_match_flop_counter_and_numel(name):
    model, shape = build(name)
    prof = profile_of(name)
    got = prof.totals()
    assert set(got) == {"params", "flops", "memory_bytes"}
    assert got["params"] == sum(p.numel() for p in model.parameters())
    reference = torch_flops(model, shape)
    assert abs(got["flops"] - reference) <= 0.005 * reference, f"{name}: {got['flops']:,} vs {reference:,.0f}"
    assert got["memory_bytes"] > 4 * got["params"]  # weights plus at least some feature maps
    for group in prof.groups:
        assert group.prunable or group.reason, f"{name}: group {group.name} is not prunable and gives no reason"
    assert prof.outputs, f"{name}: no output layer found"
    assert set(prof.outputs) <= {layer.name for layer in prof.layers}


@pytest.mark.slow
def test_resnet18_matches_torchvision_figures():
    prof = profile_of("resnet18")
    assert prof.totals()["params"] == 11_689_512  # torchvision.models.resnet18().parameters()
    assert prof.totals()["flops"] == 1_814_073_344  # 1.82 GMACs at 224x224
    assert prof.outputs == ("fc",)
    assert {layer.name for layer in prof.layers if layer.kind == "conv"} >= {"conv1", "layer4.1.conv2"}


# -- 2. prune in all three modes at 0.5 -----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(("name", "mode"), PRUNE_CASES)
def test_prune_lands_within_two_percent_under_target(name, mode):
    result = pruned(name, mode)
    after = check_prune_result(name, result, mode, 0.5, band=BAND.get(name, 0.9))
    assert result.report()["after"][TOTAL_KEY[mode]] == after[TOTAL_KEY[mode]]  # the plan is what was cut


# -- 3. save -> load ------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ARCHS))
def test_save_load_pruned_identical_outputs(name, tmp_path):
    factory, kwargs, shape = ALL[name]
    model = pruned(name, "flops").model
    folder = tmp_path / name
    edgeprune.save(model, folder, builder=f"file:{ARCH_FILE}:{factory.__name__}", kwargs=kwargs, input_shape=shape)
    loaded = edgeprune.load(folder, trust_code=True)
    x = example(shape, batch=2, seed=1)
    for a, b in zip(run(model, x), run(loaded, x), strict=True):
        assert a.shape == b.shape
        assert torch.allclose(a, b, rtol=0, atol=1e-6)
    layers = (nn.modules.conv._ConvNd, nn.Linear, nn.GroupNorm, nn.BatchNorm2d)
    widths = {n: str(m) for n, m in model.named_modules() if isinstance(m, layers)}
    assert {n: str(m) for n, m in loaded.named_modules() if isinstance(m, layers)} == widths


def test_save_with_py_builder_and_changed_file(tmp_path, monkeypatch):
    """A ``py:module:factory`` builder; a ``file:`` builder whose file changed is refused, naming both hashes."""
    copy = tmp_path / "user_models.py"
    shutil.copy(ARCH_FILE, copy)
    monkeypatch.syspath_prepend(str(tmp_path))
    model, shape = build("gray28")
    edgeprune.save(
        model, tmp_path / "py", builder="py:user_models:gray28", kwargs={"num_classes": 10}, input_shape=shape
    )
    x = example(shape)
    assert torch.equal(run(edgeprune.load(tmp_path / "py", trust_code=True), x)[0], run(model, x)[0])

    edgeprune.save(
        model, tmp_path / "file", builder=f"file:{copy}:gray28", kwargs={"num_classes": 10}, input_shape=shape
    )
    copy.write_text(copy.read_text() + "\n# edited after saving\n")
    with pytest.raises(EdgepruneError, match=r"[0-9a-f]{12,}.*[0-9a-f]{12,}"):
        edgeprune.load(tmp_path / "file", trust_code=True)


def test_save_of_user_model_without_builder_says_what_to_pass(tmp_path):
    model, shape = build("gray28")
    with pytest.raises(EdgepruneError, match="builder"):
        edgeprune.save(model, tmp_path / "m", input_shape=shape)


# -- 4. ONNX export and the profile of the .onnx file ---------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ARCHS))
def test_export_onnx_and_profile_the_file(name, tmp_path):
    from edgeprune.onnx_graph import onnx_profile  # new module (issue 10)

    model, shape = build(name)
    path = tmp_path / f"{name}.onnx"
    info = export_onnx(model, path, shape)  # raises unless onnxruntime's outputs match PyTorch's
    assert info["check"]["max_abs_diff"] <= 1e-4
    onnx_totals = onnx_profile(path).totals()
    assert onnx_totals["flops"] == profile_of(name).totals()["flops"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["unet", "gn_se", "resnext"])
def test_export_pruned_onnx_and_profile_the_file(name, tmp_path):
    """Odd widths left by pruning (GroupNorm, grouped and transposed convs) export and count the same."""
    from edgeprune.onnx_graph import onnx_profile  # new module (issue 10)

    model, shape = pruned(name, "flops").model, ALL[name][2]
    path = tmp_path / f"{name}.onnx"
    export_onnx(model, path, shape)
    assert onnx_profile(path).totals()["flops"] == totals(model, shape)["flops"]


# -- 5. the failures listed at the top of issue 10 -------------------------------------------------------------


@pytest.mark.slow
def test_dense_concat_grouped_depthwise_residual_reaches_flops_0_6():
    """Was: 'target 0.6 unreachable' (grouped convs never pruned froze everything feeding them: floor 0.656)."""
    model, shape = build("dense_mixed")
    result = edgeprune.prune(model, "flops", 0.6, input_shape=shape, seed=0)
    check_prune_result("dense_mixed", result, "flops", 0.6)


@pytest.mark.slow
def test_unet_conv_transpose_counted_exactly_and_prunes():
    """Was: -4.1% FLOPs (ConvTranspose2d not counted) and a raw RuntimeError 'dec2.0 is c_out=0' when pruned."""
    model, shape = build("unet")
    prof = profile_of("unet")
    assert prof.totals()["flops"] == torch_flops(model, shape)
    transposed = {layer.name: layer for layer in prof.layers if layer.kind == "conv_transpose"}
    assert set(transposed) == {"up1", "up2"}
    assert transposed["up2"].flops == 64 * 32 * 4 * 16 * 16  # C_in * C_out/g * k*k * H_in*W_in
    assert set(prof.outputs) == {"head"}
    for mode in MODES:
        check_prune_result("unet", pruned("unet", mode), mode, 0.5)


def test_groupnorm_8_prunes_with_valid_groups():
    """Was: RuntimeError 'Expected number of channels in input to be divisible by num_groups'."""
    model, shape = build("gn_se")
    result = pruned("gn_se", "params")
    check_prune_result("gn_se", result, "params", 0.5)
    norms = [m for m in result.model.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(m.num_groups == 8 and m.num_channels % 8 == 0 for m in norms)
    assert any(m.num_channels < 256 for m in norms[2:])  # the GroupNorm layers were actually cut


def test_module_called_twice_counted_per_call():
    """Was: counted once (-45.7% FLOPs)."""
    model, shape = build("twice")
    prof = profile_of("twice")
    assert prof.totals()["flops"] == torch_flops(model, shape)
    assert prof.totals()["params"] == sum(p.numel() for p in model.parameters())  # parameters once
    assert prof.by_name()["shared"].calls == 2
    check_prune_result("twice", pruned("twice", "flops"), "flops", 0.5)


@pytest.mark.slow
def test_functional_conv_on_module_weight_is_counted_and_never_silently_over_target():
    """Was: F.conv2d(x, self.conv.weight) not counted, so FLOPs 0.5 landed at 0.543 with no warning."""
    model, shape = build("functional_weight")
    prof = profile_of("functional_weight")
    reference = torch_flops(model, shape)
    assert abs(prof.totals()["flops"] - reference) <= 0.005 * reference
    target = 0.5 * reference
    try:
        result = edgeprune.prune(model, "flops", 0.5, input_shape=shape, seed=0)
    except EdgepruneError as e:
        assert "conv.weight" in str(e), f"refusal does not name the parameter: {e}"
        assert "\n" not in str(e).strip()
        return
    actual = torch_flops(result.model, shape)  # independent of edgeprune's own count
    assert 0.98 * target <= actual <= target, f"landed at {actual / reference:.3f} of the original, target 0.5"
    assert run(result.model, example(shape))[0].shape == (1, 10)


def test_auxiliary_head_that_runs_last_is_an_output_not_pruned():
    """Was: the auxiliary head, run last, was taken for the only output layer, and pruning crashed."""
    model, shape = build("aux_last")
    prof = profile_of("aux_last")
    assert set(prof.outputs) == {"fc", "aux_fc"}
    for group in prof.groups:
        if set(group.out_layers) & {"fc", "aux_fc"}:
            assert not group.prunable and group.reason
    result = pruned("aux_last", "flops")
    check_prune_result("aux_last", result, "flops", 0.5)
    assert (result.model.fc.out_features, result.model.aux_fc.out_features) == (10, 4)


def test_two_heads_and_dense_outputs_are_all_output_layers():
    assert set(profile_of("two_head").outputs) == {"head", "aux"}
    assert set(profile_of("upsample_net").outputs) == {"14"}


def test_grouped_conv_groups_are_prunable():
    """Was: every group touching a grouped conv was frozen ('grouped conv')."""
    model, shape = build("resnext")
    prof = profile_of("resnext")
    grouped = {layer.name for layer in prof.layers if layer.groups > 1 and not layer.depthwise}
    assert grouped == {f"blocks.{i}.grouped.0" for i in range(3)}
    assert any(g.prunable and grouped & {m.layer for m in g.members} for g in prof.groups)
    result = pruned("resnext", "flops")
    check_prune_result("resnext", result, "flops", 0.5)
    convs = {n: m for n, m in result.model.named_modules() if n in grouped}
    assert all(m.groups == 8 and m.in_channels % 8 == 0 and m.out_channels % 8 == 0 for m in convs.values())
    assert any(m.out_channels < model.get_submodule(n).out_channels for n, m in convs.items())


def test_group_that_cannot_be_cut_gets_a_reason_not_a_crash():
    """A channel shuffle permutes channels behind Torch-Pruning's back: left out of the lottery with a reason."""
    model, shape = build("shuffle")
    prof = profile_of("shuffle")
    (mix,) = [g for g in prof.groups if "mix.0" in g.out_layers]
    assert not mix.prunable and mix.reason
    try:
        result = edgeprune.prune(model, "flops", 0.5, input_shape=shape, seed=0)
    except EdgepruneError:
        return  # e.g. unreachable without that group: a one-line user error is fine
    assert result.model.mix[0].out_channels == 32
    check_prune_result("shuffle", result, "flops", 0.5)


def test_prune_errors_are_edgeprune_errors():
    model, shape = build("gray28")
    with pytest.raises(EdgepruneError):
        edgeprune.prune(model, "flops", 1e-6, input_shape=shape)
    with pytest.raises(EdgepruneError, match="no_such_layer"):
        edgeprune.prune(model, "flops", 0.5, input_shape=shape, keep=["no_such_layer"])
    with pytest.raises(EdgepruneError):
        edgeprune.prune(model, "flops", 0.5, input_shape=(3, 28, 28))  # wrong channel count for the net


# -- 6. keep=[...] --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_keep_protects_the_named_layers():
    model, shape = build("unet")
    keep = ["enc1.0", "up2", "dec1.3"]
    result = edgeprune.prune(model, "flops", 0.5, input_shape=shape, seed=0, keep=keep)
    check_prune_result("unet", result, "flops", 0.5)
    for name in keep:
        assert result.model.get_submodule(name).out_channels == model.get_submodule(name).out_channels, name
    assert any(
        m.out_channels < model.get_submodule(n).out_channels
        for n, m in result.model.named_modules()
        if isinstance(m, nn.Conv2d)
    )


def test_tables_are_consistent():
    assert set(ARCHS) == {"resnet18", "unet", "resnext", "gn_se", "gray28", "two_head"}
    assert not set(ARCHS) & set(EXTRA)
    for name, (factory, kwargs, shape) in ALL.items():
        assert callable(factory) and isinstance(kwargs, dict) and len(shape) == 3, name


@pytest.mark.slow
def test_bench_of_a_module_without_a_builder(tmp_path):
    """Was: 'only models built by edgeprune.create ... can be saved'. It is measured as its torch.export program."""
    from edgeprune.measure import bench

    model, shape = build("gray28")
    result = bench(model, backends=["torch", "onnxruntime"], runs=3, warmup=1, input_shape=shape, spin=False)
    assert "torch.export" in result["model"]
    for backend in ("torch", "onnxruntime"):
        row = result["backends"][backend]
        assert row["latency_ms"]["median"] > 0
    assert result["complexity"]["flops"] == totals(model, shape)["flops"]
