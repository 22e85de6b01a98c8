"""Retrieval-evaluation speed: ``eval.retrieval.retrieval_metrics`` vs CLIP_benchmark's dense evaluation.

What it measures
    N items (``--n-items``, default 10k) with ``--captions-per-item`` (5) captions each, i.e. 50k
    captions, as ``--dim`` (512) float32 unit embeddings drawn from a seeded generator, and two ways
    of turning them into recall@1/5/10 in both directions:

    * ``align (ours)``: ``eval.retrieval.retrieval_metrics(img, txt, img_index_per_caption,
      ks=(1, 5, 10))`` -- its chunked path (``chunk_size`` 1024 query rows of cosine scores at a
      time, never the whole matrix). It also computes mAP, median rank and mean rank, which
      CLIP_benchmark does not, so it does more work; its API has no recall-only mode.
    * ``CLIP_benchmark-style``: exactly what ``clip_benchmark/metrics/zeroshot_retrieval.py``
      ``evaluate`` does after encoding: ``scores = texts_emb @ images_emb.t()`` (50k x 10k float32,
      2 GB), the bool ``positive_pairs`` matrix, then for every k
      ``batchify(recall_at_k, scores, positive_pairs, batch_size, device, k=k) > 0`` and the same on
      ``scores.T`` / ``positive_pairs.T``. ``recall_at_k`` and ``batchify`` are imported from the
      installed clip_benchmark package when it is importable (it is not a dependency of this
      project); otherwise verbatim copies of them (v1.6.2) below are used, and the table says so.
      ``batch_size`` is the dataloader batch size there (its CLI default, 64: ``--cb-batch-size``).

    Each implementation runs in its own worker subprocess (one big heap at a time, clean memory
    high-water marks). Time = wall-clock of the whole call (for CLIP_benchmark-style: from the
    normalised embeddings to the metrics dict, matmul included), median of the repeats. Peak extra
    memory = peak RSS during the call minus RSS just before it (Linux: ``VmHWM`` after resetting
    it through ``/proc/self/clear_refs``; elsewhere ``ru_maxrss`` delta of the first repeat).

    The script asserts that both give the same number of hits for every k and direction. Ties
    (exactly equal scores) are handled differently (ours: lower index first, ``ties="index"``;
    CLIP_benchmark: ``torch.topk``), and the two sides compute the score matrix in different
    blocks (ours: image rows x captions and caption rows x images; theirs: one full product and its
    transpose), so the last bits of a score can differ. If the hit counts differ under
    ``ties="index"``, ours is rerun (untimed) with ``ties="topk"`` and both comparisons are shown.

Cost: CLIP_benchmark's ``recall_at_k`` builds a one-hot int64 tensor [batch, k, n_gallery] per batch,
so its work is ~ n_captions x n_items x (1+5+10) x 2 directions int64 elements written, multiplied and
summed -- about 9 minutes per evaluation at 10k x 50k on 2 CPU cores. It therefore runs
``--cb-repeats`` times (default 1) while ours runs ``--repeats`` (3). A default run takes ~11 min on
2 cores; for a quick check use ``--n-items 2000`` (work scales with n_items^2, ~30 s).

    python benchmarks/eval_speed.py                          # 10k items x 50k captions, random (noise) embeddings
    python benchmarks/eval_speed.py --clustered              # Gaussian-mixture embeddings: R@k well above chance
    python benchmarks/eval_speed.py --n-items 2000 --repeats 3 --cb-repeats 3   # quick
    python benchmarks/eval_speed.py --json out.json
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KS = (1, 5, 10)
DIRS = ("text_to_image", "image_to_text")  # CLIP_benchmark: image_retrieval / text_retrieval
IMPLS = ("ours", "cb")
LABEL = {"ours": "align (ours) `retrieval_metrics`", "cb": "CLIP_benchmark-style dense"}


# ------------------------------------------------------------------------------------------------
# Verbatim copies of clip_benchmark 1.6.2 clip_benchmark/metrics/zeroshot_retrieval.py, used only
# when the package cannot be imported.
def _recall_at_k_copy(scores, positive_pairs, k):
    import torch
    nb_texts, nb_images = scores.shape
    # for each text, sort according to image scores in decreasing order
    topk_indices = torch.topk(scores, k, dim=1)[1]
    # compute number of positives for each text
    nb_positive = positive_pairs.sum(dim=1)
    # nb_texts, k, nb_images
    topk_indices_onehot = torch.nn.functional.one_hot(topk_indices, num_classes=nb_images)
    # compute number of true positives
    positive_pairs_reshaped = positive_pairs.view(nb_texts, 1, nb_images)
    # a true positive means a positive among the topk
    nb_true_positive = (topk_indices_onehot * positive_pairs_reshaped).sum(dim=(1,2))
    # compute recall at k
    recall_at_k = (nb_true_positive / nb_positive)
    return recall_at_k


def _batchify_copy(func, X, Y, batch_size, device, *args, **kwargs):
    import torch
    results = []
    for start in range(0, len(X), batch_size):
        end = start + batch_size
        x = X[start:end].to(device)
        y = Y[start:end].to(device)
        result = func(x, y, *args, **kwargs).cpu()
        results.append(result)
    return torch.cat(results)


def clip_benchmark_functions():
    """(recall_at_k, batchify, source description)."""
    try:
        from clip_benchmark.metrics.zeroshot_retrieval import batchify, recall_at_k
        return recall_at_k, batchify, f"imported from clip_benchmark {md.version('clip_benchmark')}"
    except Exception as e:  # noqa: BLE001 - any import failure falls back to the copy
        return _recall_at_k_copy, _batchify_copy, f"verbatim copy of clip_benchmark 1.6.2 ({type(e).__name__} on import)"


# ------------------------------------------------------------------------------------------------
def make_data(n_items: int, cpi: int, dim: int, clustered: bool, seed: int, centers: int,
              spread: float, caption_noise: float):
    """Unit image / caption embeddings (float32) and each caption's image index."""
    import torch
    import torch.nn.functional as F
    g = torch.Generator().manual_seed(seed)
    idx = torch.arange(n_items * cpi) // cpi
    if not clustered:
        img = torch.randn(n_items, dim, generator=g)
        txt = torch.randn(n_items * cpi, dim, generator=g)
    else:
        # Gaussian mixture: centres on the sphere, images = centre + noise, captions = their image
        # + noise; a caption is closest to its own image, then to images of the same centre.
        c = F.normalize(torch.randn(centers, dim, generator=g), dim=-1)
        assign = torch.randint(0, centers, (n_items,), generator=g)
        img = F.normalize(c[assign] + spread * torch.randn(n_items, dim, generator=g) / dim ** 0.5, dim=-1)
        txt = img[idx] + caption_noise * torch.randn(n_items * cpi, dim, generator=g) / dim ** 0.5
    return F.normalize(img, dim=-1).contiguous(), F.normalize(txt, dim=-1).contiguous(), idx


