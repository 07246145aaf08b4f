"""`harness sweep`: every job of a sweep file not yet in the store."""

from __future__ import annotations

import math
import sys
from enum import Enum
from typing import Optional

import typer

from harness.cli.app import app
from harness.core.errors import HarnessError


class Executor(str, Enum):
    local = "local"
    ray = "ray"
    slurm = "slurm"


@app.command()
def sweep(
    file: str = typer.Argument(..., help="Sweep file (YAML): grid, runs, defaults, resources."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the job table and what is already done; run nothing."),
    executor: Executor = typer.Option(
        Executor.local, "--executor", help="local (processes on this machine), ray or slurm."
    ),
    devices: Optional[str] = typer.Option(
        None, "--devices", help="GPU indices for local slots, e.g. 0,1,2,3 (default: one CPU slot)."
    ),
    max_parallel: Optional[int] = typer.Option(None, "--max-parallel", help="Most jobs at once (local)."),
    timeout: Optional[float] = typer.Option(
        None, "--timeout", help="Seconds before a job's process tree is killed (overrides the file)."
    ),
    retries: Optional[int] = typer.Option(
        None, "--retries", help="New attempts for a failed job (overrides the file)."
    ),
    rerun_failed: bool = typer.Option(False, "--rerun-failed", help="Also run the jobs whose latest row failed."),
    results: Optional[str] = typer.Option(None, "--results", help="Result store (overrides the file's `results`)."),
    slurm_folder: str = typer.Option(
        "slurm_logs", "--slurm-folder", help="submitit's folder for Slurm job files and logs."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No live display."),
) -> None:
    """Run every job of a sweep file that is not done yet, each in its own process; resumable."""
    from harness.execution.sweep import device_slots, load_sweep, parse_devices, plan, summary

    for flag, value in (("--max-parallel", max_parallel), ("--timeout", timeout)):
        if value is not None and not (0 < value < math.inf):  # nan fails both comparisons
            raise HarnessError(f"{flag} must be a positive, finite number (got {value})")
    if retries is not None and retries < 0:
        raise HarnessError(f"--retries must be 0 or more (got {retries})")
    loaded = load_sweep(file)
    overrides = {k: v for k, v in (("timeout", timeout), ("retries", retries)) if v is not None}
    resources = loaded.config.resources.model_copy(update=overrides)
    the_plan = plan(loaded, results, overrides)
    todo = the_plan.todo(rerun_failed)
    _print_plan(the_plan, todo, verbose=dry_run)
    if dry_run or not todo:
        return
    if executor is Executor.local:
        slots = device_slots(parse_devices(devices), resources.jobs_per_device, max_parallel)
        outcomes = _run_with_display(todo, slots, quiet)
    elif executor is Executor.ray:
        from harness.execution.ray import run_ray

        outcomes = run_ray(todo, resources)
    else:
        from harness.execution.slurm import run_slurm

        outcomes = run_slurm(todo, resources, folder=slurm_folder)
    print(f"sweep {file}: {summary(outcomes)}")
    if any(o.status not in ("ok", "elsewhere") for o in outcomes):  # elsewhere: another sweep has it
        raise typer.Exit(1)


def _print_plan(the_plan, todo, verbose: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    states = [the_plan.state(j) for j in the_plan.jobs]
    counts = ", ".join(f"{states.count(s)} {s}" for s in ("ok", "failed", "todo") if states.count(s))
    console = Console(width=200 if not sys.stdout.isatty() else None)
    if verbose:
        table = Table(box=None, pad_edge=False)
        for col in ("#", "job", "suite/task", "method", "model", "seed", "state"):
            table.add_column(col, overflow="fold")
        for i, (job, state) in enumerate(zip(the_plan.jobs, states)):
            run = job.run
            table.add_row(str(i), job.job_hash, f"{run.suite}/{run.task}", run.method, run.model, str(run.seed), state)
        console.print(table)
    console.print(f"{len(the_plan.jobs)} jobs: {counts}; {len(todo)} to run")


def _run_with_display(todo, slots, quiet: bool):
    from rich.console import Console
    from rich.live import Live

    from harness.execution.sweep import run_local

    if quiet:
        return run_local(todo, slots)
    console = Console(stderr=True)
    with Live(console=console, refresh_per_second=2, transient=False) as live:

        def update(progress, job, outcome):
            if outcome is not None and outcome.status != "ok":
                live.console.print(f"[red]failed[/red] {job.label()} ({job.job_hash}): {outcome.error}")
            live.update(progress.line())

        return run_local(todo, slots, update)
