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


def higher_is_better(value: Any) -> bool:
    """A row's `higher_is_better`: missing (a row written before the column existed) is True,
    since every primary metric was an accuracy-like score until perplexities came."""
    value = plain(value)
    return True if value is None else bool(value)


def score_direction(values, where: str = "") -> bool:
    """The one direction of the scores of rows ranked or compared together (one task and metric):
    True when a higher score is better. Rows that disagree cannot be ranked on one scale."""
    directions = {higher_is_better(v) for v in values}
    if len(directions) > 1:
        from harness.core.errors import HarnessError

        place = f"{where}: " if where else ""
        raise HarnessError(
            f"{place}some rows say a higher score is better and others a lower one (higher_is_better); "
            "keep one metric per task in the store"
        )
    return directions != {False}


def frame_direction(frame: pd.DataFrame, where: str = "") -> bool:
    """`score_direction` of a frame's rows; a frame without the column (an older store) is higher-is-better."""
    return score_direction(frame["higher_is_better"], where) if "higher_is_better" in frame else True


def direction_text(higher: bool) -> str:
    """What a page adds to a score's label so that a reader knows which way is better."""
    return "higher is better" if higher else "lower is better"
