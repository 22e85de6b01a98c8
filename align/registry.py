"""A tiny name -> factory registry (timm style): things are built by name from config data."""
from __future__ import annotations

import importlib
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to classes. ``lazy_package`` lets a name be found by importing ``package.name``,
    so adding e.g. a modality is one file whose module name is the registered name."""

    def __init__(self, kind: str, lazy_package: str | None = None) -> None:
        self.kind = kind
        self.lazy_package = lazy_package
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        if name not in self._items and self.lazy_package and name.isidentifier():
            try:
                importlib.import_module(f"{self.lazy_package}.{name}")
            except ModuleNotFoundError as err:
                if err.name != f"{self.lazy_package}.{name}":
                    raise
        if name not in self._items:
            raise KeyError(f"unknown {self.kind} '{name}'; known: {sorted(self.names())}")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
