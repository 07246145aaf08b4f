"""Run one job in its own process and make sure it leaves exactly one row.

The same function serves every executor (local slots, Ray tasks, Slurm array tasks): it
starts `python -m harness.execution.worker` in a new session, feeds it the job, waits with a
timeout, kills the whole process tree when the time is up, and writes the `failed` row
itself when the worker could not (killed, timed out, crashed outside the job).
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from harness.core.atomic import remove_temporaries_of
from harness.execution import worker
from harness.execution.claims import HEARTBEAT_SECONDS, Claim, holder_text, try_claim
from harness.results.store import job_rows
from harness.spec.run import ResolvedRun, RunSpec

# Live worker processes, so that an interrupted sweep can kill every one of them.
_LIVE: set[subprocess.Popen] = set()
_LIVE_LOCK = threading.Lock()
# Set by kill_all: a job killed because the sweep was interrupted is not done, not failed
# (a failed row would make the resumed sweep skip it).
_INTERRUPTED = threading.Event()


@dataclass(frozen=True)
class Outcome:
    job_hash: str
    # ok or failed (a row says why); interrupted (no row: the job is not done); elsewhere
    # (another sweep on the store holds the job's claim, or ran it since this one planned);
    # planned (handed to something else to run, by an executor that runs nothing itself)
    status: str
    seconds: float
    error: str | None = None

    @property
    def succeeded(self) -> bool:
        """Not a failure of this sweep: failed and interrupted jobs make `harness sweep` exit 1."""
        return self.status not in ("failed", "interrupted")


@functools.lru_cache(maxsize=1)
def _gpu_names() -> dict[str, str]:
    """GPU index and UUID -> name, from nvidia-smi: the sweep parent names a slot's GPU
    without initialising CUDA itself (a context in the parent would hold GPU memory and make
    forked helpers unsafe). Empty without a driver."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,uuid,name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    names = {}
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",", 2)]
        if len(parts) == 3:
            names[parts[0]] = names[parts[1]] = parts[2]
    return names


def watcher_environment(run_device: str, cuda_devices: str | None) -> dict:
    """The environment columns of a row the parent writes for a job it watched: the device
    the job had in its slot (CUDA_VISIBLE_DEVICES=cuda_devices), not the parent's."""
    import torch

    from harness.core import environment

    env = environment.describe(torch.device("cpu"))  # a CPU device: nothing here touches CUDA
    if run_device == "cpu":
        return env
    visible = cuda_devices if cuda_devices is not None else os.environ.get("CUDA_VISIBLE_DEVICES")
    ordinal = int(run_device.split(":", 1)[1]) if ":" in run_device else 0
    ids = [v.strip() for v in visible.split(",")] if visible is not None else [str(ordinal)]
    physical = ids[ordinal] if ordinal < len(ids) else None
    names = _gpu_names()
    if run_device == "auto" and cuda_devices is None and not names:
        return env  # no GPU here: the job ran on the CPU, as it would have chosen
    device = "cuda" if run_device == "auto" else run_device
    env.update(
        device=device, device_name=names.get(physical) if physical is not None else None, cuda_driver_version=None
    )
    return env


def log_path(run: ResolvedRun) -> Path:
    # Under an underscore folder: result readers skip it.
    return Path(run.results_dir) / "_logs" / f"{run.job_hash}.log"


def execute_isolated(
    spec: RunSpec,
    run: ResolvedRun,
    *,
    timeout: float | None = None,
    memory_limit_gb: float | None = None,
    cuda_devices: str | None = None,
    concurrent_jobs: int | None = None,
    planned_at: datetime | None = None,
) -> Outcome:
    """Run the job in a worker process; block until it ends; return how it ended.
    `concurrent_jobs`: how many jobs the executor runs at once on this job's device (None:
    not known), recorded in the row. The job is claimed first (harness/execution/claims.py): a job that
    another sweep is running, or has run since `planned_at`, is not run again."""
    claim = try_claim(run.results_dir, run.job_hash, timeout)
    if claim is None:
        return Outcome(run.job_hash, "elsewhere", 0.0, f"claimed by {holder_text(run.results_dir, run.job_hash)}")
    try:
        if _ran_elsewhere(run, planned_at):
            return Outcome(run.job_hash, "elsewhere", 0.0, "run by another sweep since this one planned")
        return _execute_claimed(spec, run, claim, timeout, memory_limit_gb, cuda_devices, concurrent_jobs)
    finally:
        claim.release()


