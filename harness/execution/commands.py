"""`harness sweep --executor commands`: each job not yet done as the `harness run` line that runs it.

For a queue the harness does not drive (GNU parallel, xargs, a scheduler of one's own):

    harness sweep sweep.yaml --executor commands | parallel -j 4

One line per job on stdout, quoted for a POSIX shell, giving every setting of the job's RunSpec
that is not empty, so the line builds the same RunSpec and so the job hash the sweep planned
(a job at --device auto: on a machine of the same device type). Paths are as the sweep file
gives them: run the lines from the folder the sweep was planned in. Nothing runs and nothing is
written here. A `harness run` has no timeout, memory limit or retries: where jobs set any, the
sweep says so on stderr, and they are the queue's to apply.
"""

from __future__ import annotations

import json
import shlex
import sys

from harness.execution.base import EXECUTORS, Executor
from harness.execution.isolated import Outcome
from harness.execution.plan import SweepJob
from harness.spec.run import RunSpec, flag_of
from harness.spec.sweep_file import Resources


def _text(value: object) -> str:
    return repr(value) if isinstance(value, float) else str(value)  # repr: the float itself, exactly


def command(spec: RunSpec) -> str:
    """The `harness run` line that builds `spec`: every option that has a value, so the line runs
    the same job even where a default has changed since; a switch only where it is not at its
    default; an option without a flag, and each suite option, as `--set KEY=VALUE` (JSON, which
    `--set` reads as YAML: a string stays a string)."""
    words = ["harness", "run"]
    for field, info in RunSpec.model_fields.items():
        value = getattr(spec, field)
        if field == "suite_options" or value is None:
            continue
        flag = flag_of(field)
        if flag.startswith("--set "):
            words += ["--set", f"{field}={json.dumps(value)}"]
        elif isinstance(value, bool):
            if value != info.default:
                words.append(flag if value else "--no-" + flag.removeprefix("--"))
        else:
            words += [flag, _text(value)]
    for key, value in spec.suite_options.items():
        words += ["--set", f"{key}={json.dumps(value)}"]
    return shlex.join(words)


@EXECUTORS.register("commands")
class CommandsExecutor(Executor):
    """Print each job as a `harness run` command line (for GNU parallel, xargs, another queue); run nothing."""

    output_on_stdout = True

    def run(self, jobs: list[SweepJob], resources: Resources, *, quiet: bool = False) -> list[Outcome]:
        print("\n".join(command(job.spec) for job in jobs), flush=True)
        limited = [j for j in jobs if j.resources.timeout or j.resources.memory_limit_gb or j.resources.retries]
        if limited:
            print(
                f"harness: note: {len(limited)} of these jobs set a timeout, memory limit or retries, which a "
                "`harness run` line does not carry: give them to the queue",
                file=sys.stderr,
            )
        return [Outcome(job.job_hash, "planned", 0.0) for job in jobs]
