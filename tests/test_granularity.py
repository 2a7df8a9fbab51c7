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
    RAGGED,
    cache_path,
    cached_multiple,
    choose_multiple,
    default_measure,
    preferred_multiple,
    probe_times,
    probe_widths,
    rounded_width,
    runtime_version,
    width_warning,
)
from edgeprune.quantize import captured_warnings, warning_summary
from edgeprune.report import latency_lines


def _staircase(tile: int, overhead: float = 0.0, calls: list | None = None, ragged_factor: float = 1.0):
    """A kernel that runs a width as fast as the width rounded up to ``tile`` (a vector of ``tile`` filters)."""

    def measure(width: int) -> float:
        if calls is not None:
            calls.append(width)
        slow = ragged_factor if width % 4 else 1.0
        return overhead + 1e-5 * rounded_width(width, tile) * slow

    return measure


@pytest.mark.parametrize(
    ("measure", "expected"),
    [
        (_staircase(8), 8),  # 4 and 8 are free over the ragged widths, 16 costs its filters' full time
        (_staircase(16), 16),
        (_staircase(32), 32),
        (_staircase(1), 1),  # no staircase: every extra filter costs its time, the paper's widths stay
        (_staircase(1, overhead=1e-2), 1),  # a large per-call overhead no longer makes wide multiples look free
        (_staircase(8, overhead=1e-2), 8),
        (_staircase(1, ragged_factor=2.0), 4),  # ragged widths run slower than the next multiple of 4
    ],
)
def test_choose_multiple_takes_the_multiples_whose_filters_run_nearly_free(measure, expected):
    multiple, reason = choose_multiple(probe_times(measure))
    assert multiple == expected
    assert f"rounded up to {expected};" in reason


def test_choose_multiple_says_faster_rather_than_a_negative_share():
    """Ragged widths slower than the next multiple of 4: that step is "faster with more filters", not "4: -1.00"."""
    _, reason = choose_multiple(probe_times(_staircase(1, ragged_factor=2.0)))
    assert "1->4 faster with more filters (" in reason
    assert not any(note.split(" ")[-1].startswith("-") for note in reason.split(": ", 1)[1].split(", "))


def test_choose_multiple_refuses_missing_or_non_positive_times():
    times = probe_times(_staircase(8))
    with pytest.raises(EdgepruneError, match="positive"):
        choose_multiple({**times, 40: 0.0})
    with pytest.raises(EdgepruneError, match="needs a time"):
        choose_multiple({w: t for w, t in times.items() if w != 64})
    with pytest.raises(EdgepruneError):
        choose_multiple({})


def test_the_probe_widths_are_the_ragged_ones_rounded_to_every_candidate():
    widths = probe_widths()
    assert widths[0] == 1 and all(w in widths for w in RAGGED)
    assert all(rounded_width(w, m) in widths for w in RAGGED for m in CANDIDATES)
    assert [rounded_width(37, m) for m in CANDIDATES] == [37, 40, 40, 48, 64]


def test_preference_is_measured_once_then_read_from_the_cache(tmp_path):
    calls = []
    first = preferred_multiple("torch", 1, measure=_staircase(8, calls=calls), cache_dir=tmp_path, version="x")
    assert (first.multiple, first.cached) == (8, False) and sorted(calls) == probe_widths()
    again = preferred_multiple("torch", 1, measure=_staircase(8, calls=calls), cache_dir=tmp_path, version="x")
    assert (again.multiple, again.cached) == (8, True) and len(calls) == len(probe_widths())
    assert again.times == first.times
    assert cached_multiple("torch", "x", 1, tmp_path) == 8
    # another runtime version or thread count is another machine: measured again
    assert cached_multiple("torch", "y", 1, tmp_path) is None
    assert cached_multiple("torch", "x", 2, tmp_path) is None
    data = json.loads(cache_path(tmp_path).read_text())
    assert [e["multiple"] for e in data["entries"].values()] == [8]


