"""`harness sweep`: a sweep file -> resolved jobs -> the ones not done yet -> an executor.

Every job is resolved (data located, model config read, method parsed) before the first
one starts, so a typo in job 200 is found in a second, not after a day. A job's identity
is its `job_hash`; a job whose ok row is already in the store is skipped, so running the
same sweep again resumes it.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

from pydantic import ValidationError

from harness.core.errors import HarnessError
from harness.engine.resolve import resolve
from harness.execution.isolated import Outcome, execute_isolated, kill_all
from harness.results.store import job_status, read_store
from harness.spec.run import ResolvedRun, RunSpec
from harness.spec.sweep_file import LoadedSweep, Resources, load_sweep


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
        values = dict(job.values)
        values.setdefault("results_dir", results or loaded.config.results or "results")
        if loaded.config.data_dir and "data_dir" not in values:
            values["data_dir"] = loaded.config.data_dir
        try:
            spec = RunSpec(**values)
        except ValidationError as exc:
            err = exc.errors()[0]
            key = str(err["loc"][0]) if err["loc"] else ""
            message = (
                "unknown setting" if err["type"] == "extra_forbidden" else f"{err['msg']} (got {err.get('input')!r})"
            )
            raise loaded.error(job.origin.get(key, ()), message) from None
        try:
            run = resolve(spec)[0]
        except HarnessError as exc:
            text = str(exc)
            key = next((f for prefix, f in _FIELD_OF_ERROR if text.startswith(prefix) and f in job.origin), None)
            path = job.origin[key] if key else next(iter(job.origin.values()), ())
            raise loaded.error(path, text) from None
        jobs.setdefault(run.job_hash, SweepJob(spec, run, job.resources))  # the same job twice in a file runs once
    return list(jobs.values())


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
    status: dict[str, str] = {}
    for results_dir in sorted({j.run.results_dir for j in jobs}):
        status.update(job_status(results_dir))
    return SweepPlan(jobs, status)


@dataclass
class Progress:
    """Counts for the live display, and a time-left estimate from the jobs done so far."""

    total: int
    slots: int
    done: int = 0
    failed: int = 0
    running: int = 0
    started: float = field(default_factory=time.perf_counter)
    seconds: list[float] = field(default_factory=list)

    @property
    def queued(self) -> int:
        return self.total - self.done - self.failed - self.running

    def eta_seconds(self) -> float | None:
        if not self.seconds:
            return None
        mean = sum(self.seconds) / len(self.seconds)
        return mean * (self.queued + self.running / 2) / max(1, self.slots)

    def line(self) -> str:
        eta = self.eta_seconds()
        left = "?" if eta is None else time.strftime("%H:%M:%S", time.gmtime(eta))
        return (
            f"done {self.done} · running {self.running} · failed {self.failed} · queued {self.queued} "
            f"· {time.perf_counter() - self.started:.0f}s elapsed · about {left} left"
        )


def device_slots(devices: list[str] | None, jobs_per_device: int, max_parallel: int | None) -> list[str | None]:
    """One CUDA_VISIBLE_DEVICES value per slot: each GPU `jobs_per_device` times; on CPU one
    slot (jobs would only fight over the cores and spoil each other's timings) unless
    --max-parallel says otherwise."""
    if devices:
        slots: list[str | None] = [d for d in devices for _ in range(jobs_per_device)]
    else:
        slots = [None]
    if max_parallel:
        slots = (slots * max_parallel)[:max_parallel] if devices else [None] * max_parallel
    return slots


def run_local(
    jobs: list[SweepJob],
    slots: list[str | None],
    on_update: Callable[[Progress, SweepJob | None, Outcome | None], None] | None = None,
) -> list[Outcome]:
    """Each job in its own process, one per slot; a failed attempt is retried as often as the
    job's resources say.
    Ctrl-C kills every running job and re-raises: nothing half-written is left, and the
    interrupted jobs are simply not done."""
    progress = Progress(total=len(jobs), slots=len(slots))
    # Jobs timed on a device that other slots share are not clean timings; the row says so.
    sharing = Counter(slots)
    planned_at = datetime.now(timezone.utc)
    queue = [(job, 0) for job in jobs]
    free = list(slots)
    outcomes: list[Outcome] = []
    pool = ThreadPoolExecutor(max_workers=len(slots))
    running: dict[Future, tuple[SweepJob, int, str | None]] = {}
    try:
        while queue or running:
            while queue and free:
                job, attempt = queue.pop(0)
                slot = free.pop(0)
                future = pool.submit(
                    execute_isolated,
                    job.spec,
                    job.run,
                    timeout=job.resources.timeout,
                    memory_limit_gb=job.resources.memory_limit_gb,
                    cuda_devices=slot,
                    # A retry follows this sweep's own failed row, written after planning.
                    concurrent_jobs=sharing[slot],
                    planned_at=planned_at if attempt == 0 else None,
                )
                running[future] = (job, attempt, slot)
                progress.running += 1
                if on_update:
                    on_update(progress, job, None)
            finished, _ = wait(list(running), timeout=0.5, return_when=FIRST_COMPLETED)
            for future in finished:
                job, attempt, slot = running.pop(future)
                free.append(slot)
                outcome = future.result()
                progress.running -= 1
                progress.seconds.append(outcome.seconds)
                if outcome.status == "failed" and attempt < job.resources.retries:
                    queue.append((job, attempt + 1))
                else:
                    outcomes.append(outcome)
                    progress.done += outcome.status in ("ok", "elsewhere")
                    progress.failed += outcome.status == "failed"
                if on_update:
                    on_update(progress, job, outcome)
            if on_update and not finished:
                on_update(progress, None, None)
    except BaseException:
        kill_all()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    for results_dir in sorted({j.run.results_dir for j in jobs}):
        read_store(results_dir)  # fold the new rows into the store's index while they are few
    return outcomes


_SUMMARY_WORDS = {"elsewhere": "run by another sweep"}


def summary(outcomes: list[Outcome]) -> str:
    counts = Counter(o.status for o in outcomes)
    return (
        ", ".join(f"{n} {_SUMMARY_WORDS.get(status, status)}" for status, n in sorted(counts.items()))
        or "nothing to run"
    )


def parse_devices(text: str | None) -> list[str] | None:
    if text is None or text.strip().lower() in ("", "cpu"):
        return None
    if not re.fullmatch(r"\d+(,\d+)*", text.strip()):
        raise HarnessError(f"--devices {text!r}: give GPU indices, e.g. 0,1,2,3 (or cpu)")
    return text.strip().split(",")


__all__ = ["SweepJob", "SweepPlan", "load_sweep", "plan", "resolve_jobs", "run_local", "device_slots", "summary"]
