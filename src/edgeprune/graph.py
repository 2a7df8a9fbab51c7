"""Coupled channel groups, found and cut by Torch-Pruning's dependency graph.

A group is the set of channels that must shrink together: a layer's filters, its norm layer, the
next layers' input channels (through concatenations, splits, channel multiplies, upsampling...), a
depthwise conv that follows, every layer tied to the same residual addition. We read each group once
as per-channel counts on the recorded layer shapes (so Algorithm 1 can plan on numbers alone), and
call Torch-Pruning again only to cut.

A group that feeds a grouped conv or a GroupNorm is cut the way Torch-Pruning cuts it: the same
positions in every channel group, so a removal unit ("slot") is ``unit`` channels, one per group.
Before a group is offered to the lottery it is probed: one slot is cut from a copy of the model and
the copy's recorded shapes must equal what the arithmetic predicts. A group that Torch-Pruning
cannot cut, or cuts differently, is left out with the reason, never a crash later.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import cached_property

import torch
import torch_pruning as tp
from torch import nn

from edgeprune.complexity import LayerShape, Profile
from edgeprune.errors import EdgepruneError, first_line
from edgeprune.trace import NORMS, norm_width, record_forward, record_shapes

_RESIDUAL_OPS = ("AddBackward", "SubBackward")


@dataclass(frozen=True)
class Member:
    """One layer dimension a group shrinks: ``counts[i]`` of its ``dim`` channels go with group channel i."""

    layer: str
    dim: str  # "out" (its filters) or "in" (its input channels)
    counts: tuple[int, ...]

    @property
    def per_channel(self) -> int:
        """Channels removed per group channel (groups offered to the lottery map channels evenly)."""
        return max(self.counts) if self.counts else 0

    @cached_property
    def even(self) -> int | None:
        """The count every group channel has, None when they differ (then a removal is summed channel by channel)."""
        return self.counts[0] if self.counts and len(set(self.counts)) == 1 else None


@dataclass(frozen=True)
class ChannelGroup:
    """A prunable unit: coupled channels named after the first layer whose filters they are."""

    name: str
    width: int
    members: tuple[Member, ...]
    prunable: bool
    reason: str = ""  # why it is not prunable
    unit: int = 1  # channels per removal slot: the channel groups of a grouped conv / GroupNorm it feeds
    # per group channel, the parameters outside any conv/linear layer that go with it: the affine vectors of a
    # norm no layer owns (DenseNet's pre-activation BatchNorm on a concatenation), counted in ``other_params``
    extra: tuple[int, ...] = ()

    @property
    def out_layers(self) -> list[str]:
        """Layers whose output channels (filters) this group removes."""
        return list(self._outs)

    @cached_property
    def _outs(self) -> tuple[str, ...]:
        # the lottery weighs every active group by these layers at every step: list them once
        return tuple(m.layer for m in self.members if m.dim == "out")

    @property
    def slots(self) -> int:
        """Removal slots: ``width / unit``."""
        return self.width // self.unit

    def channels(self, slots: Sequence[int]) -> list[int]:
        """The group channels of ``slots``: position j in each of the ``unit`` blocks."""
        if self.unit == 1:
            return sorted(slots)
        return sorted(j + k * self.slots for j in slots for k in range(self.unit))

    def shrunk(self, shapes: dict[str, LayerShape], slots: Sequence[int]) -> dict[str, LayerShape]:
        """The member layers' shapes after removing ``slots`` (positions in the original width)."""
        removed: list[int] | None = None  # the channels, listed only for a member whose counts differ
        new = {m.layer: shapes[m.layer] for m in self.members}
        for m in self.members:
            if m.even is not None:  # every channel counts the same: no sum (this runs at every lottery step)
                n = m.even * len(slots) * self.unit
            else:
                removed = removed if removed is not None else self.channels(slots)
                n = sum(m.counts[i] for i in removed)
            s = new[m.layer]
            new[m.layer] = s.resized(c_out=s.c_out - n) if m.dim == "out" else s.resized(c_in=s.c_in - n)
        return new

    def extra_params(self, slots: Sequence[int]) -> int:
        """Parameters outside conv/linear layers removed with ``slots`` (norms no layer owns)."""
        return sum(self.extra[c] for c in self.channels(slots)) if self.extra else 0

    def to_dict(self) -> dict:
        """JSON-ready view."""
        return {
            "name": self.name,
            "width": self.width,
            "unit": self.unit,
            "prunable": self.prunable,
            "reason": self.reason,
            "out_layers": self.out_layers,
            "in_layers": [m.layer for m in self.members if m.dim == "in"],
        }


