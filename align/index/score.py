"""Scoring a built index against exact search.

``measure(index, vectors, query_sets)`` scores the built index the way a cross-modal user meets it:
recall@k against exact search on each query set — the other modality's embeddings from the same
dataset (text queries against an image index: out of distribution for a codebook trained on image
vectors, which same-distribution scoring, autofaiss's, never sees) and a sample of the indexed
vectors themselves — plus the median time of a one-query search.
"""

from __future__ import annotations

import time

import numpy as np

from align.index.choose import nprobe_for


def exact_topk(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row numbers of each query's k best inner products, exactly (faiss's blocked brute force: no
    [queries, items] score matrix, which for 200 queries over 10M items would be 8 GB)."""
    import faiss

    k = min(k, vectors.shape[0])
    x, q = (np.ascontiguousarray(a, dtype=np.float32) for a in (vectors, queries))
    return faiss.knn(q, x, k, metric=faiss.METRIC_INNER_PRODUCT)[1]


def measure(index, vectors: np.ndarray, row_ids: np.ndarray, query_sets: dict[str, np.ndarray], k: int = 10) -> dict:
    """Recall@k of ``index`` against exact search over ``vectors`` (whose ids are ``row_ids``) per
    query set, the median one-query search time, and the index's serialised (in-memory) size."""
    import faiss

    x = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    recall = {}
    for name, q in query_sets.items():
        if not len(q):
            continue
        qn = (q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)).astype(np.float32)
        truth = row_ids[exact_topk(x, qn, k)]
        _, got = index.search(qn, k)
        recall[name] = float(np.mean([len(set(t) & set(g)) / len(t) for t, g in zip(truth, got)]))
    probe = next((q for q in query_sets.values() if len(q)), x[:1])[:50].astype(np.float32)
    times = []
    for row in probe:
        t0 = time.perf_counter()
        index.search(row[None, :], k)
        times.append(time.perf_counter() - t0)
    return {
        f"recall@{k}": recall,
        "query_ms_p50": 1000 * float(np.median(times)),
        "memory_bytes": int(faiss.serialize_index(index.index).size),
    }


def prepare(index) -> None:
    """The search parameters the chooser's estimates assume (IVF: ``nprobe_for`` its lists)."""
    import faiss

    ivf = faiss.try_extract_index_ivf(index.inner)
    if ivf is not None:
        index.set_search_params(nprobe=nprobe_for(int(ivf.nlist)))
