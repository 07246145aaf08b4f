"""`harness sweep`: every job of a sweep file not yet in the store."""

from __future__ import annotations

import math
import sys
from typing import Annotated, Optional

import typer

from harness.cli.app import app
from harness.core.errors import HarnessError

# The options `harness sweep` and `harness tune` share: where and how the jobs run, declared once.
ExecutorOpt = Annotated[
    str, typer.Option("--executor", help="Where the jobs run: local, ray, slurm, ... (see `harness list executors`).")
]
DevicesOpt = Annotated[
    Optional[str],
    typer.Option("--devices", help="local: GPU indices for the slots, e.g. 0,1,2,3 (default: one CPU slot)."),
]
MaxParallelOpt = Annotated[Optional[int], typer.Option("--max-parallel", help="local: most jobs at once.")]
TimeoutOpt = Annotated[
    Optional[float],
    typer.Option("--timeout", help="Seconds before a job's process tree is killed (overrides the file)."),
]
RetriesOpt = Annotated[
    Optional[int], typer.Option("--retries", help="New attempts for a failed job (overrides the file).")
]
RerunFailedOpt = Annotated[bool, typer.Option("--rerun-failed", help="Also run the jobs whose latest row failed.")]
ResultsOpt = Annotated[Optional[str], typer.Option("--results", help="Result store (overrides the file's `results`).")]
SlurmFolderOpt = Annotated[
    Optional[str],
    typer.Option("--slurm-folder", help="slurm: submitit's folder for job files and logs (default: slurm_logs)."),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No live display.")]


@app.command()
def sweep(
    file: str = typer.Argument(..., help="Sweep file (YAML): grid, runs, defaults, resources."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the job table and what is already done; run nothing."),
    executor: ExecutorOpt = "local",
    devices: DevicesOpt = None,
    max_parallel: MaxParallelOpt = None,
    timeout: TimeoutOpt = None,
    retries: RetriesOpt = None,
    rerun_failed: RerunFailedOpt = False,
    results: ResultsOpt = None,
    slurm_folder: SlurmFolderOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Run every job of a sweep file that is not done yet, each in its own process; resumable."""
    from harness.execution.base import make_executor
    from harness.execution.plan import plan, summary
    from harness.spec.sweep_file import load_sweep

    check_run_options(max_parallel, timeout, retries)
    # The options only some executors take; None: not given.
    chosen = make_executor(executor, {"devices": devices, "max_parallel": max_parallel, "slurm_folder": slurm_folder})
    loaded = load_sweep(file)
    if loaded.config.tune is not None:
        raise HarnessError(f"{file} has a `tune:` block: run it with `harness tune {file}`")
    overrides = {k: v for k, v in (("timeout", timeout), ("retries", retries)) if v is not None}
    resources = loaded.config.resources.model_copy(update=overrides)
    the_plan = plan(loaded, results, overrides)
    todo = the_plan.todo(rerun_failed)
    # An executor whose result is its stdout (commands to pipe on) keeps it for that alone.
    to_stderr = chosen.output_on_stdout and not dry_run
    _print_plan(the_plan, todo, verbose=dry_run, stderr=to_stderr)
    if dry_run or not todo:
        return
    outcomes = chosen.run(todo, resources, quiet=quiet)
    print(f"sweep {file}: {summary(outcomes)}", file=sys.stderr if to_stderr else sys.stdout)
    if not all(o.succeeded for o in outcomes):  # elsewhere (another sweep has it) is no failure
        raise typer.Exit(1)


def check_run_options(max_parallel, timeout, retries) -> None:
    """The executor options every sweep command takes, checked before anything is planned."""
    for flag, value in (("--max-parallel", max_parallel), ("--timeout", timeout)):
        if value is not None and not (0 < value < math.inf):  # nan fails both comparisons
            raise HarnessError(f"{flag} must be a positive, finite number (got {value})")
    if retries is not None and retries < 0:
        raise HarnessError(f"--retries must be 0 or more (got {retries})")


def _print_plan(the_plan, todo, verbose: bool, stderr: bool = False) -> None:
    from rich.console import Console
    from rich.table import Table

    states = [the_plan.state(j) for j in the_plan.jobs]
    counts = ", ".join(f"{states.count(s)} {s}" for s in ("ok", "failed", "todo") if states.count(s))
    stream = sys.stderr if stderr else sys.stdout
    console = Console(file=stream, width=200 if not stream.isatty() else None)
    if verbose:
        table = Table(box=None, pad_edge=False)
        for col in ("#", "job", "suite/task", "method", "model", "seed", "state"):
            table.add_column(col, overflow="fold")
        for i, (job, state) in enumerate(zip(the_plan.jobs, states)):
            run = job.run
            table.add_row(str(i), job.job_hash, f"{run.suite}/{run.task}", run.method, run.model, str(run.seed), state)
        console.print(table)
    console.print(f"{len(the_plan.jobs)} jobs: {counts}; {len(todo)} to run")
