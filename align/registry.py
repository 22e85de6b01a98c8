"""A tiny name -> factory registry (timm style): things are built by name from config data.

Names are known before anything heavy is imported: a registry lists what is registered, what
installed packages declare under its entry-point group (``[project.entry-points."align.modalities"]``
in a pyproject: ``tabular = "my_pkg.tabular"``; align declares its own the same way). So a typo in
a config lists the real names, and a package outside this repository adds a modality, a data
source or a loss with no fork: install it and use its name.
"""

from __future__ import annotations

import importlib
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to classes. ``lazy_package`` lets a name be found by importing ``package.name``,
    so adding e.g. a modality is one file whose module name is the registered name;
    ``entry_point_group`` finds names that installed packages declare."""

    def __init__(self, kind: str, lazy_package: str | None = None, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self.lazy_package = lazy_package
        self.entry_point_group = entry_point_group
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self._items[name] = obj
            return obj

        return deco

    def entry_points(self) -> dict:
        """name -> ``importlib.metadata.EntryPoint`` declared by installed packages (not loaded)."""
        if not self.entry_point_group:
            return {}
        from importlib.metadata import entry_points

        return {ep.name: ep for ep in entry_points(group=self.entry_point_group)}

    def get(self, name: str) -> T:
        if name not in self._items:
            declared = self.entry_points().get(name)
            if declared is not None:
                obj = declared.load()  # a module registers on import; an object is registered here
                if name not in self._items and not isinstance(obj, type(importlib)):
                    self._items[name] = obj
            elif self.lazy_package and name.replace("-", "_").isidentifier():
                module = f"{self.lazy_package}.{name.replace('-', '_')}"  # 'tu-dataset' -> tu_dataset
                try:
                    importlib.import_module(module)
                except ModuleNotFoundError as err:
                    if err.name != module:
                        raise
        if name not in self._items:
            raise KeyError(f"unknown {self.kind} '{name}'; known: {self.names()}")
        return self._items[name]

    def names(self) -> list[str]:
        """Every name this registry can build without guessing: registered, or declared by an
        installed package's entry points (align declares its own modalities the same way)."""
        return sorted(set(self._items) | set(self.entry_points()))

    def __contains__(self, name: str) -> bool:
        return name in self._items


# The modality registry lives here, at the bottom layer, so config validation can look adapters
# up by name; the adapters themselves (align.modalities.*) are imported only when first asked for.
ADAPTERS: Registry = Registry("modality adapter", lazy_package="align.modalities", entry_point_group="align.modalities")

# The loss registry, beside the adapters for the same reason: config validation and the model (its
# initial temperature, its probability kind) ask a loss class by name without importing a layer
# above theirs. align declares its losses under "align.losses" in pyproject.toml; loading a name
# imports its module (align.objectives.losses, .variants, .multiway), whose classes register.
LOSSES: Registry = Registry("loss", entry_point_group="align.losses")
