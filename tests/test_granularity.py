"""--round-to auto, the warning on widths off the preferred multiple, the latency lines and third-party warnings.

No test depends on timings: the measuring function is injected (a fake whose costs the test chooses), except one
smoke test that runs the real probe at a tiny size and asserts only that it returns a candidate.
"""

from __future__ import annotations

import json
import logging
import warnings

import pytest
from helpers import run_cli

from edgeprune.errors import EdgepruneError
from edgeprune.granularity import (
    CANDIDATES,
    cache_path,
    cached_multiple,
    choose_multiple,
    default_measure,
    preferred_multiple,
    probe_per_mac,
    rounded_width,
    runtime_version,
    width_warning,
)
from edgeprune.quantize import captured_warnings, warning_summary
from edgeprune.report import latency_lines


def _fake(per_mac: dict[int, float], calls: list | None = None):
    """A measurement whose time is width x the chosen cost per MAC of the multiple."""

    def measure(multiple: int, width: int) -> float:
        if calls is not None:
            calls.append((multiple, width))
        return width * per_mac[multiple]

    return measure


@pytest.mark.parametrize(
    ("per_mac", "expected"),
    [
        ({1: 2.0, 4: 1.0, 8: 0.6, 16: 0.59, 32: 0.58}, 8),  # 16 and 32 gain under 5% over 8
        ({1: 1.0, 4: 0.99, 8: 0.98, 16: 0.97, 32: 0.96}, 1),  # nothing gains 5%
        ({1: 1.0, 4: 0.9, 8: 0.8, 16: 0.7, 32: 0.6}, 32),  # every step gains
        ({1: 1.0, 4: 1.2, 8: 1.1, 16: 0.5, 32: 0.49}, 16),  # a dip at 4 and 8, the win at 16
    ],
)
def test_choose_multiple_is_the_smallest_that_no_larger_one_beats(per_mac, expected):
    multiple, reason = choose_multiple(per_mac)
    assert multiple == expected
    assert str(expected) in reason


def test_choose_multiple_refuses_non_positive_times():
    with pytest.raises(EdgepruneError, match="positive"):
        choose_multiple({1: 0.0, 8: 1.0})
    with pytest.raises(EdgepruneError):
        choose_multiple({})