def _ran_elsewhere(run: ResolvedRun, planned_at: datetime | None) -> bool:
    rows = job_rows(run.results_dir, run.suite, run.task, run.job_hash)
    if (rows["status"] == "ok").any():
        return True
    return planned_at is not None and bool((rows["created_at"] > planned_at).any())


def _execute_claimed(
    spec: RunSpec,
    run: ResolvedRun,
    claim: Claim,
    timeout: float | None,
    memory_limit_gb: float | None,
    cuda_devices: str | None,
    concurrent_jobs: int | None,
) -> Outcome:
    from harness.engine.job import CONCURRENT_JOBS_ENV, record_failure

    def failed_row(error: str, detail: str) -> None:
        env = watcher_environment(run.device, cuda_devices)
        env["concurrent_jobs"] = concurrent_jobs
        record_failure(run, error, detail, env)

    env = dict(os.environ)
    if cuda_devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = cuda_devices
    if memory_limit_gb:
        env[worker.MEMORY_LIMIT_ENV] = str(int(memory_limit_gb * 2**30))
    env[CONCURRENT_JOBS_ENV] = "" if concurrent_jobs is None else str(concurrent_jobs)
    log = log_path(run)
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "harness.execution.worker"],
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            text=True,
        )
        with _LIVE_LOCK:
            _LIVE.add(proc)
        try:
            proc.stdin.write(spec.model_dump_json())
            proc.stdin.close()
            code = _wait(proc, start, timeout, claim)
        except subprocess.TimeoutExpired:
            _kill_tree(proc)
            seconds = time.perf_counter() - start
            error = f"timed out after {timeout:g} s (the job's process tree was killed)"
            failed_row(error, _tail(log))
            return Outcome(run.job_hash, "failed", seconds, error)
        finally:
            with _LIVE_LOCK:
                _LIVE.discard(proc)
            if proc.returncode is not None and proc.returncode < 0:  # killed, perhaps in the middle of a write
                remove_temporaries_of(run.results_dir, {proc.pid})
    seconds = time.perf_counter() - start
    if _INTERRUPTED.is_set() and code != worker.OK:
        return Outcome(run.job_hash, "interrupted", seconds, "the sweep was interrupted")
    if code == worker.OK:
        return Outcome(run.job_hash, "ok", seconds)
    if code == worker.FAILED_ROW:
        return Outcome(run.job_hash, "failed", seconds, _last_line(log))
    if code == worker.BAD_INPUT:  # found only once the job ran (e.g. a target module the model lacks)
        error = f"bad input: {_last_line(log).removeprefix('harness: error: ')}"
        failed_row(error, _tail(log))
        return Outcome(run.job_hash, "failed", seconds, error)
    if code < 0:
        name = signal.Signals(-code).name
        # An allocation refused under RLIMIT_DATA can abort the process rather than raise.
        crash = (signal.SIGKILL, signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS)
        hint = f" (its memory limit is {memory_limit_gb:g} GB: past it?)" if memory_limit_gb and -code in crash else ""
        error = f"killed by {name}{hint}"
    else:
        error = f"worker exited with status {code}: {_last_line(log)}"
    failed_row(error, _tail(log))
    return Outcome(run.job_hash, "failed", seconds, error)


def _wait(proc: subprocess.Popen, start: float, timeout: float | None, claim: Claim) -> int:
    """The worker's exit status; the claim is touched while it runs (a live holder's claim is
    never taken over); TimeoutExpired once `timeout` seconds have passed since `start`."""
    while True:
        left = None if timeout is None else timeout - (time.perf_counter() - start)
        if left is not None and left <= 0:
            raise subprocess.TimeoutExpired(proc.args, timeout)
        try:
            return proc.wait(timeout=HEARTBEAT_SECONDS if left is None else min(left, HEARTBEAT_SECONDS))
        except subprocess.TimeoutExpired:
            claim.heartbeat()


def _kill_tree(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the worker leads its own session: its children go too
    except ProcessLookupError:
        pass
    proc.wait()


def kill_all() -> None:
    """Kill every live worker (an interrupted sweep). Their rows are written atomically, so
    none is left half-written; the jobs they ran are simply not done."""
    _INTERRUPTED.set()
    with _LIVE_LOCK:
        live = list(_LIVE)
    for proc in live:
        _kill_tree(proc)


def _tail(log: Path, lines: int = 40) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _last_line(log: Path) -> str:
    lines = [line for line in _tail(log).splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"
