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

from align.index.choose import REFINE_K_FACTOR, nprobe_for


def exact_topk(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row numbers of each query's k best inner products, exactly (faiss's blocked brute force: no
    [queries, items] score matrix, which for 200 queries over 10M items would be 8 GB)."""
    import faiss

    k = min(k, vectors.shape[0])
    x, q = (np.ascontiguousarray(a, dtype=np.float32) for a in (vectors, queries))
    return faiss.knn(q, x, k, metric=faiss.METRIC_INNER_PRODUCT)[1]


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def exact_truth(database, queries: np.ndarray, k: int) -> np.ndarray:
    """Row numbers of each (unit) query's k best inner products over the unit-normalised ``database``:
    an array, or a callable returning its rows block by block (a build's spilled vectors), searched a
    block at a time with faiss's ``knn_ground_truth`` so the database is never all in memory."""
    import faiss
    from faiss.contrib.exhaustive_search import knn_ground_truth

    if isinstance(database, np.ndarray):
        return exact_topk(_unit(database), queries, k)
    _, rows = knn_ground_truth(
        queries, (_unit(block) for block in database()), k, metric_type=faiss.METRIC_INNER_PRODUCT, ngpu=0
    )
    return rows


def measure(index, vectors, row_ids: np.ndarray, query_sets: dict[str, np.ndarray], k: int = 10) -> dict:
    """Recall@k of ``index`` against exact search over ``vectors`` (an array, or a callable giving its
    blocks: ``exact_truth``) whose ids are ``row_ids``, per query set; the median one-query search
    time, and the index's serialised size (for lists on disk: the part in memory)."""
    import faiss

    k = min(k, len(row_ids))
    recall = {}
    for name, q in query_sets.items():
        if not len(q):
            continue
        qn = _unit(q)
        truth = row_ids[exact_truth(vectors, qn, k)]
        _, got = index.search(qn, k)
        recall[name] = float(np.mean([len(set(t) & set(g)) / len(t) for t, g in zip(truth, got)]))
    probe = next((q for q in query_sets.values() if len(q)), None)
    if probe is None:
        probe = vectors[:1] if isinstance(vectors, np.ndarray) else next(iter(vectors()))[:1]
    times = []
    for row in _unit(probe[:50]):
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
    refine = faiss.downcast_index(index.inner)
    if isinstance(refine, faiss.IndexRefine):  # rescoring k * k_factor hits (saved with the index)
        refine.k_factor = REFINE_K_FACTOR