def _call(model: nn.Module, x: torch.Tensor) -> object:
    return model(x)


def build_graph(
    model: nn.Module, example_input: torch.Tensor, forward: Callable[[nn.Module, torch.Tensor], object] | None = None
) -> tp.DependencyGraph:
    """Trace ``model`` once into a Torch-Pruning dependency graph; ``forward(model, x)`` runs it (default: a call)."""
    # Torch-Pruning's own default first tries model(*x), a whole unbatched pass when it does not fail at once;
    # the batched call is the one every other step of the analysis traces.
    try:
        with torch.enable_grad():
            return tp.DependencyGraph().build_dependency(
                model, example_inputs=example_input, forward_fn=forward or _call, verbose=False
            )
    except EdgepruneError:  # the forward's own one-line error (record_forward: the model fails on this input)
        raise
    except Exception as e:  # tracing a user model can fail in many ways; say so in one line
        text = (str(e).strip().splitlines() or [""])[0][:200]
        raise EdgepruneError(f"Torch-Pruning cannot trace this model: {type(e).__name__}: {text}") from None


def trace_graph(
    model: nn.Module, example_input: torch.Tensor, check: Callable[[Profile], None] | None = None
) -> tuple[Profile, tp.DependencyGraph]:
    """``model``'s recorded shapes and its dependency graph, both from one forward pass.

    ``check`` reads the shapes before Torch-Pruning builds its graph (its error comes first, as it would if the
    shapes were recorded on their own).
    """
    found: list[Profile] = []

    def forward(m: nn.Module, x: torch.Tensor) -> object:
        prof, outputs = record_forward(m, x)
        if check is not None:
            check(prof)
        found.append(prof)
        return outputs

    graph = build_graph(model, example_input, forward)
    return found[0], graph


def _channel_groups(module: nn.Module, shape: LayerShape | None) -> int:
    """How many aligned blocks a group's channels must keep for this member (1 = no constraint)."""
    if isinstance(module, nn.GroupNorm):
        return module.num_groups
    sizes = getattr(module, "split_sizes", None) if isinstance(module, tp.ops._SplitOp) else None
    if sizes and len(sizes) > 1 and len(set(sizes)) == 1:
        return len(sizes)  # torch.chunk splits evenly at run time: every chunk must lose the same positions
    if shape is not None and shape.kind != "linear" and shape.groups > 1 and not shape.depthwise:
        return shape.groups
    return 1


