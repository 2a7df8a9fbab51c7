"""int8 ExecuTorch and LiteRT files by PT2E quantization, calibrated on training images, checked for accuracy.

Both formats use PyTorch's PT2E flow (``torch.export`` -> ``prepare_pt2e`` with the format's own
quantizer -> calibration -> ``convert_pt2e``) and then their own lowering (``edgeprune.edge_export.lower``):

- ``executorch``: ``XNNPACKQuantizer`` with its symmetric config, per output channel int8 weights and
  int8 activations (per tensor), lowered to the XNNPACK delegate, which runs the quantized kernels;
- ``litert``: ``litert_torch``'s ``PT2EQuantizer`` with the same scheme (per-channel symmetric int8
  weights, static int8 activations), converted with its ``QuantConfig``; the file takes and gives int8
  tensors, which ``edgeprune.edge_runtime`` (de)quantizes with the tensors' own scale and zero point.

Calibration uses the same images as the ONNX flow (``edgeprune.quantize.calibration_batches``:
``images`` training images drawn with ``seed``, normalised as in training). The accuracy check
compares the int8 file, run in its runtime, with the fp32 PyTorch model on the test split (the fp32
export of each format matches PyTorch within 1e-4, see ``edge_export``), and passes when top-1 falls by at
most ``max_drop`` points. The file is kept when it fails (as for ONNX): the caller reports the numbers.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeprune.data import ImageDataset
from edgeprune.edge_export import prepare_model, quiet, reference_outputs, write_checked
from edgeprune.edge_runtime import FORMATS, require, runtime_name
from edgeprune.errors import EdgepruneError, first_line
from edgeprune.quantize import DEFAULT_MAX_DROP, calibration_batches

SCHEMES = {
    "executorch": "XNNPACKQuantizer, symmetric: int8 weights per output channel, int8 activations per tensor",
    "litert": "litert_torch PT2EQuantizer, symmetric: int8 weights per output channel, int8 activations per tensor",
}


def _quantizer(fmt: str) -> Any:
    """The format's own PT2E quantizer, per-channel symmetric int8 weights, static int8 activations."""
    if fmt == "executorch":
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )

        return XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    from edgeprune.edge_export import litert_env

    litert_env()
    from litert_torch.quantize import pt2e_quantizer as pq

    return pq.PT2EQuantizer().set_global(pq.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))


def _calibrated(fmt: str, module: nn.Module, batches: list[np.ndarray], quantizer: Any) -> nn.Module:
    """The model as PT2E converts it after observing ``batches`` (a graph module with quantize nodes)."""
    import warnings

    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    batch = torch.export.Dim("batch", min=1, max=1 << 16)  # calibration batches of any size, then batch 1
    example = torch.from_numpy(batches[0][:2])  # calibration_batches gives 16 images or more
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = torch.export.export(module, (example,), dynamic_shapes=({0: batch},)).module()
            prepared = prepare_pt2e(graph, quantizer)
            with torch.no_grad():
                for b in batches:
                    prepared(torch.from_numpy(b))
            # LiteRT's converter wants the quantize / dequantize pairs unfolded; XNNPACK's lowering folds them
            converted = convert_pt2e(prepared, fold_quantize=fmt == "executorch")
            move_exported_model_to_eval(converted)
    except EdgepruneError:
        raise
    except Exception as e:  # torch.export and PT2E raise many kinds of errors
        raise EdgepruneError(f"{fmt} int8 quantization failed ({first_line(e)})") from None
    return converted


def quantize_edge(
    model: Any,
    path: str | Path,
    fmt: str,
    calibration: ImageDataset,
    *,
    images: int = 256,
    seed: int = 0,
    pad_to: int | None = None,
) -> dict:
    """Quantize a model to an int8 ``fmt`` file with the format's PT2E quantizer, calibrated; write it atomically."""
    if fmt not in FORMATS:
        raise EdgepruneError(f"unknown edge format '{fmt}'; choose from: {', '.join(FORMATS)}")
    path = Path(path)
    if path.is_dir():
        raise EdgepruneError(f"{path}: is a folder; give the {FORMATS[fmt]} file name")
    require(fmt)
    module, _, input_shape = prepare_model(model, None, pad_to)
    batches = calibration_batches(calibration, input_shape, images=images, seed=seed)
    with quiet():  # torchao's and the converters' import-time lines
        quantizer = _quantizer(fmt)
        converted = _calibrated(fmt, module, batches, quantizer)
    check = torch.from_numpy(batches[0][:2])
    expected = reference_outputs(converted, check)  # PT2E's own simulation of the int8 model
    diff = write_checked(path, fmt, converted, (torch.from_numpy(batches[0][:1]), check, expected), quantizer=quantizer)
    return {
        "path": str(path),
        "format": fmt,
        "bytes": path.stat().st_size,
        "precision": "int8",
        "scheme": SCHEMES[fmt],
        "calibration": {"data": calibration.name, "split": "train", "images": sum(map(len, batches)), "seed": seed},
        # runtime kernels against PT2E's simulation of them: rounding, not error; recorded, not limited
        "max_abs_diff_from_pt2e": diff,
        "runtime": runtime_name(fmt),
    }


def edge_int8_check(
    model: Any, int8_path: str | Path, test_data: ImageDataset, max_drop: float = DEFAULT_MAX_DROP
) -> dict:
    """Test top-1 of the fp32 PyTorch model and of the int8 file in its runtime; passed when the drop <= max_drop."""
    from edgeprune.evaluate import evaluate

    if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)) or not math.isfinite(max_drop):
        raise EdgepruneError(f"max drop must be a finite number of accuracy points, got {max_drop!r}")
    fp32 = evaluate(model, test_data)
    int8 = evaluate(Path(int8_path), test_data)
    drop = 100.0 * (fp32["correct"] - int8["correct"]) / len(test_data.test_y)  # from counts: no rounding error
    return {
        "fp32": {"model": fp32["model"], "backend": "torch", "top1": fp32["top1"]},
        "int8": {"path": str(int8_path), "backend": int8["backend"], "top1": int8["top1"]},
        "drop_points": drop,
        "max_drop_points": float(max_drop),
        "passed": drop <= max_drop,
        "images": len(test_data.test_y),
        "data": test_data.name,
        "split": "test",
    }


__all__ = ["SCHEMES", "edge_int8_check", "quantize_edge"]
