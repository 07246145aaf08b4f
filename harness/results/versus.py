"""Every method of one store against a named baseline method: paired differences on the same examples.

Pairs. A configuration is every setting of a run but the seed (`grouping.settings`). A
configuration of another method is paired with the baseline's when all their settings are
equal except `PAIR_FREE`: the method itself (its spec, parameters and code versions), its
learning rate (each method has its own, from its paper) and the GPU model (`device_name`: the
device type still has to match, and a score does not depend on which card of a type ran it).
So suite, task, model and its weights' digest, train and eval subset sizes, epochs or steps,
batch size, sequence length, precision, few-shot count and device type all have to match. The
tuning group of `harness tune` and the values it picked (`tuned`) are free too: the finals of two
methods come from two groups but ran the same protocol (the same selection split and head learning rate, which must match). A
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

Trials. The trials of `harness tune` are scored on the selection split, not on the reported
one; they are left out, so a method's finals are compared with the baseline's finals (a trial and
a final never pair anyway: their `evaluate_on` differs).

The same pairing, loading and statistics mark a report's leaderboard lines against the task's
best line (`against_best`): there a line that cannot be paired gets the reason instead of a mark.

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
# The tuning group and what it picked (`tuned`, in the config of a final) differ between the
# finals of two methods like the method does; tuning_role is not in a row's config today, listed
# so that it never splits finals if it gets there.
PAIR_FREE = frozenset(
    {"method", "method_params", "method_versions", "lr", "device_name", "tuning_group", "tuning_role", "tuned"}
)


@dataclass
class Configuration:
    key: str
    settings: dict[str, Any]
    runs: dict[int, dict[str, Any]]  # seed -> the row of its latest run
    label: str = ""

    @property
    def method(self) -> str:
        return str(self.settings.get("method"))

    @property
    def where(self) -> str:
        return f"{self.settings.get('suite')}/{self.settings.get('task')}"


def _value(row: dict[str, Any], column: str) -> Any:
    value = row.get(column)
    return None if value is None or (isinstance(value, float) and value != value) else value


def _config_of(row: dict[str, Any]) -> dict[str, Any]:
    try:
        config = json.loads(row.get("config") or "{}")
    except (TypeError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def tuning_group(row: dict[str, Any]) -> str | None:
    """The row's tuning group: its column, else its config's (rows of a schema without the column)."""
    group = _value(row, "tuning_group")
    return str(group) if group is not None else _config_of(row).get("tuning_group")


def scored_on_selection(row: dict[str, Any]) -> bool:
    """Whether the row's score is on the selection split (a tuning trial), not the reported one."""
    if _value(row, "tuning_role") is not None:
        return row["tuning_role"] == "trial"
    return _value(row, "eval_split") == "selection" or _config_of(row).get("evaluate_on") == "selection"


def tuning_role(row: dict[str, Any]) -> str | None:
    """ "trial", "final" or None (a plain run): the column, else read from the config."""
    role = _value(row, "tuning_role")
    if role is not None:
        return str(role)
    if scored_on_selection(row):
        return "trial"
    return "final" if tuning_group(row) is not None else None


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
    if not rows.empty:
        rows = rows[[not scored_on_selection(r) for r in rows.to_dict("records")]]
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
    configs = configurations(rows)
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
    loaded = [load_pair(root, other, base) for other, base in pairs]  # every check before any statistic
    lines = sorted(
        compare(loaded, confidence), key=lambda line: (line.suite, line.task, line.comparison.p_value, line.method)
    )
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


