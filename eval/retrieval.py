"""Cross-modal retrieval metrics with CLIP_benchmark's definitions (zeroshot_retrieval.py, v1.6.2).

Why a module of its own: published numbers (CLIP_benchmark, open_clip papers) are recall@k over
*captions as rows* — every caption is a text query, and an image query scores 1 when *any* of its
captions is in its top k. Scores are plain cosine similarities (no temperature; it cannot change a
ranking). Names: ``"{a}_to_{b}/R@k"``; CLIP_benchmark's ``image_retrieval_recall@k`` is our
``text_to_image/R@k`` and its ``text_retrieval_recall@k`` is ``image_to_text/R@k``
(see :func:`clip_benchmark_names`).

Ties (exactly equal scores). ``ties="index"`` (default): a gallery item ranks before another with
the same score when its index is lower — the order of a stable descending sort and of
``torch.argmax``; deterministic on every device. CLIP_benchmark takes the top k with
``torch.topk``, whose choice among tied items at the k boundary is implementation-defined (it
changes with the row length and the device); ``ties="topk"`` calls ``torch.topk`` exactly as it
does, to reproduce its R@k bit for bit on this build. Rank-based metrics always use the index rule.
Without exact ties both modes give the same numbers.

Also reported per direction: ``mAP`` (mean over queries of average precision over all their
positives; with one positive it equals MRR), ``MRR`` (mean of 1 / rank of the first positive,
Text2Mol's metric), ``median_rank`` (``np.median`` of the
1-based rank of each query's first positive; the mean of the two middle values for an even count)
and ``mean_rank``, and ``n_queries``. Queries without any positive are left out of every mean and
counted in ``n_queries_without_positives``; CLIP_benchmark counts them as misses (0/0 -> nan, and
``nan > 0`` is False), which only differs when such queries exist.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

Positives = np.ndarray | torch.Tensor | Sequence[tuple[int, int]]


def positive_pairs(
    positives: Positives, n_a: int | None = None, n_b: int | None = None
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Normalise positives to unique sorted (a_idx, b_idx) pairs plus the set sizes.

    Accepts a boolean matrix [n_a, n_b], a list / [P, 2] array of (a_idx, b_idx) pairs, or a 1-D
    integer array of length n_b giving each b row's a index (CLIP_benchmark's
    ``texts_image_index``: a = images, b = captions)."""
    p = positives.cpu().numpy() if isinstance(positives, torch.Tensor) else np.asarray(positives)
    if p.ndim == 2 and p.dtype == bool:
        n_a = p.shape[0] if n_a is None else n_a
        n_b = p.shape[1] if n_b is None else n_b
        if p.shape != (n_a, n_b):
            raise ValueError(f"positives matrix has shape {p.shape}, expected ({n_a}, {n_b})")
        a, b = np.nonzero(p)
    elif p.ndim == 1 and np.issubdtype(p.dtype, np.integer):
        a, b = p.astype(np.int64), np.arange(len(p), dtype=np.int64)
    elif p.ndim == 2 and p.shape[1] == 2 and np.issubdtype(p.dtype, np.integer):
        a, b = p[:, 0].astype(np.int64), p[:, 1].astype(np.int64)
    elif p.size == 0:
        a = b = np.zeros(0, dtype=np.int64)
    else:
        raise TypeError(
            "positives must be a bool matrix [n_a, n_b], (a_idx, b_idx) pairs, or an int "
            f"array with each b row's a index; got dtype {p.dtype}, shape {p.shape}"
        )
    n_a = int(a.max()) + 1 if n_a is None else int(n_a)
    n_b = int(b.max()) + 1 if n_b is None else int(n_b)
    if len(a) and (a.min() < 0 or a.max() >= n_a or b.min() < 0 or b.max() >= n_b):
        raise ValueError(f"positive pair index out of range for n_a={n_a}, n_b={n_b}")
    key = np.unique(a.astype(np.int64) * n_b + b)
    return key // n_b, key % n_b, n_a, n_b


def _pair_ranks(
    score_rows: Callable[[int, int], torch.Tensor], n_q: int, n_g: int, q: np.ndarray, g: np.ndarray, chunk_size: int
) -> np.ndarray:
    """1-based rank of every positive pair (q, g) among its query's gallery: 1 + #(higher score) +
    #(equal score and lower index). Scores are materialised ``chunk_size`` query rows at a time."""
    ranks = np.zeros(len(q), dtype=np.int64)
    order = np.argsort(q, kind="stable")
    qs, gs = q[order], g[order]
    cols = torch.arange(n_g)
    for s in range(0, n_q, chunk_size):
        e = min(s + chunk_size, n_q)
        lo, hi = np.searchsorted(qs, [s, e])
        if lo == hi:
            continue
        S = score_rows(s, e)
        for p0 in range(lo, hi, chunk_size):  # bound the [pairs, n_g] comparison temporaries
            p1 = min(p0 + chunk_size, hi)
            rows = S[torch.from_numpy(qs[p0:p1] - s)]
            gi = torch.from_numpy(gs[p0:p1])
            sp = rows.gather(1, gi[:, None])
            r = (rows > sp).sum(1) + ((rows == sp) & (cols[None] < gi[:, None])).sum(1) + 1
            ranks[order[p0:p1]] = r.numpy()
    return ranks


