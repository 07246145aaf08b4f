"""Reading values of result rows, where a missing value may be None or NaN (pandas' nulls)."""

from __future__ import annotations

import math
from typing import Any


def missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
