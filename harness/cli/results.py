"""Commands over result stores: `harness compare`, `leaderboard`, `report` and `store upgrade`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer

from harness.cli.app import app, store_app
from harness.core.errors import HarnessError


@app.command()
def compare(
    base: str = typer.Argument(
        ..., help="Result store of the reference (e.g. last night's); with --versus, the store."
    ),
    new: Optional[str] = typer.Argument(None, help="Result store to check against it (not with --versus)."),
    metric_tolerance: float = typer.Option(
        0.005, "--metric-tolerance", help="Largest score drop that is not a regression (metric units)."
    ),
    time_tolerance: float = typer.Option(
        0.10,
        "--time-tolerance",
        help="Largest relative rise of time, memory or latency that is not a regression (beyond the measured spread).",
    ),
    metric_k: float = typer.Option(
        3.0,
        "--metric-k",
        help="Several seeds: a seed-mean score change must also exceed this many standard errors of the seeds' spread.",
    ),
    versus: Optional[str] = typer.Option(
        None, "--versus", help="One store: each other method against this baseline method, example by example."
    ),
    task: Optional[str] = typer.Option(None, "--task", help="With --versus: only this task."),
    suite: Optional[str] = typer.Option(None, "--suite", help="With --versus: only this suite."),
    confidence: float = typer.Option(0.95, "--confidence", help="With --versus: level of the intervals (α = 1 − it)."),
) -> None:
    """Match runs of two stores by job identity; print what changed; exit 1 on a regression.

    With --versus METHOD, one store: each other method's configurations against METHOD's with
    the paired test (harness/results/versus.py); print the table, exit 0."""
    if versus is not None:
        _compare_versus(base, new, versus, task, suite, confidence, (metric_tolerance, time_tolerance, metric_k))
        return
    if new is None or task is not None or suite is not None or confidence != 0.95:
        raise HarnessError(
            "give two stores, `harness compare BASE NEW`, or one with `--versus METHOD` (and --task, --suite)"
        )
    from harness.results.compare import compare_stores

    _check_tolerances(metric_tolerance, time_tolerance, metric_k)
    comparison = compare_stores(base, new, metric_tolerance, time_tolerance, metric_k)
    print(comparison.table())
    if comparison.regressions:
        raise typer.Exit(1)


@app.command()
def leaderboard(
    history: str = typer.Option(
        ..., "--history", help="Folder of nightly stores, one sub-folder per night (YYYY-MM-DD)."
    ),
    add: Optional[str] = typer.Option(None, "--add", help="A result store to append as a night first."),
    date: Optional[str] = typer.Option(None, "--date", help="The night's date, YYYY-MM-DD (default: today, UTC)."),
    replace: bool = typer.Option(False, "--replace", help="Replace a night already in the history."),
    out: str = typer.Option("leaderboard", "--out", help="Folder to write the trend page (index.html) into."),
    metric_tolerance: float = typer.Option(
        0.005, "--metric-tolerance", help="As `harness compare`: for the latest night's changes."
    ),
    time_tolerance: float = typer.Option(
        0.10, "--time-tolerance", help="As `harness compare`: for the latest night's changes."
    ),
    metric_k: float = typer.Option(3.0, "--metric-k", help="As `harness compare`: for the latest night's changes."),
) -> None:
    """Append a night to the history (--add), then render each method's metric and costs over nights."""
    from harness.results.history import append_night
    from harness.site.trend import write_leaderboard

    _check_tolerances(metric_tolerance, time_tolerance, metric_k)  # before a night is added
    if add is not None:
        night = append_night(add, history, date, replace=replace)
        print(f"added {add} as {night}")
    path = write_leaderboard(history, out, metric_tolerance, time_tolerance, metric_k)
    print(f"wrote {path}")


def _compare_versus(
    store: str,
    new: Optional[str],
    versus: str,
    task: Optional[str],
    suite: Optional[str],
    confidence: float,
    tolerances: tuple[float, float, float],
) -> None:
    from harness.results.versus import versus_store

    if new is not None:
        raise HarnessError(f"--versus compares methods within one store; got a second store {new!r}")
    if tolerances != (0.005, 0.10, 3.0):
        raise HarnessError("--metric-tolerance, --time-tolerance and --metric-k are for two stores, not --versus")
    print(versus_store(store, versus, task=task, suite=suite, confidence=confidence).table())


def _check_tolerances(metric_tolerance: float, time_tolerance: float, metric_k: float) -> None:
    for flag, value in (
        ("--metric-tolerance", metric_tolerance),
        ("--time-tolerance", time_tolerance),
        ("--metric-k", metric_k),
    ):
        if not (math.isfinite(value) and value >= 0):
            raise HarnessError(f"{flag} must be a finite number, 0 or more (got {value})")


@app.command()
def report(
    results: str = typer.Option("results", "--results", help="Result store folder to read."),
    out: str = typer.Option(
        "reports", "--out", help="Folder to write the site into (index.html, Pareto and run pages)."
    ),
) -> None:
    """Write a self-contained static HTML report (leaderboards and Pareto plots) from a result store."""
    from harness.site.build import write_report

    if not Path(results).is_dir():
        raise HarnessError(f"results folder {results!r} does not exist; run `harness run ...` first or pass --results")
    path, n = write_report(results, out)
    print(f"wrote {path} ({n} runs)")


@store_app.command("upgrade")
def store_upgrade(
    results: str = typer.Option(
        "results", "--results", help="Result store folder (or a leaderboard history) to upgrade in place."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would change; write nothing."),
) -> None:
    """Re-key rows written by an older harness to the current job identity (harness/results/upgrade.py)."""
    from harness.results.upgrade import upgrade_store

    for line in upgrade_store(results, dry_run=dry_run).lines(dry_run):
        print(line)
