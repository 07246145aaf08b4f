"""A sweep file -> resolved jobs -> their state in the store: what `harness sweep` hands an executor.

Every job is resolved (data located, model config read, method parsed) before the first
one starts, so a typo in job 200 is found in a second, not after a day. A job's identity
is its `job_hash`; a job whose ok row is already in the store is skipped, so running the
same sweep again resumes it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from pydantic import ValidationError

from harness.core.errors import HarnessError
from harness.engine.resolve import resolve
from harness.execution.isolated import Outcome
from harness.results.store import job_status
from harness.spec.run import ResolvedRun, RunSpec
from harness.spec.sweep_file import LoadedSweep, Resources, SweepJobSpec


@dataclass
class SweepJob:
    spec: RunSpec
    run: ResolvedRun
    resources: Resources

    @property
    def job_hash(self) -> str:
        return self.run.job_hash

    def label(self) -> str:
        return f"{self.run.suite}/{self.run.task} {self.run.method} {self.run.model} seed={self.run.seed}"


# Which RunSpec field a resolution error is about, from the words the error starts with.
_FIELD_OF_ERROR = (
    ("unknown suite", "suite"),
    ("unknown task", "task"),
    ("unknown method", "method"),
    ("method ", "method"),
    ("unknown model", "model"),
    ("model ", "model"),
    ("split ", "task"),
    ("data dir", "data_dir"),
    ("unknown preset", "preset"),
)


def resolve_jobs(loaded: LoadedSweep, results: str | None = None) -> list[SweepJob]:
    """Every job of the file, validated and resolved; the first problem names its line."""
    jobs: dict[str, SweepJob] = {}
    for job in loaded.jobs:
        resolved = resolve_job(loaded, job, results)[0]
        jobs.setdefault(resolved.job_hash, resolved)  # the same job twice in a file runs once
    return list(jobs.values())


def resolve_job(loaded: LoadedSweep, job: SweepJobSpec, results: str | None = None):
    """One job of the file, validated and resolved: (SweepJob, suite, task, pipeline, sources); a
    problem names the file's line of the key it is about."""
    values = dict(job.values)
    values.setdefault("results_dir", results or loaded.config.results or "results")
    if loaded.config.data_dir and "data_dir" not in values:
        values["data_dir"] = loaded.config.data_dir
    try:
        spec = RunSpec(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = str(err["loc"][0]) if err["loc"] else ""
        message = "unknown setting" if err["type"] == "extra_forbidden" else f"{err['msg']} (got {err.get('input')!r})"
        raise loaded.error(job.origin.get(key, ()), message) from None
    try:
        run, suite, task, pipeline, sources = resolve(spec)
    except HarnessError as exc:
        raise loaded.error(error_path(job, str(exc)), str(exc)) from None
    return SweepJob(spec, run, job.resources), suite, task, pipeline, sources


def error_path(job: SweepJobSpec, text: str):
    """The path of the file's node an error of this job is about, from the words it starts with."""
    key = next((f for prefix, f in _FIELD_OF_ERROR if text.startswith(prefix) and f in job.origin), None)
    return job.origin[key] if key else next(iter(job.origin.values()), ())


def pin_auto_device(job: SweepJob, device_type: str) -> SweepJob:
    """A job left at --device auto, resolved again for the device type it will run on where an
    executor places it (a Ray task given a GPU, a Slurm node). `auto` was resolved on this
    machine, which may have no GPU: without this the job's hash here (cpu) and its row's (cuda)
    would differ, and every resumed sweep would run it again."""
    if job.spec.device != "auto" or job.run.device_type == device_type:
        return job
    spec = job.spec.model_copy(update={"device": device_type})
    return SweepJob(spec, resolve(spec)[0], job.resources)


@dataclass
class SweepPlan:
    jobs: list[SweepJob]
    status: dict[str, str]  # job hash -> ok / failed, from the store

    def state(self, job: SweepJob) -> str:
        return self.status.get(job.job_hash, "todo")

    def todo(self, rerun_failed: bool) -> list[SweepJob]:
        """Jobs without a row; with `rerun_failed`, also those whose latest row failed. A job that
        failed is otherwise left as it is: its row says why, and re-running needs intent."""
        wanted = ("todo", "failed") if rerun_failed else ("todo",)
        return [j for j in self.jobs if self.state(j) in wanted]


def plan(loaded: LoadedSweep, results: str | None = None, overrides: dict | None = None) -> SweepPlan:
    """The sweep's jobs and their state in the store; `overrides` (timeout, retries from the
    command line) replace every job's own resources."""
    jobs = resolve_jobs(loaded, results)
    if overrides:
        for job in jobs:
            job.resources = job.resources.model_copy(update=overrides)
    return plan_of(jobs)


def plan_of(jobs: list[SweepJob]) -> SweepPlan:
    """Resolved jobs (each once) and their state in the stores they write to."""
    status: dict[str, str] = {}
    for results_dir in sorted({j.run.results_dir for j in jobs}):
        status.update(job_status(results_dir))
    return SweepPlan(list({j.job_hash: j for j in jobs}.values()), status)


_SUMMARY_WORDS = {"elsewhere": "run by another sweep", "planned": "planned, not run here"}


def summary(outcomes: list[Outcome]) -> str:
    counts = Counter(o.status for o in outcomes)
    return (
        ", ".join(f"{n} {_SUMMARY_WORDS.get(status, status)}" for status, n in sorted(counts.items()))
        or "nothing to run"
    )
