"""How run options are declared, and the options suites declare for themselves.

A `RunSpec` field carries an `Opt` (as `Annotated` metadata): its `harness run` flag and help
text, where the resolver takes its value from when none is given, and whether it is part of the
job identity. The command line, `RunSpec.build`, `ResolvedRun` and `resolve()` are generated from
these declarations, so an option is written once.

A suite declares the options only it reads as `Suite.Options`, a `SuiteOptions` model (pydantic,
unknown keys refused), as a method declares its `Params`. They are given like any run option
(`--set key=value`, a sweep file's key) and checked here against the suite the run names.
"""

from __future__ import annotations

import difflib
import enum
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import PydanticCustomError

from harness.core.registry import Registry


class Fill(enum.Enum):
    """Where the resolver takes an option's value from when the user gives none (None)."""

    GIVEN = "as given"  # the RunSpec value as it is (its own default included)
    SUITE = "the suite's default"  # Suite.defaults.<name>
    METHOD = "the method's default"  # Pipeline.default_<name>
    RESOLVER = "resolved"  # resolve() works it out (the suite's canonical name, the model, ...)


@dataclass(frozen=True)
class Opt:
    """The declaration of one run option, beside its RunSpec field type and default."""

    help: str
    flag: str | None = None  # its `harness run` flag; None: --<name with dashes>
    short: str | None = None  # a one-letter alias (-s)
    # A flag of `harness run` (listed in --help); False: reached through `--set name=value` and sweep files.
    cli: bool = True
    negatable: bool = False  # a switch with a --no- form (--kernel-profile/--no-kernel-profile)
    # A Fill, or a constant the resolver uses when none is given (max_grad_norm 1.0).
    fill: Any = Fill.GIVEN
    resolved: Any = None  # its type in ResolvedRun
    # "always": hashed; "changed": hashed only when not at its RunSpec default, so that adding such an
    # option keeps every old hash; "never": no part of the experiment (paths, the device index).
    identity: Literal["always", "changed", "never"] = "always"


class SuiteOptions(BaseModel):
    """Base of `Suite.Options`: fields with defaults (and a description, shown by `harness list
    options`); unknown keys and non-finite numbers are refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# The registered suites, by name, for their Options: filled as a suite registers (harness/suites/base.py)
# and, like every registry, importing the suites' package on first lookup to discover them. The
# Options are read from the suite class when asked, so they are the class's current ones.
SUITE_OPTIONS: Registry[type] = Registry("suite", package="harness.suites", entry_point_group="harness.suites")


def declared_suite_options() -> dict[str, type[SuiteOptions]]:
    """Each registered suite's Options, by suite name."""
    return {name: suite.Options for name, suite in SUITE_OPTIONS}


def _error(key: str, value: Any, kind: str, message: str) -> dict[str, Any]:
    return {"type": PydanticCustomError(kind, message), "loc": (key,), "input": value}


def check_suite_options(suite: str, given: dict[str, Any], run_options: list[str]) -> dict[str, Any]:
    """`given` validated by the Options of `suite` (only the keys given, as the Options read
    them). A key the suite does not declare, or a bad value, raises a ValidationError located at
    the key itself, so that a sweep file names its line. An unknown suite is left to resolve()."""
    declared = declared_suite_options()
    options = declared.get(suite.lower())
    if options is None or not given:
        return dict(given)
    own = list(options.model_fields)
    errors = []
    for key, value in given.items():
        if key in options.model_fields:
            continue
        ours = f"{suite.lower()}'s options: {', '.join(own) or 'none'}"
        others = [name for name, other in declared.items() if key in other.model_fields]
        if others:
            message = f"an option of {', '.join(others)}, not of suite {suite.lower()!r} ({ours})"
        else:
            close = difflib.get_close_matches(key, run_options + own, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            message = f"unknown setting for suite {suite.lower()!r}{hint} ({ours})"
        errors.append(_error(key, value, "suite_option", message))
    if errors:
        raise ValidationError.from_exception_data("RunSpec", errors)
    try:
        checked = options.model_validate(given)
    except ValidationError as exc:
        raise ValidationError.from_exception_data(
            "RunSpec", [_error(str(e["loc"][0]), e.get("input"), e["type"], e["msg"]) for e in exc.errors()]
        ) from None
    return checked.model_dump(include=set(given))


def all_suite_options(options: type[SuiteOptions], given: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(every option of the suite, `given` over the defaults; those not at their default)."""
    values = options.model_validate(given).model_dump()
    defaults = options().model_dump()
    return values, {k: v for k, v in values.items() if v != defaults[k]}
