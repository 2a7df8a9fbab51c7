"""Static int8 quantization of an exported .onnx model with onnxruntime, and its accuracy check.

``quantize_onnx`` runs onnxruntime's ``quant_pre_process`` (symbolic and ONNX shape inference plus
graph optimisation, as onnxruntime recommends before quantizing), then ``quantize_static`` in the QDQ
format: int8 weights (per output channel by default, symmetric) and int8 activations (per tensor),
the combination onnxruntime calls S8S8 and recommends as the first choice for QDQ on CPUs (it runs
as QLinearConv / QGemm kernels; U8S8 is the fallback when accuracy drops). Activation ranges are
calibrated on ``images`` training images drawn with ``seed``, preprocessed exactly as training does
(``edgeprune.train.Normalizer``). The int8 file is written through a temporary file in the same
folder and renamed only after it loaded and ran in onnxruntime.

Calibration methods: ``minmax`` (each activation's observed range), ``percentile`` (onnxruntime's
99.999th percentile of a 2048-bin histogram, symmetric) and ``entropy`` (the KL-optimal window of a
2048-bin histogram for 256 levels; onnxruntime's own ``quantize_static`` gives its entropy calibrator
as many bins as levels, which returns the minmax ranges, so the ranges are computed here and passed
as tensor overrides). Measured on the tiny CNN trained 10 epochs on CIFAR-10-mini (1,000 test
images, 256 calibration images, per-channel weights, seeds 0/1/2; drop in points, fp32 - int8):

    width 16 (fp32 54.3%):  minmax -0.1/-0.2/-0.2  entropy -0.1/+0.5/-0.6  percentile -0.2/-0.3/-0.6
    width 48 (fp32 62.2%):  minmax  0.0/ 0.0/ 0.0  entropy  0.0/+0.3/+0.5  percentile +0.1/+0.1/+0.2

All within a few test images of each other; minmax is never worse than fp32 there, steady across
seeds and the fastest (about 1 s against 1-2 s for percentile and 10-20 s for entropy, whose KL search
is quadratic in the bins), so it is the default.

``int8_check`` evaluates the fp32 and int8 files on the test split (``edgeprune.evaluate``) and
says whether the int8 top-1 accuracy stays within ``max_drop`` points of the fp32 one.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from edgeprune.cpu import DEFAULT_TARGET, cpu_class, cpu_summary, reduce_range_for
from edgeprune.data import ImageDataset
from edgeprune.errors import EdgepruneError, first_line
from edgeprune.files import atomic_write
from edgeprune.validate import check_int

METHODS = ("minmax", "entropy", "percentile")
DEFAULT_METHOD = "minmax"  # measured against the others: see the module's docstring
MIN_CALIBRATION_IMAGES = 16
CALIBRATION_BATCH = 32
ENTROPY_BINS = 2048  # histogram bins of the entropy calibration
ENTROPY_LEVELS = 256  # 8-bit levels the entropy calibration fits a window of the histogram to
DEFAULT_MAX_DROP = 1.0  # accuracy points


def quantize_onnx(
    fp32_path: str | Path,
    int8_path: str | Path,
    calibration: ImageDataset,
    *,
    images: int = 256,
    seed: int = 0,
    method: str = DEFAULT_METHOD,
    per_channel: bool = True,
    target_cpu: str = DEFAULT_TARGET,
) -> dict:
    """Quantize an fp32 .onnx file to int8 (QDQ, S8S8), calibrated on training images; write it atomically.

    ``target_cpu`` (``any``, ``native``, ``vnni``, ``avx2``) decides whether weights use 7 bits
    (``reduce_range``), which x86 CPUs without VNNI need (see ``edgeprune.cpu``); it is recorded in the
    file's metadata (``edgeprune.target_cpu``, ``edgeprune.reduce_range``) and in the summary.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    here = cpu_class()
    reduce_range = reduce_range_for(target_cpu, here)
    if not isinstance(per_channel, bool):
        raise EdgepruneError(f"per_channel must be True or False, got {per_channel!r}")
    check_int(seed, "seed")
    if method not in METHODS:
        raise EdgepruneError(f"unknown calibration method '{method}'; choose from: {', '.join(METHODS)}")
    if int8_path.is_dir():
        raise EdgepruneError(f"{int8_path}: is a folder; give the .onnx file name")
    name, shape = _model_input(fp32_path)
    batches = calibration_batches(calibration, shape, images=images, seed=seed)
    used = sum(len(b) for b in batches)
    calibrate = CalibrationMethod.Percentile if method == "percentile" else CalibrationMethod.MinMax

    with captured_warnings() as caught, tempfile.TemporaryDirectory(prefix="edgeprune-quantize-") as tmp:
        source, pre = _pre_process(fp32_path, Path(tmp) / "pre.onnx")
        extra = {}
        if method == "entropy":
            extra["TensorQuantOverrides"] = _entropy_ranges(source, Path(tmp) / "augmented.onnx", name, batches)

        def write(out: Path) -> None:
            try:
                with contextlib.redirect_stdout(io.StringIO()):  # the calibrators print their progress
                    quantize_static(
                        str(source),
                        str(out),
                        _Reader(name, batches),
                        quant_format=QuantFormat.QDQ,
                        per_channel=per_channel,
                        activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8,
                        calibrate_method=calibrate,
                        reduce_range=reduce_range,
                        extra_options=extra,
                    )
            except Exception as e:  # onnxruntime's quantizer raises many kinds of errors
                raise EdgepruneError(f"{fp32_path}: onnxruntime cannot quantize it ({first_line(e)})") from None
            stamp = {"edgeprune.target_cpu": target_cpu, "edgeprune.reduce_range": str(reduce_range).lower()}
            _stamp(out, {**stamp, "edgeprune.quantized_on": here})
            _check_runs(out, batches[0])

        try:
            atomic_write(int8_path, write)
        except OSError as e:
            raise EdgepruneError(f"{int8_path}: cannot write ({e.strerror or e})") from None
    summary = _summary(fp32_path, int8_path, calibration, used, seed, method, per_channel, pre)
    summary["target_cpu"] = {"target": target_cpu, "reduce_range": reduce_range, "quantized_on": here}
    if caught:
        summary["third_party_warnings"] = {"count": len(caught), "distinct": len(set(caught)), "first": caught[0]}
        sys.stderr.write(f"edgeprune: {warning_summary(caught, 'onnxruntime quantizer')}\n")
    if reduce_range:
        summary["weights"] += ", 7-bit range (reduce_range: no 16-bit saturation on x86 without VNNI)"
    return summary


