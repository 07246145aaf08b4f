"""The one set of value helpers the report, the leaderboard page and `harness compare` share:
missing values, relative changes, numbers as text and units read from column names."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from harness.results.format import MISSING, NUMERIC, fmt, number, percent, signed, unit, with_unit
from harness.results.values import plain, relative


@pytest.mark.parametrize("value", [None, math.nan, np.float64("nan"), pd.NaT])
def test_every_kind_of_null_is_missing(value):
    assert plain(value) is None
    assert number(value) == fmt(value, "score") == with_unit("peak_memory_bytes", value) == MISSING


def test_numpy_numbers_become_python_ones_and_other_values_stay():
    for value, expected in ((np.int64(3), 3), (np.float64(0.5), 0.5), (np.bool_(True), True)):
        assert plain(value) == expected and type(plain(value)) is type(expected)
    stamp = pd.Timestamp("2026-01-02", tz="UTC")
    assert plain(stamp) is stamp and plain("x") == "x"


@pytest.mark.parametrize(
    "base, new, expected",
    [(10, 20, 1.0), (-4, -2, 0.5), (4.0, 3.0, -0.25), (0, 5, None), (True, 2, None), ("a", 1, None), (None, 1, None)],
)
def test_relative_change_is_against_the_size_of_the_base(base, new, expected):
    assert relative(base, new) == expected


def test_numbers_keep_four_significant_digits_then_go_whole_with_separators():
    assert number(0.123456) == "0.1235"
    assert number(1e-5) == "1e-05"
    assert number(999.4) == "999.4"
    assert number(123456.7) == "123,457"
    assert number(12345) == "12345"  # integers (counts, seeds) as written
    assert number("ok") == "ok"
    # The report's shorter form of the same rule: three digits, whole from 100 on.
    assert (number(12.345, digits=3, whole_from=100), number(150.4, digits=3, whole_from=100)) == ("12.3", "150")


def test_changes_are_signed():
    assert (signed(0.05), signed(-0.04), signed(None)) == ("+0.0500", "-0.0400", "")
    assert (percent(1.0), percent(-0.123), percent(None)) == ("+100.0%", "-12.3%", "")


def test_column_values_format_by_what_the_column_holds():
    assert fmt(0.9, "score") == "0.9000"
    assert fmt(12345.0, "trainable_params") == "12,345"
    assert fmt(7, "model_bytes") == "7"
    assert fmt('[{"r": 8}]', "method_params") == '[{"r": 8}]'  # JSON, not a count of parameters
    assert fmt(0.012345) == "0.0123"


def test_units_come_from_the_column_names():
    expected = {
        "train_samples_per_s": "samples/s",
        "train_steps": "steps",
        "latency_bs1_p50_ms": "ms",
        "train_seconds": "s",
        "peak_memory_bytes": "bytes",
        "mfu": "%",
        "weight_sparsity": "%",
        "adapter_overhead_share": "%",
        "train_flops": "FLOPs",
        "bits_per_parameter": "bits",
        "trainable_params": "parameters",
        "method_params": "",  # a string column: no unit
        "device_name": "",
    }
    assert {column: unit(column) for column in expected} == expected
    assert "adapter_overhead_share" in NUMERIC and "method_params" not in NUMERIC


def test_values_read_best_in_their_unit():
    assert with_unit("peak_memory_bytes", 500 * 2**20) == "524,288,000 (500.0 MiB)"
    assert with_unit("adapter_overhead_share", 0.1234) == "12.34"
    assert with_unit("flops_per_sample", 2.2e10) == "22,000,000,000 (22 G)"
    assert with_unit("train_samples", 96.0) == "96"
    assert with_unit("train_seconds", 1.5) == "1.5"
