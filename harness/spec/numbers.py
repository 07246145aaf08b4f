"""Number types for every place a number enters (command line, sweep files): finite, and a
number rather than a switch.

pydantic's lax mode reads `true` as 1 and `1` as true; a switch given where a number is asked
(or the other way round) is a mistake, not a value. Counts are strict integers that fit the
int64 columns of a result row. Floats stay lax about strings, so that a YAML `1e-4` (a string
to PyYAML, which wants a dot in a float) still reads as a number. Finiteness comes from each
model's `allow_inf_nan=False`.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Field, StrictInt
from pydantic_core import PydanticCustomError


def _not_a_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise PydanticCustomError("bool_not_number", "a number, not true/false")
    return value


Number = Annotated[float, BeforeValidator(_not_a_bool)]
Count = Annotated[StrictInt, Field(gt=0, lt=2**63)]
NonNegativeCount = Annotated[StrictInt, Field(ge=0, lt=2**63)]
# transformers.set_seed seeds numpy's RandomState, which takes 0 <= seed < 2**32.
Seed = Annotated[StrictInt, Field(ge=0, lt=2**32)]
