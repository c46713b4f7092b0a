"""A tiny name -> factory registry that refuses duplicates and names the known entries when asked for an unknown one."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """Asked a registry for a name it does not hold. ``str()`` is a message a person can act on."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry(Generic[T]):
    """Maps names to factories. ``kind`` is what the entries are, for messages ("backbone", "pooling").

    Entries whose module is heavy to import (torch) can be declared with :meth:`register_lazily`: their names
    are known at once, and the module, which registers them for real, is imported on first use.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._lazy: dict[str, str] = {}  # name -> module that registers it

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = obj
            self._lazy.pop(name, None)
            return obj

        return decorator

    def register_lazily(self, names: Iterable[str], module: str) -> None:
        """Declare ``names`` as registered by ``module`` when it is imported (on the first :meth:`get`)."""
        for name in names:
            if name in self._entries or name in self._lazy:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._lazy[name] = module

    def get(self, name: str) -> T:
        if name in self._lazy:
            importlib.import_module(self._lazy[name])
            if name in self._lazy:
                raise RuntimeError(f"{self._lazy[name]} did not register the {self.kind} {name!r} it declares")
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        return sorted({*self._entries, *self._lazy})

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._lazy
