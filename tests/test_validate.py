"""validate.py's number checks, now the one home of the seed, count, file-field and option-text validators."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from helpers import run_cli

from edgeprune import validate
from edgeprune.cli import options
from edgeprune.errors import EdgepruneError
from edgeprune.validate import MAX_SEED, check_count, check_in, check_seed, parse_number


def test_a_seed_is_a_python_or_numpy_integer_in_32_bits():
    assert check_seed(0) == 0 and check_seed(MAX_SEED) == MAX_SEED
    assert check_seed(np.int64(7)) == 7 and type(check_seed(np.uint32(7))) is int
    for bad in (-1, MAX_SEED + 1, True, 1.0, "3", None):
        with pytest.raises(EdgepruneError, match=rf"^seed must be an integer from 0 to {MAX_SEED}, got {bad!r}$"):
            check_seed(bad)
    with pytest.raises(EdgepruneError, match="^seed \\+ candidates - 1 must be an integer"):
        check_seed(MAX_SEED + 1, "seed + candidates - 1")


def test_a_count_is_a_positive_integer_or_zero_where_allowed():
    assert check_count(3, "runs") == 3 and check_count(0, "warmup", zero=True) == 0
    cases = [(0, "runs must be positive, got 0"), (-2, "runs must be positive, got -2")]
    cases += [(1.5, "runs must be an integer, got 1.5"), (True, "runs must be an integer, got True")]
    for value, message in cases:
        with pytest.raises(EdgepruneError, match=f"^{message}$"):
            check_count(value, "runs")
    with pytest.raises(EdgepruneError, match="^warmup must be >= 0, got -1$"):
        check_count(-1, "warmup", zero=True)


def test_a_file_field_is_a_finite_number_or_integer_in_range_with_the_error_asked_for():
    assert check_in(3, "ms", 0, 10) == 3.0 and isinstance(check_in(3, "ms", 0, 10), float)
    assert check_in(10**400, "n", 0, float("inf"), integer=True) == 10**400  # no overflow on a huge int
    for value in (float("nan"), float("inf"), -1, 11, True, "5", None):
        with pytest.raises(ValueError, match=r"^ms must be a finite number in \[0, 10\], got "):
            check_in(value, "ms", 0, 10, error=ValueError)
    with pytest.raises(EdgepruneError, match=r"^threads must be an integer in \[1, 1024\], got 2.0$"):
        check_in(2.0, "threads", 1, 1024, integer=True)
    long = "x" * 100
    with pytest.raises(EdgepruneError, match=r"got 'x{36}\.\.\.$"):
        check_in(long, "ms", 0, 10)


@pytest.mark.parametrize(
    "text, kind, bounds, message",
    [
        ("abc", int, {}, "--n must be an integer, got 'abc'"),
        ("1e999", float, {}, "--n must be a finite number, got '1e999'"),
        ("fast", float, {}, "--n must be a number, got 'fast'"),
        ("-1", int, {"low": 1}, "--n must be at least 1, got '-1'"),
        ("2e9", float, {"high": 1e6}, "--n must be at most 1e\\+06, got '2e9'"),
        ("0", int, {"low": 1, "high": 64, "span": ""}, "--n must be from 1 to 64, got '0'"),
        ("9999", int, {"low": 1, "high": 4096, "span": " pixels"}, "--n must be from 1 to 4096 pixels, got '9999'"),
    ],
)
def test_a_number_typed_as_text_is_parsed_and_checked_in_one_line(text, kind, bounds, message):
    with pytest.raises(EdgepruneError, match=f"^{message}$"):
        parse_number(text, "--n", kind, **bounds)


def test_argparse_types_name_no_option_and_raise_argparse_s_error():
    assert parse_number("12", "", int, low=1, error=argparse.ArgumentTypeError) == 12
    with pytest.raises(argparse.ArgumentTypeError, match="^must be at least 1, got '0'$"):
        options.positive_int("0")
    with pytest.raises(argparse.ArgumentTypeError, match=f"^seed must be from 0 to {MAX_SEED}, got '-1'$"):
        options.seed("-1")
    assert options.positive_number("0.5") == 0.5 and options.non_negative_number("0") == 0.0
    with pytest.raises(argparse.ArgumentTypeError, match="^must be above 0, got '0'$"):
        options.positive_number("0")
    with pytest.raises(argparse.ArgumentTypeError, match="^must be at least 0, got '-1'$"):
        options.non_negative_number("-1")
    assert "parse_number" in validate.__all__


def test_ray_options_are_parsed_by_the_cli_and_refused_without_ray(capsys):
    parser = argparse.ArgumentParser()
    options.ray(parser, "point", "a detail")
    args = parser.parse_args(["--gpus-per-run", "1"])
    with pytest.raises(EdgepruneError, match="^--cpus-per-run and --gpus-per-run need --ray$"):
        options.ray_options(args)
    assert options.ray_options(parser.parse_args([])) is None
    code, _, err = run_cli(capsys, "sweep", "tiny", "--targets", "0.5", "--out", "x", "--cpus-per-run", "0")
    assert code == 2 and "argument --cpus-per-run: must be above 0, got '0'" in err
