"""`harness list`: what is registered."""

from __future__ import annotations

import sys
from enum import Enum

import typer

from harness.cli.app import app


class ListWhat(str, Enum):
    methods = "methods"
    suites = "suites"
    tasks = "tasks"
    models = "models"
    presets = "presets"
    options = "options"
    executors = "executors"
    backends = "backends"


@app.command("list")
def list_(
    what: ListWhat = typer.Argument(
        ..., help="methods, suites, tasks, models, presets, options, executors or backends"
    ),
) -> None:
    """List registered methods, suites, tasks, model aliases, presets, run options, executors or evaluation backends."""
    from rich.console import Console
    from rich.table import Table

    from harness.methods.base import METHODS
    from harness.suites.base import SUITES

    table = Table(box=None, pad_edge=False)
    if what is ListWhat.methods:
        for col in ("method", "category", "summary", "paper", "default lr (source)"):
            table.add_column(col, overflow="fold")
        for name, cls in METHODS:
            table.add_row(name, cls.category, cls.summary(), cls.paper, f"{cls.default_lr:g} ({cls.default_lr_source})")
    elif what is ListWhat.suites:
        for col in ("suite", "tasks", "default model", "summary"):
            table.add_column(col, overflow="fold")
        for name, cls in SUITES:
            table.add_row(name, str(len(cls.tasks)), cls.default_model, cls.summary())
    elif what is ListWhat.models:
        from harness.data.models import MODELS
        from harness.data.resolve import resolve_model

        for col in ("alias", "suite", "hub id", "resolves to", "note"):
            table.add_column(col, overflow="fold")
        owners = {alias: name for name, cls in SUITES for alias in vars(cls).get("model_aliases", {})}
        for alias, info in MODELS:
            ref = resolve_model(alias)
            where = {
                "package": ref.location,
                "unavailable": "--model PATH",
                "random-init": "built here, random init",
            }.get(ref.source, "hub")
            table.add_row(alias, owners.get(alias, ""), info.hub_id, where, info.note)
    elif what is ListWhat.options:
        for col in ("option", "suite", "flag", "default", "summary"):
            table.add_column(col, overflow="fold")
        from rich.markup import escape

        for row in option_rows(SUITES):
            table.add_row(*map(escape, row))  # help texts hold brackets ([env: ...]) rich would read as markup
    elif what is ListWhat.presets:
        for col in ("suite", "preset", "settings", "source"):
            table.add_column(col, overflow="fold")
        for name, cls in SUITES:
            for preset in cls.presets.values():
                settings = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in preset.settings.items())
                table.add_row(name, preset.name, settings, preset.source)
    elif what is ListWhat.executors:
        from harness.execution.base import EXECUTORS, flag

        for col in ("executor", "options", "summary"):
            table.add_column(col, overflow="fold")
        for name, cls in EXECUTORS:
            table.add_row(name, " ".join(flag(o) for o in cls.options), cls.summary())
    elif what is ListWhat.backends:
        from harness.evaluation.base import of_kind

        for col in ("backend", "kind", "here", "summary"):
            table.add_column(col, overflow="fold")
        device = "cuda" if _cuda() else "cpu"
        for kind in ("forward", "generate"):
            for cls in of_kind(kind):
                why = cls.unavailable(device)
                table.add_row(cls.name, kind, f"no: {why}" if why else f"yes ({device})", cls.summary())
    else:
        for col in ("suite", "task", "dataset", "metric", "summary"):
            table.add_column(col, overflow="fold")
        for name, cls in SUITES:
            for task in cls.tasks.values():
                table.add_row(name, task.name, f"{task.dataset}/{task.config or ''}", task.primary_metric, task.summary)
    Console(width=200 if not sys.stdout.isatty() else None, markup=False).print(table)


def option_rows(suites) -> list[tuple[str, str, str, str, str]]:
    """(option, suite, how to give it, default, summary): the run options every suite takes (suite
    "all"), then each suite's own."""
    from harness.spec.options import Fill
    from harness.spec.run import RUN_OPTIONS, RunSpec, flag_of

    rows = []
    for name, opt in RUN_OPTIONS.items():
        field = RunSpec.model_fields[name]
        if isinstance(opt.fill, Fill) and opt.fill is not Fill.GIVEN:
            default = "required" if field.is_required() else opt.fill.value
        else:
            default = str(field.default if opt.fill is Fill.GIVEN else opt.fill)
        how = flag_of(name) + ("=VALUE" if flag_of(name).startswith("--set") else "")
        rows.append((name, "all", how, default, opt.help))
    for suite, cls in suites:
        for name, field in cls.Options.model_fields.items():
            how = f"--{name.replace('_', '-')}, --set {name}=VALUE"
            rows.append((name, suite, how, str(field.default), field.description or ""))
    return rows


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
