"""The executor contract and the EXECUTORS registry: where `harness sweep` sends the jobs it planned.

An executor is a class registered under a name (`@EXECUTORS.register("local")`), in a module
of this package, which the registry imports on first lookup. It is built with the options the
command line gave it, checked in its `__init__` before the sweep is planned, and then runs the
jobs not yet done: one Outcome per job, each job ending with a row, or with the status
"planned" for an executor that hands the jobs to something else to run.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

from harness.core.errors import HarnessError
from harness.core.registry import Registry, summary_of

if TYPE_CHECKING:
    from harness.execution.isolated import Outcome
    from harness.execution.plan import SweepJob
    from harness.spec.sweep_file import Resources


def flag(option: str) -> str:
    """The `harness sweep` flag of an option, by its parameter name: max_parallel -> --max-parallel."""
    return "--" + option.replace("_", "-")


class Executor(ABC):
    """Runs a sweep's jobs somewhere; the first docstring line is its summary in `harness list executors`."""

    name: ClassVar[str] = ""  # set by EXECUTORS.register
    # The executor-specific `harness sweep` options it takes, by parameter name (devices, max_parallel).
    options: ClassVar[tuple[str, ...]] = ()
    # True when what the executor prints on stdout is its result (commands to pipe on): the
    # sweep's own lines (the plan's counts, the summary) then go to stderr.
    output_on_stdout: ClassVar[bool] = False

    @classmethod
    def summary(cls) -> str:
        return summary_of(cls)

    @abstractmethod
    def run(self, jobs: list[SweepJob], resources: Resources, *, quiet: bool = False) -> list[Outcome]:
        """Run every job; block until all are done; one Outcome per job. `resources` are the
        sweep's (each job's own are `job.resources`); `quiet`: no live display."""


EXECUTORS: Registry[type[Executor]] = Registry("executor", package="harness.execution", name_attribute="name")


def make_executor(name: str, options: dict[str, Any]) -> Executor:
    """The executor `name` built with the options given (None: not given); an unknown name or an
    option it does not take is one line."""
    cls = EXECUTORS.get(name)
    given = {key: value for key, value in options.items() if value is not None}
    for key in given:
        if key not in cls.options:
            takes = ", ".join(flag(o) for o in cls.options) or "no options of its own"
            raise HarnessError(
                f"{flag(key)} is not an option of --executor {name} (it takes {takes}; see `harness list executors`)"
            )
    return cls(**given)
