"""`harness run`: one job.

Its options are made from the run options' declarations (harness/spec/run.py): a flag for each
option declared for the command line, `--set key=value` for any option (those without a flag, and
the suite's own), and `--<option> value` for an option the suite declares (gsm8k's --num-fewshot).
"""

from __future__ import annotations

import inspect
import types
import typing
from typing import Annotated, Any, Literal, Optional, Union

import typer

from harness.cli.app import app, err
from harness.core.errors import HarnessError
from harness.spec.run import RUN_OPTIONS, RunSpec, flag_of


def _cli_type(annotation: Any) -> Any:
    """The type click parses a flag's text as; pydantic validates the value after it (a choice of
    a Literal too, whose error lists the choices)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        return _cli_type(args[0])
    if origin in (Union, types.UnionType):
        return Optional[_cli_type(next(a for a in args if a is not type(None)))]
    return str if origin is Literal else annotation


def _declared_parameters() -> list[inspect.Parameter]:
    parameters = []
    for name, opt in RUN_OPTIONS.items():
        if not opt.cli:
            continue
        field = RunSpec.model_fields[name]
        flag = flag_of(name)
        names = [f"{flag}/--no-{flag[2:]}" if opt.negatable else flag, *([opt.short] if opt.short else [])]
        default = ... if field.is_required() else field.default
        parameters.append(
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=typer.Option(default, *names, help=opt.help),
                annotation=_cli_type(field.annotation),
            )
        )
    return parameters


_OWN = [
    inspect.Parameter(
        "set_",
        inspect.Parameter.KEYWORD_ONLY,
        default=typer.Option(
            None,
            "--set",
            metavar="KEY=VALUE",
            help="Any run option, also one without a flag (latency_warmup, eval_backend), or a suite's own "
            "option (see `harness list options`); the value is read as YAML (0.1, true, null). Repeatable.",
        ),
        annotation=Optional[list[str]],
    ),
    inspect.Parameter(
        "quiet",
        inspect.Parameter.KEYWORD_ONLY,
        default=typer.Option(False, "--quiet", "-q", help="No progress bars."),
        annotation=bool,
    ),
    inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context),
]


def yaml_scalar(text: str, where: str) -> Any:
    """A value as a sweep file would read it: 0.1, 5, true, null, or text."""
    import yaml

    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        raise HarnessError(f"{where}={text!r}: not a value YAML reads") from None
    if isinstance(value, (list, dict)):
        raise HarnessError(f"{where}={text!r}: one value, not a list or mapping")
    return value


def parse_sets(items: list[str]) -> dict[str, Any]:
    """`--set KEY=VALUE` items as option -> value (dashes in a key read as underscores)."""
    values: dict[str, Any] = {}
    for item in items:
        key, eq, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or not key:
            raise HarnessError(f"--set {item!r}: give KEY=VALUE, e.g. --set warmup_ratio=0.1")
        if key in values:
            raise HarnessError(f"--set {key} is given twice")
        if key in RunSpec.model_fields and key not in RUN_OPTIONS:
            raise HarnessError(f"--set {key}: not an option; give a suite's options one by one")
        values[key] = yaml_scalar(text, f"--set {key}")
    return values


def parse_suite_flags(args: list[str], suite: str) -> dict[str, Any]:
    """The flags `harness run` does not declare itself: the options of the suite named, each as
    `--name value`, `--name=value`, or for a switch `--name` / `--no-name`."""
    if not args:
        return {}
    from pydantic import ValidationError

    from harness.spec.options import check_suite_options
    from harness.suites.base import SUITES

    fields = SUITES.get(suite.lower()).Options.model_fields
    values: dict[str, Any] = {}
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        if not arg.startswith("--"):
            raise HarnessError(f"unexpected argument {arg!r} (see `harness run --help`)")
        name, eq, text = arg[2:].partition("=")
        key = name.replace("-", "_")
        negated = key.startswith("no_") and key[3:] in fields and fields[key[3:]].annotation is bool
        key = key[3:] if negated else key
        if key in RUN_OPTIONS:  # an option without a flag of its own
            raise HarnessError(f"--{name} is not a flag of `harness run`; pass --set {key}=VALUE")
        if key not in fields:
            try:  # the suite's Options say what they do take
                check_suite_options(suite, {key: text or None}, list(RUN_OPTIONS))
            except ValidationError as exc:
                raise HarnessError(f"--{name}: {exc.errors()[0]['msg']}") from None
        if key in values:
            raise HarnessError(f"--{name} is given twice")
        if fields[key].annotation is bool and not eq:
            values[key] = not negated
            continue
        if not eq:
            if not rest:
                raise HarnessError(f"--{name} needs a value")
            text = rest.pop(0)
        values[key] = yaml_scalar(text, f"--{name}")
    return values


def run(**values: Any) -> None:
    """Run one job: train a method on a task, evaluate it, measure its costs, write one result row."""
    from harness.engine.job import run_job

    ctx, quiet = values.pop("ctx"), values.pop("quiet")
    sets = parse_sets(values.pop("set_") or [])
    suite_flags = parse_suite_flags(list(ctx.args), values["suite"])
    for key in sets:
        flagged = key in suite_flags or (key in values and values[key] != RunSpec.model_fields[key].default)
        if flagged:
            raise HarnessError(f"{flag_of(key)} and --set {key} are both given; pass one")
    spec = RunSpec.build(flags={key: f"--set {key}" for key in sets}, **{**values, **suite_flags, **sets})
    result = run_job(spec, show_progress=not quiet)
    row = result.row
    if not result.ok:
        err(f"run failed: {row['error']} (row with traceback: {result.path})")
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


# typer reads the command's options from its signature: the declared ones, then the command's own.
run.__signature__ = inspect.Signature(_declared_parameters() + _OWN, return_annotation=None)
app.command("run", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})(run)
