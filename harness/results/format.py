"""Result values as text, one way wherever they are shown (the report's pages, the leaderboard's
page, `harness compare`'s table), and the unit a column's name implies."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from harness.results.values import plain
from harness.spec.schema import COLUMNS

MISSING = "–"  # a value the row does not have


def number(value: Any, digits: int = 4, whole_from: float = 1000) -> str:
    """A float to `digits` significant digits, or whole (with thousands separators) from
    `whole_from` on, where the digits after the point no longer tell runs apart; anything else
    as str."""
    if plain(value) is None:
        return MISSING
    if isinstance(value, float):
        return f"{value:,.{digits}g}" if abs(value) < whole_from else f"{value:,.0f}"
    return str(value)


def signed(value: float | None) -> str:
    """An absolute change (of a score): always with its sign; '' for none."""
    return "" if value is None else f"{value:+.4f}"


def percent(value: float | None) -> str:
    """A relative change: signed, in percent; '' for none."""
    return "" if value is None else f"{value:+.1%}"


def fmt(value: Any, column: str = "") -> str:
    """A value of a result column: scores to 4 decimals, counts of parameters and bytes whole."""
    if plain(value) is None:
        return MISSING
    if column in ("score", "best_score"):
        return f"{value:.4f}"
    if column == "trainable_params" or (column.endswith(("_params", "_bytes")) and isinstance(value, (int, float))):
        return f"{int(value):,}"
    return number(value, digits=3, whole_from=100)


# Units only apply to numbers (method_params ends in _params but is JSON).
NUMERIC = {c.name for c in COLUMNS if pa.types.is_integer(c.type) or pa.types.is_floating(c.type)}
_COUNTS = {"train_samples": "samples", "eval_samples": "samples", "train_steps": "steps", "train_tokens": "tokens"}


def unit(column: str) -> str:
    """The unit a numeric column's name implies (the schema puts units in names); '' for none."""
    if column not in NUMERIC:
        return ""
    if column in _COUNTS:
        return _COUNTS[column]
    if column.endswith("_bytes"):
        return "bytes"
    if column.endswith("_seconds"):
        return "s"
    if column.endswith("_ms"):
        return "ms"
    if column.endswith("_per_s"):
        return column.split("_")[-3] + "/s"  # train_samples_per_s -> samples/s
    if column.endswith(("_share", "sparsity")) or column == "mfu":
        return "%"
    if "flops" in column:
        return "FLOPs"
    if "bits" in column:
        return "bits"
    if column.endswith("_params"):
        return "parameters"
    return ""


def with_unit(column: str, value: Any) -> str:
    """A value as its unit reads best: bytes also in MiB, shares as percentages."""
    if plain(value) is None:
        return MISSING
    kind = unit(column)
    if kind == "bytes":
        return f"{int(value):,} ({value / 2**20:,.1f} MiB)"
    if kind == "%":
        return f"{100 * value:.2f}"
    if kind == "FLOPs":
        return f"{value:,.0f} ({value / 1e9:,.3g} G)"
    if kind in ("parameters", "samples", "steps", "tokens"):
        return f"{int(value):,}"
    return fmt(value, column)
