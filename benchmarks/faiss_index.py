"""FAISS index types through align.index.embedding_index.EmbeddingIndex: build time, queries/s, recall@k vs exact.

What it measures
    For each gallery size N (``--sizes``, default 100k) it draws N unit vectors of ``--dim`` (512)
    float32 dimensions plus ``--queries`` (1000) held-out query vectors, and builds, one after the
    other, an ``EmbeddingIndex(dim, spec)`` for each spec:

    * ``Flat``           exact inner product (the ground truth for recall),
    * ``HNSW32``         graph index, searched at several efSearch values,
    * ``IVF{n},Flat``    inverted lists, n = sqrt(N) rounded to a power of two, several nprobe,
    * ``IVF{n},PQ64``    inverted lists + 64-byte product-quantised codes (32x smaller than float32).

    Build time = ``train`` (IVF / PQ k-means on ``--train-per-list`` x n sampled vectors, capped at
    N) + ``add`` of all N vectors. Search = one ``search(queries, k)`` call with all queries in a
    single batch (FAISS parallelises it over its OpenMP threads: ``--threads``, default all cores),
    timed with perf_counter, best of ``--repeats``; queries/s = Q / time. recall@k = mean over
    queries of |ids ∩ exact ids| / k, where exact ids come from the Flat index.

Data
    Default: uniform random directions (normalised Gaussians). This is the WORST case for every
    approximate index: in 512-d, uniform points have no structure, all pairwise cosines concentrate
    around 0 (±0.04) and the true top-10 neighbours are barely closer than the rest, so IVF cells and
    HNSW graph hops carry little information and recall is far lower than on real data.
    ``--clustered`` draws from a Gaussian mixture (``--centers`` components on the sphere, noise
    ``--spread``), which is closer to real embeddings, where ANN indexes do much better.

Memory: N x dim x 4 bytes per float copy (1M x 512 = 2 GB); the base vectors, the Flat index and
the index being built are alive together, ~3-4 copies at peak. The script checks free memory.
HNSW32 build time grows ~N log N and is single-threaded-bound per insert: on 2 cores 1M takes
many minutes (use ``--specs`` to leave it out).

    # 100k uniform, all 4 types, ~4 min on 2 busy CPUs (HNSW build ~90 s):
    python benchmarks/faiss_index.py
    python benchmarks/faiss_index.py --clustered               # Gaussian-mixture data
    python benchmarks/faiss_index.py --sizes 1m --specs Flat --specs 'IVF{n},Flat' --specs 'IVF{n},PQ64'
    python benchmarks/faiss_index.py --json out.json           # rows as JSON too
    python benchmarks/faiss_index.py --smoke                   # 2,000 x 64-d, all 4 types: seconds (CI)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memory import mem_available  # noqa: E402 -- benchmarks/memory.py, this script's folder

from align.index.embedding_index import EmbeddingIndex  # noqa: E402

DEFAULT_SPECS = ["Flat", "HNSW32", "IVF{n},Flat", "IVF{n},PQ64"]
SMOKE = {
    "sizes": "2000",
    "dim": 64,
    "queries": 50,
    "nprobe": "4,16",
    "ef": "16,64",
    "train_per_list": 40,
    "repeats": 1,
}  # --smoke defaults: every index type, tiny


def parse_size(s: str) -> int:
    s = s.strip().lower()
    mult = {"k": 1_000, "m": 1_000_000}.get(s[-1], 1)
    return int(float(s[:-1] if s[-1] in "km" else s) * mult)


def make_data(n: int, q: int, dim: int, clustered: bool, centers: int, spread: float, seed: int):
    rng = np.random.default_rng(seed)

    def draw(m: int, c: np.ndarray | None) -> np.ndarray:
        x = np.empty((m, dim), np.float32)
        for s in range(0, m, 100_000):  # chunks keep the float64 temporaries small
            e = min(m, s + 100_000)
            block = rng.standard_normal((e - s, dim), dtype=np.float32)
            if c is not None:
                block = c[rng.integers(0, len(c), e - s)] + spread * block / math.sqrt(dim)
            x[s:e] = block / np.linalg.norm(block, axis=1, keepdims=True)
        return x

    c = None
    if clustered:
        c = rng.standard_normal((centers, dim), dtype=np.float32)
        c /= np.linalg.norm(c, axis=1, keepdims=True)
    return draw(n, c), draw(q, c)


def recall_at_k(ids: np.ndarray, exact: np.ndarray) -> float:
    k = exact.shape[1]
    return float(np.mean([len(np.intersect1d(a, e)) / k for a, e in zip(ids, exact)]))


def timed_search(index: EmbeddingIndex, q: np.ndarray, k: int, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = index.search(q, k)
        best = min(best, time.perf_counter() - t)
    return best, out


def free_gb() -> float:
    avail = mem_available()
    return float("nan") if avail is None else avail / 2**30


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", default="100k", help="comma-separated gallery sizes, e.g. 100k,1m")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument(
        "--specs",
        action="append",
        help=f"index spec, repeatable; {{n}} = IVF list count (default: {' '.join(DEFAULT_SPECS)})",
    )
    ap.add_argument("--nprobe", default="8,32,128", help="IVF nprobe values to search with")
    ap.add_argument("--ef", default="64,256", help="HNSW efSearch values to search with")
    ap.add_argument("--train-per-list", type=int, default=64, help="IVF training vectors per list")
    ap.add_argument("--clustered", action="store_true", help="Gaussian-mixture data instead of uniform")
    ap.add_argument("--centers", type=int, default=1000)
    ap.add_argument("--spread", type=float, default=1.0, help="mixture noise norm relative to the unit centers")
    ap.add_argument("--threads", type=int, default=0, help="FAISS OpenMP threads (0 = default: all cores)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    ap.add_argument("--smoke", action="store_true", help=f"tiny run of every index type (CI): {SMOKE}")
    args = ap.parse_args(argv)
    if args.smoke:
        ap.set_defaults(**SMOKE)
        args = ap.parse_args(argv)
    import faiss

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    specs = args.specs or DEFAULT_SPECS
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    rows = []
    for n in sizes:
        need = 4 * n * args.dim * 4 / 2**30
        if need > free_gb():
            print(f"skipping N={n}: needs ~{need:.1f} GB, {free_gb():.1f} GB available", file=sys.stderr)
            continue
        nlist = 2 ** round(math.log2(math.sqrt(n)))
        t = time.perf_counter()
        g, q = make_data(n, args.queries, args.dim, args.clustered, args.centers, args.spread, args.seed)
        print(f"N={n}: data in {time.perf_counter() - t:.1f}s, IVF lists n={nlist}", file=sys.stderr)
        exact = None
        for spec in specs:
            spec = spec.format(n=nlist)
            index = EmbeddingIndex(args.dim, spec, use_gpu=False)
            t = time.perf_counter()
            if not index.is_trained:
                ntrain = min(n, args.train_per_list * nlist)
                index.train(g[np.random.default_rng(1).choice(n, ntrain, replace=False)])
            index.add(g)
            build = time.perf_counter() - t
            if index.nprobe is not None:
                settings = [("nprobe", int(v)) for v in args.nprobe.split(",")]
            elif index.efSearch is not None:
                settings = [("efSearch", int(v)) for v in args.ef.split(",")]
            else:
                settings = [(None, None)]
            for name, value in settings:
                if name:
                    index.set_search_params(**{name: value})
                secs, (_, ids) = timed_search(index, q, args.k, args.repeats)
                if exact is None and spec == "Flat":
                    exact = ids
                rec = recall_at_k(ids, exact) if exact is not None else float("nan")
                rows.append(
                    {
                        "N": n,
                        "data": "clustered" if args.clustered else "uniform",
                        "spec": spec,
                        "build_s": round(build, 2),
                        "param": f"{name}={value}" if name else "exact",
                        "qps": round(len(q) / secs, 1),
                        f"recall@{args.k}": round(rec, 4),
                    }
                )
                print(
                    f"  {spec:>16} {rows[-1]['param']:>12} build {build:7.1f}s  {rows[-1]['qps']:9.1f} q/s"
                    f"  recall@{args.k} {rec:.3f}",
                    file=sys.stderr,
                )
            del index
    print(f"\n| N | data | index | build s (incl. train) | search param | queries/s | recall@{args.k} |")
    print("|---:|---|---|---:|---|---:|---:|")
    for r in rows:
        print(
            f"| {r['N']:,} | {r['data']} | `{r['spec']}` | {r['build_s']:.1f} | {r['param']} | "
            f"{r['qps']:,.0f} | {r[f'recall@{args.k}']:.3f} |"
        )
    env = {
        "faiss": faiss.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "faiss_threads": faiss.omp_get_max_threads(),
        "loadavg": os.getloadavg(),
        "dim": args.dim,
        "queries": args.queries,
        "k": args.k,
    }
    print(
        f"\n{args.queries} queries in one batch, {args.dim}-d, best of {args.repeats}; "
        f"faiss {env['faiss']} with {env['faiss_threads']} OpenMP threads on {env['cpus']} CPUs, "
        f"load average {' '.join(f'{x:.2f}' for x in env['loadavg'])}. recall is vs the Flat (exact) ids."
    )
    if not args.clustered:
        print("Uniform random vectors are the worst case for ANN indexes (no cluster structure); see --clustered.")
    print("rerun: python benchmarks/faiss_index.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])))
    if args.json:
        args.json.write_text(json.dumps({"env": env, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
