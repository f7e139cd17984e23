"""One registry type for everything a user names: rules, architectures, datasets and spaces.

A registry refuses a duplicate name, answers an unknown one with the same one-line message
("unknown rule 'x'; valid: a, b, c"), and lists its names. A registry may be given a
``discover`` hook that imports the modules holding its entries the first time it is read,
so that adding an entry is adding a file.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Callable, Generic, Iterator, TypeVar

from catalogue.errors import UnknownName

T = TypeVar("T")


def import_submodules(package: str, skip: tuple[str, ...] = ()) -> Callable[[], None]:
    """A discover hook: import every public module of ``package`` (they register themselves)."""
    def discover() -> None:
        path = importlib.import_module(package).__path__
        for module in pkgutil.iter_modules(path):
            if not module.name.startswith("_") and module.name not in skip:
                importlib.import_module(f"{package}.{module.name}")
    return discover


class Registry(Generic[T]):
    """Named entries of one kind, in registration order."""

    def __init__(self, kind: str, discover: Callable[[], None] | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._aliases: dict[str, str] = {}
        self._discover = discover
        self._discovering = False

    def _ensure_discovered(self) -> None:
        if self._discover is not None and not self._discovering:
            self._discovering = True  # a discovered module may read the registry itself
            try:
                self._discover()
            finally:
                self._discover = None
                self._discovering = False

    def register(self, name: str, entry: T) -> T:
        if not name or not isinstance(name, str):
            raise ValueError(f"a {self.kind} needs a non-empty name, got {name!r}")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def alias(self, name: str, target: str) -> None:
        """Another name for a registered entry (an old name that stored work still uses):
        ``get`` answers it, ``names`` lists only the entry's own name."""
        if name in self._entries or name in self._aliases:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        if target not in self._entries:
            raise ValueError(f"{self.kind} alias {name!r} names unknown {target!r}")
        self._aliases[name] = target

    def aliases(self) -> dict[str, str]:
        self._ensure_discovered()
        return dict(self._aliases)

    def get(self, name: str) -> T:
        self._ensure_discovered()
        try:
            return self._entries[self._aliases.get(name, name)]
        except (KeyError, TypeError):
            raise UnknownName(self.unknown_message(name)) from None

    def unknown_message(self, name: object) -> str:
        shown = repr(name) if len(repr(name)) <= 80 else repr(name)[:77] + "...'"
        return f"unknown {self.kind} {shown}; valid: {', '.join(sorted(self.names())) or 'none'}"

    def names(self) -> list[str]:
        self._ensure_discovered()
        return list(self._entries)

    def items(self) -> list[tuple[str, T]]:
        self._ensure_discovered()
        return list(self._entries.items())

    def __contains__(self, name: object) -> bool:
        self._ensure_discovered()
        return name in self._entries or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())
