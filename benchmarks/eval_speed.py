"""Retrieval-evaluation speed: ``align.eval.retrieval.retrieval_metrics`` vs CLIP_benchmark's dense evaluation.

What it measures
    N items (``--n-items``, default 10k) with ``--captions-per-item`` (5) captions each, i.e. 50k
    captions, as ``--dim`` (512) float32 unit embeddings drawn from a seeded generator, and two ways
    of turning them into recall@1/5/10 in both directions:

    * ``align (ours)``: ``align.eval.retrieval.retrieval_metrics(img, txt, img_index_per_caption,
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

    ``--clustered``: a Gaussian mixture (``--centers``, default n_items/10, so ~10 images per
    centre; images = centre + ``--spread`` noise; captions = their image + ``--caption-noise``
    noise), so each caption's own image competes with its centre's other images and R@1 is ~0.3-0.5
    rather than chance (~1e-4 with the default pure-noise embeddings).

    The script asserts that both give the same number of hits for every k and direction. Ties
    (exactly equal scores) are handled differently (ours: lower index first, ``ties="index"``;
    CLIP_benchmark: ``torch.topk``), and the two sides compute the score matrix in different
    blocks (ours: image rows x captions and caption rows x images; theirs: one full product and its
    transpose), so the last bits of a score can differ. If the hit counts differ under
    ``ties="index"``, ours is rerun (untimed) with ``ties="topk"`` and both comparisons are shown.

Cost: CLIP_benchmark's ``recall_at_k`` builds a one-hot int64 tensor [batch, k, n_gallery] per batch,
so its work is ~ n_captions x n_items x (1+5+10) x 2 directions int64 elements written, multiplied and
summed -- about 9 minutes per evaluation at 10k x 50k on 2 CPU cores. It therefore runs
``--cb-repeats`` times (default 1) while ours runs ``--repeats`` (3). A default run takes ~10-15 min on
2 cores; for a quick check use ``--n-items 2000`` (work scales with n_items^2, ~30 s).

    python benchmarks/eval_speed.py                          # 10k items x 50k captions, random (noise) embeddings
    python benchmarks/eval_speed.py --clustered              # Gaussian-mixture embeddings: R@k well above chance
    python benchmarks/eval_speed.py --n-items 2000 --repeats 3 --cb-repeats 3   # quick
    python benchmarks/eval_speed.py --json out.json
    python benchmarks/eval_speed.py --smoke                  # 200 items x 400 captions, 32-d: seconds (CI)
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from memory import PeakExtra  # noqa: E402 -- benchmarks/memory.py, this script's folder

from align.eval.retrieval import retrieval_metrics  # noqa: E402

KS = (1, 5, 10)
DIRS = ("text_to_image", "image_to_text")  # CLIP_benchmark: image_retrieval / text_retrieval
IMPLS = ("ours", "cb")
LABEL = {"ours": "align (ours) `retrieval_metrics`", "cb": "CLIP_benchmark-style dense"}
SMOKE = {"n_items": 200, "captions_per_item": 2, "dim": 32, "repeats": 1, "cb_repeats": 1}  # --smoke defaults


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
    nb_true_positive = (topk_indices_onehot * positive_pairs_reshaped).sum(dim=(1, 2))
    # compute recall at k
    recall_at_k = nb_true_positive / nb_positive
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
        return (
            _recall_at_k_copy,
            _batchify_copy,
            f"verbatim copy of clip_benchmark 1.6.2 ({type(e).__name__} on import)",
        )


# ------------------------------------------------------------------------------------------------
def make_data(
    n_items: int, cpi: int, dim: int, clustered: bool, seed: int, centers: int, spread: float, caption_noise: float
):
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
        img = F.normalize(c[assign] + spread * torch.randn(n_items, dim, generator=g) / dim**0.5, dim=-1)
        txt = img[idx] + caption_noise * torch.randn(n_items * cpi, dim, generator=g) / dim**0.5
    return F.normalize(img, dim=-1).contiguous(), F.normalize(txt, dim=-1).contiguous(), idx


def run_ours(img, txt, idx, ties="index"):
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


def worker(args) -> None:
    import gc

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    img, txt, idx = make_data(
        args.n_items,
        args.captions_per_item,
        args.dim,
        args.clustered,
        args.seed,
        args.centers,
        args.spread,
        args.caption_noise,
    )
    if args.worker == "cb":
        recall_at_k, batchify, source = clip_benchmark_functions()
        call = lambda: run_cb(img, txt, idx, args.cb_batch_size, recall_at_k, batchify)  # noqa: E731
        repeats = args.cb_repeats
    else:
        ties = "topk" if args.worker == "ours-topk" else "index"
        source = f"eval.retrieval.retrieval_metrics(chunk_size=1024, ties={ties!r})"
        call = lambda: run_ours(img, txt, idx, ties=ties)  # noqa: E731
        repeats = args.repeats if args.worker == "ours" else 1
    times = []
    meter = PeakExtra()
    with torch.no_grad():
        for i in range(repeats):
            metrics = hits = None
            gc.collect()
            with meter.measure():
                t0 = time.perf_counter()
                metrics, hits = call()
                times.append(time.perf_counter() - t0)
            print(f"  [{args.worker}] repeat {i + 1}/{repeats}: {times[-1]:.2f} s", file=sys.stderr, flush=True)
    out = {
        "times": times,
        "peak_bytes": max(meter.peaks) if meter.peaks else None,
        "peak_method": meter.method + (", max over repeats" if meter.use_hwm else " of the first repeat"),
        "source": source,
        "metrics": metrics,
        "hits": {d: {str(k): v for k, v in h.items()} for d, h in hits.items()},
    }
    Path(args.worker_out).write_text(json.dumps(out))


# ------------------------------------------------------------------------------------------------
def spawn(kind: str, argv: list[str], tmp: Path) -> dict:
    out = tmp / f"{kind}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--worker", kind, "--worker-out", str(out)]
    subprocess.run(cmd, check=True, cwd=ROOT)
    return json.loads(out.read_text())


def fmt_bytes(b: int | None) -> str:
    return "n/a" if b is None else f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.0f} MiB"


def recall_cells(hits: dict, n_items: int, n_caps: int) -> tuple[str, str]:
    n = {"text_to_image": n_caps, "image_to_text": n_items}
    return tuple(" / ".join(f"{hits[d][str(k)] / n[d]:.4f}" for k in KS) for d in DIRS)


def versions() -> str:
    def v(p):
        try:
            return md.version(p)
        except md.PackageNotFoundError:
            return "not installed"

    import numpy as np
    import torch

    return (
        f"python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"numpy {np.__version__}, clip_benchmark {v('clip_benchmark')}, {platform.machine()} "
        f"{platform.system()}, {os.cpu_count()} CPUs"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n-items", type=int, default=10_000, help="images (default 10000)")
    ap.add_argument("--captions-per-item", type=int, default=5, help="captions per image (default 5)")
    ap.add_argument("--dim", type=int, default=512, help="embedding dimension (default 512)")
    ap.add_argument(
        "--clustered",
        action="store_true",
        help="Gaussian-mixture embeddings with captions near their image, so R@k is well above chance",
    )
    ap.add_argument("--centers", type=int, default=None, help="--clustered: mixture components (default n_items/10)")
    ap.add_argument(
        "--spread", type=float, default=0.5, help="--clustered: image noise around its centre (default 0.5)"
    )
    ap.add_argument(
        "--caption-noise",
        type=float,
        default=6.0,
        help="--clustered: caption noise around its image (default 6.0: R@1 ~0.3-0.5)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="timed calls of ours (median reported; default 3)")
    ap.add_argument(
        "--cb-repeats",
        type=int,
        default=1,
        help="timed calls of the CLIP_benchmark-style evaluation (~9 min each at the default size; default 1)",
    )
    ap.add_argument("--cb-batch-size", type=int, default=64, help="CLIP_benchmark batch_size (its CLI default 64)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    ap.add_argument("--json", type=Path, default=None, help="also write results as JSON here")
    ap.add_argument("--smoke", action="store_true", help=f"tiny run of the same path, both sides (CI): {SMOKE}")
    ap.add_argument("--worker", choices=("ours", "ours-topk", "cb"), help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.smoke:  # the workers get --smoke too (passthrough), so they draw the same data
        ap.set_defaults(**SMOKE)
        args = ap.parse_args(argv)
    if args.centers is None:
        args.centers = max(1, args.n_items // 10)
    if args.worker:
        return worker(args)

    raw = sys.argv[1:] if argv is None else argv
    n_items, n_caps = args.n_items, args.n_items * args.captions_per_item
    dense = n_items * n_caps * 5  # float32 scores + bool positives
    avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else None
    print(
        f"{n_items} items x {n_caps} captions, dim {args.dim}, "
        f"{'clustered' if args.clustered else 'random'} embeddings, seed {args.seed}; "
        f"CLIP_benchmark-style needs ~{fmt_bytes(dense)} for scores + positives"
        + (f" ({fmt_bytes(avail)} free)" if avail else ""),
        file=sys.stderr,
        flush=True,
    )
    if avail and dense * 1.3 > avail:
        print("warning: the dense evaluation may not fit in free memory", file=sys.stderr)
    passthrough = [a for a in raw if not a.startswith("--json")]
    if "--json" in raw:  # drop the path following a bare --json
        i = raw.index("--json")
        passthrough = raw[:i] + raw[i + 2 :]
    passthrough = [a for a in passthrough if not a.startswith("--json=")]

    with tempfile.TemporaryDirectory() as tmp:
        res = {}
        for kind in ("ours", "cb"):
            print(f"running {kind} ...", file=sys.stderr, flush=True)
            res[kind] = spawn(kind, passthrough, Path(tmp))
        same_index = res["ours"]["hits"] == res["cb"]["hits"]
        same_topk = None
        if not same_index:
            print("hit counts differ with ties='index'; rerunning ours with ties='topk' ...", file=sys.stderr)
            res["ours-topk"] = spawn("ours-topk", passthrough, Path(tmp))
            same_topk = res["ours-topk"]["hits"] == res["cb"]["hits"]

    med = {k: statistics.median(r["times"]) for k, r in res.items()}
    ratio = med["cb"] / med["ours"]
    lines = [
        "| implementation | median seconds | peak extra memory | text→image R@1/5/10 | image→text R@1/5/10 "
        "| ratio (CLIP_benchmark-style / ours) |",
        "|---|---:|---:|---|---|---:|",
    ]
    rows = [
        ("ours", LABEL["ours"] + f" (×{len(res['ours']['times'])})"),
        ("cb", LABEL["cb"] + f" (×{len(res['cb']['times'])})"),
    ]
    if "ours-topk" in res:
        rows.insert(1, ("ours-topk", 'align (ours), `ties="topk"` (×1)'))
    for kind, label in rows:
        t2i, i2t = recall_cells(res[kind]["hits"], n_items, n_caps)
        r = f"{med['cb'] / med[kind]:.1f}×" if kind != "cb" else "1.0×"
        lines.append(f"| {label} | {med[kind]:.2f} | {fmt_bytes(res[kind]['peak_bytes'])} | {t2i} | {i2t} | {r} |")
    table = "\n".join(lines)
    hits_line = "hits " + ", ".join(
        f"{d} R@{k}: {res['ours']['hits'][d][str(k)]} vs {res['cb']['hits'][d][str(k)]}" for d in DIRS for k in KS
    )
    cmd = "python benchmarks/eval_speed.py" + ("" if not raw else " " + shlex.join(raw))
    print(table)
    print()
    print(
        f"Identical hit counts (ours ties='index' vs CLIP_benchmark topk): {same_index}"
        + ("" if same_topk is None else f"; with ours ties='topk': {same_topk}")
    )
    print(hits_line)
    m = res["ours"]["metrics"]
    print(
        "ours also computed: "
        + ", ".join(f"{d}/{x}={m[f'{d}/{x}']:.4g}" for d in DIRS for x in ("mAP", "median_rank", "mean_rank"))
    )
    print(f"CLIP_benchmark functions: {res['cb']['source']}; batch_size {args.cb_batch_size}")
    print(
        f"times: ours {[round(t, 2) for t in res['ours']['times']]} s, "
        f"CLIP_benchmark-style {[round(t, 2) for t in res['cb']['times']]} s; "
        f"memory: {res['ours']['peak_method']}"
    )
    print(
        f"{n_items} items x {n_caps} captions x {args.dim}-d float32, "
        f"{'clustered' if args.clustered else 'random'}, seed {args.seed}"
    )
    print(f"versions: {versions()}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"rerun: {cmd}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                    "results": res,
                    "ratio": ratio,
                    "identical_hits": same_index,
                    "identical_hits_topk": same_topk,
                    "versions": versions(),
                },
                indent=1,
            )
        )
    if not (same_index or same_topk):
        sys.exit("R@k hit counts differ between ours and CLIP_benchmark-style")


if __name__ == "__main__":
    main()
