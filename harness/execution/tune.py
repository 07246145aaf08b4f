"""`harness tune`: the fair-comparison protocol over a sweep file's `tune:` block.

Every job of the file's grid and runs is a tuning group (one method on one task, budget and
model). Each group gets the same number of trials (harness/spec/tuning.py): each trial trains on
the training subset at one point of the group's search space and is scored on the selection split,
held out of the training split with a fixed seed (or the suite's own, VTAB-1k's val200). The best
trial by selection score is picked; its configuration then runs once per final seed, scored on the
reported split. Nothing here reads a reported-split score to choose anything.

Trials and finals are jobs like any sweep's: planned and resolved before the first one starts
(every bad input is one line first), run by the chosen executor, each in its own process, stored
with their `tuning_group` and `tuning_role`, skipped when already done. So running the same file
again resumes the protocol; an executor that only plans (commands, Slurm) plans the trials, and
running the file again once they are done picks and plans the finals. Each group's record (its
points, every trial's selection score, the pick, the finals) is <results>/_tuning/<group>.json.

A tie between trials goes to the point nearest the method's default rate on a log scale, then to
the lower rate: an order fixed before any score is seen.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.core.atomic import atomic_write
from harness.core.errors import HarnessError
from harness.execution.plan import SweepJob, error_path, plan_of, resolve_job
from harness.results.store import latest_per_job, read_results
from harness.results.values import missing, score_direction
from harness.spec.method_spec import MethodStep, parse_pipeline
from harness.spec.run import RUN_OPTIONS
from harness.spec.subsets import check_selection_fits, selection_rule
from harness.spec.sweep_file import LoadedSweep, SweepJobSpec
from harness.spec.tuning import SET_BY_TUNING, TuneBlock, group_id, search_points
from harness.suites.base import row_count

TUNING_DIR = "_tuning"


@dataclass
class Trial:
    point: dict[str, Any]  # lr and the method's searched parameters
    job: SweepJob


@dataclass
class TuningGroup:
    id: str
    label: str
    base: SweepJobSpec  # the file's job, without anything tuning sets
    default_lr: float
    selection_samples: int | None
    trials: list[Trial]
    results_dir: str
    finals: list[SweepJob] = field(default_factory=list)
    picked: dict[str, Any] | None = None

    def record(self, scores: dict[str, float | None], metric: str | None) -> dict[str, Any]:
        return {
            "group": self.id,
            "label": self.label,
            "default_lr": self.default_lr,
            "selection_samples": self.selection_samples,
            "metric": metric,
            "trials": [
                {"point": t.point, "job_hash": t.job.job_hash, "selection_score": scores.get(t.job.job_hash)}
                for t in self.trials
            ],
            "picked": self.picked,
            "finals": [{"seed": f.run.seed, "job_hash": f.job_hash} for f in self.finals],
        }


def tune_block(loaded: LoadedSweep) -> TuneBlock:
    if loaded.config.tune is None:
        raise HarnessError(f"{loaded.file}: no `tune:` block; add one (harness/spec/tuning.py) or run `harness sweep`")
    return loaded.config.tune


def plan_groups(loaded: LoadedSweep, results: str | None = None) -> list[TuningGroup]:
    """Every group of the file with its trials, resolved (every bad input raised now, naming its line)."""
    block = tune_block(loaded)
    methods = {str(job.values.get("method")) for job in loaded.jobs}
    for name in block.space:
        if name not in methods:
            raise loaded.error(
                ("tune", "space", name), f"no job of the file has method {name!r} ({', '.join(sorted(methods))})"
            )
    groups: dict[str, TuningGroup] = {}
    for job in loaded.jobs:
        for key in SET_BY_TUNING:
            if key in job.values:
                raise loaded.error(job.origin[key], f"{key} is set by tuning (tune: block); leave it out of the jobs")
        base, suite, task, _, sources = resolve_job(loaded, job, results)
        if not base.run.lr or base.run.lr <= 0:
            raise loaded.error(
                job.origin.get("method", ()), f"method {base.run.method!r} trains nothing: there is nothing to tune"
            )
        method = str(job.values["method"])
        try:
            points = search_points(base.run.lr, block.trials, block.space.get(method, {}), seed=block.trial_seed)
        except ValueError as exc:
            raise loaded.error(
                ("tune", "space", method) if method in block.space else ("tune", "trials"), str(exc)
            ) from None
        selection = _selection_size(loaded, job, block, base, suite, task, sources)
        identity = {
            k: v for k, v in job.values.items() if RUN_OPTIONS.get(k) is None or RUN_OPTIONS[k].identity != "never"
        }
        gid = group_id(identity, points, selection, block)
        if gid in groups:
            continue  # the same job twice in a file is one group
        label = f"{base.run.suite}/{base.run.task} {base.run.method} {base.run.model}"
        trials = []
        for point in points:
            values = {
                **_with_point(job.values, point),
                "seed": block.trial_seed,
                "evaluate_on": "selection",
                "selection_samples": selection,
                "tuning_group": gid,
                "head_lr": block.head_lr,
            }
            trial = resolve_job(loaded, SweepJobSpec(values, job.origin, job.resources), results)
            suite.check_selection(trial[0].run)
            trials.append(Trial(point, trial[0]))
        groups[gid] = TuningGroup(gid, label, job, base.run.lr, selection, trials, base.run.results_dir)
    return list(groups.values())


def _selection_size(loaded, job, block: TuneBlock, base: SweepJob, suite, task, sources) -> int | None:
    """The group's selection split size: None where the suite has its own; else the block's, or
    the rule's from the training split's size; checked to fit beside the training subset."""
    where = (
        ("tune", "selection_samples")
        if block.selection_samples
        else job.origin.get("max_train_samples", job.origin.get("suite", ()))
    )
    if suite.no_selection:
        raise loaded.error(
            job.origin.get("suite", ()), f"suite {suite.name!r} has no selection split: {suite.no_selection}"
        )
    if suite.own_selection:
        if block.selection_samples is not None:
            raise loaded.error(
                where,
                f"suite {suite.name!r} has its own selection split ({suite.own_selection}); leave selection_samples out",
            )
        return None
    total = row_count(sources[task.train_split])
    if total is None:  # the hub: its size is known once loaded, where the job checks it
        if block.selection_samples is None:
            raise loaded.error(
                job.origin.get("suite", ()),
                "the training split comes from the hub, so its size is not known to plan a selection split: "
                "give tune.selection_samples, or use a local mirror (--data-dir)",
            )
        return block.selection_samples
    selection = block.selection_samples or selection_rule(total)
    try:
        check_selection_fits(total, base.run.max_train_samples, selection)
    except HarnessError as exc:
        raise loaded.error(where, str(exc)) from None
    return selection


def _with_point(values: dict[str, Any], point: dict[str, Any]) -> dict[str, Any]:
    """A job's values at one search point: the rate, and the method's parameters set on its last step."""
    out = {**values, "lr": point["lr"]}
    params = {k: v for k, v in point.items() if k != "lr"}
    if params:
        steps = parse_pipeline(str(values["method"]))
        last = steps[-1]
        steps[-1] = MethodStep(last.name, {**last.params, **params})
        out["method"] = "+".join(str(s) for s in steps)
    return out


def trial_scores(groups: list[TuningGroup]) -> tuple[dict[str, float | None], dict[str, str], dict[str, str]]:
    """Each trial's selection score (None: its run failed), its metric, and its store state, from the store."""
    scores, metrics, states = {}, {}, {}
    for results_dir in sorted({g.results_dir for g in groups}):
        if not Path(results_dir).is_dir():
            continue
        rows = read_results(results_dir, columns=["job_hash", "status", "score", "metric", "created_at", "run_id"])
        if rows.empty:
            continue
        for row in latest_per_job(rows).to_dict("records"):
            states[row["job_hash"]] = row["status"]
            if row["status"] == "ok":
                scores[row["job_hash"]] = None if missing(row["score"]) else float(row["score"])
                metrics[row["job_hash"]] = row["metric"]
    return scores, metrics, states