def run_ours(img, txt, idx, ties="index"):
    from eval.retrieval import retrieval_metrics
    m = retrieval_metrics(img, txt, idx.numpy(), ks=KS, ties=ties)
    n_q = {"text_to_image": len(txt), "image_to_text": len(img)}
    hits = {d: {k: round(m[f"{d}/R@{k}"] * m[f"{d}/n_queries"]) for k in KS} for d in DIRS}
    assert all(m[f"{d}/n_queries"] == n_q[d] for d in DIRS)
    return m, hits


def run_cb(img, txt, idx, batch_size, recall_at_k, batchify, device="cpu"):
    """CLIP_benchmark ``evaluate`` after the encoding loop (images_emb / texts_emb are normalised)."""
    import torch
    images_emb, texts_emb, texts_image_index = img, txt, idx.tolist()
    scores = texts_emb @ images_emb.t()
    positive_pairs = torch.zeros_like(scores, dtype=bool)
    positive_pairs[torch.arange(len(scores)), texts_image_index] = True
    metrics, hits = {}, {d: {} for d in DIRS}
    for recall_k in KS:
        r = batchify(recall_at_k, scores, positive_pairs, batch_size, device, k=recall_k) > 0
        metrics[f"image_retrieval_recall@{recall_k}"] = r.float().mean().item()
        hits["text_to_image"][recall_k] = int(r.sum())
        r = batchify(recall_at_k, scores.T, positive_pairs.T, batch_size, device, k=recall_k) > 0
        metrics[f"text_retrieval_recall@{recall_k}"] = r.float().mean().item()
        hits["image_to_text"][recall_k] = int(r.sum())
    return metrics, hits


def _rss_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        return _rss_kb("VmHWM") is not None
    except OSError:
        return False


def worker(args) -> None:
    import gc

    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    img, txt, idx = make_data(args.n_items, args.captions_per_item, args.dim, args.clustered,
                              args.seed, args.centers, args.spread, args.caption_noise)
    if args.worker == "cb":
        recall_at_k, batchify, source = clip_benchmark_functions()
        call = lambda: run_cb(img, txt, idx, args.cb_batch_size, recall_at_k, batchify)  # noqa: E731
        repeats = args.cb_repeats
    else:
        ties = "topk" if args.worker == "ours-topk" else "index"
        source = f"eval.retrieval.retrieval_metrics(chunk_size=1024, ties={ties!r})"
        call = lambda: run_ours(img, txt, idx, ties=ties)  # noqa: E731
        repeats = args.repeats if args.worker == "ours" else 1
    times, peaks = [], []
    use_hwm = _reset_hwm()
    with torch.no_grad():
        for i in range(repeats):
            metrics = hits = None
            gc.collect()
            if use_hwm:
                _reset_hwm()
                rss0 = _rss_kb("VmRSS")
            maxrss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            t0 = time.perf_counter()
            metrics, hits = call()
            times.append(time.perf_counter() - t0)
            if use_hwm:
                peaks.append((_rss_kb("VmHWM") - rss0) * 1024)
            elif i == 0:  # ru_maxrss only ever grows: only the first call's delta means anything
                peaks.append((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - maxrss0) * 1024)
            print(f"  [{args.worker}] repeat {i + 1}/{repeats}: {times[-1]:.2f} s", file=sys.stderr, flush=True)
    out = {"times": times, "peak_bytes": max(peaks) if peaks else None,
           "peak_method": "VmHWM - VmRSS (reset via /proc/self/clear_refs), max over repeats" if use_hwm
           else "ru_maxrss delta of the first repeat",
           "source": source, "metrics": metrics,
           "hits": {d: {str(k): v for k, v in h.items()} for d, h in hits.items()}}
    Path(args.worker_out).write_text(json.dumps(out))
