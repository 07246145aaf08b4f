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


@app.command("list")
def list_(what: ListWhat = typer.Argument(..., help="methods, suites, tasks, models or presets")) -> None:
    """List registered methods, suites, tasks, model aliases or presets with a one-line summary."""
    from rich.console import Console
    from rich.table import Table

    from harness.methods.base import METHODS
    from harness.suites.base import SUITES

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
        from harness.data.resolve import MODEL_ALIASES, resolve_model

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