def configurations(rows: pd.DataFrame) -> list[Configuration]:
    """The rows' configurations, each labelled by its method and the settings that set it apart."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows.sort_values(["created_at", "run_id"], kind="mergesort").to_dict("records"):
        groups.setdefault(group_key(row), []).append(row)
    configs = [configuration(key, runs) for key, runs in groups.items()]
    for config, extra in zip(configs, differing([c.settings for c in configs])):
        config.label = config.method + (f" {extra}" if extra else "")
    return configs


def configuration(key: str, runs: list[dict[str, Any]], label: str = "") -> Configuration:
    """One configuration's runs (rows of one `group_key`) by seed; of several runs of a seed the
    latest, by (created_at, run_id). A run without a seed pairs with none."""
    config = Configuration(key, settings(runs[0]), {}, label)
    for row in sorted(runs, key=lambda r: (r.get("created_at") is not None, r.get("created_at"), str(r["run_id"]))):
        if row.get("seed") is not None:
            config.runs[int(row["seed"])] = row  # later rows replace earlier ones: the latest run wins
    return config


def pair_key(values: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in values.items() if k not in PAIR_FREE}, sort_keys=True, default=str)


def _no_common_seed(other: Configuration, base: Configuration) -> str | None:
    if set(other.runs) & set(base.runs):
        return None
    return (
        f"{other.where}: {other.label} (seeds {sorted(other.runs)}) and {base.label} (seeds {sorted(base.runs)}) "
        "have no seed in common; the paired test needs runs of both with the same seed"
    )


def _setting_text(value: Any) -> str:
    return "–" if value is None else json.dumps(value, sort_keys=True, default=str).strip('"')


def unpairable(other: Configuration, base: Configuration) -> str | None:
    """Why the two configurations cannot be compared by the paired test before any file is read, or None."""
    if pair_key(other.settings) != pair_key(base.settings):
        names = sorted(
            k
            for k in set(other.settings) | set(base.settings)
            if k not in PAIR_FREE and _setting_text(other.settings.get(k)) != _setting_text(base.settings.get(k))
        )
        shown = ", ".join(
            f"{k} {_setting_text(other.settings.get(k))} vs {_setting_text(base.settings.get(k))}" for k in names[:3]
        )
        more = f" and {len(names) - 3} more" if len(names) > 3 else ""
        return f"settings other than method and learning rate differ: {shown}{more}"
    return _no_common_seed(other, base)


def _pairs(
    others: list[Configuration], bases: list[Configuration]
) -> tuple[list[tuple[Configuration, Configuration]], list[str]]:
    by_key: dict[str, list[Configuration]] = defaultdict(list)
    for base in bases:
        by_key[pair_key(base.settings)].append(base)
    pairs, unpaired = [], []
    for other in others:
        matches = by_key.get(pair_key(other.settings), [])
        where = other.where
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
        problem = _no_common_seed(other, base)
        if problem:
            raise HarnessError(problem)
        pairs.append((other, base))
    return pairs, unpaired


def _run_name(row: dict[str, Any]) -> str:
    return f"{row['job_hash']}-{row['run_id']} ({row['method']}, seed {row['seed']})"


def scores_of(root: Path, row: dict[str, Any]) -> pd.Series:
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
class LoadedPair:
    other: Configuration
    base: Configuration
    seeds: tuple[int, ...]
    ids: list[tuple[str, int]]
    a: np.ndarray  # (seeds, examples) of the other method
    b: np.ndarray  # the baseline's


def load_pair(root: Path, other: Configuration, base: Configuration, scores=None) -> LoadedPair:
    """Both configurations' per-example scores on the seeds they share; HarnessError (one line) when
    they cannot be paired: another metric, a run without predictions, different examples."""
    scores = scores or scores_of
    seeds = tuple(sorted(set(other.runs) & set(base.runs)))
    where = other.where
    metric_a, metric_b = other.runs[seeds[0]]["metric"], base.runs[seeds[0]]["metric"]
    if metric_a != metric_b:
        raise HarnessError(f"{where}: {other.label} is scored by {metric_a!r}, {base.label} by {metric_b!r}")
    rows = [other.runs[s] for s in seeds] + [base.runs[s] for s in seeds]
    series = [scores(root, row) for row in rows]
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
    return LoadedPair(other, base, seeds, list(ids), matrix[: len(seeds)], matrix[len(seeds) :])


def compare(loaded: list[LoadedPair], confidence: float) -> list[VersusLine]:
    """The paired difference of each pair, Holm-adjusted over the pairs with one baseline
    configuration on one task; in the order of `loaded`."""
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
    return lines


@dataclass(frozen=True)
class BestMark:
    """A leaderboard line's mark against the task's best line: "best", "n.s." (not significantly
    different from it) or "" (significantly different, or not tested), and why, for its title."""

    text: str
    title: str
    p_value: float | None = None
    holm_p: float | None = None


def _difference_text(line: VersusLine) -> str:
    c = line.comparison
    level = f"{c.confidence:.0%}"
    return (
        f"difference {number(c.difference)}, {level} interval [{number(c.low)}, {number(c.high)}], "
        f"p={p_text(c.p_value)}, Holm p={p_text(line.holm_p)}, seeds {','.join(map(str, line.seeds))} x "
        f"{line.n_examples} examples"
    )


def against_best(
    root: str | os.PathLike, configs: list[Configuration], confidence: float = 0.95, higher_is_better: bool = True
) -> list[BestMark]:
    """Each configuration against the first (the task's best line by its mean: the highest, or the
    lowest where the score is lower-is-better): the same pairing, loading and paired test as
    `versus_store`, Holm-adjusted over the lines that could be paired with the best. A line that
    cannot be paired gets no mark and the reason, never a guess."""
    check_confidence(confidence)
    if not configs:
        return []
    root = Path(root)
    best = configs[0]
    memo: dict[tuple[str, str], pd.Series | HarnessError] = {}

    def scores(folder: Path, row: dict[str, Any]) -> pd.Series:
        # the best line's runs are read once, not once per line compared with it
        key = (str(row["job_hash"]), str(row["run_id"]))
        if key not in memo:
            try:
                memo[key] = scores_of(folder, row)
            except HarnessError as exc:
                memo[key] = exc
        if isinstance(memo[key], HarnessError):
            raise memo[key]
        return memo[key]

    marks: list[BestMark | None] = [None] * len(configs)
    marks[0] = BestMark(
        "best",
        "the best mean of the task; every other line is tested against it with the paired test on the same "
        "examples and seeds, Holm-adjusted over the lines tested",
    )
    loaded: list[tuple[int, LoadedPair]] = []
    for i, other in enumerate(configs[1:], 1):
        problem = unpairable(other, best)
        if problem is None:
            try:
                loaded.append((i, load_pair(root, other, best, scores)))
            except HarnessError as exc:
                problem = str(exc)
        if problem is not None:
            marks[i] = BestMark("", f"not tested against the best line: {problem}")
    lines = compare([pair for _, pair in loaded], confidence) if loaded else []
    # The difference is line - best: below the best line is worse unless a lower score is better.
    worse, better = ("below", "above") if higher_is_better else ("above", "below")
    why = "" if higher_is_better else " (lower is better)"
    for (i, _), line in zip(loaded, lines):
        detail = _difference_text(line)
        p, h = line.comparison.p_value, line.holm_p
        if not line.significant:
            marks[i] = BestMark("n.s.", f"not significantly different from the best line: {detail}", p, h)
        elif (line.comparison.difference < 0) == higher_is_better:
            marks[i] = BestMark("", f"significantly {worse} the best line{why}: {detail}", p, h)
        else:  # possible when the line shares only some of the best line's seeds
            marks[i] = BestMark(
                "",
                f"significantly {better} the best line on the seeds both ran{why}, {worse} it by its "
                f"mean over all its seeds: {detail}",
                p,
                h,
            )
    return [m for m in marks if m is not None]


def crossed_interval(root: str | os.PathLike, runs: list[dict[str, Any]], confidence: float = 0.95):
    """One configuration's mean over its seeds and the evaluation examples with an interval that
    counts both the seeds' spread and the evaluation set's own sampling (stats.crossed_mean_ci),
    from its runs' predictions; (None, why) when they are missing or scored different examples."""
    from harness.results.stats import crossed_mean_ci

    try:
        series = [scores_of(Path(root), row) for row in runs]
    except HarnessError as exc:
        return None, str(exc)
    if any(not s.index.equals(series[0].index) for s in series[1:]):
        return None, "its seeds scored different examples"
    return crossed_mean_ci(np.vstack([s.to_numpy() for s in series]), confidence), ""
