"""Activation liveness: which tensors are alive at each op of a forward pass, and the peak of their bytes.

``peak_memory`` (SPEC, "microcontroller costs") is, at batch 1 and over the forward pass in execution order,
the largest total size of the tensors alive at one moment: the current op's inputs and outputs plus every
earlier output still needed by a later op (a skip connection, a concatenation), at the stored width. It is
what an MCU's SRAM must hold (MCUNet's analysis). Weights are not counted: they live in flash.

``trace_liveness`` runs one forward pass under a ``TorchFunctionMode`` and records every torch call (an op)
with the tensors it reads and writes. Memory is counted per buffer (storage): a view (``view``, ``flatten``,
a slice, ``chunk``) or an in-place op (``relu(inplace=True)``, ``+=``) shares its input's buffer. A buffer
is alive from the op that makes it to the last op that reads it; the model's input from the first op, its
outputs to the last. Parameters, module buffers and tensors computed from them alone are weights.

Pruning changes widths, not the graph, so each buffer's bytes are kept as a linear function of the layers'
output widths, ``const + sum_L bytes_per_channel(L) * c_out(L)``, built with these rules:

- an op that reads a conv or linear layer's weight makes ``c_out`` channels of that layer;
- a concatenation (``cat``, ``stack``) is the sum of its inputs;
- any other op scales with its largest activation input (elementwise ops, norms, activations, pooling,
  flatten and upsampling keep the channels);
- an op with no activation input (``torch.zeros`` in forward) is a constant.

An op that changes the channel count other than through a layer (a mean over channels) is taken to scale
with its input: a pruned model's peak can then differ a little from a re-trace of it.
The peak of any widths is then a matrix product (ops x buffers alive, times buffer bytes) and a maximum,
which is what lets the pruning loop recompute it after every step without running the model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeprune.complexity import LayerShape, Profile
from edgeprune.errors import EdgepruneError, first_line

_CONCATS = ("cat", "concat", "concatenate", "stack", "hstack", "vstack", "dstack")


@dataclass(eq=False)
class Liveness:
    """Buffers of one forward pass, when each is alive, and their bytes as functions of the layers' widths."""

    layers: tuple[str, ...]  # the layers whose output widths buffer sizes depend on
    traced: np.ndarray  # (K,) each layer's c_out when traced
    const: np.ndarray  # (S,) bytes of each buffer that no layer's width changes
    coef: np.ndarray  # (S, K) bytes of each buffer per output channel of each layer
    live: np.ndarray  # (R, S) 1.0 where buffer s is alive during op row r (rows with equal live sets merged)
    rows: tuple[int, ...]  # (R,) the first op of each row
    ops: tuple[str, ...]  # (N,) each op: the module it runs in and the torch function's name
    row_of: tuple[int, ...]  # (N,) each op's row
    alive: tuple[int, ...] = field(default=())  # (R,) how many buffers are alive in each row

    def widths(self, shapes: Mapping[str, LayerShape]) -> np.ndarray:
        """Each layer's current output width (its traced width when ``shapes`` lacks it)."""
        return np.array([shapes[n].c_out if n in shapes else t for n, t in zip(self.layers, self.traced)], float)

    def sizes(self, shapes: Mapping[str, LayerShape]) -> np.ndarray:
        """Each buffer's bytes at ``shapes``' widths."""
        return self.const + self.coef @ self.widths(shapes) if self.layers else self.const.copy()

    def per_row(self, shapes: Mapping[str, LayerShape]) -> np.ndarray:
        """Bytes alive during each op row at ``shapes``' widths."""
        return self.live @ self.sizes(shapes)

    def per_op(self, shapes: Mapping[str, LayerShape]) -> list[int]:
        """Bytes alive during each op, in execution order, at ``shapes``' widths."""
        per_row = self.per_row(shapes)
        return [int(round(float(per_row[r]))) for r in self.row_of]

    def peak(self, shapes: Mapping[str, LayerShape]) -> int:
        """The largest number of bytes alive at once."""
        per_row = self.per_row(shapes)
        return int(round(float(per_row.max()))) if per_row.size else 0

    def held(self, shapes: Mapping[str, LayerShape], layers: Iterable[str]) -> float:
        """Bytes alive at the peak that are channels of ``layers``: what narrowing them can save there."""
        per_row = self.per_row(shapes)
        if not per_row.size or not self.layers:
            return 0.0
        index = {n: k for k, n in enumerate(self.layers)}
        ks = [index[n] for n in set(layers) if n in index]
        if not ks:
            return 0.0
        row = int(per_row.argmax())
        return float(self.live[row] @ (self.coef[:, ks] @ self.widths(shapes)[ks]))

    def where(self, shapes: Mapping[str, LayerShape]) -> dict[str, Any]:
        """The peak and where it is: its bytes, the op (index and name) and how many buffers are alive."""
        per_row = self.per_row(shapes)
        if not per_row.size:
            return {"bytes": 0, "op_index": None, "op": None, "tensors_alive": 0}
        row = int(per_row.argmax())
        index = self.rows[row]
        alive = self.alive[row] if self.alive else int(self.live[row].sum())
        return {"bytes": int(round(float(per_row[row]))), "op_index": index, "op": self.ops[index],
                "tensors_alive": alive}  # fmt: skip


