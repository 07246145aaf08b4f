"""The one exception type for bad input from the user.

The CLI prints a `HarnessError` as a single line and exits with status 2; it never
becomes a `failed` result row, because nothing was measured. Anything else raised
while a job runs is a failure of the run and is recorded as such.
"""


class HarnessError(Exception):
    """Input the user can fix: an unknown name, a bad parameter, a missing file."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type name when it has none."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
