"""The `harness` command line (typer).

Bad input is one line on stderr and exit status 2, with no traceback; a run that
started and failed writes a `failed` row and exits 1.
"""

from __future__ import annotations

import logging
import math
import signal
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

try:  # typer >= 0.24 carries its own copy of click; older releases use click itself
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - depends on the installed typer
    from click import exceptions as click_exceptions

from harness.errors import HarnessError

app = typer.Typer(
    name="harness",
    help="Benchmark parameter-efficient fine-tuning and compression methods: accuracy and cost together.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _err(message: str) -> None:
    print(f"harness: error: {message}", file=sys.stderr)


@app.command()
def run(
    suite: str = typer.Option(..., "--suite", "-s", help="Suite name (see `harness list suites`)."),
    method: Optional[str] = typer.Option(
        None,
        "--method",
        "-m",
        help="Method or pipeline (+), e.g. lora:r=16,alpha=32; wanda:sparsity=0.5+lora (prune, then recover); lora+int8 (adapt, merge, then quantize). Required unless --preset names one.",
    ),
    task: Optional[str] = typer.Option(None, "--task", "-t", help="Task of the suite (see `harness list tasks`)."),
    model: Optional[str] = typer.Option(
        None, "--model", help="Model alias, local directory or hub id; default: the suite's."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed for initialisation, shuffling and dropout."),
    max_train_samples: Optional[int] = typer.Option(
        None, "--max-train-samples", help="Train on a fixed subset of this size."
    ),
    max_eval_samples: Optional[int] = typer.Option(
        None,
        "--max-eval-samples",
        help="Evaluate on a fixed random N examples (the same for every run); gsm8k: the first N, as lm-eval's --limit.",
    ),
    epochs: Optional[float] = typer.Option(None, "--epochs", help="Training epochs (suite default if omitted)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Optimizer steps; overrides --epochs."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate (method default if omitted)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Training batch size."),
    eval_batch_size: Optional[int] = typer.Option(None, "--eval-batch-size", help="Evaluation and latency batch size."),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="Truncate inputs to this many tokens."),
    precision: Optional[str] = typer.Option(None, "--precision", help="fp32 (default), bf16 or fp16 (autocast)."),
    warmup_ratio: Optional[float] = typer.Option(
        None, "--warmup-ratio", help="Share of steps with linear warm-up (suite default if omitted)."
    ),
    weight_decay: Optional[float] = typer.Option(
        None, "--weight-decay", help="AdamW weight decay (suite default if omitted)."
    ),
    max_grad_norm: Optional[float] = typer.Option(
        None, "--max-grad-norm", help="Clip the gradient norm to this (default 1.0; 0: no clipping)."
    ),
    lr_scheduler: Optional[str] = typer.Option(
        None, "--lr-scheduler", help="linear or cosine, after warm-up (suite default if omitted)."
    ),
    grad_accum: Optional[int] = typer.Option(
        None, "--grad-accum", help="Micro-batches of --batch-size per optimizer step (default 1)."
    ),
    gradient_checkpointing: bool = typer.Option(
        False, "--gradient-checkpointing", help="Recompute activations in backward: less memory, more time."
    ),
    max_train_tokens: Optional[int] = typer.Option(
        None, "--max-train-tokens", help="Token budget: stop training after this many non-padding tokens."
    ),
    packing: bool = typer.Option(
        False,
        "--packing",
        help="Causal LM: pack examples into one row per batch (no padding; attention kept per example).",
    ),
    train_data: Optional[str] = typer.Option(
        None,
        "--train-data",
        help="Causal LM: train on this hub data set (ID[:CONFIG], e.g. meta-math/MetaMathQA) instead of the task's train split.",
    ),
    num_fewshot: Optional[int] = typer.Option(
        None, "--num-fewshot", help="Generative eval: few-shot examples per prompt (suite default: 0)."
    ),
    max_new_tokens: Optional[int] = typer.Option(
        None, "--max-new-tokens", help="Generative eval: most tokens generated per answer (suite default: 256)."
    ),
    kernel_profile: bool = typer.Option(
        True,
        "--kernel-profile/--no-kernel-profile",
        help="Profile a few training steps and inference batches with torch.profiler (kernel table in <results>/_kernels).",
    ),
    preset: Optional[str] = typer.Option(
        None, "--preset", help="A published setup by name (e.g. gsm8k's peft-metamathqa); flags given still win."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    data_dir: Optional[str] = typer.Option(
        None,
        "--data-dir",
        help="Local mirror root laid out as <root>/<hub id>/<config>/<split>-*.parquet [env: HARNESS_DATA_DIR].",
    ),
    results: str = typer.Option("results", "--results", help="Result store folder."),
    latency_repeats: int = typer.Option(20, "--latency-repeats", help="Timed repeats per latency percentile."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Run one job: train a method on a task, evaluate it, measure its costs, write one result row."""
    from harness.config import RunSpec
    from harness.job import run_job

    spec = RunSpec.build(
        suite=suite,
        method=method,
        task=task,
        model=model,
        seed=seed,
        max_train_samples=max_train_samples,
        max_eval_samples=max_eval_samples,
        epochs=epochs,
        max_steps=max_steps,
        lr=lr,
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        max_length=max_length,
        precision=precision,
        device=device,
        data_dir=data_dir,
        results_dir=results,
        latency_repeats=latency_repeats,
        lr_scheduler=lr_scheduler,
        warmup_ratio=warmup_ratio,
        weight_decay=weight_decay,
        max_grad_norm=max_grad_norm,
        gradient_accumulation_steps=grad_accum,
        gradient_checkpointing=gradient_checkpointing,
        max_train_tokens=max_train_tokens,
        packing=packing,
        train_data=train_data,
        num_fewshot=num_fewshot,
        max_new_tokens=max_new_tokens,
        preset=preset,
        kernel_profile=kernel_profile,
    )
    result = run_job(spec, show_progress=not quiet)
    row = result.row
    if not result.ok:
        _err(f"run failed: {row['error']} (row with traceback: {result.path})")
        raise typer.Exit(1)
    peak = row["peak_memory_bytes"]  # None when nothing trained (e.g. --method none)
    print(
        f"{row['suite']}/{row['task']} {row['method']} seed={row['seed']}: {row['metric']}={row['score']:.4f} | "
        f"trainable={row['trainable_params']:,} train={row['train_seconds']:.1f}s "
        f"peak_mem={f'{peak / 2**20:.0f}MiB' if peak is not None else 'n/a'} "
        f"latency_bs1_p50={row['latency_bs1_p50_ms']:.1f}ms"
        + (
            f" ttft_bs1={row['ttft_bs1_p50_ms']:.0f}ms gen_bs1={row['generation_bs1_tokens_per_s']:.1f}tok/s"
            if row.get("ttft_bs1_p50_ms") is not None
            else ""
        )
        + f"\nwrote {result.path}"
    )


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
    from harness.sweep import device_slots, load_sweep, parse_devices, plan, summary

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
        from harness.ray_executor import run_ray

        outcomes = run_ray(todo, resources)
    else:
        from harness.slurm_executor import run_slurm

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

    from harness.sweep import run_local

    if quiet:
        return run_local(todo, slots)
    console = Console(stderr=True)
    with Live(console=console, refresh_per_second=2, transient=False) as live:

        def update(progress, job, outcome):
            if outcome is not None and outcome.status != "ok":
                live.console.print(f"[red]failed[/red] {job.label()} ({job.job_hash}): {outcome.error}")
            live.update(progress.line())

        return run_local(todo, slots, update)


@app.command()
def compare(
    base: str = typer.Argument(..., help="Result store of the reference (e.g. last night's)."),
    new: str = typer.Argument(..., help="Result store to check against it."),
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
) -> None:
    """Match runs of two stores by job identity; print what changed; exit 1 on a regression."""
    from harness.compare import compare_stores

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
    from harness.leaderboard import append_night, write_leaderboard

    _check_tolerances(metric_tolerance, time_tolerance, metric_k)  # before a night is added
    if add is not None:
        night = append_night(add, history, date, replace=replace)
        print(f"added {add} as {night}")
    path = write_leaderboard(history, out, metric_tolerance, time_tolerance, metric_k)
    print(f"wrote {path}")


def _check_tolerances(metric_tolerance: float, time_tolerance: float, metric_k: float) -> None:
    for flag, value in (
        ("--metric-tolerance", metric_tolerance),
        ("--time-tolerance", time_tolerance),
        ("--metric-k", metric_k),
    ):
        if not (math.isfinite(value) and value >= 0):
            raise HarnessError(f"{flag} must be a finite number, 0 or more (got {value})")


class ListWhat(str, Enum):
    methods = "methods"
    suites = "suites"
    tasks = "tasks"
    models = "models"
    presets = "presets"


@app.command("list")
def list_(what: ListWhat = typer.Argument(..., help="methods, suites, tasks, models or presets")) -> None:
    """List registered methods, suites, tasks, model aliases or presets with a one-line summary."""
    from rich.console import Console
    from rich.table import Table

    from harness.method import METHODS
    from harness.suite import SUITES

    table = Table(box=None, pad_edge=False)
    if what is ListWhat.methods:
        for col in ("method", "category", "summary", "paper"):
            table.add_column(col, overflow="fold")
        for name, cls in METHODS:
            table.add_row(name, cls.category, cls.summary(), cls.paper)
    elif what is ListWhat.suites:
        for col in ("suite", "tasks", "default model", "summary"):
            table.add_column(col, overflow="fold")
        for name, cls in SUITES:
            table.add_row(name, str(len(cls.tasks)), cls.default_model, cls.summary())
    elif what is ListWhat.models:
        from harness.resolve import MODEL_ALIASES, resolve_model

        for col in ("alias", "hub id", "resolves to", "note"):
            table.add_column(col, overflow="fold")
        for alias, info in MODEL_ALIASES.items():
            ref = resolve_model(alias)
            where = {
                "package": ref.location,
                "unavailable": "--model PATH",
                "random-init": "built here, random init",
            }.get(ref.source, "hub")
            table.add_row(alias, info.hub_id, where, info.note)
    elif what is ListWhat.presets:
        for col in ("suite", "preset", "settings", "source"):
            table.add_column(col, overflow="fold")
        for name, cls in SUITES:
            for preset in cls.presets.values():
                settings = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in preset.settings.items())
                table.add_row(name, preset.name, settings, preset.source)
    else:
        for col in ("suite", "task", "dataset", "metric", "summary"):
            table.add_column(col, overflow="fold")
        for name, cls in SUITES:
            for task in cls.tasks.values():
                table.add_row(name, task.name, f"{task.dataset}/{task.config or ''}", task.primary_metric, task.summary)
    Console(width=200 if not sys.stdout.isatty() else None).print(table)


@app.command()
def report(
    results: str = typer.Option("results", "--results", help="Result store folder to read."),
    out: str = typer.Option(
        "reports", "--out", help="Folder to write the site into (index.html, Pareto and run pages)."
    ),
) -> None:
    """Write a self-contained static HTML report (leaderboards and Pareto plots) from a result store."""
    from harness.report import write_report

    if not Path(results).is_dir():
        raise HarnessError(f"results folder {results!r} does not exist; run `harness run ...` first or pass --results")
    path, n = write_report(results, out)
    print(f"wrote {path} ({n} runs)")


store_app = typer.Typer(help="Maintain a result store.", no_args_is_help=True)
app.add_typer(store_app, name="store")


@store_app.command("upgrade")
def store_upgrade(
    results: str = typer.Option(
        "results", "--results", help="Result store folder (or a leaderboard history) to upgrade in place."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would change; write nothing."),
) -> None:
    """Re-key rows written by an older harness to the current job identity (harness/store_upgrade.py)."""
    from harness.store_upgrade import upgrade_store

    for line in upgrade_store(results, dry_run=dry_run).lines(dry_run):
        print(line)


def main(argv: list[str] | None = None) -> int:
    if hasattr(signal, "SIGPIPE"):  # `harness list methods | head` ends quietly, like other CLIs
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    # bitsandbytes (pulled in by peft and galore-torch) warns at import about optional CPU kernels.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    try:
        # Without standalone mode, click returns the code of a typer.Exit instead of exiting.
        code = app(args=argv, standalone_mode=False, prog_name="harness")
    except HarnessError as exc:
        _err(str(exc))
        return 2
    except click_exceptions.NoArgsIsHelpError as exc:
        print(exc.ctx.get_help() if exc.ctx else "usage: harness --help")
        return 0
    except click_exceptions.UsageError as exc:
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
        _err(f"{exc.format_message()}{hint}".replace("\n", " "))
        return 2
    except typer.Exit as exc:
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        _err("interrupted")
        return 130
    if code == 130:  # typer turns Ctrl-C into exit status 130 and returns it
        _err("interrupted")
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
