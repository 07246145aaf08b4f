"""The `harness` command line (typer).

Bad input is one line on stderr and exit status 2, with no traceback; a run that
started and failed writes a `failed` row and exits 1.
"""

from __future__ import annotations

import logging
import signal

import typer

try:  # typer >= 0.24 carries its own copy of click; older releases use click itself
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - depends on the installed typer
    from click import exceptions as click_exceptions


# Each command module registers its commands on the app when imported, in the order `--help` lists them.
# isort: off
from harness.cli import run, sweep, tune, results, listing  # noqa: E402, F401

# isort: on
from harness.cli.app import app, err  # noqa: E402
from harness.core.errors import HarnessError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    if hasattr(signal, "SIGPIPE"):  # `harness list methods | head` ends quietly, like other CLIs
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    # bitsandbytes (pulled in by peft and galore-torch) warns at import about optional CPU kernels.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    try:
        # Without standalone mode, click returns the code of a typer.Exit instead of exiting.
        code = app(args=argv, standalone_mode=False, prog_name="harness")
    except HarnessError as exc:
        err(str(exc))
        return 2
    except click_exceptions.NoArgsIsHelpError as exc:
        print(exc.ctx.get_help() if exc.ctx else "usage: harness --help")
        return 0
    except click_exceptions.UsageError as exc:
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
        err(f"{exc.format_message()}{hint}".replace("\n", " "))
        return 2
    except typer.Exit as exc:
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        err("interrupted")
        return 130
    if code == 130:  # typer turns Ctrl-C into exit status 130 and returns it
        err("interrupted")
    return code if isinstance(code, int) else 0