def trace_liveness(model: Any, example_input: Any, prof: Profile) -> Liveness:
    """Run ``model`` once on ``example_input`` (batch 1) and record its activations' liveness against ``prof``'s
    layers (``edgeprune.trace.record_shapes`` of the same model and input)."""
    import torch

    recorder = _Recorder(model)
    x = example_input.detach().clone()
    was_training = model.training
    handles = []
    for name, module in model.named_modules():  # the module each op runs in, to say where the peak is
        handles.append(module.register_forward_pre_hook(lambda *_, n=name: recorder.modules.append(n)))
        handles.append(module.register_forward_hook(lambda *_: recorder.modules.pop() and None))
    try:
        model.eval()
        recorder.activation(x)
        with torch.no_grad(), recorder:
            outputs = model(x)
    except EdgepruneError:
        raise
    except Exception as e:  # the model ran in record_shapes already; a second run failing is still one line
        raise EdgepruneError(f"peak memory: the model fails on its example input: {type(e).__name__}: "
                             f"{first_line(e)}") from None  # fmt: skip
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return recorder.build(prof, outputs)


def attach(prof: Profile, model: Any, example_input: Any, required: bool = True) -> Profile:
    """``prof`` with its liveness (``trace_liveness``) set, for the ``peak_memory`` cost; returns ``prof``.

    Not ``required`` (no peak-memory limit), a model whose ops cannot be followed keeps ``liveness`` None:
    its reports leave peak memory out rather than refuse the other costs.
    """
    try:
        prof.liveness = trace_liveness(model, example_input, prof)
    except EdgepruneError:
        if required:
            raise
        prof.liveness = None
    return prof


def _leaves(obj: Any) -> list:
    """Every tensor in a nest of tuples, lists and dicts."""
    import torch
    from torch.utils._pytree import tree_leaves

    return [t for t in tree_leaves(obj) if isinstance(t, torch.Tensor)]


def _buffer(t: Any) -> int:
    """The key of ``t``'s storage: views and in-place results share their input's."""
    try:
        return t.untyped_storage().data_ptr() or id(t)
    except Exception:  # a tensor without a plain storage (sparse, a subclass): its own buffer
        return id(t)


