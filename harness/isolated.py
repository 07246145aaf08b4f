"""Run one job in its own process and make sure it leaves exactly one row.

The same function serves every executor (local slots, Ray tasks, Slurm array tasks): it
starts `python -m harness.worker` in a new session, feeds it the job, waits with a
timeout, kills the whole process tree when the time is up, and writes the `failed` row
itself when the worker could not (killed, timed out, crashed outside the job).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from harness import worker
from harness.config import ResolvedRun, RunSpec

# Live worker processes, so that an interrupted sweep can kill every one of them.
_LIVE: set[subprocess.Popen] = set()
_LIVE_LOCK = threading.Lock()
# Set by kill_all: a job killed because the sweep was interrupted is not done, not failed
# (a failed row would make the resumed sweep skip it).
_INTERRUPTED = threading.Event()


@dataclass(frozen=True)
class Outcome:
    job_hash: str
    status: str  # ok or failed (a row says why), or interrupted (no row: the job is not done)
    seconds: float
    error: str | None = None


def log_path(run: ResolvedRun) -> Path:
    # Under an underscore folder: result readers skip it.
    return Path(run.results_dir) / "_logs" / f"{run.job_hash}.log"


def execute_isolated(
    spec: RunSpec, run: ResolvedRun, *, timeout: float | None = None, memory_limit_gb: float | None = None,
    cuda_devices: str | None = None,
) -> Outcome:
    """Run the job in a worker process; block until it ends; return how it ended."""
    from harness.job import record_failure

    env = dict(os.environ)
    if cuda_devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = cuda_devices
    if memory_limit_gb:
        env[worker.MEMORY_LIMIT_ENV] = str(int(memory_limit_gb * 2**30))
    log = log_path(run)
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "harness.worker"], stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT,
            env=env, start_new_session=True, text=True,
        )
        with _LIVE_LOCK:
            _LIVE.add(proc)
        try:
            proc.stdin.write(spec.model_dump_json())
            proc.stdin.close()
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_tree(proc)
            seconds = time.perf_counter() - start
            error = f"timed out after {timeout:g} s (the job's process tree was killed)"
            record_failure(run, error, _tail(log))
            return Outcome(run.job_hash, "failed", seconds, error)
        finally:
            with _LIVE_LOCK:
                _LIVE.discard(proc)
    seconds = time.perf_counter() - start
    if _INTERRUPTED.is_set() and code != worker.OK:
        return Outcome(run.job_hash, "interrupted", seconds, "the sweep was interrupted")
    if code == worker.OK:
        return Outcome(run.job_hash, "ok", seconds)
    if code == worker.FAILED_ROW:
        return Outcome(run.job_hash, "failed", seconds, _last_line(log))
    if code == worker.BAD_INPUT:  # found only once the job ran (e.g. a target module the model lacks)
        error = f"bad input: {_last_line(log).removeprefix('harness: error: ')}"
        record_failure(run, error, _tail(log))
        return Outcome(run.job_hash, "failed", seconds, error)
    if code < 0:
        name = signal.Signals(-code).name
        # An allocation refused under RLIMIT_DATA can abort the process rather than raise.
        crash = (signal.SIGKILL, signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS)
        hint = f" (its memory limit is {memory_limit_gb:g} GB: past it?)" if memory_limit_gb and -code in crash else ""
        error = f"killed by {name}{hint}"
    else:
        error = f"worker exited with status {code}: {_last_line(log)}"
    record_failure(run, error, _tail(log))
    return Outcome(run.job_hash, "failed", seconds, error)


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
