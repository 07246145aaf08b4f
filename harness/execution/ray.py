"""`harness sweep --executor ray`: each job of a sweep as one Ray task, on one machine or a cluster.

A task only places the job: it calls `execute_isolated` on the node Ray picked, so the job runs
as it does locally (own process, timeout, memory limit, failed row). Retries are the driver's;
Ray's are off. Why each choice was made: docs/executors.md.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from harness.core.errors import HarnessError, first_line
from harness.execution.base import EXECUTORS, Executor
from harness.execution.isolated import Outcome, execute_isolated, log_path
from harness.execution.plan import SweepJob, pin_auto_device
from harness.spec.run import ResolvedRun, RunSpec
from harness.spec.sweep_file import Resources

# Workers on other nodes inherit the environment of `ray start` there, not the driver's; these
# belong to the sweep (whether a job may touch the network, HARNESS_* settings) and travel with
# each task. Caches and tokens stay the nodes' own.
FORWARDED_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def _import_ray():
    try:
        import ray
    except ImportError:
        raise HarnessError("--executor ray needs Ray: pip install 'ray[default]'") from None
    return ray


def forwarded_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k in FORWARDED_ENV or k.startswith("HARNESS_")}


def run_on_node(
    spec: RunSpec, run: ResolvedRun, timeout: float | None, memory_limit_gb: float | None, shared_store: bool
) -> tuple[Outcome, list[dict[str, Any]], str | None]:
    """The body of a Ray task: run the job here; without a shared store, also return its rows and log
    (the job ran against a temporary store on this node; the job hash does not depend on
    `results_dir`, so they are the same job's rows)."""
    if shared_store:
        return execute_isolated(spec, run, timeout=timeout, memory_limit_gb=memory_limit_gb), [], None
    import pyarrow.parquet as pq

    from harness.results.store import result_files

    with tempfile.TemporaryDirectory(prefix="harness-ray-") as tmp:
        here = run.model_copy(update={"results_dir": tmp})
        outcome = execute_isolated(
            spec.model_copy(update={"results_dir": tmp}), here, timeout=timeout, memory_limit_gb=memory_limit_gb
        )
        rows = [row for f in result_files(tmp) for row in pq.read_table(f).to_pylist()]
        log = log_path(here)
        return outcome, rows, log.read_text(errors="replace") if log.exists() else None


def _store_returned(job: SweepJob, rows: list[dict[str, Any]], log: str | None) -> None:
    from harness.results.store import write_row

    results_dir = job.run.results_dir
    for row in rows:
        # The row's config names the node's temporary store, which is gone; name the real one.
        config = json.loads(row["config"])
        config["results_dir"] = results_dir
        write_row({**row, "config": json.dumps(config, separators=(",", ":"), ensure_ascii=False)}, results_dir)
    if log is not None:
        path = log_path(job.run)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(log)


def _needs_gpu(run: ResolvedRun, gpus_in_cluster: bool) -> bool:
    if run.device.startswith("cuda"):
        if not gpus_in_cluster:
            raise HarnessError(f"job {run.job_hash} asks for --device {run.device}, but the Ray cluster has no GPU")
        return True
    return run.device == "auto" and gpus_in_cluster


def run_ray(
    jobs: list[SweepJob], resources: Resources, *, address: str | None = None, shared_store: bool = True
) -> list[Outcome]:
    """Run every job as a Ray task; block until all are done; one Outcome per job.

    Timeouts, retries and memory limits are each job's own (`job.resources`); of `resources`,
    the sweep's, only `jobs_per_device` is read. `address` is Ray's (None: a running local
    instance, or a new one); a Ray already initialised in this process is used as it is."""
    ray = _import_ray()
    if not jobs:
        return []
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False)
    gpus_in_cluster = ray.cluster_resources().get("GPU", 0) > 0
    gpu = [_needs_gpu(job.run, gpus_in_cluster) for job in jobs]  # checked before any starts
    jobs = [pin_auto_device(job, "cuda" if g else "cpu") for job, g in zip(jobs, gpu)]
    needs_gpu = {job.job_hash: g for job, g in zip(jobs, gpu)}
    task = ray.remote(run_on_node)
    runtime_env = {"env_vars": forwarded_env()}
    pending: dict[Any, tuple[SweepJob, int]] = {}

    def submit(job: SweepJob, attempt: int) -> None:
        # One CPU per task: Ray sets OMP_NUM_THREADS to it and the job's process inherits it, so jobs
        # do not fight over cores. A CUDA job also takes 1/jobs_per_device of a GPU; Ray sets the
        # task's CUDA_VISIBLE_DEVICES, which the job's process inherits too.
        ref = task.options(
            num_cpus=1,
            num_gpus=1 / resources.jobs_per_device if needs_gpu[job.job_hash] else 0,
            max_retries=0,  # a lost task is a failed attempt: the driver writes its row and retries
            runtime_env=runtime_env,
            name=f"harness-{job.job_hash}",
        ).remote(job.spec, job.run, job.resources.timeout, job.resources.memory_limit_gb, shared_store)
        pending[ref] = (job, attempt)

    outcomes: list[Outcome] = []
    try:
        for job in jobs:
            submit(job, 0)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            job, attempt = pending.pop(done[0])
            try:
                outcome, rows, log = ray.get(done[0])
                _store_returned(job, rows, log)
            except ray.exceptions.RayError as exc:  # the task's worker or node died, or it raised
                outcome = _lost(job, exc)
            if outcome.status == "failed" and attempt < job.resources.retries:
                submit(job, attempt + 1)  # a new task, maybe on another node: one bad node fails one attempt
            else:
                outcomes.append(outcome)
    except BaseException:
        # Ctrl-C: killing the tasks' workers kills their jobs (a job dies with its parent).
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    return outcomes


def _lost(job: SweepJob, exc: Exception) -> Outcome:
    from harness.engine.job import record_failure

    error = f"Ray task lost: {first_line(exc)}"
    record_failure(job.run, error, str(exc), env=_lost_environment(job.run))
    return Outcome(job.job_hash, "failed", 0.0, error)


def _lost_environment(run) -> dict:
    """The environment columns of a lost task's row: the device type the job resolved to, and
    nothing of the driver's machine (the task ran on a node the driver cannot name)."""
    import torch

    from harness.core import environment

    env = environment.describe(torch.device("cpu"))  # a CPU device: the driver never touches CUDA
    unknown = ("device_name", "cpu_model", "host", "cuda_driver_version", "cpu_threads")
    env.update({key: None for key in unknown if key in env}, device=run.device_type)
    return env


@EXECUTORS.register("ray")
class RayExecutor(Executor):
    """Ray tasks on a running cluster or a new local Ray instance (needs the `cluster` extra)."""

    def run(self, jobs: list[SweepJob], resources: Resources, *, quiet: bool = False) -> list[Outcome]:
        return run_ray(jobs, resources)
