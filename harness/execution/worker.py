"""`python -m harness.execution.worker`: run one job, given as RunSpec JSON on stdin, in this process.

The sweep starts one worker process per job, so a crash, a leak or an out-of-memory
error ends that job only. Exit status: 0 the job wrote an ok row, 3 it wrote a failed
row, 2 bad input (nothing written); anything else (a signal, an error outside the job)
leaves the row to the parent, which records the failure.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import sys

OK, FAILED_ROW, BAD_INPUT = 0, 3, 2
MEMORY_LIMIT_ENV = "HARNESS_JOB_MEMORY_LIMIT_BYTES"


def die_with_parent() -> None:
    """Linux: be killed when the process that started us dies (a sweep killed with SIGKILL
    takes its jobs with it, so a resumed sweep never races an orphan for the same job)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the call
        os._exit(FAILED_ROW + 100)


def data_segment_bytes() -> int | None:
    """What RLIMIT_DATA counts now (VmData: heap and private writable mappings), Linux only."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmData:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def limit_memory() -> None:
    """Cap the job's data segment (heap and anonymous mappings: where tensors live), so a job
    that allocates past it fails with an allocation error (an "out of memory" row) instead of
    taking the machine.

    Set after the imports: importing torch and transformers reserves about 1.3 GB of data
    segment here (mostly virtual), and a cap below that used to fail the import itself (an
    ImportError row that said nothing about memory). The cap counts from zero, imports
    included, as the resource's name promises; one below what the imports took is bad input.
    CUDA: the driver's host allocations (pinned buffers, its virtual-address reservations
    once made writable) are private writable mappings and count too, so on a GPU a cap must
    leave room for CUDA's own initialisation, several GB on recent drivers."""
    limit = os.environ.get(MEMORY_LIMIT_ENV)
    if not limit:
        return
    from harness.core.errors import HarnessError

    used = data_segment_bytes()
    if used is not None and used >= int(limit):
        raise HarnessError(
            f"memory_limit_gb {int(limit) / 2**30:.3g} is below what a worker holds after its imports "
            f"({used / 2**30:.2f} GB of data segment); give a larger limit"
        )
    resource.setrlimit(resource.RLIMIT_DATA, (int(limit), int(limit)))


def main() -> int:
    die_with_parent()
    from harness.core.errors import HarnessError
    from harness.engine.job import run_job
    from harness.spec.run import RunSpec

    spec = RunSpec.model_validate_json(sys.stdin.read())
    try:
        limit_memory()
        result = run_job(spec, show_progress=False)
    except HarnessError as exc:
        print(f"harness: error: {exc}", file=sys.stderr)
        return BAD_INPUT
    return OK if result.ok else FAILED_ROW


if __name__ == "__main__":
    sys.exit(main())
