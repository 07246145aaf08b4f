"""Reading values of result rows, where a missing value may be None or NaN (pandas' nulls)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd


def missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def plain(value: Any) -> Any:
    """None for a missing value (None, NaN, NaT), numpy numbers as Python ones, so that values
    compare, print and go into JSON plainly; any other value as it is."""
    if missing(value) or value is pd.NaT:
        return None
    return value.item() if isinstance(value, (np.integer, np.floating, np.bool_)) else value


def relative(base: Any, new: Any) -> float | None:
    """(new - base) / |base|; None unless both are numbers (not booleans) and base is not 0."""
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (base, new)) or base == 0:
        return None
    return (new - base) / abs(base)
