"""Coupled channel groups, found and cut by Torch-Pruning's dependency graph.

A group is the set of channels that must shrink together: a layer's filters, its BatchNorm,
the next layers' input channels, a depthwise conv that follows, every layer tied to the same
residual addition. We read each group once, as per-channel counts on the recorded layer shapes
(so Algorithm 1 can plan on numbers alone), and call Torch-Pruning again only to cut.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from edgeprune.complexity import Profile

_RESIDUAL_OPS = ("AddBackward", "SubBackward")


@dataclass(frozen=True)
class Member:
    """One layer dimension a group shrinks: ``per_channel`` of its ``dim`` go per group channel."""

    layer: str
    dim: str  # "out" (its filters) or "in" (its input channels)
    per_channel: int


@dataclass(frozen=True)
class ChannelGroup:
    """A prunable unit: coupled channels named after the first layer whose filters they are."""

    name: str
    width: int
    members: tuple[Member, ...]
    prunable: bool
    reason: str = ""  # why it is not prunable

    @property
    def out_layers(self) -> list[str]:
        """Layers whose output channels (filters) this group removes."""
        return [m.layer for m in self.members if m.dim == "out"]

    def to_dict(self) -> dict:
        """JSON-ready view."""
        return {
            "name": self.name,
            "width": self.width,
            "prunable": self.prunable,
            "reason": self.reason,
            "out_layers": self.out_layers,
            "in_layers": [m.layer for m in self.members if m.dim == "in"],
        }


def build_graph(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    """Trace ``model`` once into a Torch-Pruning dependency graph."""
    with torch.enable_grad():
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_input, verbose=False)


def find_groups(
    graph: tp.DependencyGraph, model: nn.Module, prof: Profile, prune_residual: bool = False
) -> list[ChannelGroup]:
    """All channel groups of ``model``, in execution order, each marked prunable or not and why."""
    names = {m: n for n, m in model.named_modules()}
    shapes = prof.by_name()
    order = {layer.name: i for i, layer in enumerate(prof.layers)}
    head = prof.layers[-1].name  # the output layer: one unit per class, never pruned
    groups = []
    for tp_group in graph.get_all_groups():
        width = len(tp_group[0].idxs)
        members: dict[tuple[str, str], Member] = {}
        residual = grouped = False
        for dep, idxs in tp_group:
            module = dep.target.module
            if any(op in dep.target.name for op in _RESIDUAL_OPS):
                residual = True
            name = names.get(module)
            if name not in shapes:
                continue  # BatchNorm (counted with its conv) or a parameter-free op
            dim = "out" if graph.is_out_channel_pruning_fn(dep.handler) else "in"
            shape = shapes[name]
            if shape.depthwise:
                dim = "out"  # inputs, outputs and groups of a depthwise conv shrink as one
            elif shape.groups > 1:
                grouped = True
            members[(name, dim)] = Member(name, dim, len(idxs) // width)
        if not members:
            continue
        ordered = tuple(sorted(members.values(), key=lambda m: (order[m.layer], m.dim)))
        outs = [m.layer for m in ordered if m.dim == "out"]
        reason = ""
        if head in outs:
            reason = "output layer"
        elif grouped:
            reason = "grouped conv"
        elif residual and not prune_residual:
            reason = "residual-tied"
        elif width < 2:
            reason = "single channel"
        groups.append(ChannelGroup(outs[0] if outs else ordered[0].layer, width, ordered, not reason, reason))
    return sorted(groups, key=lambda g: order[g.name])


def cut(graph: tp.DependencyGraph, model: nn.Module, group_name: str, idxs: Sequence[int]) -> None:
    """Remove channels ``idxs`` (positions in the group's current width) from the group's layers."""
    module = dict(model.named_modules())[group_name]
    handler = graph.get_pruner_of_module(module).prune_out_channels
    graph.get_pruning_group(module, handler, list(idxs)).prune()