def pick(group: TuningGroup, scores: dict[str, float | None], higher_is_better: bool = True) -> dict[str, Any] | None:
    """The best trial's point by selection score (the highest, or the lowest where the metric is
    lower-is-better, a perplexity), ties broken by nearness to the default rate, then the lower
    rate; None until every trial has a row."""
    done = [(t, scores.get(t.job.job_hash)) for t in group.trials]
    if any(t.job.job_hash not in scores for t in group.trials):
        return None
    scored = [(t, s) for t, s in done if s is not None]
    if not scored:
        return None
    default = math.log(group.default_lr)
    sign = -1.0 if higher_is_better else 1.0  # min over sign * score is the best score
    best = min(scored, key=lambda ts: (sign * ts[1], abs(math.log(ts[0].point["lr"]) - default), ts[0].point["lr"]))
    return dict(best[0].point)


def trial_directions(groups: list[TuningGroup]) -> dict[str, bool]:
    """Per group, whether a higher selection score is better, from its trials' successful rows
    (a row without the column, or a group with none yet: higher)."""
    directions: dict[str, bool] = {}
    for results_dir in sorted({g.results_dir for g in groups}):
        if not Path(results_dir).is_dir():
            continue
        rows = read_results(results_dir, columns=["job_hash", "status", "higher_is_better", "created_at", "run_id"])
        if rows.empty:
            continue
        latest = latest_per_job(rows)
        ok = latest[latest["status"] == "ok"]
        by_job = dict(zip(ok["job_hash"], ok["higher_is_better"]))
        for group in groups:
            if group.results_dir == results_dir:
                values = [by_job[t.job.job_hash] for t in group.trials if t.job.job_hash in by_job]
                directions[group.id] = score_direction(values, group.label)
    return directions