class _Collect(logging.Handler):
    """A logging handler that keeps the messages of warnings and worse."""

    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.into.append(_line(record.getMessage()))
        except Exception:  # noqa: BLE001 - a message that cannot be formatted is still counted
            self.into.append(_line(str(record.msg)))


@contextlib.contextmanager
def captured_warnings() -> Iterator[list[str]]:
    """Catch third-party ``warnings`` and ``logging`` warnings (root logger included) into a list of messages."""
    caught: list[str] = []
    root = logging.getLogger()
    handler = _Collect(caught)
    saved = root.handlers[:]
    root.handlers = [handler]  # a root logger with a handler is not given a stderr one by logging.warning()
    try:
        with warnings.catch_warnings(record=True) as recorded:
            warnings.simplefilter("always")
            yield caught
    finally:
        root.handlers = saved
    caught.extend(_line(str(w.message)) for w in recorded)


def _line(text: str, limit: int = 200) -> str:
    """A message's first non-blank line, cut to ``limit`` characters."""
    return next((line.strip()[:limit] for line in text.splitlines() if line.strip()), "(empty message)")


def warning_summary(messages: list[str], source: str) -> str:
    """One line: how many warnings ``source`` gave, how many distinct, and the first one."""
    distinct = len(set(messages))
    return (f"{source} gave {len(messages)} warning(s) ({distinct} distinct), first: {messages[0]}"
            if messages else f"{source} gave no warnings")  # fmt: skip


