"""Modality adapters: raw sample -> tensors -> encoder features, one file per modality.

``align.registry.ADAPTERS.get("image")`` imports ``align.modalities.image`` on first use, so adding a modality is one
file that registers an adapter under its module name, plus a config that uses it.
"""

from align.registry import ADAPTERS


def build_adapter(name: str, options: dict | None = None):
    """Create a registered adapter from plain config data (validated against its Options)."""
    cls = ADAPTERS.get(name)
    return cls(cls.Options.model_validate(options or {}))


__all__ = ["build_adapter"]