def _extra_per_channel(module: nn.Module) -> int:
    """Parameters per channel of a norm or PReLU that no layer owns (0 for anything else)."""
    if isinstance(module, NORMS):
        width = norm_width(module)
    elif isinstance(module, nn.PReLU) and module.num_parameters > 1:
        width = module.num_parameters
    else:
        return 0
    return sum(p.numel() // width for p in module.parameters(recurse=False)) if width else 0


def find_groups(
    graph: tp.DependencyGraph,
    model: nn.Module,
    prof: Profile,
    prune_residual: bool = False,
    keep: Sequence[str] = (),
) -> list[ChannelGroup]:
    """All channel groups of ``model``, in execution order, each marked prunable or not and why."""
    names = {m: n for n, m in model.named_modules()}
    shapes = prof.by_name()
    order = {layer.name: i for i, layer in enumerate(prof.layers)}
    outputs, kept = set(prof.outputs), set(keep)
    owned = {layer.bn for layer in prof.layers if layer.bn}  # norms whose vectors a layer's params count
    groups = []
    for tp_group in graph.get_all_groups():
        width = len(tp_group[0].idxs)
        members: dict[tuple[str, str], list[int]] = {}
        loose: dict[tuple[int, int], tuple[int, int]] = {}  # (norm, its channel) -> (group channel, params)
        residual = False
        unit = 1
        for item in tp_group.items:
            dep = item.dep
            module = dep.target.module
            if any(op in dep.target.name for op in _RESIDUAL_OPS):
                residual = True
            name = names.get(module)
            shape = shapes.get(name)
            unit = math.lcm(unit, _channel_groups(module, shape))
            if shape is None:  # a norm (counted with its layer, or loose), or a parameter-free op
                per = 0 if name in owned else _extra_per_channel(module)
                for idx, root in zip(item.idxs, item.root_idxs or []) if per else ():
                    if root is not None and 0 <= root < width:
                        loose[(id(module), int(idx))] = (root, per)  # one norm reached twice counts once
                continue
            dim = "out" if graph.is_out_channel_pruning_fn(dep.handler) else "in"
            if shape.depthwise:
                dim = "out"  # inputs, outputs and groups of a depthwise conv shrink as one
            counts = members.setdefault((name, dim), [0] * width)
            if dim == "out" and shape.depthwise and any(counts):
                continue  # the depthwise conv's in and out entries are the same channels
            for root in item.root_idxs or []:
                if root is not None and 0 <= root < width:
                    counts[root] += 1
        if not members:
            continue
        ordered = tuple(
            Member(layer, dim, tuple(c)) for (layer, dim), c in sorted(members.items(), key=lambda kv: order[kv[0][0]])
        )
        outs = [m.layer for m in ordered if m.dim == "out"]
        uneven = any(len(set(m.counts)) > 1 for m in ordered)
        reason = _reason(outs, width, unit, residual, prune_residual, outputs, kept, uneven)
        name = outs[0] if outs else ordered[0].layer
        extra = [0] * width
        for root, per in loose.values():
            extra[root] += per
        groups.append(ChannelGroup(name, width, ordered, not reason, reason, unit, tuple(extra) if any(extra) else ()))
    return sorted(groups, key=lambda g: order[g.name])


def _reason(
    outs: list[str], width: int, unit: int, residual: bool, prune_residual: bool, outputs: set, kept: set, uneven: bool
) -> str:
    """Why a group is not prunable ('' when it is)."""
    if outputs & set(outs):
        return "output layer"
    if kept & set(outs):
        return "kept (--keep)"
    if not outs:
        return "no layer's filters"
    if uneven:  # sizes written in forward (x[:, :8], split([8, 24])) would not follow the cut
        return "uneven channel mapping (a slice or uneven split)"
    if width % unit:
        return f"{width} channels in {unit} groups"
    if residual and not prune_residual:
        return "residual-tied"
    if width // unit < 2:
        return "single channel" if unit == 1 else f"one channel per group ({unit} groups)"
    return ""


def cut(graph: tp.DependencyGraph, model: nn.Module, group_name: str, idxs: Sequence[int]) -> None:
    """Remove channels ``idxs`` (positions in the group's current width) from the group's layers."""
    module = model.get_submodule(group_name)  # its dotted path: no walk over every module for each group cut
    handler = graph.get_pruner_of_module(module).prune_out_channels
    graph.get_pruning_group(module, handler, list(idxs)).prune()


def _try_cut(model: nn.Module, example: torch.Tensor, prof: Profile, groups: list[ChannelGroup]) -> str:
    """Cut one slot of each group from a copy; '' when the copy's shapes equal the arithmetic's, else why not."""
    trial = copy.deepcopy(model)
    expected = prof.by_name()
    try:
        graph = build_graph(trial, example)
        for g in groups:
            expected.update(g.shrunk(expected, [g.slots - 1]))
            cut(graph, trial, g.name, g.channels([g.slots - 1]))
        actual = record_shapes(trial, example).by_name()
    except Exception as e:  # what Torch-Pruning raises for a structure it cannot cut varies
        return f"{type(e).__name__}: {first_line(e, limit=120) if str(e).strip() else ''}"
    for name, shape in actual.items():
        if expected.get(name) != shape:
            return (
                f"cut gives {name} {shape.c_in}->{shape.c_out}, expected {expected[name].c_in}->{expected[name].c_out}"
            )
    return ""


_PROBED: OrderedDict[tuple, dict[str, str]] = OrderedDict()  # architecture -> the groups that failed, and why
_PROBED_MAX = 32  # architectures remembered (a sweep or a search analyses the same few again and again)
_PLAIN = (bool, int, float, str, tuple, list, dict, set, frozenset, type(None))


def _architecture(model: nn.Module, example: torch.Tensor, groups: list[ChannelGroup]) -> tuple:
    """What a probe's outcome depends on: every module's class, settings and tensor shapes, the input, the groups.

    Two models equal in all of these trace to the same graph and cut the same way: the probe's answer for one
    is the other's (a class redefined in a notebook is another class, and so another architecture).
    """
    modules = []
    for name, m in model.named_modules():
        plain = tuple((k, repr(v)) for k, v in vars(m).items() if isinstance(v, _PLAIN) and not k.startswith("_"))
        tensors = tuple((k, tuple(t.shape), t.dtype) for k, t in [*m._parameters.items(), *m._buffers.items()]
                        if t is not None)  # fmt: skip
        hooks = (len(m._forward_hooks), len(m._forward_pre_hooks))
        modules.append((name, type(m), m.training, plain, tensors, hooks))
    return type(model), tuple(example.shape), example.dtype, tuple(modules), repr(groups)


def probe(model: nn.Module, example: torch.Tensor, prof: Profile, groups: list[ChannelGroup]) -> list[ChannelGroup]:
    """Mark the groups Torch-Pruning cannot cut as we count them unprunable, with the reason.

    The trial cuts run once per architecture (``_architecture``): about 40 % of a ResNet-50 prune otherwise.
    """
    key = _architecture(model, example, groups)
    failed = _PROBED.get(key)
    if failed is None:
        failed = _failed_groups(model, example, prof, groups)
        _PROBED[key] = failed
        while len(_PROBED) > _PROBED_MAX:
            _PROBED.popitem(last=False)
    else:
        _PROBED.move_to_end(key)
    if not failed:
        return groups
    return [replace(g, prunable=False, reason=f"cannot be cut: {failed[g.name]}") if g.name in failed else g
            for g in groups]  # fmt: skip


def _failed_groups(model: nn.Module, example: torch.Tensor, prof: Profile,
                   groups: list[ChannelGroup]) -> dict[str, str]:  # fmt: skip
    """The prunable groups a trial cut refuses, by name, with the reason (none when all cut together)."""
    candidates = [g for g in groups if g.prunable]
    if not candidates or not _try_cut(model, example, prof, candidates):
        return {}
    failed = {g.name: why for g in candidates if (why := _try_cut(model, example, prof, [g]))}
    if not failed:  # each cuts alone but not all together: keep the largest set that does
        ok: list[ChannelGroup] = []
        for g in candidates:
            if _try_cut(model, example, prof, [*ok, g]):
                failed[g.name] = "cannot be cut together with the groups before it"
            else:
                ok.append(g)
    return failed


def analyse(
    model: nn.Module, example: torch.Tensor, prune_residual: bool = False, keep: Sequence[str] = ()
) -> tuple[Profile, tp.DependencyGraph]:
    """Profile ``model`` on ``example``, find its channel groups, probe them; the graph is returned for cutting."""

    def check_keep(prof: Profile) -> None:
        unknown = sorted(set(keep) - set(prof.by_name()))
        if unknown:
            raise EdgepruneError(f"--keep {unknown[0]}: no conv or linear layer of that name")

    prof, graph = trace_graph(model, example, check_keep)
    groups = probe(model, example, prof, find_groups(graph, model, prof, prune_residual, keep))
    prof.groups = groups
    prof.prunable = {name: g.prunable for g in groups for name in g.out_layers}
    return prof, graph


def profile(
    model: nn.Module, input_shape: tuple[int, ...] = (3, 32, 32), prune_residual: bool = False, keep: Sequence[str] = ()
) -> Profile:
    """Complexity profile of any ``nn.Module`` for one input of ``input_shape`` (no batch dim), with its groups."""
    return analyse(model, torch.zeros(1, *input_shape), prune_residual, keep)[0]


__all__ = ["ChannelGroup", "Member", "analyse", "build_graph", "cut", "find_groups", "profile", "trace_graph"]