def test_probe_divides_by_the_rounded_width():
    calls = []
    per_mac = probe_per_mac(_fake({m: float(m) for m in CANDIDATES}, calls), width=37)
    assert per_mac == {m: float(m) for m in CANDIDATES}
    assert calls == [(m, -(-37 // m) * m) for m in CANDIDATES]
    assert [rounded_width(37, m) for m in CANDIDATES] == [37, 40, 40, 48, 64]


def test_preference_is_measured_once_then_read_from_the_cache(tmp_path):
    calls = []
    costs = {1: 3.0, 4: 2.0, 8: 1.0, 16: 0.99, 32: 0.98}
    first = preferred_multiple("torch", 1, measure=_fake(costs, calls), cache_dir=tmp_path, version="x")
    assert (first.multiple, first.cached) == (8, False) and len(calls) == len(CANDIDATES)
    again = preferred_multiple("torch", 1, measure=_fake(costs, calls), cache_dir=tmp_path, version="x")
    assert (again.multiple, again.cached) == (8, True) and len(calls) == len(CANDIDATES)
    assert cached_multiple("torch", "x", 1, tmp_path) == 8
    # another runtime version or thread count is another machine: measured again
    assert cached_multiple("torch", "y", 1, tmp_path) is None
    assert cached_multiple("torch", "x", 2, tmp_path) is None
    data = json.loads(cache_path(tmp_path).read_text())
    assert [e["multiple"] for e in data["entries"].values()] == [8]


@pytest.mark.parametrize(
    "text",
    ["not json", "[]", '{"version": 1, "entries": []}', "BAD_ENTRY_MULTIPLE", "BAD_ENTRY_TIME"],
)
def test_a_corrupt_or_out_of_range_cache_is_ignored_and_rewritten(tmp_path, text):
    costs = {1: 2.0, 4: 1.0, 8: 0.99, 16: 0.98, 32: 0.97}
    preferred_multiple("torch", 1, measure=_fake(costs), cache_dir=tmp_path, version="x")
    path = cache_path(tmp_path)
    data = json.loads(path.read_text())
    (key,) = data["entries"]
    if text == "BAD_ENTRY_MULTIPLE":
        data["entries"][key]["multiple"] = 7
        text = json.dumps(data)
    elif text == "BAD_ENTRY_TIME":
        data["entries"][key]["per_mac"]["8"] = -1.0
        text = json.dumps(data)
    path.write_text(text)
    assert cached_multiple("torch", "x", 1, tmp_path) is None
    calls = []
    again = preferred_multiple("torch", 1, measure=_fake(costs, calls), cache_dir=tmp_path, version="x")
    assert again.multiple == 4 and not again.cached and calls
    assert cached_multiple("torch", "x", 1, tmp_path) == 4


def test_width_warning_counts_the_layers_off_the_multiple():
    line = width_warning({"a": 43, "b": 16, "c": 30}, 8, "onnxruntime")
    assert "2 of 3" in line and "--round-to 8" in line and "\n" not in line
    assert width_warning({"a": 40, "b": 16}, 8, "onnxruntime") is None
    assert width_warning({"a": 43}, 1, "torch") is None


def _pruned_widths(report: dict) -> dict[str, int]:
    return {r["name"]: r["filters_after"] for r in report["layers"] if r["filters_after"] < r["filters_before"]}


def test_prune_warns_on_widths_off_the_cached_multiple(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPRUNE_CACHE", str(tmp_path / "cache"))
    costs = {1: 4.0, 4: 3.0, 8: 2.0, 16: 1.0, 32: 0.99}
    preferred_multiple("torch", 1, measure=_fake(costs), version=runtime_version("torch"))
    code, out, err = run_cli(capsys, "prune", "tiny", "--target", "flops=0.5", "--backend", "torch",
                             "--out", tmp_path / "a")  # fmt: skip
    assert code == 0, err
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    off = [n for n, w in _pruned_widths(report).items() if w % 16]
    assert off, "the test needs a plan with widths off 16"
    assert err.count("\n") == 1 and f"{len(off)} of " in err and "--round-to 16" in err
    assert report["width_warning"] in err


def test_round_to_auto_plans_on_the_preferred_multiple(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPRUNE_CACHE", str(tmp_path / "cache"))
    costs = {1: 4.0, 4: 3.0, 8: 2.0, 16: 1.0, 32: 0.99}
    preferred_multiple("torch", 1, measure=_fake(costs), version=runtime_version("torch"))
    code, out, err = run_cli(capsys, "prune", "tiny", "--target", "flops=0.5", "--round-to", "auto",
                             "--backend", "torch", "--out", tmp_path / "b")  # fmt: skip
    assert code == 0, err
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["round_to_auto"]["multiple"] == 16 and report["round_to_auto"]["cached"]
    assert report["settings"]["round_to"] == 16
    widths = _pruned_widths(report)
    assert widths and all(w % 16 == 0 for w in widths.values())
    assert "warning" not in err and "multiples of 16" in out
    assert "--round-to auto: 16 (torch, 1 thread(s), cached)" in out


def test_round_to_refuses_a_word_other_than_auto(capsys, tmp_path):
    code, _, err = run_cli(capsys, "prune", "tiny", "--target", "flops=0.5", "--round-to", "fast",
                           "--out", tmp_path / "c")  # fmt: skip
    assert code == 2 and "Traceback" not in err


def test_the_real_probe_returns_a_candidate():
    per_mac = probe_per_mac(default_measure("torch", 1, size=4, repeats=2))
    assert set(per_mac) == set(CANDIDATES) and all(v > 0 for v in per_mac.values())
    assert choose_multiple(per_mac)[0] in CANDIDATES


def _latency_report(measured: float, **extra) -> dict:
    attempts = [{"planned_ms": 0.9, "table_ms": 0.8, "predicted_ms": 0.873, "measured_ms": measured}]
    latency = {"limit_ms": 1.0, "predicted_ms": 0.873, "measured_ms": measured, "met": measured <= 1.0,
               "prediction_error_pct": 100 * (0.873 - measured) / measured, "attempts": attempts}  # fmt: skip
    return {"latency": latency, "latency_table": {"backend": "onnxruntime", "threads": 1}, **extra}


def test_latency_lines_label_limit_prediction_and_measurement():
    text = latency_lines(_latency_report(0.96))
    lines = text.splitlines()
    assert lines[0].startswith("latency limit:") and "1.000 ms" in lines[0]
    assert lines[1].startswith("latency predicted (table):") and "0.873 ms" in lines[1]
    assert lines[2].startswith("latency measured (onnxruntime, 1 thread(s)):") and "0.960 ms" in lines[2]
    assert len(lines) == 3  # 4% under the limit: no reason needed


def test_latency_lines_say_why_a_cut_far_under_the_limit_was_kept():
    text = latency_lines(_latency_report(0.79, bound_last=["flops", "latency"]))
    assert "kept 21% under the limit" in text and "flops" in text
    text = latency_lines(_latency_report(0.79, settings={"round_to": 8}))
    assert "--round-to" in text and "8" in text


def test_third_party_warnings_are_captured_and_summarised(capsys):
    before = logging.getLogger().handlers[:]
    with captured_warnings() as caught:
        for _ in range(29):
            logging.warning("Axis 1 is out-of-range")
        warnings.warn("something else", stacklevel=1)
    assert capsys.readouterr().err == ""
    assert len(caught) == 30
    line = warning_summary(caught, "onnxruntime quantizer")
    assert "30 warning(s) (2 distinct)" in line and "Axis 1 is out-of-range" in line and "\n" not in line
    assert logging.getLogger().handlers == before  # the root logger's handlers are given back


def test_quantize_summarises_the_quantizers_warnings_in_one_line(tmp_path, capsys, monkeypatch):
    import onnxruntime.quantization as ortq
    from helpers import small_model, synthetic

    from edgeprune.export import export_onnx
    from edgeprune.quantize import quantize_onnx

    real = ortq.quantize_static

    def noisy(*args, **kwargs):
        for _ in range(29):
            logging.warning("Axis 1 is out-of-range")
        return real(*args, **kwargs)

    monkeypatch.setattr(ortq, "quantize_static", noisy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(small_model(), tmp_path / "m.onnx", (3, 8, 8))
    capsys.readouterr()
    info = quantize_onnx(tmp_path / "m.onnx", tmp_path / "m8.onnx", synthetic(32, 3, 8, 8), images=16)
    err = capsys.readouterr().err
    assert info["third_party_warnings"]["count"] >= 29 and info["third_party_warnings"]["distinct"] >= 1
    lines = [line for line in err.splitlines() if "Axis 1" in line]
    assert len(lines) == 1 and "onnxruntime quantizer gave" in lines[0], err
    assert (tmp_path / "m8.onnx").is_file()