def _summarise(
    prefix: str,
    q: np.ndarray,
    ranks: np.ndarray,
    n_q: int,
    ks: Sequence[int],
    recall_hits: dict[int, np.ndarray] | None = None,
) -> dict[str, float | int]:
    """Per-query first rank and AP from the ranks of all positives, then means over queries."""
    o = np.lexsort((ranks, q))
    q, ranks = q[o], ranks[o]
    starts = np.flatnonzero(np.r_[True, q[1:] != q[:-1]]) if len(q) else np.zeros(0, np.int64)
    counts = np.diff(np.r_[starts, len(q)])
    j = np.arange(len(q)) - np.repeat(starts, counts) + 1  # position among the query's positives
    ap = np.add.reduceat(j / ranks, starts) / counts if len(q) else np.zeros(0)
    first = ranks[starts]
    out: dict[str, float | int] = {}
    for k in ks:
        hit = (first <= k) if recall_hits is None else recall_hits[k][q[starts]]
        out[f"{prefix}/R@{k}"] = float(hit.mean()) if len(first) else float("nan")
    out[f"{prefix}/mAP"] = float(ap.mean()) if len(first) else float("nan")
    out[f"{prefix}/MRR"] = float((1.0 / first).mean()) if len(first) else float("nan")
    out[f"{prefix}/median_rank"] = float(np.median(first)) if len(first) else float("nan")
    out[f"{prefix}/mean_rank"] = float(first.mean()) if len(first) else float("nan")
    out[f"{prefix}/n_queries"] = int(len(first))
    out[f"{prefix}/n_queries_without_positives"] = int(n_q - len(first))
    return out


def _topk_hits(
    score_rows, n_q: int, q: np.ndarray, g: np.ndarray, n_g: int, ks: Sequence[int], chunk_size: int
) -> dict[int, np.ndarray]:
    """CLIP_benchmark's hit test: any positive among ``torch.topk(scores, k)`` indices."""
    keys = np.sort(q * n_g + g)
    hits = {k: np.zeros(n_q, dtype=bool) for k in ks}
    for s in range(0, n_q, chunk_size):
        e = min(s + chunk_size, n_q)
        S = score_rows(s, e)
        for k in ks:
            idx = torch.topk(S, min(k, n_g), dim=1)[1].numpy()
            key = (np.arange(s, e)[:, None] * n_g + idx).ravel()
            pos = np.searchsorted(keys, key)
            found = (pos < len(keys)) & (keys[np.minimum(pos, len(keys) - 1)] == key)
            hits[k][s:e] = found.reshape(idx.shape).any(1)
    return hits


def _both_directions(
    rows_ab,
    rows_ba,
    positives: Positives,
    n_a: int,
    n_b: int,
    ks: Sequence[int],
    names: tuple[str, str],
    chunk_size: int,
    ties: str,
) -> dict[str, float | int]:
    if ties not in ("index", "topk"):
        raise ValueError(f"ties must be 'index' or 'topk', got {ties!r}")
    a, b, n_a, n_b = positive_pairs(positives, n_a, n_b)
    out: dict[str, float | int] = {}
    for (qn, gn), rows, q, g, n_q, n_g in (
        ((names[0], names[1]), rows_ab, a, b, n_a, n_b),
        ((names[1], names[0]), rows_ba, b, a, n_b, n_a),
    ):
        ranks = _pair_ranks(rows, n_q, n_g, q, g, chunk_size)
        hits = _topk_hits(rows, n_q, q, g, n_g, ks, chunk_size) if ties == "topk" else None
        out.update(_summarise(f"{qn}_to_{gn}", q, ranks, n_q, ks, hits))
    return out


def retrieval_metrics(
    a_emb: torch.Tensor,
    b_emb: torch.Tensor,
    positives: Positives,
    ks: Sequence[int] = (1, 5, 10),
    names: tuple[str, str] = ("image", "text"),
    chunk_size: int = 1024,
    ties: str = "index",
    normalize: bool = True,
) -> dict[str, float | int]:
    """Both retrieval directions from embeddings (a = images, b = captions by default).

    Cosine scores are computed ``chunk_size`` query rows at a time, so 10k images x 50k captions
    never needs the whole score matrix."""
    a_emb, b_emb = torch.as_tensor(a_emb).float(), torch.as_tensor(b_emb).float()
    if normalize:
        a_emb, b_emb = F.normalize(a_emb, dim=-1), F.normalize(b_emb, dim=-1)
    with torch.no_grad():
        return _both_directions(
            lambda s, e: a_emb[s:e] @ b_emb.T,
            lambda s, e: b_emb[s:e] @ a_emb.T,
            positives,
            len(a_emb),
            len(b_emb),
            ks,
            names,
            chunk_size,
            ties,
        )