def plan_finals(loaded: LoadedSweep, group: TuningGroup, block: TuneBlock, results: str | None) -> list[SweepJob]:
    assert group.picked is not None
    job = group.base
    finals = []
    for seed in block.seeds:
        values = {
            **_with_point(job.values, group.picked),
            "seed": seed,
            "selection_samples": group.selection_samples,
            "tuning_group": group.id,
            "head_lr": block.head_lr,
            "tuned": group.picked,
        }
        try:
            finals.append(resolve_job(loaded, SweepJobSpec(values, job.origin, job.resources), results)[0])
        except HarnessError as exc:  # already resolved as trials: only a change on disk gets here
            raise loaded.error(error_path(job, str(exc)), str(exc)) from None
    return finals


def write_record(group: TuningGroup, scores: dict[str, float | None], metric: str | None) -> Path:
    folder = Path(group.results_dir) / TUNING_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{group.id}.json"
    with atomic_write(path, "w") as f:
        json.dump(group.record(scores, metric), f, indent=2, sort_keys=True)
    return path


@dataclass
class TuneRun:
    """What one `harness tune` invocation did: the outcomes of both rounds and the seconds the
    protocol's own work took (planning, picking, records), apart from the jobs' own time."""

    groups: list[TuningGroup]
    outcomes: list = field(default_factory=list)
    protocol_seconds: float = 0.0
    job_seconds: float = 0.0
    waiting: list[str] = field(default_factory=list)  # groups that could not pick yet, and why


def run_tuning(
    loaded: LoadedSweep,
    executor,
    resources,
    results: str | None = None,
    *,
    rerun_failed: bool = False,
    quiet: bool = False,
    dry_run: bool = False,
    report=print,
) -> TuneRun:
    """Trials, picks, finals (module doc); `report` gets one line per stage."""
    block = tune_block(loaded)
    clock = time.perf_counter()
    groups = plan_groups(loaded, results)
    trial_jobs = [t.job for g in groups for t in g.trials]
    result = TuneRun(groups)
    plan = plan_of(trial_jobs)
    todo = plan.todo(rerun_failed)
    report(
        f"{len(groups)} tuning groups x {block.trials} trials = {len(trial_jobs)} trials: "
        f"{len(trial_jobs) - len(todo)} done, {len(todo)} to run"
    )
    result.protocol_seconds += time.perf_counter() - clock
    if dry_run:
        return result
    if todo:
        started = time.perf_counter()
        result.outcomes += executor.run(todo, resources, quiet=quiet)
        result.job_seconds += time.perf_counter() - started
    clock = time.perf_counter()
    scores, metrics, states = trial_scores(groups)
    directions = trial_directions(groups)
    final_jobs = []
    for group in groups:
        group.picked = pick(group, scores, directions.get(group.id, True))
        if group.picked is None:
            missing = sum(1 for t in group.trials if states.get(t.job.job_hash) != "ok")
            result.waiting.append(f"{group.label}: {missing} of {len(group.trials)} trials have no successful row yet")
            continue
        group.finals = plan_finals(loaded, group, block, results)
        final_jobs += group.finals
        metric = next((metrics[t.job.job_hash] for t in group.trials if t.job.job_hash in metrics), None)
        write_record(group, scores, metric)
        report(f"{group.label}: picked {_point_text(group.picked)} on the selection split")
    plan = plan_of(final_jobs)
    todo = plan.todo(rerun_failed)
    report(f"{len(final_jobs)} final runs: {len(final_jobs) - len(todo)} done, {len(todo)} to run")
    result.protocol_seconds += time.perf_counter() - clock
    if todo:
        started = time.perf_counter()
        result.outcomes += executor.run(todo, resources, quiet=quiet)
        result.job_seconds += time.perf_counter() - started
    # The records were written with the picks: the trials' scores and the finals' hashes are all
    # they hold, and running the finals changes neither.
    return result


def _point_text(point: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in point.items())
