"""The search service's in-process API: a ``Searcher`` holds one checkpoint and its index folders,
loaded once, and answers batched ``search``, ``encode`` and zero-shot ``classify`` requests (an HTTP
layer is meant to be thin over it). Sits above ``align.eval`` / ``align.training`` and below
``align.app`` in the layers contract."""

from align.serve.errors import SearchError
from align.serve.indexes import IndexInfo
from align.serve.inputs import Upload
from align.serve.searcher import Hit, Searcher

__all__ = ["Hit", "IndexInfo", "SearchError", "Searcher", "Upload"]
