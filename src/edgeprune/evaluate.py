"""Test-split accuracy of a model, in PyTorch or, for an .onnx, .pte or .tflite file, in its runtime.

An .onnx file runs in onnxruntime, a .pte file in ExecuTorch, a .tflite file in LiteRT
(``edgeprune.edge_runtime``: batch 1, int8 inputs and outputs (de)quantized with their own parameters).

Images are preprocessed exactly as ``edgeprune.train`` evaluates them (its ``Normalizer``): uint8
pixels / 255, minus the data set's per-channel mean, divided by its standard deviation (both from
the training split), batch by batch in the test split's order. Top-1 accuracy is always reported,
top-5 when the data set has more than 10 classes; accuracies are fractions in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeprune.data import ImageDataset, Normalizer, check_compatible
from edgeprune.edge_runtime import format_of, is_edge_path
from edgeprune.errors import EdgepruneError, first_line
from edgeprune.measure import is_onnx_path

Logits = Callable[[torch.Tensor], torch.Tensor]  # a normalised float batch -> (N, classes) scores


def evaluate(model: Any, data: ImageDataset, *, batch_size: int = 256, threads: int | None = None) -> dict:
    """Top-1 (and top-5 above 10 classes) test accuracy of a module, folder, reference, .onnx/.pte/.tflite file."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise EdgepruneError(f"batch size must be a positive integer, got {batch_size!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise EdgepruneError(f"threads must be a positive integer, got {threads!r}")
    if len(data.test_y) == 0:
        raise EdgepruneError(f"data set '{data.name}' has an empty test split")
    if is_onnx_path(model):
        run, batch_size = _onnx_logits(Path(model), data, threads, batch_size)
        return _score(run, data, batch_size, str(model), "onnxruntime")
    if is_edge_path(model):
        return _score(_edge_logits(Path(model), data, threads), data, batch_size, str(model), format_of(model))
    module, source = _torch_model(model, data)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode():
            return _score(module, data, batch_size, source, "torch")
    finally:
        module.train(was_training)
        torch.set_num_threads(previous)


def _torch_model(model: Any, data: ImageDataset) -> tuple[nn.Module, str]:
    """The module to evaluate and its name; a one-line error when it cannot take the data set's images."""
    from edgeprune.io import Resolved, resolve, resolve_for_data
    from edgeprune.refs import builder_of

    shape = data.input_shape()
    if isinstance(model, nn.Module):
        recorded = (builder_of(model) or {}).get("input_shape")
        if recorded and tuple(recorded) != shape:
            raise EdgepruneError(f"the model was built for {_shown(recorded)} images, {_of(data)}")
        resolved = resolve(model)
    elif isinstance(model, Resolved):
        if tuple(model.input_shape) != shape:
            raise EdgepruneError(f"{model.source} takes {_shown(model.input_shape)} images, {_of(data)}")
        resolved = model
    else:
        resolved = resolve_for_data(model, data.num_classes, shape, data.name)
    check_compatible(resolved.model, data)
    return resolved.model, resolved.source


def _onnx_logits(path: Path, data: ImageDataset, threads: int | None, batch_size: int) -> tuple[Logits, int]:
    """A function running the .onnx file in onnxruntime, and the batch size it takes."""
    from edgeprune.export import ort_session

    session = ort_session(path, threads)
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise EdgepruneError(f"{path}: has {len(inputs)} inputs; only single-input models can be evaluated")
    dims = list(inputs[0].shape)
    fixed = [d if isinstance(d, int) else None for d in dims]
    shape = data.input_shape()
    if len(dims) != 1 + len(shape) or any(d not in (None, s) for d, s in zip(fixed[1:], shape)):
        shown = "x".join(str(d) if d is not None else "?" for d in fixed[1:])
        raise EdgepruneError(f"{path}: the model takes {shown} inputs, {_of(data)}")
    name, batch = inputs[0].name, fixed[0] or batch_size  # a file exported for a fixed batch keeps it

    def run(x: torch.Tensor) -> torch.Tensor:
        n = len(x)
        array = np.ascontiguousarray(x.numpy(), dtype=np.float32)
        if n < batch:  # the last batch of a fixed-batch model: padded with zeros, the padding dropped
            array = np.concatenate([array, np.zeros((batch - n, *shape), dtype=np.float32)])
        try:
            out = session.run(None, {name: array})[0]
        except Exception as e:  # onnxruntime raises its own exception types
            raise EdgepruneError(f"{path}: onnxruntime failed ({first_line(e)})") from None
        return torch.from_numpy(np.asarray(out)[:n])

    return run, batch


def _edge_logits(path: Path, data: ImageDataset, threads: int | None) -> Logits:
    """A function running a .pte or .tflite file in its runtime (image by image: the files take batch 1)."""
    from edgeprune.edge_runtime import open_model

    loaded = open_model(path, threads)
    if loaded.input_shape[1:] != data.input_shape():
        raise EdgepruneError(f"{path}: the model takes {_shown(loaded.input_shape[1:])} inputs, {_of(data)}")
    return lambda x: torch.from_numpy(loaded.run(x.contiguous().numpy()))


def _score(logits: Logits, data: ImageDataset, batch_size: int, source: str, backend: str) -> dict:
    """Run ``logits`` over the test split in batches and count top-1 (and top-5) hits."""
    normalize = Normalizer(data.mean, data.std)
    k = 5 if data.num_classes > 10 else 1
    hits = torch.zeros(k, dtype=torch.int64)
    for start in range(0, len(data.test_y), batch_size):
        x, y = data.test_x[start : start + batch_size], data.test_y[start : start + batch_size]
        out = logits(normalize(x))  # channels-last, as train's evaluation feeds it
        _check_output(out, len(y), data, source)
        best = out.float().topk(k, dim=1).indices
        hits += (best == y.view(-1, 1)).cumsum(1).sum(0)  # hits within the best 1, 2, ... k
    n = len(data.test_y)
    result: dict = {
        "top1": int(hits[0]) / n,
        "images": n,
        "correct": int(hits[0]),
        "split": "test",
        "data": data.name,
        "classes": data.num_classes,
        "model": source,
        "backend": backend,
        "normalize": {"mean": list(data.mean), "std": list(data.std), "scale": "pixels / 255"},
    }
    if k == 5:
        result["top5"] = int(hits[4]) / n
    return result


def _check_output(out: Any, n: int, data: ImageDataset, source: str) -> None:
    """One-line error unless the model gave one score per class for each of the ``n`` images."""
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != n:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise EdgepruneError(f"{source}: expected (N, classes) scores for {n} images, got {shape}")
    if out.shape[1] != data.num_classes:
        raise EdgepruneError(
            f"{source}: has {out.shape[1]} outputs, the data set '{data.name}' has {data.num_classes} classes"
        )


def _shown(shape: Any) -> str:
    return "x".join(str(d) for d in shape)


def _of(data: ImageDataset) -> str:
    return f"the data set '{data.name}' has {_shown(data.input_shape())} images"


__all__ = ["evaluate"]