def _make_recorder_class() -> type:
    from torch.overrides import TorchFunctionMode

    class Recorder(TorchFunctionMode):
        """Watches one forward pass: every torch call's activation inputs and outputs, and the weights it reads."""

        def __init__(self, model: Any):
            super().__init__()
            names = {m: n for n, m in model.named_modules()}
            # tensors that are weights -> (owning module, parameter name); a tensor computed from weights alone too
            self.weights: dict[int, tuple[str, str]] = {}
            for module, mname in names.items():
                for pname, p in [*module._parameters.items(), *module._buffers.items()]:
                    if p is not None:
                        self.weights.setdefault(id(p), (mname, f"{mname}.{pname}" if mname else pname))
            self.acts: dict[int, tuple[int, int]] = {}  # activation tensor id -> (buffer key, bytes)
            self.events: list[tuple[str, list[int], list[int], list[tuple[str, str]], bool]] = []
            self.keep: list = []  # every tensor seen stays referenced: no buffer address is reused in the pass
            self.modules: list[str] = []  # the modules running now, outermost first
            self.failed: str | None = None  # the op the recording could not follow, and why

        def activation(self, t: Any) -> None:
            """Register ``t`` (the model's input) as an activation alive from the first op."""
            self.keep.append(t)
            self.acts[id(t)] = (_buffer(t), t.numel() * t.element_size())

        def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            """Run ``func`` and record it as an op."""
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            if self.failed is None:
                try:
                    self._record(func, args, kwargs, out)
                except Exception as e:  # an op this bookkeeping cannot follow: say which, after the pass
                    self.failed = f"{getattr(func, '__name__', func)}: {type(e).__name__}: {first_line(e)}"
            return out

        def _record(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
            ins = _leaves((args, kwargs))
            outs = _leaves(out)
            name = getattr(func, "__name__", str(func))
            where = self.modules[-1] if self.modules and self.modules[-1] else ""
            if not outs and name != "__setitem__":
                return  # .size(), .shape, .dim(): no data moves
            acts = [t for t in ins if id(t) in self.acts]
            weights = [self.weights[id(t)] for t in ins if id(t) in self.weights]
            if not acts and ins:  # computed from weights (or constants) alone: a weight
                for t in outs:
                    self.keep.append(t)
                    self.weights.setdefault(id(t), weights[0] if weights else ("", ""))
                return
            for t in outs:
                self.keep.append(t)
                self.acts[id(t)] = (_buffer(t), t.numel() * t.element_size())
            concat = name in _CONCATS
            label = f"{where} ({name})" if where else name
            self.events.append((label, [id(t) for t in acts], [id(t) for t in outs], weights, concat))

        def build(self, prof: Profile, outputs: Any) -> Liveness:
            """The recorded ops as a ``Liveness`` over ``prof``'s layers."""
            if self.failed is not None:
                raise EdgepruneError(f"peak memory: cannot follow the op {self.failed}")
            return _build(self, prof, [id(t) for t in _leaves(outputs) if id(t) in self.acts])

    return Recorder


_RECORDER: type | None = None


def _Recorder(model: Any) -> Any:  # noqa: N802 (a class made on first use: torch is imported only then)
    global _RECORDER
    if _RECORDER is None:
        _RECORDER = _make_recorder_class()
    return _RECORDER(model)


Expr = tuple[float, dict[str, float]]  # (constant bytes, {layer: bytes per output channel})


def _scaled(expr: Expr, factor: float) -> Expr:
    return expr[0] * factor, {k: v * factor for k, v in expr[1].items()}


def _expr(event: tuple, out_bytes: int, layer: str | None, exprs: dict[int, Expr], sizes: dict[int, int],
          traced: Mapping[str, LayerShape]) -> Expr:  # fmt: skip
    """One output's bytes as a function of the layers' widths (the rules in the module docstring)."""
    _, acts, _, _, concat = event
    if layer is not None:
        return 0.0, {layer: out_bytes / max(traced[layer].c_out, 1)}
    if not acts:
        return float(out_bytes), {}
    if concat:
        total = sum(sizes[t] for t in acts)
        const = sum(exprs[t][0] for t in acts)
        per: dict[str, float] = {}
        for t in acts:
            for k, v in exprs[t][1].items():
                per[k] = per.get(k, 0.0) + v
        return _scaled((const, per), out_bytes / total) if total else (float(out_bytes), {})
    largest = max(acts, key=lambda t: sizes[t])  # first of the largest: max keeps the first
    return _scaled(exprs[largest], out_bytes / sizes[largest]) if sizes[largest] else (float(out_bytes), {})


def _layer_of(weights: list[tuple[str, str]], traced: Mapping[str, LayerShape]) -> str | None:
    """The layer an op runs: the first weight it reads that belongs to a recorded layer (module or functional)."""
    for module, param in weights:
        if param in traced:  # a parameter used outside its module is a layer of its own (trace.py)
            return param
        if module in traced:
            return module
    return None


def _build(rec: Any, prof: Profile, output_ids: list[int]) -> Liveness:
    """Buffers, their lifetimes and their bytes as functions of the widths, from the recorded ops."""
    traced = prof.by_name()
    sizes = {tid: nbytes for tid, (_, nbytes) in rec.acts.items()}
    exprs: dict[int, Expr] = {}
    buffer_of: dict[int, int] = {}  # buffer key -> index
    born: list[int] = []
    last: list[int] = []
    bexpr: list[Expr] = []
    for tid, (key, nbytes) in list(rec.acts.items())[:1]:  # the model's input, registered first
        exprs[tid] = (float(nbytes), {})
        buffer_of[key] = 0
        born.append(0), last.append(0), bexpr.append(exprs[tid])
    ops: list[str] = []
    for i, event in enumerate(rec.events):
        name, acts, outs, weights, _ = event
        layer = _layer_of(weights, traced) if acts else None
        ops.append(name)
        for tid in acts:
            last[buffer_of[rec.acts[tid][0]]] = i
        for tid in outs:
            key, nbytes = rec.acts[tid]
            exprs[tid] = _expr(event, nbytes, layer, exprs, sizes, traced)
            if key not in buffer_of:
                buffer_of[key] = len(born)
                born.append(i), last.append(i), bexpr.append(exprs[tid])
            else:
                last[buffer_of[key]] = i
    end = max(len(ops) - 1, 0)
    for tid in output_ids:
        last[buffer_of[rec.acts[tid][0]]] = end
    return _matrices(traced, ops, born, last, bexpr)


def _matrices(traced: Mapping[str, LayerShape], ops: list[str], born: list[int], last: list[int],
              bexpr: list[Expr]) -> Liveness:  # fmt: skip
    """The arrays of a ``Liveness``: buffer bytes as const + coef @ widths, and which buffers each op row holds."""
    layers = tuple(dict.fromkeys(k for _, per in bexpr for k in per))
    index = {n: k for k, n in enumerate(layers)}
    const = np.array([c for c, _ in bexpr], float)
    coef = np.zeros((len(bexpr), len(layers)))
    for s, (_, per) in enumerate(bexpr):
        for k, v in per.items():
            coef[s, index[k]] = v
    steps = np.arange(max(len(ops), 1))[:, None]
    live = (np.array(born)[None, :] <= steps) & (steps <= np.array(last)[None, :])
    unique, first, inverse = np.unique(live, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))  # rows renumbered in the order their first op runs
    rows = unique[order]
    widths = np.array([traced[n].c_out for n in layers], float)
    return Liveness(layers, widths, const, coef, rows.astype(float), tuple(int(i) for i in first[order]),
                    tuple(ops) or ("input",), tuple(int(rank[r]) for r in np.ravel(inverse)),
                    tuple(int(n) for n in rows.sum(axis=1)))  # fmt: skip


__all__ = ["Liveness", "attach", "trace_liveness"]
