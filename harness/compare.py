"""Compare two result stores (BASE and NEW) run by run: quality and cost regressions.

Matching. Runs are matched by job identity, not by `job_hash`: the hash includes the
harness version, so two builds of a nightly would never match by hash. The match key is
built from the row's `config` JSON (the resolved run as the job recorded it), keeping only
the keys of `ResolvedRun.identity()` except `harness_version` (listed in IDENTITY_KEYS, a
test keeps the two in step). Paths, output places, the device flag, latency settings and
the harness version or commit therefore never prevent a match; a key an older config lacks
reads as null. Each store is first reduced to one row per job (`latest_per_job`), then to
its latest successful row per identity key.

Rules, per matched pair (quality is higher-is-better, costs lower-is-better):
- score: a drop of more than `metric_tolerance` (absolute, in the metric's units) is a
  regression, a rise of more than it an improvement; scores of different metrics are not
  compared.
- measured costs (time, memory, latency): a rise of more than `time_tolerance` x BASE is a
  regression, a fall of as much an improvement. For a latency median the band also holds the
  spread the run itself measured, (p90 - p50) of BASE plus that of NEW, so that a noisy
  measurement does not fail a nightly. These costs depend on the hardware: they are compared
  only when `device_name` is the same in both rows, otherwise the pair gets one note and can
  never fail on them.
- exact costs (parameters, bytes, FLOPs) are deterministic: any rise is a regression, any
  fall an improvement.
- a run in BASE without a successful run in NEW is a regression (a nightly that drops or
  breaks a method must fail); a run only in NEW is a note.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from harness.errors import HarnessError
from harness.store import latest_per_job, read_results

# ResolvedRun.identity() without harness_version (tests/test_compare.py checks they agree).
IDENTITY_KEYS = (
    "suite", "task", "method", "method_params", "model_hub_id", "seed", "data_seed", "max_train_samples",
    "max_eval_samples", "epochs", "max_steps", "lr", "batch_size", "eval_batch_size", "max_length",
    "warmup_ratio", "weight_decay", "max_grad_norm", "precision",
    "lr_scheduler", "gradient_accumulation_steps", "gradient_checkpointing", "max_train_tokens", "packing",
    "train_data", "num_fewshot", "max_new_tokens",
)

# Measured on the hardware: compared within a relative tolerance, and only on the same device.
# Each maps to the column of its own 90th percentile, whose gap to the median is the noise band.
MEASURED_COSTS = {
    "train_seconds": None,
    "peak_memory_bytes": None,
    "latency_bs1_p50_ms": "latency_bs1_p90_ms",
    "latency_batch_p50_ms": "latency_batch_p90_ms",
    "ttft_bs1_p50_ms": None,
}
# Deterministic for a given config: any rise is real.
EXACT_COSTS = ("trainable_params", "model_bytes", "compressed_model_bytes", "flops_per_sample")

REGRESSION, IMPROVEMENT, INFO = "regression", "improvement", "info"
_ORDER = {REGRESSION: 0, IMPROVEMENT: 1, INFO: 2}


@dataclass(frozen=True)
class Change:
    run: str  # "suite/task method model seed"
    column: str
    base: Any
    new: Any
    relative: float | None  # (new - base) / base; None when not a number or base is 0
    kind: str  # regression, improvement or info
    note: str = ""


@dataclass
class Comparison:
    changes: list[Change] = field(default_factory=list)
    compared: int = 0  # runs present in both stores

    @property
    def regressions(self) -> list[Change]:
        return [c for c in self.changes if c.kind == REGRESSION]

    @property
    def improvements(self) -> list[Change]:
        return [c for c in self.changes if c.kind == IMPROVEMENT]

    def sorted_changes(self) -> list[Change]:
        return sorted(self.changes, key=lambda c: (_ORDER[c.kind], c.run, c.column))

    def to_frame(self) -> pd.DataFrame:
        columns = ["run", "column", "base", "new", "relative", "kind", "note"]
        return pd.DataFrame([asdict(c) for c in self.sorted_changes()], columns=columns)

    def summary(self) -> str:
        parts = [_count(len(self.regressions), "regression"), _count(len(self.improvements), "improvement")]
        notes = len(self.changes) - len(self.regressions) - len(self.improvements)
        if notes:
            parts.append(_count(notes, "note"))
        return ", ".join(parts) + f", {_count(self.compared, 'run')} compared"

    def table(self) -> str:
        header = ("kind", "run", "column", "base", "new", "change", "note")
        body = [
            (c.kind, c.run, c.column, _fmt(c.base), _fmt(c.new), "" if c.relative is None else f"{c.relative:+.1%}", c.note)
            for c in self.sorted_changes()
        ]
        lines = []
        if body:
            widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
            for r in [header, *body]:
                lines.append("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
        lines.append(self.summary())
        return "\n".join(lines)


def compare_stores(
    base: str | os.PathLike, new: str | os.PathLike, metric_tolerance: float = 0.005, time_tolerance: float = 0.10,
) -> Comparison:
    base_ok, _ = _load(base, "BASE")
    new_ok, new_failed = _load(new, "NEW")
    if not base_ok:
        raise HarnessError(f"BASE {base}: no successful runs to compare against")
    comparison = Comparison()
    for key, b in base_ok.items():
        n = new_ok.get(key)
        if n is None:
            failed = new_failed.get(key)
            note = "missing in new" if failed is None else f"failed in new: {failed['error'] or 'no error recorded'}"
            comparison.changes.append(Change(_label(b), "run", "ok", None if failed is None else "failed", None, REGRESSION, note))
            continue
        comparison.compared += 1
        comparison.changes.extend(_compare_pair(b, n, metric_tolerance, time_tolerance))
    for key, n in new_ok.items():
        if key not in base_ok:
            comparison.changes.append(Change(_label(n), "run", None, "ok", None, INFO, "new run"))
    return comparison


def identity_key(config_json: str | None, job_hash: str) -> str:
    """The match key of a row: a hash of its identity keys (see the module docstring)."""
    if not config_json:
        return f"job:{job_hash}"  # no config recorded: only the same job can match
    config = json.loads(config_json)
    identity = {k: config.get(k) for k in IDENTITY_KEYS}
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _load(results_dir: str | os.PathLike, name: str) -> tuple[dict[str, dict], dict[str, dict]]:
    """identity key -> row, for the successful and for the failed runs of a store."""
    path = Path(results_dir)
    if not path.is_dir():
        raise HarnessError(f"{name} {results_dir}: no such folder")
    df = latest_per_job(read_results(path))
    if df.empty:
        raise HarnessError(f"{name} {results_dir}: no results in this folder")
    df = df.assign(_key=[identity_key(c, h) for c, h in zip(df["config"], df["job_hash"])])
    # Several jobs with one identity (e.g. runs of two harness versions in one store): the latest wins.
    df = df.sort_values(["created_at", "run_id"], kind="mergesort")
    ok, failed = {}, {}
    for row in df.to_dict("records"):
        (ok if row["status"] == "ok" else failed)[row["_key"]] = row
    return ok, failed


def _compare_pair(b: dict, n: dict, metric_tolerance: float, time_tolerance: float) -> list[Change]:
    label = _label(n)
    changes = []

    def add(column, kind, note=""):
        old, now = _plain(b.get(column)), _plain(n.get(column))
        changes.append(Change(label, column, old, now, _relative(old, now), kind, note))

    # Quality.
    if _missing(b["score"]) or _missing(n["score"]):
        if not _missing(b["score"]):
            add("score", REGRESSION, "score missing in new")
    elif b["metric"] != n["metric"]:
        add("score", INFO, f"not comparable (metric {b['metric']} vs {n['metric']})")
    elif b["score"] - n["score"] > metric_tolerance:
        add("score", REGRESSION, f"{n['metric']} down more than {metric_tolerance:g}")
    elif n["score"] - b["score"] > metric_tolerance:
        add("score", IMPROVEMENT, f"{n['metric']} up more than {metric_tolerance:g}")

    # Measured costs, on the same hardware only.
    if _plain(b["device_name"]) != _plain(n["device_name"]):
        if any(not _missing(b.get(c)) and not _missing(n.get(c)) for c in MEASURED_COSTS):
            add("device_name", INFO, "time, memory and latency not comparable (device differs)")
    else:
        for column, p90 in MEASURED_COSTS.items():
            if _missing(b[column]) or _missing(n[column]):
                continue
            band = time_tolerance * b[column]
            if p90 is not None:
                band += _spread(b, column, p90) + _spread(n, column, p90)
            tolerance = f"{time_tolerance:.0%}" + (" plus p90-p50 spread" if p90 is not None else "")
            if n[column] - b[column] > band:
                add(column, REGRESSION, f"up more than {tolerance}")
            elif b[column] - n[column] > band:
                add(column, IMPROVEMENT, f"down more than {tolerance}")

    for column in EXACT_COSTS:
        if _missing(b[column]) or _missing(n[column]):
            continue
        if n[column] > b[column]:
            add(column, REGRESSION, "exact cost rose")
        elif n[column] < b[column]:
            add(column, IMPROVEMENT, "exact cost fell")
    return changes


def _spread(row: dict, p50: str, p90: str) -> float:
    """The run's own p90 - p50 gap: how much its median could move from noise alone."""
    if _missing(row[p90]):
        return 0.0
    return max(0.0, row[p90] - row[p50])


def _label(row: dict) -> str:
    return f"{row['suite']}/{row['task']} {row['method']} {row['model']} {row['seed']}"


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _plain(value: Any) -> Any:
    """NaN -> None and numpy scalars -> Python ones, so values compare and print plainly."""
    if _missing(value):
        return None
    return value.item() if hasattr(value, "item") else value


def _relative(base: Any, new: Any) -> float | None:
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (base, new)) or base == 0:
        return None
    return (new - base) / abs(base)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"
