"""The typer application the command modules register on, and the one-line error printer."""

from __future__ import annotations

import sys

import typer

app = typer.Typer(
    name="harness",
    help="Benchmark parameter-efficient fine-tuning and compression methods: accuracy and cost together.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def err(message: str) -> None:
    print(f"harness: error: {message}", file=sys.stderr)


store_app = typer.Typer(help="Maintain a result store.", no_args_is_help=True)
app.add_typer(store_app, name="store")
