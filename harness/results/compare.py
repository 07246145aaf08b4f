"""Compare two result stores (BASE and NEW) run by run: quality and cost regressions.

Matching. Runs are matched by job identity: the `job_hash` of harness/spec/run.py, which
leaves out paths, output places, the GPU index and the harness version or commit, and holds
what changes a result (the device type among it, so a CPU run never matches a GPU run). A
row of an older schema is keyed as `harness store upgrade` would re-key it. Each store is
first reduced to one row per job (`latest_per_job`), then to its latest successful row per
identity key.

Rules, per matched pair (costs are lower-is-better; quality is higher-is-better unless the rows
say otherwise, `higher_is_better` False for a perplexity: there a rise is the regression):
- score, several seeds: the pairs of one configuration (every setting but the seed, see
  harness/results/grouping.py) are compared by their seed means. A change counts when it exceeds
  both `metric_tolerance` and `metric_k` standard errors of the mean change, the SE coming
  from the seeds' own changes: a pair holds one seed on both nights (the identity includes
  it), so SE = sd(new_i - base_i) / sqrt(m) over the m matched seeds (a paired comparison).
  It holds whether or not a seed repeats its score from night to night: when it does
  (`deterministic: true`, the nightly's setting), an unchanged night has per-seed changes of
  about 0 and a broken one shifts every seed alike, so the SE is about 0 and the absolute
  tolerance decides; the spread between seeds (an unpaired SE) would there hide a drop
  of up to 2.45 x the seeds' sd behind it (3 SE of two means of 3 seeds). When the seeds do not repeat (no
  determinism, or a change that reshuffles every run), the SE measures that noise instead,
  with m - 1 degrees of freedom: at 3 seeds a true-null mean passes k=3 (one side) at least
  95% of the time (Student t, 2 degrees of freedom; the tolerance raises it further), at
  2 seeds about 90% (1 degree of freedom). Seeds run on one night only are left out of the
  mean (a seed of BASE missing in NEW is a regression of its own, below). Both stores score
  one fixed evaluation set, so its sampling noise is common to the two and not part of the SE.
- score, one seed: a drop of more than `metric_tolerance` (absolute, in the metric's units)
  is a regression, a rise of more than it an improvement (the other way round where lower is
  better). One seed gives no measure of its own noise, so this gate is only as steady as the run
  is deterministic. Scores of different metrics, or of rows that disagree on the direction, are
  not compared.
- measured costs (time, memory, latency): a rise of more than `time_tolerance` x BASE is a
  regression, a fall of as much an improvement. For a latency median the band also holds the
  spread the run itself measured, (p90 - p50) of BASE plus that of NEW, so that a noisy
  measurement does not fail a nightly. These costs depend on the hardware: they are compared
  only when `device_name` is the same in both rows, otherwise the pair gets one note and can
  never fail on them. Times and latencies measured while other jobs shared the device
  (`concurrent_jobs` > 1 in either row) are not clean and are not compared ("not compared:
  shared device"); peak memory is per process and still is.
- exact costs (parameters, bytes, FLOPs) are deterministic for one kind of device: any rise
  is a regression, any fall an improvement. Model bytes and FLOPs can differ between a CPU
  and a GPU run of one config (bitsandbytes packs 4-bit weights on CUDA only; FLOP counts
  depend on the attention kernel), so those are compared only within one device type.
- a run in BASE without a successful run in NEW is a regression (a nightly that drops or
  breaks a method must fail); a run only in NEW is a note.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.core.errors import HarnessError
from harness.results.format import number, percent
from harness.results.grouping import device_type, group_key
from harness.results.store import latest_per_job, read_results
from harness.results.upgrade import current_job_hash
from harness.results.values import higher_is_better as _higher
from harness.results.values import missing as _missing
from harness.results.values import plain as _plain
from harness.results.values import relative as _relative
from harness.results.values import score_direction

# Measured on the hardware: compared within a relative tolerance, and only on the same device.
# Each maps to the column of its own 90th percentile, whose gap to the median is the noise band.
MEASURED_COSTS = {
    "train_seconds": None,
    "peak_memory_bytes": None,
    "latency_bs1_p50_ms": "latency_bs1_p90_ms",
    "latency_batch_p50_ms": "latency_batch_p90_ms",
    "ttft_bs1_p50_ms": None,
}
# Timed on the wall clock: only clean when the run had its device alone.
TIMED_COSTS = ("train_seconds", "latency_bs1_p50_ms", "latency_batch_p50_ms", "ttft_bs1_p50_ms")
# Deterministic for a given config: any rise is real.
EXACT_COSTS = ("trainable_params", "model_bytes", "compressed_model_bytes", "flops_per_sample")
# ... on one kind of device: these can differ between CPU and CUDA runs of one config.
DEVICE_TYPE_COSTS = ("model_bytes", "compressed_model_bytes", "flops_per_sample")
# Standard errors a seed-mean score change must exceed (see the module docstring).
METRIC_K = 3.0
# A change equal to a band is inside it: 0.70 - 0.69 is 0.010000000000000009 in floating point,
# and a drop of exactly the tolerance must pass. Far below one example of any evaluation set.
SLACK = 1e-9

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
            (
                c.kind,
                c.run,
                c.column,
                number(c.base),
                number(c.new),
                percent(c.relative),
                c.note,
            )
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
    base: str | os.PathLike,
    new: str | os.PathLike,
    metric_tolerance: float = 0.005,
    time_tolerance: float = 0.10,
    metric_k: float = METRIC_K,
) -> Comparison:
    for name, value in (
        ("metric_tolerance", metric_tolerance),
        ("time_tolerance", time_tolerance),
        ("metric_k", metric_k),
    ):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise HarnessError(f"{name} must be a finite number, 0 or more (got {value!r})")
    base_ok, _ = _load(base, "BASE")
    new_ok, new_failed = _load(new, "NEW")
    if not base_ok:
        raise HarnessError(f"BASE {base}: no successful runs to compare against")
    comparison = Comparison()
    pairs = []
    for key, b in base_ok.items():
        n = new_ok.get(key)
        if n is None:
            failed = new_failed.get(key)
            note = "missing in new" if failed is None else f"failed in new: {failed['error'] or 'no error recorded'}"
            comparison.changes.append(
                Change(_label(b), "run", "ok", None if failed is None else "failed", None, REGRESSION, note)
            )
            continue
        comparison.compared += 1
        pairs.append((b, n))
        comparison.changes.extend(_compare_pair(b, n, time_tolerance))
    comparison.changes.extend(_score_changes(pairs, metric_tolerance, metric_k))
    for key, n in new_ok.items():
        if key not in base_ok:
            comparison.changes.append(Change(_label(n), "run", None, "ok", None, INFO, "new run"))
    return comparison


def identity_key(row: dict[str, Any]) -> str:
    """The match key of a row: its job hash under the current identity (see the module docstring)."""
    return current_job_hash(row)


def _load(results_dir: str | os.PathLike, name: str) -> tuple[dict[str, dict], dict[str, dict]]:
    """identity key -> row, for the successful and for the failed runs of a store."""
    path = Path(results_dir)
    if not path.is_dir():
        raise HarnessError(f"{name} {results_dir}: no such folder")
    df = latest_per_job(read_results(path))
    if df.empty:
        raise HarnessError(f"{name} {results_dir}: no results in this folder")
    df = df.assign(_key=[identity_key(row) for row in df.to_dict("records")])
    # Several jobs with one identity (an old-schema row and its re-run in one store): the latest wins.
    df = df.sort_values(["created_at", "run_id"], kind="mergesort")
    ok, failed = {}, {}
    for row in df.to_dict("records"):
        (ok if row["status"] == "ok" else failed)[row["_key"]] = row
    return ok, failed


def _score_changes(pairs: list[tuple[dict, dict]], metric_tolerance: float, metric_k: float) -> list[Change]:
    """Quality changes: by seed mean for a configuration with several matched seeds, by the
    single pair otherwise (see the module docstring)."""
    changes, groups = [], {}
    for b, n in pairs:
        if _missing(b["score"]) or _missing(n["score"]):
            if not _missing(b["score"]):
                changes.append(_change(_label(n), "score", b, n, REGRESSION, "score missing in new"))
        elif b["metric"] != n["metric"]:
            changes.append(
                _change(_label(n), "score", b, n, INFO, f"not comparable (metric {b['metric']} vs {n['metric']})")
            )
        elif _higher(b.get("higher_is_better")) != _higher(n.get("higher_is_better")):
            changes.append(
                _change(_label(n), "score", b, n, INFO, "not comparable (higher_is_better differs between the stores)")
            )
        else:
            groups.setdefault((group_key(b), group_key(n)), []).append((b, n))
    for members in groups.values():
        higher = score_direction([n.get("higher_is_better") for _, n in members], _label(members[0][1]))
        if len(members) == 1:
            [(b, n)] = members
            changes.extend(_single_seed_change(b, n, metric_tolerance, higher))
        else:
            changes.extend(_seed_mean_change(members, metric_tolerance, metric_k, higher))
    return changes


def _moved(difference: float, higher_is_better: bool) -> tuple[str, str]:
    """(direction word, kind) of a score change new - base that is beyond its band."""
    worse = difference < 0 if higher_is_better else difference > 0
    return "down" if difference < 0 else "up", REGRESSION if worse else IMPROVEMENT


def _direction_note(higher_is_better: bool) -> str:
    return "" if higher_is_better else " (lower is better)"


def _single_seed_change(b: dict, n: dict, metric_tolerance: float, higher_is_better: bool = True) -> list[Change]:
    difference = n["score"] - b["score"]
    if abs(difference) <= metric_tolerance + SLACK:
        return []
    word, kind = _moved(difference, higher_is_better)
    note = f"{n['metric']} {word} more than {metric_tolerance:g}{_direction_note(higher_is_better)}"
    return [_change(_label(n), "score", b, n, kind, note)]


def _seed_mean_change(
    members: list[tuple[dict, dict]], metric_tolerance: float, metric_k: float, higher_is_better: bool = True
) -> list[Change]:
    base = np.array([b["score"] for b, _ in members], dtype=float)
    new = np.array([n["score"] for _, n in members], dtype=float)
    # Paired by seed: the SE of the mean of the per-seed changes (see the module docstring).
    changes = new - base
    se = float(changes.std(ddof=1)) / math.sqrt(len(changes))
    se = 0.0 if se < SLACK else se  # equal changes on every seed, up to rounding
    band = max(metric_tolerance, metric_k * se)
    difference = float(new.mean() - base.mean())
    if abs(difference) <= band + SLACK:
        return []
    n0 = members[0][1]
    seeds = ",".join(str(n["seed"]) for _, n in sorted(members, key=lambda m: str(m[1]["seed"])))
    label = f"{n0['suite']}/{n0['task']} {n0['method']} {n0['model']} seeds {seeds}"
    direction, kind = _moved(difference, higher_is_better)
    note = (
        f"{n0['metric']} mean of {len(members)} seeds {direction} {abs(difference):.4g}: more than "
        f"{metric_tolerance:g} and {metric_k:g} SE ({metric_k * se:.4g}){_direction_note(higher_is_better)}"
    )
    return [
        Change(
            label,
            "score",
            float(base.mean()),
            float(new.mean()),
            _relative(float(base.mean()), float(new.mean())),
            kind,
            note,
        )
    ]


def _change(label: str, column: str, b: dict, n: dict, kind: str, note: str = "") -> Change:
    old, now = _plain(b.get(column)), _plain(n.get(column))
    return Change(label, column, old, now, _relative(old, now), kind, note)


def _concurrent(row: dict) -> int | None:
    jobs = _plain(row.get("concurrent_jobs"))
    return None if jobs is None else int(jobs)


def _compare_pair(b: dict, n: dict, time_tolerance: float) -> list[Change]:
    """The cost changes of one matched pair (quality: `_score_changes`)."""
    label = _label(n)
    changes = []

    def add(column, kind, note=""):
        changes.append(_change(label, column, b, n, kind, note))

    # Measured costs, on the same hardware only, and times only from runs that had it alone.
    shared = max(_concurrent(b) or 1, _concurrent(n) or 1) > 1
    if _plain(b["device_name"]) != _plain(n["device_name"]):
        if any(not _missing(b.get(c)) and not _missing(n.get(c)) for c in MEASURED_COSTS):
            add("device_name", INFO, "time, memory and latency not comparable (device differs)")
    else:
        if shared and any(not _missing(b.get(c)) and not _missing(n.get(c)) for c in TIMED_COSTS):
            add(
                "concurrent_jobs",
                INFO,
                "not compared: shared device (time and latency timed while other jobs ran on it)",
            )
        for column, p90 in MEASURED_COSTS.items():
            if _missing(b[column]) or _missing(n[column]) or (shared and column in TIMED_COSTS):
                continue
            band = time_tolerance * b[column]
            if p90 is not None:
                band += _spread(b, column, p90) + _spread(n, column, p90)
            tolerance = f"{time_tolerance:.0%}" + (" plus p90-p50 spread" if p90 is not None else "")
            if n[column] - b[column] > band:
                add(column, REGRESSION, f"up more than {tolerance}")
            elif b[column] - n[column] > band:
                add(column, IMPROVEMENT, f"down more than {tolerance}")

    same_type = device_type(b.get("device")) == device_type(n.get("device"))
    skipped = []
    for column in EXACT_COSTS:
        if _missing(b[column]) or _missing(n[column]):
            continue
        if not same_type and column in DEVICE_TYPE_COSTS:
            skipped.append(column)
        elif n[column] > b[column]:
            add(column, REGRESSION, "exact cost rose")
        elif n[column] < b[column]:
            add(column, IMPROVEMENT, "exact cost fell")
    if skipped and any(b[c] != n[c] for c in skipped):
        add("device", INFO, f"not compared: device type differs ({', '.join(skipped)} depend on it)")
    return changes


def _spread(row: dict, p50: str, p90: str) -> float:
    """The run's own p90 - p50 gap: how much its median could move from noise alone."""
    if _missing(row[p90]):
        return 0.0
    return max(0.0, row[p90] - row[p50])


def _label(row: dict) -> str:
    return f"{row['suite']}/{row['task']} {row['method']} {row['model']} {row['seed']}"


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"
