"""Every method of one store against a named baseline method: paired differences on the same examples.

Pairs. A configuration is every setting of a run but the seed (`grouping.settings`). A
configuration of another method is paired with the baseline's when all their settings are
equal except `PAIR_FREE`: the method itself (its spec, parameters and code versions), its
learning rate (each method has its own, from its paper) and the GPU model (`device_name`: the
device type still has to match, and a score does not depend on which card of a type ran it).
So suite, task, model and its weights' digest, train and eval subset sizes, epochs or steps,
batch size, sequence length, precision, few-shot count and device type all have to match. A
configuration with no such baseline configuration is listed as unpaired; one with several
(the baseline at two learning rates, say) is refused, since picking one would be silent.

Scores. Each run contributes the per-example `score` of its row's primary metric from its
predictions table (`predictions.read_predictions`), keyed by (split, example_id). All runs of a
pair must have scored the same examples; a corpus-level metric (null per-example score) is
refused, since the paired test needs a per-example score. Over the seeds both configurations
ran, `paired.paired_difference` gives the mean of method − baseline with its crossed seeds ×
examples interval and p-value. Of several runs of one configuration and seed (a re-run after
`harness store upgrade` re-keyed the first), the latest is used, as `store.latest_per_job` does.

Multiplicity. Within one task, the methods compared with the one baseline are a family: their
p-values are Holm-adjusted together (`paired.holm`), and a method whose adjusted p-value
exceeds 1 − confidence is marked "n.s." (not significantly different from the baseline). The
printed interval is each method's own, not adjusted.

Everything is read and checked before anything is computed, so bad input fails with one line.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.core.errors import HarnessError
from harness.results.grouping import differing, group_key, settings
from harness.results.paired import PairedComparison, holm, paired_difference
from harness.results.predictions import read_predictions
from harness.results.stats import check_confidence
from harness.results.store import latest_per_job, read_results
from harness.spec.method_spec import parse_pipeline

# Settings that may differ between a method's configuration and the baseline's it is paired with.
PAIR_FREE = frozenset({"method", "method_params", "method_versions", "lr", "device_name"})


@dataclass
class _Config:
    key: str
    settings: dict[str, Any]
    runs: dict[int, dict[str, Any]]  # seed -> the row of its latest run
    label: str = ""

    @property
    def method(self) -> str:
        return str(self.settings.get("method"))


@dataclass(frozen=True)
class VersusLine:
    """One method's configuration against the baseline's, on one task."""

    suite: str
    task: str
    method: str
    baseline: str
    metric: str
    seeds: tuple[int, ...]
    n_examples: int
    mean: float
    baseline_mean: float
    comparison: PairedComparison  # of method − baseline
    holm_p: float
    significant: bool


@dataclass(frozen=True)
class Versus:
    baseline: str
    confidence: float
    lines: list[VersusLine]
    unpaired: list[str]

    def table(self) -> str:
        level = f"{self.confidence:.0%}"
        head = (
            f"baseline {self.baseline}: difference = method − baseline in the primary metric, per-example scores "
            f"paired on the same examples and seeds; {level} interval over seeds × examples; p two-sided; "
            f"Holm-adjusted over the methods compared on each task; n.s. = not significantly different"
        )
        header = ("suite/task", "method", "baseline", "metric", "seeds", "examples", "mean", "base mean")
        header += ("difference", f"{level} interval", "p", "Holm p", "mark")
        body = [header] + [_cells(line) for line in self.lines]
        widths = [max(len(row[i]) for row in body) for i in range(len(header))]
        text = [head] + ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in body]
        text += [f"unpaired: {u}" for u in self.unpaired]
        return "\n".join(text)


def number(x: float) -> str:
    return f"{x:+.4f}"


def p_text(p: float) -> str:
    return f"{p:.3g}"


def mark(line: VersusLine) -> str:
    if not line.significant:
        return "n.s."
    return "higher" if line.comparison.difference > 0 else "lower"


def _cells(line: VersusLine) -> tuple[str, ...]:
    c = line.comparison
    return (
        f"{line.suite}/{line.task}",
        line.method,
        line.baseline,
        line.metric,
        ",".join(str(s) for s in line.seeds),
        str(line.n_examples),
        f"{line.mean:.4f}",
        f"{line.baseline_mean:.4f}",
        number(c.difference),
        f"[{number(c.low)}, {number(c.high)}]",
        p_text(c.p_value),
        p_text(line.holm_p),
        mark(line),
    )


def versus_store(
    results_dir: str | os.PathLike,
    baseline: str,
    *,
    task: str | None = None,
    suite: str | None = None,
    confidence: float = 0.95,
) -> Versus:
    """Each other method's configurations in the store against the baseline method's (module doc)."""
    check_confidence(confidence)
    wanted = _canonical(baseline, "--versus")
    root = Path(results_dir)
    if not root.is_dir():
        raise HarnessError(f"results folder {str(root)!r} does not exist")
    rows = read_results(root)
    rows = latest_per_job(rows[rows["status"] == "ok"]) if not rows.empty else rows
    if suite is not None:
        rows = rows[rows["suite"] == suite]
    if task is not None:
        rows = rows[rows["task"] == task]
    where = " ".join(f"--{k} {v}" for k, v in (("suite", suite), ("task", task)) if v is not None)
    if rows.empty:
        raise HarnessError(f"no successful run in {str(root)!r}{' for ' + where if where else ''}")
    if not (root / "_predictions").is_dir():
        raise HarnessError(
            f"{str(root)!r} has no predictions tables (_predictions/); they are written by this version of the "
            "harness: run the jobs again to compare methods example by example"
        )
    configs = _configurations(rows)
    base_configs = [c for c in configs if _matches(c.method, wanted)]
    if not base_configs:
        methods = ", ".join(sorted({c.method for c in configs}))
        raise HarnessError(
            f"no run of the baseline {baseline!r} in {str(root)!r}{' for ' + where if where else ''} (methods: {methods})"
        )
    pairs, unpaired = _pairs([c for c in configs if not _matches(c.method, wanted)], base_configs)
    if not pairs:
        raise HarnessError(
            f"no configuration of another method shares the settings of a {baseline!r} configuration "
            f"({len(unpaired)} unpaired); see harness/results/versus.py for the settings that must match"
        )
    loaded = [_load_pair(root, other, base) for other, base in pairs]  # every check before any statistic
    lines = _lines(loaded, confidence)
    return Versus(baseline, confidence, lines, unpaired)


def _canonical(method: str, what: str) -> str:
    if not method.strip():
        raise HarnessError(f"{what} needs a method, e.g. `{what} lora`")
    return "+".join(str(step) for step in parse_pipeline(method))


def _matches(method: str, wanted: str) -> bool:
    """`lora` names every LoRA configuration; `lora:r=8` only that one (parameters in any order)."""
    steps = parse_pipeline(method)
    if ":" not in wanted and "+".join(s.name for s in steps) == wanted:
        return True
    return "+".join(str(s) for s in steps) == wanted


def _configurations(rows: pd.DataFrame) -> list[_Config]:
    ordered = rows.sort_values(["created_at", "run_id"], kind="mergesort")
    by_key: dict[str, _Config] = {}
    for row in ordered.to_dict("records"):
        key = group_key(row)
        config = by_key.setdefault(key, _Config(key, settings(row), {}))
        config.runs[int(row["seed"])] = row  # later rows replace earlier ones: the latest run wins
    configs = list(by_key.values())
    for config, extra in zip(configs, differing([c.settings for c in configs])):
        config.label = config.method + (f" {extra}" if extra else "")
    return configs


def _pair_key(values: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in values.items() if k not in PAIR_FREE}, sort_keys=True, default=str)


def _pairs(others: list[_Config], bases: list[_Config]) -> tuple[list[tuple[_Config, _Config]], list[str]]:
    by_key: dict[str, list[_Config]] = defaultdict(list)
    for base in bases:
        by_key[_pair_key(base.settings)].append(base)
    pairs, unpaired = [], []
    for other in others:
        matches = by_key.get(_pair_key(other.settings), [])
        where = f"{other.settings.get('suite')}/{other.settings.get('task')}"
        if not matches:
            unpaired.append(f"{where} {other.label}: no baseline configuration with the same settings")
            continue
        if len(matches) > 1:
            names = "; ".join(m.label for m in matches)
            raise HarnessError(
                f"{where} {other.label}: {len(matches)} baseline configurations match it ({names}); "
                "name one with --versus METHOD:PARAMS or keep one of them in the store"
            )
        base = matches[0]
        if not set(other.runs) & set(base.runs):
            raise HarnessError(
                f"{where}: {other.label} (seeds {sorted(other.runs)}) and {base.label} (seeds {sorted(base.runs)}) "
                "have no seed in common; the paired test needs runs of both with the same seed"
            )
        pairs.append((other, base))
    return pairs, unpaired


def _run_name(row: dict[str, Any]) -> str:
    return f"{row['job_hash']}-{row['run_id']} ({row['method']}, seed {row['seed']})"


def _scores(root: Path, row: dict[str, Any]) -> pd.Series:
    """A run's per-example scores of its row's primary metric, indexed by (split, example_id), sorted."""
    table = read_predictions(root, row["job_hash"], row["run_id"])
    metric = row["metric"]
    mine = table[table["metric"] == metric]
    if mine.empty:
        found = ", ".join(sorted(set(table["metric"].dropna()))) or "none"
        raise HarnessError(f"run {_run_name(row)} has no per-example scores of its metric {metric!r} (found: {found})")
    if mine["score"].isna().any():
        raise HarnessError(
            f"metric {metric!r} of run {_run_name(row)} is corpus-level (no per-example score); "
            "the paired test needs a per-example score such as accuracy or exact match"
        )
    scores = mine.set_index(["split", "example_id"])["score"].astype(float)
    if scores.index.duplicated().any():
        split, example = scores.index[scores.index.duplicated()][0]
        raise HarnessError(f"run {_run_name(row)} scored example {example} of {split} twice under {metric!r}")
    return scores.sort_index()


@dataclass(frozen=True)
class _Loaded:
    other: _Config
    base: _Config
    seeds: tuple[int, ...]
    ids: list[tuple[str, int]]
    a: np.ndarray  # (seeds, examples) of the other method
    b: np.ndarray  # the baseline's


def _load_pair(root: Path, other: _Config, base: _Config) -> _Loaded:
    seeds = tuple(sorted(set(other.runs) & set(base.runs)))
    where = f"{other.settings.get('suite')}/{other.settings.get('task')}"
    metric_a, metric_b = other.runs[seeds[0]]["metric"], base.runs[seeds[0]]["metric"]
    if metric_a != metric_b:
        raise HarnessError(f"{where}: {other.label} is scored by {metric_a!r}, {base.label} by {metric_b!r}")
    rows = [other.runs[s] for s in seeds] + [base.runs[s] for s in seeds]
    series = [_scores(root, row) for row in rows]
    first, ids = rows[-len(seeds)], series[-len(seeds)].index  # the baseline's first seed is the reference
    for row, scores in zip(rows, series):
        if not scores.index.equals(ids):
            extra = scores.index.difference(ids)
            missing = ids.difference(scores.index)
            which = f"{len(extra)} only in the first, {len(missing)} only in the second"
            raise HarnessError(
                f"runs {_run_name(row)} and {_run_name(first)} scored different examples ({which}); "
                "the paired test needs the same evaluation examples in every run"
            )
    matrix = np.vstack([s.to_numpy() for s in series])
    return _Loaded(other, base, seeds, list(ids), matrix[: len(seeds)], matrix[len(seeds) :])


def _lines(loaded: list[_Loaded], confidence: float) -> list[VersusLine]:
    comparisons = [paired_difference(p.a, p.b, ids_a=p.ids, ids_b=p.ids, confidence=confidence) for p in loaded]
    families: dict[tuple, list[int]] = defaultdict(list)
    for i, p in enumerate(loaded):
        families[(p.base.settings.get("suite"), p.base.settings.get("task"), p.base.key)].append(i)
    adjusted = np.empty(len(loaded))
    for members in families.values():
        adjusted[members] = holm([comparisons[i].p_value for i in members])
    alpha = 1 - confidence
    lines = []
    for p, c, h in zip(loaded, comparisons, adjusted):
        lines.append(
            VersusLine(
                suite=str(p.other.settings.get("suite")),
                task=str(p.other.settings.get("task")),
                method=p.other.label,
                baseline=p.base.label,
                metric=str(p.other.runs[p.seeds[0]]["metric"]),
                seeds=p.seeds,
                n_examples=len(p.ids),
                mean=float(p.a.mean()),
                baseline_mean=float(p.b.mean()),
                comparison=c,
                holm_p=float(h),
                significant=bool(h <= alpha),
            )
        )
    return sorted(lines, key=lambda line: (line.suite, line.task, line.comparison.p_value, line.method))
