"""Data sources: tables ``datasets.load_dataset`` has no builder for, one module each.

``SOURCES.get("tu-dataset")`` imports ``align.data.sources.tu_dataset`` on first use (hyphens become
underscores), as ``ADAPTERS`` does for modalities; every source registers a function
``spec -> datasets.Dataset`` under its name and takes its options from ``spec.load_kwargs``.
Names are known before import from the ``align.data.sources`` entry points (pyproject), where other
packages add their own. Shared helpers live in ``align.data.sources.common``.
"""

from __future__ import annotations

from align.registry import Registry

SOURCES: Registry = Registry("data source", lazy_package="align.data.sources", entry_point_group="align.sources")

# sources that split themselves by load_kwargs.folds / fold (align crossval sets those)
FOLD_SOURCES = {"tu-dataset", "packed-npz"}

__all__ = ["SOURCES", "FOLD_SOURCES"]