@pytest.mark.parametrize(
    "text",
    ["not json", "[]", '{"version": 2, "entries": []}', "BAD_ENTRY_MULTIPLE", "BAD_ENTRY_TIME", "OLD_VERSION"],
)
def test_a_corrupt_or_out_of_range_cache_is_ignored_and_rewritten(tmp_path, text):
    preferred_multiple("torch", 1, measure=_staircase(16), cache_dir=tmp_path, version="x")
    path = cache_path(tmp_path)
    data = json.loads(path.read_text())
    (key,) = data["entries"]
    if text == "BAD_ENTRY_MULTIPLE":
        data["entries"][key]["multiple"] = 7
        text = json.dumps(data)
    elif text == "BAD_ENTRY_TIME":
        data["entries"][key]["times"]["40"] = -1.0
        text = json.dumps(data)
    elif text == "OLD_VERSION":  # version 1 chose by time per MAC with the overhead left in: measured again
        data["version"] = 1
        text = json.dumps(data)
    path.write_text(text)
    assert cached_multiple("torch", "x", 1, tmp_path) is None
    calls = []
    again = preferred_multiple("torch", 1, measure=_staircase(4, calls=calls), cache_dir=tmp_path, version="x")
    assert again.multiple == 4 and not again.cached and calls
    assert cached_multiple("torch", "x", 1, tmp_path) == 4


def test_width_warning_counts_the_layers_off_the_multiple():
    line = width_warning({"a": 43, "b": 16, "c": 30}, 8, "onnxruntime")
    assert "2 of 3" in line and "--round-to 8" in line and "\n" not in line
    assert width_warning({"a": 40, "b": 16}, 8, "onnxruntime") is None
    assert width_warning({"a": 43}, 1, "torch") is None


def _pruned_widths(report: dict) -> dict[str, int]:
    return {r["name"]: r["filters_after"] for r in report["layers"] if r["filters_after"] < r["filters_before"]}


def test_prune_warns_when_asked_widths_are_off_the_cached_multiple(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPRUNE_CACHE", str(tmp_path / "cache"))
    preferred_multiple("torch", 1, measure=_staircase(16), version=runtime_version("torch"))
    code, out, err = run_cli(capsys, "prune", "tiny", "--target", "flops=0.5", "--backend", "torch",
                             "--round-to", "1", "--out", tmp_path / "a")  # fmt: skip
    assert code == 0, err
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    off = [n for n, w in _pruned_widths(report).items() if w % 16]
    assert off, "the test needs a plan with widths off 16"
    assert err.count("\n") == 1 and f"{len(off)} of " in err and "--round-to 16" in err
    assert report["width_warning"] in err and "round_to_auto" not in report


@pytest.mark.parametrize("asked", [(), ("--round-to", "auto")])
def test_round_to_auto_is_the_default_and_plans_on_the_preferred_multiple(capsys, tmp_path, monkeypatch, asked):
    monkeypatch.setenv("EDGEPRUNE_CACHE", str(tmp_path / "cache"))
    preferred_multiple("torch", 1, measure=_staircase(16), version=runtime_version("torch"))
    code, out, err = run_cli(capsys, "prune", "tiny", "--target", "flops=0.5", *asked,
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
    times = probe_times(default_measure("torch", 1, size=4, repeats=2))
    assert set(times) == set(probe_widths()) and all(v > 0 for v in times.values())
    assert choose_multiple(times)[0] in CANDIDATES


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


def test_auto_falls_back_to_a_smaller_multiple_when_the_budget_is_out_of_reach(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPRUNE_CACHE", str(tmp_path / "cache"))
    preferred_multiple("torch", 1, measure=_staircase(32), version=runtime_version("torch"))
    code, out, err = run_cli(capsys, "prune", "tiny", "--target", "flops=0.1", "--backend", "torch",
                             "--out", tmp_path / "a")  # fmt: skip
    assert code == 0, err
    auto = json.loads((tmp_path / "a" / "report.json").read_text())["round_to_auto"]
    assert auto["preferred"] == 32 and auto["multiple"] < 32 and "unreachable" in auto["fallback"]
    assert "32 preferred, but the budget is out of reach there" in out
    # --round-to 32 asked for explicitly is not changed behind the user's back: one line, exit 2
    code, _, err = run_cli(capsys, "prune", "tiny", "--target", "flops=0.1", "--round-to", "32",
                           "--out", tmp_path / "b")  # fmt: skip
    assert code == 2 and "unreachable" in err
