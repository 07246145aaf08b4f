"""`harness sweep --executor slurm`: the sweep's jobs as one Slurm job array, through submitit.

Each array task calls `execute_isolated`, so a job runs as it does locally (own process,
timeout, memory limit, failed row), retried inside the task that already holds the allocation.
One array has one time limit, derived from the jobs' timeouts. Why each choice was made:
docs/executors.md.
"""

from __future__ import annotations

import math
import shutil
from typing import Any

from harness.core.errors import HarnessError, first_line
from harness.execution.base import EXECUTORS, Executor
from harness.execution.isolated import Outcome, execute_isolated
from harness.execution.plan import SweepJob, pin_auto_device
from harness.spec.run import ResolvedRun, RunSpec
from harness.spec.sweep_file import Resources

# Minutes beyond the jobs' own timeouts: the array task's start (imports, unpickling) and end.
START_MARGIN_MIN = 5
# submitit's folder for the array's job files and logs, on a filesystem the nodes share.
DEFAULT_FOLDER = "slurm_logs"


def _import_submitit():
    try:
        import submitit
    except ImportError:
        raise HarnessError("--executor slurm needs submitit: pip install submitit") from None
    return submitit


def run_with_retries(
    spec: RunSpec, run: ResolvedRun, timeout: float | None, memory_limit_gb: float | None, retries: int
) -> Outcome:
    """The body of an array task: the job, and again while it fails, up to `retries` more times."""
    for _ in range(retries + 1):
        outcome = execute_isolated(spec, run, timeout=timeout, memory_limit_gb=memory_limit_gb)
        if outcome.status != "failed":
            break
    return outcome


def time_limit_min(jobs: list[SweepJob]) -> int | None:
    """Minutes for every attempt of the longest job (one array has one limit); None if a job has no timeout."""
    if any(job.resources.timeout is None for job in jobs):
        return None
    longest = max((job.resources.retries + 1) * job.resources.timeout for job in jobs)
    return math.ceil(longest / 60) + START_MARGIN_MIN


def run_slurm(
    jobs: list[SweepJob],
    resources: Resources,
    *,
    folder: str = DEFAULT_FOLDER,
    cluster: str | None = None,
    slurm_params: dict[str, Any] | None = None,
) -> list[Outcome]:
    """Submit every job as one array, wait for all of them, and return one Outcome per job.

    Timeouts, retries and memory limits are each job's own (`job.resources`); `resources`, the
    sweep's, adds nothing Slurm uses. `cluster`: None is Slurm; submitit's "local" and "debug"
    run the array on this machine (tests, trying a sweep out)."""
    submitit = _import_submitit()
    if not jobs:
        return []
    # submitit would quietly fall back to running the jobs on this machine; --executor slurm means Slurm.
    if cluster is None and shutil.which("sbatch") is None:
        raise HarnessError("--executor slurm: no Slurm here (sbatch not found); run the sweep on a Slurm login node")
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster or "slurm")
    params: dict[str, Any] = {"name": "harness-sweep"}
    # Without a timeout there is no limit to derive, and submitit's default (5 minutes) would kill
    # real jobs: Slurm then needs `timeout_min` in `slurm_params`.
    if (limit := time_limit_min(jobs)) is not None:
        params["timeout_min"] = limit
    # One GPU per array task when the jobs ask for CUDA (each task holds its own allocation, so
    # jobs_per_device does not apply); partition, account, memory, GPUs for --device auto: slurm_params.
    if any(job.run.device.startswith("cuda") for job in jobs):
        params["gpus_per_node"] = 1
    params.update(slurm_params or {})
    # Jobs at --device auto run on CUDA exactly when their nodes get a GPU: resolved for that here.
    gets_gpu = any(value and ("gpu" in key or "gres" in key) for key, value in params.items())
    jobs = [pin_auto_device(job, "cuda" if gets_gpu else "cpu") for job in jobs]
    if executor.cluster == "slurm" and not {"timeout_min", "slurm_time"} & set(params):
        raise HarnessError("--executor slurm needs a time limit: set resources.timeout in the sweep file, or --timeout")
    executor.update_parameters(**params)
    array = executor.map_array(
        run_with_retries,
        [j.spec for j in jobs],
        [j.run for j in jobs],
        [j.resources.timeout for j in jobs],
        [j.resources.memory_limit_gb for j in jobs],
        [j.resources.retries for j in jobs],
    )
    outcomes = []
    try:
        for job, task in zip(jobs, array):
            try:
                outcomes.append(task.result())
            except submitit.core.utils.UncompletedJobError as exc:
                outcomes.append(_ended_by_slurm(job, task, exc))
    except BaseException:
        for task in array:
            task.cancel(check=False)
        raise
    return outcomes


def _ended_by_slurm(job: SweepJob, task, exc: Exception) -> Outcome:
    """A task Slurm ended (time limit, preemption, a lost node) could not write its row: the
    driver writes it, straight into the store (Slurm needs a filesystem shared with the nodes)."""
    from harness.engine.job import record_failure

    error = f"Slurm task {task.job_id} ended before its job did: {first_line(exc)}"
    record_failure(job.run, error, str(exc))
    return Outcome(job.job_hash, "failed", 0.0, error)


@EXECUTORS.register("slurm")
class SlurmExecutor(Executor):
    """One Slurm job array through submitit, from a login node (needs the `cluster` extra)."""

    options = ("slurm_folder",)

    def __init__(self, slurm_folder: str = DEFAULT_FOLDER) -> None:
        self.folder = slurm_folder

    def run(self, jobs: list[SweepJob], resources: Resources, *, quiet: bool = False) -> list[Outcome]:
        return run_slurm(jobs, resources, folder=self.folder)
