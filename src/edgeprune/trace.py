"""Layer shapes recorded with one forward pass of a PyTorch model.

Every call of a conv (1d/2d/3d, transposed or not) or linear module is recorded: a module called
twice counts its FLOPs and output maps twice and its parameters once. A norm layer that runs right
after a layer of the same width has its affine vectors counted with that layer. A parameter that
takes part in a conv/linear/matmul outside its own module (``F.conv2d(x, self.conv.weight)``) is
recorded too, as a layer named after the parameter and listed in ``Profile.functional``, so no
multiply-add goes uncounted. The layers whose outputs reach the model's outputs (through any number
of parameter-free ops) are the output layers (``Profile.outputs``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from edgeprune.complexity import LayerShape, Profile
from edgeprune.errors import EdgepruneError, first_line

LAYERS = (nn.modules.conv._ConvNd, nn.Linear)
NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)
_CONVS = {torch.conv1d: False, torch.conv2d: False, torch.conv3d: False}
_CONVS.update({F.conv_transpose1d: True, F.conv_transpose2d: True, F.conv_transpose3d: True})
_MATMULS = {F.linear, torch.matmul, torch.mm, torch.addmm, torch.Tensor.matmul, torch.Tensor.__matmul__}


def _prod(values: Iterable[int]) -> int:
    return math.prod(int(v) for v in values)


def norm_width(module: nn.Module) -> int | None:
    """Channels a norm layer normalises with affine vectors, or None when it has none over channels."""
    if isinstance(module, nn.GroupNorm):
        return module.num_channels if module.affine else None
    if isinstance(module, nn.LayerNorm):
        shape = module.normalized_shape
        return shape[0] if module.elementwise_affine and len(shape) == 1 else None
    return module.num_features if module.affine else None  # BatchNorm, InstanceNorm


def _module_layer(name: str, module: nn.Module, in_shape: torch.Size, out_shape: torch.Size) -> LayerShape:
    if isinstance(module, nn.Linear):
        return LayerShape(name, "linear", module.in_features, module.out_features, spatial=_prod(out_shape[1:-1]),
                          bias=module.bias is not None)  # fmt: skip
    kind = "conv_transpose" if module.transposed else "conv"
    in_spatial = _prod(in_shape[2:]) if module.transposed else 0  # only a transposed conv's FLOPs need it
    return LayerShape(
        name, kind, module.in_channels, module.out_channels, module.groups, _prod(module.kernel_size),
        _prod(out_shape[2:]), module.bias is not None, in_spatial=in_spatial,
    )  # fmt: skip


def module_shapes(model: nn.Module, layers: Iterable[LayerShape]) -> list[LayerShape] | None:
    """``layers`` as ``model``'s modules now are, read without running it (None when one is not a layer module).

    Channels, groups, kernel and bias are read from each module, as ``record_shapes`` reads them; positions and
    calls are kept (cutting channels does not change them), and the norm only while it is as wide as the layer's
    filters (how ``record_shapes`` pairs them). What a checked cut is compared with instead of another forward pass.
    """
    modules = dict(model.named_modules())
    out = []
    for layer in layers:
        module = modules.get(layer.name)
        if not isinstance(module, LAYERS):
            return None
        if isinstance(module, nn.Linear):
            now = replace(layer, c_in=module.in_features, c_out=module.out_features, bias=module.bias is not None)
        else:
            now = replace(layer, c_in=module.in_channels, c_out=module.out_channels, groups=module.groups,
                          kernel=_prod(module.kernel_size), bias=module.bias is not None)  # fmt: skip
        norm = modules.get(layer.bn) if layer.bn else None
        if layer.bn and (not isinstance(norm, NORMS) or norm_width(norm) != now.c_out):
            now = replace(now, bn=None)
        out.append(now)
    return out


def _functional_layer(
    name: str, func: object, args: tuple, kwargs: dict, weight: torch.Tensor, out: torch.Tensor
) -> LayerShape:
    """The shape of a conv or matmul op whose weight is a model parameter used outside its module."""
    x = args[0]
    if func in _CONVS:
        transposed = _CONVS[func]
        groups = int(args[6]) if len(args) > 6 else int(kwargs.get("groups", 1))  # 7th argument of both forms
        w = weight.shape
        c_in, c_out = (w[0], w[1] * groups) if transposed else (w[1] * groups, w[0])
        bias = len(args) > 2 and isinstance(args[2], nn.Parameter)
        return LayerShape(name, "conv_transpose" if transposed else "conv", c_in, c_out, groups, _prod(w[2:]),
                          _prod(out.shape[2:]), bias, in_spatial=_prod(x.shape[2:]) if transposed else 0)  # fmt: skip
    if weight is x or (x._base is not None and x._base is weight):  # W @ x: rows are outputs
        c_out, c_in = weight.shape[-2], weight.shape[-1]
    elif func is F.linear:
        c_out, c_in = weight.shape[0], weight.shape[1]
    else:  # x @ W
        c_in, c_out = weight.shape[-2], weight.shape[-1]
    return LayerShape(name, "linear", int(c_in), int(c_out), spatial=max(out.numel() // max(int(c_out), 1), 1))


class _Recorder(TorchFunctionMode):
    """Watches conv/linear/matmul calls for model parameters used outside their own module."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.param_names = {id(p): n for n, p in model.named_parameters()}
        self.stack: list[nn.Module] = []
        self.calls: list[tuple[str, LayerShape, object]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        """Run ``func``; record it when it uses a parameter that the running module does not own."""
        out = func(*args, **(kwargs or {}))
        if (func in _CONVS or func in _MATMULS) and isinstance(out, torch.Tensor):
            owner = self.stack[-1] if self.stack else None
            own = {id(p) for p in owner.parameters(recurse=False)} if owner is not None else set()
            for t in args[:2]:
                if not isinstance(t, torch.Tensor) or (t.dim() < 2):
                    continue
                base = t if t._base is None else t._base
                name = self.param_names.get(id(base))
                if name is not None and id(base) not in own:
                    self.calls.append(
                        (name, _functional_layer(name, func, tuple(args), kwargs or {}, t, out), out.grad_fn)
                    )
                    break
        return out


def record_shapes(model: nn.Module, example_input: torch.Tensor) -> Profile:
    """Run one forward pass and record every conv/linear layer call's shape, in execution order."""
    return record_forward(model, example_input)[0]


def record_forward(model: nn.Module, example_input: torch.Tensor) -> tuple[Profile, object]:
    """``record_shapes``, and the model's outputs: their autograd graph is what Torch-Pruning's tracer reads, so
    ``edgeprune.graph`` builds the dependency graph from this same forward pass instead of running another."""
    names = {m: n for n, m in model.named_modules()}
    events: list[tuple[nn.Module, torch.Size | None, torch.Tensor]] = []
    recorder = _Recorder(model)
    pending: dict[int, torch.Size] = {}

    def pre(module: nn.Module, args: tuple, kwargs: dict) -> None:
        recorder.stack.append(module)
        first = args[0] if args else next(iter(kwargs.values()), None)
        pending[id(module)] = first.shape if isinstance(first, torch.Tensor) else torch.Size()

    def post(module: nn.Module, _args: tuple, out: object) -> None:
        recorder.stack.pop()
        if isinstance(out, torch.Tensor):
            events.append((module, pending.pop(id(module), None), out.shape, out.grad_fn))

    def norm_hook(module: nn.Module, _args: tuple, out: object) -> None:
        events.append((module, None, None, None))

    handles = []
    for m in model.modules():
        if isinstance(m, LAYERS):
            handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(m.register_forward_hook(post))
        elif isinstance(m, NORMS):
            handles.append(m.register_forward_hook(norm_hook))
    was_training = model.training
    x = example_input.detach().clone().requires_grad_(example_input.is_floating_point())
    try:
        model.eval()
        with torch.enable_grad(), recorder:
            outputs = model(x)
    except EdgepruneError:
        raise
    except Exception as e:  # a user model that cannot run on this input
        shape = "x".join(map(str, example_input.shape[1:]))
        raise EdgepruneError(
            f"the model fails on a {shape} input: {type(e).__name__}: {first_line(e) if str(e).strip() else ''}"
        ) from None
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    layers, producers = _layers(events, names)
    for name, shape, grad_fn in recorder.calls:
        layers[name] = _merge(layers.get(name), shape)
        producers.setdefault(grad_fn, name)
    attributed = sum(layer.params for layer in layers.values())
    total = sum(p.numel() for p in model.parameters())
    functional = tuple(dict.fromkeys(name for name, _, _ in recorder.calls))
    prof = Profile(
        list(layers.values()), tuple(example_input.shape[1:]), other_params=max(total - attributed, 0),
        outputs=_output_layers(outputs, producers), functional=functional,
    )  # fmt: skip
    return prof, outputs


def _merge(old: LayerShape | None, new: LayerShape) -> LayerShape:
    """A layer's shape over its calls: positions add up, everything else is the first call's."""
    if old is None:
        return new
    return replace(old, spatial=old.spatial + new.spatial, in_spatial=old.in_spatial + new.in_spatial,
                   calls=old.calls + 1)  # fmt: skip


def _layers(events: list, names: dict) -> tuple[dict[str, LayerShape], dict]:
    """LayerShapes by name (first-call order) and the autograd node that produced each call's output."""
    layers: dict[str, LayerShape] = {}
    producers: dict = {}
    last: str | None = None
    normed: set[nn.Module] = set()
    for module, in_shape, out_shape, grad_fn in events:
        if isinstance(module, NORMS):
            width = norm_width(module)
            owner = layers.get(last) if last else None
            if owner is not None and owner.bn is None and width == owner.c_out and module not in normed:
                layers[last] = replace(owner, bn=names[module])
                normed.add(module)
            last = None
            continue
        name = names[module]
        layers[name] = _merge(layers.get(name), _module_layer(name, module, in_shape, out_shape))
        if grad_fn is not None:
            producers[grad_fn] = name
        last = name
    return layers, producers


def _output_layers(outputs: object, producers: dict) -> tuple[str, ...]:
    """Layers whose outputs reach the model's outputs through parameter-free ops only."""
    found: list[str] = []
    seen: set = set()
    stack = [t.grad_fn for t in tree_leaves(outputs) if isinstance(t, torch.Tensor) and t.grad_fn is not None]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if fn in producers:
            if producers[fn] not in found:
                found.append(producers[fn])
            continue
        stack.extend(next_fn for next_fn, _ in fn.next_functions)
    return tuple(found)


__all__ = ["LAYERS", "NORMS", "module_shapes", "norm_width", "record_forward", "record_shapes"]
