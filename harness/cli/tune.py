"""`harness tune`: the fair-comparison protocol over a sweep file's `tune:` block."""

from __future__ import annotations

import sys

import typer

from harness.cli.app import app
from harness.cli.sweep import (
    DevicesOpt,
    ExecutorOpt,
    MaxParallelOpt,
    QuietOpt,
    RerunFailedOpt,
    ResultsOpt,
    RetriesOpt,
    SlurmFolderOpt,
    TimeoutOpt,
    check_run_options,
)


@app.command()
def tune(
    file: str = typer.Argument(..., help="Sweep file (YAML) with a `tune:` block: trials, seeds, space, head_lr."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Plan the groups and trials, check them all; run nothing."),
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