def retrieval_metrics_from_scores(
    scores: np.ndarray | torch.Tensor,
    positives: Positives,
    ks: Sequence[int] = (1, 5, 10),
    names: tuple[str, str] = ("image", "text"),
    chunk_size: int = 1024,
    ties: str = "index",
) -> dict[str, float | int]:
    """Both directions from a dense score matrix [n_a, n_b] (a tensor, array or ``np.memmap``);
    only ``chunk_size`` rows (or columns) are turned into a float32 tensor at a time."""
    n_a, n_b = scores.shape
    as_t = lambda x: torch.as_tensor(np.ascontiguousarray(x) if isinstance(x, np.ndarray) else x).float()
    return _both_directions(
        lambda s, e: as_t(scores[s:e]),
        lambda s, e: as_t(scores[:, s:e].T),
        positives,
        n_a,
        n_b,
        ks,
        names,
        chunk_size,
        ties,
    )


def ranked_retrieval_metrics(
    ranked_ids: np.ndarray | torch.Tensor,
    positives: Positives,
    n_gallery: int,
    ks: Sequence[int] = (1, 5, 10),
    prefix: str = "image_to_text",
    n_queries: int | None = None,
) -> tuple[dict[str, float | int | None], dict[str, str]]:
    """One direction from top-K gallery ids per query (e.g. FAISS ``search``; -1 = no result).

    ``positives`` is given query x gallery (matrix [n_q, n_gallery], (query, gallery) pairs, or
    each gallery row's query index). R@k is exact for k <= K. ``median_rank`` is exact when the
    middle first-positive ranks fall within K; ``mAP`` and ``mean_rank`` need the full ranking
    (K >= n_gallery). Unavailable metrics are ``None`` and the second dict says why. The tie
    order is the search engine's."""
    ids = np.asarray(ranked_ids.cpu() if isinstance(ranked_ids, torch.Tensor) else ranked_ids).astype(np.int64)
    n_q = len(ids) if n_queries is None else n_queries
    if len(ids) != n_q:
        raise ValueError(f"ranked_ids has {len(ids)} rows, expected {n_q}")
    q, g, _, _ = positive_pairs(positives, n_q, n_gallery)
    K = ids.shape[1]
    keys = q * n_gallery + g
    key = np.where(ids >= 0, np.arange(n_q)[:, None] * n_gallery + ids, -1)
    hits = np.isin(key, keys)
    has_pos = np.bincount(q, minlength=n_q) > 0
    first = np.where(hits.any(1), hits.argmax(1) + 1, np.inf)[has_pos]
    out: dict[str, float | int | None] = {}
    why: dict[str, str] = {}
    for k in ks:
        name = f"{prefix}/R@{k}"
        if k <= K:
            out[name] = float((first <= k).mean()) if len(first) else float("nan")
        else:
            out[name], why[name] = None, f"k={k} > K={K} results per query"
    full = K >= n_gallery and int(hits.sum()) == len(q)  # every positive's rank is known
    name = f"{prefix}/median_rank"
    med = np.median(first) if len(first) else float("nan")
    if full or np.isfinite(med):
        out[name] = float(med)
    else:
        out[name], why[name] = None, f"over half the queries have no positive in their top K={K}"
    for m in ("mAP", "MRR", "mean_rank"):
        name = f"{prefix}/{m}"
        out[name] = None
        if not full:
            why[name] = f"needs the full ranking (K={K} results, {n_gallery} gallery items)"
    if full:  # the whole ranking is known: ranks of every positive give mAP and mean rank
        qq, pos = np.nonzero(hits)
        ranks = pos + 1
        s = _summarise(prefix, qq, ranks, n_q, ())
        for m in ("mAP", "MRR", "mean_rank"):
            out[f"{prefix}/{m}"] = s[f"{prefix}/{m}"]
    out[f"{prefix}/n_queries"] = int(len(first))
    out[f"{prefix}/n_queries_without_positives"] = int(n_q - len(first))
    return out, why


def clip_benchmark_names(metrics: dict[str, float | int | None]) -> dict[str, float | int | None]:
    """Rename ``text_to_image/R@k`` / ``image_to_text/R@k`` to CLIP_benchmark's keys."""
    out = {}
    for key, v in metrics.items():
        for ours, theirs in (
            ("text_to_image/R@", "image_retrieval_recall@"),
            ("image_to_text/R@", "text_retrieval_recall@"),
        ):
            if key.startswith(ours):
                out[theirs + key[len(ours) :]] = v
    return out
