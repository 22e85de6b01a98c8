"""FAISS index over unit-norm embeddings: inner product = cosine similarity."""
from __future__ import annotations

import numpy as np


class EmbeddingIndex:
    """Exact inner-product index with an id map (``IndexIDMap2(IndexFlatIP)``)."""

    def __init__(self, dim: int) -> None:
        import faiss

        self.dim = dim
        self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))

    def __len__(self) -> int:
        return self.index.ntotal

    def add(self, embeddings, ids=None) -> None:
        x = self._as_array(embeddings)
        if ids is None:
            ids = np.arange(len(self), len(self) + len(x))
        self.index.add_with_ids(x, np.asarray(ids, dtype=np.int64))

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores [Q, k], ids [Q, k]) best first; ``k`` is capped at the index size."""
        return self.index.search(self._as_array(queries), min(k, len(self)))

    def _as_array(self, x) -> np.ndarray:
        if hasattr(x, "detach"):
            x = x.detach().float().cpu().numpy()
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"embeddings must be [N, {self.dim}], got {x.shape}")
        return x
