"""The search service's in-process API: a ``Searcher`` holds one checkpoint and its index folders,
loaded once, and answers batched ``search``, ``encode`` and zero-shot ``classify`` requests (an HTTP
layer is meant to be thin over it). Sits above ``align.eval`` / ``align.training`` and below
``align.app`` in the layers contract.

The names below are imported on first use, so ``align.serve.client`` (what ``align query --server``
runs) imports neither torch nor faiss."""

from __future__ import annotations

import importlib
from typing import Any

_API = {
    "Hit": "align.serve.searcher",
    "IndexInfo": "align.serve.indexes",
    "SearchError": "align.serve.errors",
    "Searcher": "align.serve.searcher",
    "Upload": "align.serve.inputs",
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'align.serve' has no attribute {name!r}")
    return getattr(importlib.import_module(_API[name]), name)
