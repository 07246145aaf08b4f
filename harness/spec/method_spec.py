"""Parse the method string of the command line.

    lora                       one method with its paper's defaults
    lora:r=16,alpha=32         parameters after a colon, comma separated
    lora:target_modules=[query,value]   a list in brackets
    nf4+lora:r=16              a pipeline: steps applied left to right

Values become int, float, bool (true/false) or None (none) when they read as such,
else strings. A number that is not finite (nan, inf) is refused here, where it enters;
otherwise the parser only splits and each method validates its own parameters.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from harness.core.errors import HarnessError

_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")


@dataclass(frozen=True)
class MethodStep:
    name: str
    params: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        if not self.params:
            return self.name
        return f"{self.name}:" + ",".join(f"{k}={_format_value(v)}" for k, v in sorted(self.params.items()))


def _format_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_format_value(v) for v in value) + "]"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return str(value)


def _scalar(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _split_top_level(text: str, sep: str) -> list[str]:
    """Split on `sep` outside brackets."""
    parts, depth, current = [], 0, []
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise HarnessError(f"unbalanced ']' in method parameters {text!r}")
        if ch == sep and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if depth != 0:
        raise HarnessError(f"unbalanced '[' in method parameters {text!r}")
    parts.append("".join(current))
    return parts


def _parse_value(raw: str) -> Any:
    raw = raw.strip()
    if raw.startswith("[") and raw.endswith("]"):
        inner = raw[1:-1].strip()
        return [_scalar(v.strip()) for v in _split_top_level(inner, ",")] if inner else []
    return _scalar(raw)


def parse_step(text: str) -> MethodStep:
    name, _, param_text = text.strip().partition(":")
    name = name.strip().lower()
    if not _NAME.match(name):
        raise HarnessError(f"bad method name {name!r} in {text!r}; expected e.g. `lora` or `lora:r=16,alpha=32`")
    params: dict[str, Any] = {}
    if param_text.strip():
        for item in _split_top_level(param_text, ","):
            key, eq, value = item.partition("=")
            key = key.strip()
            if not eq or not key:
                raise HarnessError(f"bad method parameter {item.strip()!r} in {text!r}; expected key=value")
            if key in params:
                raise HarnessError(f"method parameter {key!r} given twice in {text!r}")
            params[key] = _parse_value(value)
            if not _finite(params[key]):
                raise HarnessError(f"method {name!r}: {key}={value.strip()}: not a finite number")
    return MethodStep(name, params)


def _finite(value: Any) -> bool:
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return not isinstance(value, float) or math.isfinite(value)


def parse_pipeline(text: str) -> list[MethodStep]:
    if not text or not text.strip():
        raise HarnessError("empty method; try `--method lora` (see `harness list methods`)")
    return [parse_step(part) for part in _split_top_level(text, "+")]
