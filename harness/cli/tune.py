"""`harness tune`: the fair-comparison protocol over a sweep file's `tune:` block."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from harness.cli.app import app
from harness.cli.sweep import check_run_options


@app.command()
def tune(
    file: str = typer.Argument(..., help="Sweep file (YAML) with a `tune:` block: trials, seeds, space, head_lr."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Plan the groups and trials, check them all; run nothing."),
    executor: str = typer.Option(
        "local", "--executor", help="Where the jobs run: local, ray, slurm, ... (see `harness list executors`)."
    ),
    devices: Optional[str] = typer.Option(
        None, "--devices", help="local: GPU indices for the slots, e.g. 0,1,2,3 (default: one CPU slot)."
    ),
    max_parallel: Optional[int] = typer.Option(None, "--max-parallel", help="local: most jobs at once."),
    timeout: Optional[float] = typer.Option(
        None, "--timeout", help="Seconds before a job's process tree is killed (overrides the file)."
    ),
    retries: Optional[int] = typer.Option(
        None, "--retries", help="New attempts for a failed job (overrides the file)."
    ),
    rerun_failed: bool = typer.Option(False, "--rerun-failed", help="Also run the jobs whose latest row failed."),
    results: Optional[str] = typer.Option(None, "--results", help="Result store (overrides the file's `results`)."),
    slurm_folder: Optional[str] = typer.Option(
        None, "--slurm-folder", help="slurm: submitit's folder for job files and logs (default: slurm_logs)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No live display."),
) -> None:
    """Tune every job of the file with the same number of trials, picked on a held-out selection
    split, then run the pick on each final seed, scored on the reported split; resumable."""
    from harness.execution.base import make_executor
    from harness.execution.plan import summary
    from harness.execution.tune import run_tuning
    from harness.spec.sweep_file import load_sweep

    check_run_options(max_parallel, timeout, retries)
    chosen = make_executor(executor, {"devices": devices, "max_parallel": max_parallel, "slurm_folder": slurm_folder})
    loaded = load_sweep(file)
    overrides = {k: v for k, v in (("timeout", timeout), ("retries", retries)) if v is not None}
    resources = loaded.config.resources.model_copy(update=overrides)
    stream = sys.stderr if chosen.output_on_stdout else sys.stdout
    done = run_tuning(
        loaded,
        chosen,
        resources,
        results,
        rerun_failed=rerun_failed,
        quiet=quiet,
        dry_run=dry_run,
        report=lambda line: print(line, file=stream),
    )
    for line in done.waiting:
        print(f"waiting: {line}; run `harness tune {file}` again once they are done", file=stream)
    if dry_run:
        return
    total = done.protocol_seconds + done.job_seconds
    share = 100 * done.protocol_seconds / total if total else 0.0
    print(
        f"tune {file}: {summary(done.outcomes)}; protocol {done.protocol_seconds:.1f} s of {total:.1f} s ({share:.2f}%)",
        file=stream,
    )
    if not all(o.succeeded for o in done.outcomes):
        raise typer.Exit(1)
