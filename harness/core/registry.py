"""One generic registry for methods and suites.

Entries register themselves with a decorator when their module is imported. The
registry imports its package's modules (and any plugin entry points) lazily on first
lookup, so `harness list methods` sees everything without import-time side effects
elsewhere. A miss names the closest registered names.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from importlib.metadata import entry_points
from typing import Callable, Generic, Iterator, TypeVar

from harness.core.errors import HarnessError

T = TypeVar("T")


def summary_of(obj: object) -> str:
    """First line of an object's docstring: the one-line summary shown in listings."""
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0].strip() if doc else ""


class Registry(Generic[T]):
    """Name -> object, filled by `@registry.register("name")`.

    `kind` is the word used in messages ("method", "suite"); `package` is imported
    module by module on first use, and `entry_point_group` lets other distributions
    add entries without touching this repository. With `name_attribute`, registering
    sets that attribute of the entry to its registered name, so the name is written once
    (in the decorator); an entry that sets the attribute itself to another (non-empty) name is an error.
    """

    def __init__(
        self,
        kind: str,
        package: str | None = None,
        entry_point_group: str | None = None,
        name_attribute: str | None = None,
    ):
        self.kind = kind
        self._package = package
        self._entry_point_group = entry_point_group
        self._name_attribute = name_attribute
        self._entries: dict[str, T] = {}
        self._loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            existing = self._entries.get(name)
            if existing is not None and existing is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice ({existing!r} and {obj!r})")
            if self._name_attribute:
                # Only the entry's own attribute counts: a subclass inherits its parent's name.
                own = vars(obj).get(self._name_attribute)
                if own and own != name:
                    raise ValueError(
                        f"{self.kind} {name!r} sets {self._name_attribute}={own!r}; leave it to the registry"
                    )
                setattr(obj, self._name_attribute, name)
            self._entries[name] = obj
            return obj

        return decorator

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if self._package:
            package = importlib.import_module(self._package)
            for info in pkgutil.iter_modules(package.__path__):
                if not info.name.startswith("_"):
                    importlib.import_module(f"{self._package}.{info.name}")
        if self._entry_point_group:
            for ep in entry_points(group=self._entry_point_group):
                ep.load()

    def get(self, name: str) -> T:
        self._load()
        try:
            return self._entries[name]
        except KeyError:
            raise HarnessError(self.unknown_message(name, sorted(self._entries))) from None

    def unknown_message(self, name: str, choices: list[str]) -> str:
        close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(choices)}"
        return f"unknown {self.kind} {name!r}; {hint} (see `harness list {self.kind}s`)"

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def __iter__(self) -> Iterator[tuple[str, T]]:
        return iter((name, self._entries[name]) for name in self.names())

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._entries
