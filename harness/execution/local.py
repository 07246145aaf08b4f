"""`harness sweep --executor local`: each job in its own process on this machine, one per slot.

A slot is a CUDA_VISIBLE_DEVICES value (a GPU, `jobs_per_device` slots each) or the CPU; a
thread per slot starts the job's process and waits for it, so a slot never sits idle while
jobs are queued.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

from harness.core.errors import HarnessError
from harness.execution.base import EXECUTORS, Executor
from harness.execution.isolated import Outcome, execute_isolated, kill_all
from harness.execution.plan import SweepJob
from harness.results.store import read_store
from harness.spec.sweep_file import Resources


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


def parse_devices(text: str | None) -> list[str] | None:
    if text is None or text.strip().lower() in ("", "cpu"):
        return None
    if not re.fullmatch(r"\d+(,\d+)*", text.strip()):
        raise HarnessError(f"--devices {text!r}: give GPU indices, e.g. 0,1,2,3 (or cpu)")
    return text.strip().split(",")


@EXECUTORS.register("local")
class LocalExecutor(Executor):
    """Processes on this machine: one job per slot (a GPU of --devices, or the CPU), with a live display."""

    options = ("devices", "max_parallel")

    def __init__(self, devices: str | None = None, max_parallel: int | None = None) -> None:
        self.devices = parse_devices(devices)
        self.max_parallel = max_parallel

    def run(self, jobs: list[SweepJob], resources: Resources, *, quiet: bool = False) -> list[Outcome]:
        slots = device_slots(self.devices, resources.jobs_per_device, self.max_parallel)
        if quiet:
            return run_local(jobs, slots)
        from rich.console import Console
        from rich.live import Live

        with Live(console=Console(stderr=True), refresh_per_second=2, transient=False) as live:

            def update(progress: Progress, job: SweepJob | None, outcome: Outcome | None) -> None:
                if outcome is not None and outcome.status != "ok":
                    live.console.print(f"[red]failed[/red] {job.label()} ({job.job_hash}): {outcome.error}")
                live.update(progress.line())

            return run_local(jobs, slots, update)