def file_target_cpu(path: str | Path) -> dict:
    """The ``--target-cpu`` an int8 .onnx file was quantized for (from its metadata), empty if none."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's error
        raise EdgepruneError(f"{path}: not a readable ONNX file ({first_line(e)})") from None
    props = {p.key: p.value for p in model.metadata_props}
    if "edgeprune.target_cpu" not in props:
        return {}
    return {"target": props["edgeprune.target_cpu"], "reduce_range": props.get("edgeprune.reduce_range") == "true"}


def _stamp(path: Path, props: dict[str, str]) -> None:
    """Record ``props`` in an .onnx file's metadata, in place (the file is still the caller's temporary)."""
    import onnx

    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in sorted(props.items()):
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


def int8_check(
    fp32_path: str | Path,
    int8_path: str | Path,
    test_data: ImageDataset,
    max_drop: float = DEFAULT_MAX_DROP,
    *,
    batch_size: int = 256,
    threads: int | None = None,
) -> dict:
    """Test accuracy of the fp32 and int8 files, the drop in points, their sizes, and whether it is within max_drop."""
    from edgeprune.evaluate import evaluate

    if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)) or not math.isfinite(max_drop):
        raise EdgepruneError(f"max drop must be a finite number of accuracy points, got {max_drop!r}")
    results, correct = {}, {}
    # int8 results depend on the instruction set (see edgeprune.cpu): the check says where it ran
    where = cpu_summary()
    for label, path in (("fp32", Path(fp32_path)), ("int8", Path(int8_path))):
        scores = evaluate(path, test_data, batch_size=batch_size, threads=threads)
        correct[label] = scores["correct"]
        results[label] = {
            "path": str(path),
            "bytes": path.stat().st_size,
            "top1": scores["top1"],
            **({"top5": scores["top5"]} if "top5" in scores else {}),
        }
    drop = 100.0 * (correct["fp32"] - correct["int8"]) / len(test_data.test_y)  # from counts: no rounding error
    return {
        **results,
        "drop_points": drop,
        "max_drop_points": float(max_drop),
        "passed": drop <= max_drop,
        "size_ratio": results["int8"]["bytes"] / results["fp32"]["bytes"],
        "images": len(test_data.test_y),
        "data": test_data.name,
        "split": "test",
        "cpu": where,
        "target_cpu": file_target_cpu(int8_path),
    }


def calibration_batches(
    data: ImageDataset, shape: tuple[int | None, ...], *, images: int = 256, seed: int = 0
) -> list[np.ndarray]:
    """``images`` training images drawn with ``seed``, normalised as in training, in float32 batches (NCHW)."""
    from edgeprune.data import Normalizer

    if not isinstance(data, ImageDataset):
        raise EdgepruneError(f"calibration data must be an image data set, got {type(data).__name__}")
    if isinstance(images, bool) or not isinstance(images, int) or images < MIN_CALIBRATION_IMAGES:
        raise EdgepruneError(f"calibration needs at least {MIN_CALIBRATION_IMAGES} images, got {images!r}")
    available = len(data.train_y)
    if available < MIN_CALIBRATION_IMAGES:
        raise EdgepruneError(
            f"calibration needs at least {MIN_CALIBRATION_IMAGES} images; the training split of "
            f"'{data.name}' has {available}"
        )
    have = data.input_shape()
    if len(shape) != len(have) or any(d not in (None, h) for d, h in zip(shape, have)):
        wanted = "x".join(str(d or "?") for d in shape)
        shown = "x".join(map(str, have))
        raise EdgepruneError(f"the model takes {wanted} inputs, the calibration data set '{data.name}' has {shown}")
    order = torch.randperm(available, generator=torch.Generator().manual_seed(seed))[:images]
    normalize = Normalizer(data.mean, data.std)
    return [
        np.ascontiguousarray(normalize(data.train_x[order[i : i + CALIBRATION_BATCH]]).numpy(), dtype=np.float32)
        for i in range(0, len(order), CALIBRATION_BATCH)
    ]


class _Reader:
    """onnxruntime's CalibrationDataReader over prepared batches (duck-typed: get_next and rewind)."""

    def __init__(self, name: str, batches: list[np.ndarray]):
        self.name, self.batches, self.next = name, batches, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next batch as an input feed, or None at the end."""
        if self.next >= len(self.batches):
            return None
        self.next += 1
        return {self.name: self.batches[self.next - 1]}

    def rewind(self) -> None:
        """Start again from the first batch."""
        self.next = 0


def _entropy_ranges(model: Path, augmented: Path, name: str, batches: list[np.ndarray]) -> dict[str, list[dict]]:
    """Activation ranges by entropy (KL) calibration, as onnxruntime tensor overrides (rmin, rmax per tensor).

    ``quantize_static`` gives its entropy calibrator as many histogram bins as quantized bins (128),
    which leaves one candidate range, the full one: the same ranges as minmax. This runs the
    calibrator with ``ENTROPY_BINS`` histogram bins searched for the best window of ``ENTROPY_LEVELS``.
    """
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator

    options = {"num_bins": ENTROPY_BINS, "num_quantized_bins": ENTROPY_LEVELS, "symmetric": False}
    try:
        calibrator = create_calibrator(
            model, None, augmented_model_path=str(augmented), calibrate_method=CalibrationMethod.Entropy,
            extra_options=options,
        )  # fmt: skip
        with contextlib.redirect_stdout(io.StringIO()):
            calibrator.collect_data(_Reader(name, batches))
            ranges = calibrator.compute_data()
    except Exception as e:  # onnxruntime's calibrators raise many kinds of errors
        raise EdgepruneError(f"{model.name}: entropy calibration failed ({first_line(e)})") from None
    overrides = {}
    for tensor, data in ranges.data.items():
        low, high = (np.asarray(v, dtype=np.float32) for v in data.range_value)
        overrides[tensor] = [{"rmin": low, "rmax": high}]
    return overrides


def _model_input(path: Path) -> tuple[str, tuple[int | None, ...]]:
    """The name of an .onnx file's one input and its (C, H, W) dims (None where symbolic)."""
    from edgeprune.export import ort_session

    session = ort_session(path)
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise EdgepruneError(f"{path}: has {len(inputs)} inputs; only single-input models can be quantized")
    if inputs[0].type != "tensor(float)":
        raise EdgepruneError(f"{path}: takes {inputs[0].type} input, not float; is it quantized already?")
    dims = tuple(d if isinstance(d, int) else None for d in inputs[0].shape)
    return inputs[0].name, dims[1:]


def _pre_process(path: Path, out: Path) -> tuple[Path, bool]:
    """onnxruntime's quantization pre-processing into ``out``; the file itself if it fails (bool: it ran)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(path), str(out))
    except Exception:  # an op its shape inference does not know: quantize the file as it is
        return path, False
    return out, True


def _check_runs(path: Path, batch: np.ndarray) -> None:
    """Refuse an int8 file that onnxruntime cannot run, or that gives non-finite outputs."""
    from edgeprune.export import onnx_outputs

    out = onnx_outputs(path, batch)
    if not np.all(np.isfinite(out)):
        raise EdgepruneError(f"{path.name}: the quantized model gives non-finite outputs")


def _summary(
    fp32: Path, int8: Path, data: ImageDataset, images: int, seed: int, method: str, per_channel: bool, pre: bool
) -> dict:
    """What ``quantize_onnx`` wrote and how."""
    import onnxruntime as ort

    size, fp32_size = int8.stat().st_size, fp32.stat().st_size
    return {
        "path": str(int8),
        "bytes": size,
        "fp32_path": str(fp32),
        "fp32_bytes": fp32_size,
        "size_ratio": size / fp32_size,
        "format": "QDQ",
        "weights": f"int8 (QInt8), symmetric, {'per output channel' if per_channel else 'per tensor'}",
        "activations": "int8 (QInt8), asymmetric, per tensor",
        "method": method,
        "per_channel": per_channel,
        "calibration": {"data": data.name, "split": "train", "images": images, "seed": seed, **_details(method)},
        "pre_process": pre,
        "runtime": f"onnxruntime {ort.__version__} CPUExecutionProvider",
    }


def _details(method: str) -> dict:
    """The settings of a calibration method, for the record."""
    if method == "entropy":
        return {"histogram_bins": ENTROPY_BINS, "quantized_bins": ENTROPY_LEVELS}
    if method == "percentile":
        return {"percentile": 99.999, "histogram_bins": 2048, "symmetric": True}  # onnxruntime's defaults
    return {}


__all__ = ["DEFAULT_METHOD", "METHODS", "calibration_batches", "file_target_cpu", "int8_check", "quantize_onnx"]
