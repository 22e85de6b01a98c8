"""Index quality/speed frontier on real cross-modal embeddings, and a build past RAM (issue 23 item 5).

Part 1 — frontier on real embeddings
    A checkpoint (``--checkpoint``, or the demo's towers, configs/demo-digits.yaml, trained here for
    ``--train-steps`` steps on scikit-learn's digits) encodes ``--mnist-rows`` real MNIST digits
    (../shared/data/image/mnist5k, the ``pixel-csv`` file). ``--holdout`` of them are left out of the
    index as same-modality queries; the cross-modal queries are digit captions (the demo's templates
    and two more, x 10 digits) encoded by the text tower (``raw_encoder``). Every candidate of
    ``align.index.choose.candidates(n, dim)`` plus Flat is built from the same encoded vectors
    (``build_from_chunks``, RAM or lists on disk as the candidate says), searched with
    ``align.index.score.prepare``'s parameters (``Refine(...)``: ``k_factor = REFINE_K_FACTOR``).
    ``candidates()`` offers IVF only from 10,000 items; below that its IVF specs are ALSO built
    explicitly with a list count that fits (a power of two with >= 39 items a list), said in the output.
    Reported per index: recall@10 against exact search (``exact_truth``) for the text and the image
    queries separately; queries/s at 1 and 2 FAISS threads (all queries in one batched search, median
    of ``--repeats``); bytes a vector in RAM (``serialize_index``) and on disk (the lists file); and
    the ratios to Flat measured in the same run. Targets checked on the worse of the two query sets:
    recall@10 >= 0.95 at >= 10x exact's queries/s, and recall@10 >= 0.90 at <= 1/10 of Flat's memory.

Part 2 — scale on SYNTHETIC clustered vectors (run first: Linux keeps ru_maxrss across exec)
    In a subprocess whose data segment is capped (``RLIMIT_DATA``) at ``--cap`` above its VmData after
    imports and a tiny warm-up build (BLAS buffers and Arrow's thread pool allocate on first use and
    crash under a cap otherwise; ``ARROW_DEFAULT_MEMORY_POOL=system``: mimalloc reserves 1 GiB of
    address space that the cap counts), ``--scale-n`` unit vectors of ``--scale-dim`` from a Gaussian
    mixture, generated chunk by chunk, are built with ``build_from_chunks(..., storage="ondisk")``
    (``--scale-spec``), saved, loaded and searched one query at a time (200 fresh queries, nprobe 16;
    p50), and recall@10 on 100 of them is computed against exact search block by block over the
    spilled vectors. Reported: cap, float32 size of the vectors, build wall time, peak RSS
    (``ru_maxrss``; it and VmHWM count the mapped lists file's resident pages), VmHWM and the largest
    VmData seen, the folder's size on disk. Needs 3x the vectors' size free on ``--scratch``'s disk.

    python benchmarks/index_scale.py                                   # 10M x 64 scale part: ~10 min on 2 cores
    python benchmarks/index_scale.py --checkpoint runs/demo --scale-n 5000000
    python benchmarks/index_scale.py --json out.json                   # results as JSON too
    python benchmarks/index_scale.py --smoke                           # seconds (CI)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from memory import peak_rss_bytes  # noqa: E402 -- benchmarks/memory.py, this script's folder

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "image" / "mnist5k" / "mnist_5k.csv.gz"
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEMPLATES = [
    "a photo of the number {}.",
    "a handwritten {}.",
    "the digit {}.",
    "an image of the number {}.",
    "a drawing of a {}.",
    "the number {}.",
]
SMOKE = {
    "train_steps": 10,
    "mnist_rows": 1200,
    "holdout": 200,
    "repeats": 1,
    "scale_n": 2_000_000,
    "scale_dim": 32,
    "scale_spec": "IVF256,SQ8",
    "scale_train_rows": 20_000,
    "cap": "200MiB",
    "shard_mb": 16,
}
K = 10


def recall(truth: np.ndarray, got: np.ndarray) -> float:
    return float(np.mean([len(set(t) & set(g)) / len(t) for t, g in zip(truth, got)]))


def load_checkpoint(args, tmp: Path) -> Path:
    import align
    from align.model.checkpoint import resolve_checkpoint

    if args.checkpoint:
        return resolve_checkpoint(args.checkpoint)
    t = time.perf_counter()
    steps = args.train_steps
    overrides = [f"train.steps={steps}", "eval=null", f"output_dir={tmp / 'run'}", f"train.log_every={steps}"]
    result = align.train(align.load_config(ROOT / "configs" / "demo-digits.yaml", overrides))
    print(f"trained the demo towers {steps} steps in {time.perf_counter() - t:.1f}s", file=sys.stderr)
    return resolve_checkpoint(result.output_dir)


def ivf_extra(n: int, dim: int, have: list) -> tuple[list, int]:
    """The IVF candidates ``candidates()`` offers from 10,000 items, with a list count that fits n."""
    from align.index.choose import IVF_FROM, candidates

    if any(c.spec.startswith("IVF") for c in have):
        return [], 0
    lists = 2 ** int(math.log2(max(n // 39, 1)))
    out = [
        c.__class__(re.sub(r"^IVF\d+", f"IVF{lists}", c.spec), 0, 0.0, "explicit", c.storage)
        for c in candidates(IVF_FROM, dim)
        if c.spec.startswith("IVF")
    ]
    return out, lists


def frontier(args, tmp: Path) -> dict:
    import faiss
    from PIL import Image

    from align.data.sources.common import read_pixel_csv
    from align.index import choose
    from align.index.chunked import Chunk, build_from_chunks
    from align.index.score import exact_truth, prepare
    from align.model.align_model import raw_encoder
    from align.model.checkpoint import load_model

    ckpt = load_checkpoint(args, tmp)
    model, _ = load_model(ckpt)
    images, _ = read_pixel_csv(MNIST)
    rows = np.random.default_rng(0).permutation(len(images))[: args.mnist_rows]
    t = time.perf_counter()
    enc_img, enc_txt = raw_encoder(model, "image"), raw_encoder(model, "text")
    pil = [Image.fromarray(images[r], mode="L") for r in rows]
    x = np.concatenate([enc_img(pil[s : s + 256]).numpy() for s in range(0, len(pil), 256)]).astype(np.float32)
    captions = [tpl.format(d) for tpl in TEMPLATES for d in DIGITS]
    text_q = enc_txt(captions).numpy().astype(np.float32)
    print(
        f"encoded {len(x)} MNIST images + {len(captions)} captions in {time.perf_counter() - t:.1f}s", file=sys.stderr
    )
    gallery, image_q = x[args.holdout :], x[: args.holdout]
    n, dim = gallery.shape
    ids = np.arange(n, dtype=np.int64)
    queries = {"text→image": text_q, "image→image": image_q}
    truth = {name: exact_truth(gallery, q, K) for name, q in queries.items()}
    both = np.concatenate(list(queries.values()))
    pool = choose.candidates(n, dim)
    extra, lists = ivf_extra(n, dim, pool)
    k_factor = getattr(choose, "REFINE_K_FACTOR", None)
    rows_out = []
    for i, cand in enumerate(pool + extra):
        scratch = tmp / f"cand{i}"
        t = time.perf_counter()
        index, _ = build_from_chunks([Chunk(gallery, ids)], dim, cand.spec, scratch, storage=cand.storage)
        build_s = time.perf_counter() - t
        prepare(index)
        if "Refine(" in cand.spec and k_factor:
            faiss.downcast_index(index.inner).k_factor = k_factor
        rec = {name: recall(truth[name], index.search(q, K)[1]) for name, q in queries.items()}
        qps = {}
        for threads in (1, 2):
            faiss.omp_set_num_threads(threads)
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                index.search(both, K)
                times.append(time.perf_counter() - t0)
            qps[threads] = len(both) / statistics.median(times)
        faiss.omp_set_num_threads(1)
        ram = faiss.serialize_index(index.index).size / n
        disk = index.lists_path.stat().st_size / n if getattr(index, "lists_path", None) else 0.0
        rows_out.append(
            {
                "spec": cand.spec,
                "storage": cand.storage,
                "explicit": cand.why == "explicit",
                "build_s": build_s,
                **{f"recall {k}": v for k, v in rec.items()},
                "qps1": qps[1],
                "qps2": qps[2],
                "ram_B": ram,
                "disk_B": disk,
            }
        )
        print(f"  {cand.label:>34}  recall {rec}  {qps[1]:,.0f} q/s", file=sys.stderr)
        del index
        shutil.rmtree(scratch, ignore_errors=True)
    flat = next(r for r in rows_out if r["spec"] == "Flat" and r["storage"] == "ram")
    for r in rows_out:
        r["qps_ratio"] = r["qps1"] / flat["qps1"]
        r["mem_ratio"] = r["ram_B"] / flat["ram_B"]
        r["mem_disk_ratio"] = (r["ram_B"] + r["disk_B"]) / flat["ram_B"]
    return {"n": n, "dim": dim, "text_queries": len(text_q), "image_queries": len(image_q), "ivf_lists": lists,
            "k_factor": k_factor, "checkpoint": str(ckpt), "rows": rows_out}  # fmt: skip


def print_frontier(f: dict) -> list[str]:
    print(
        f"\n## Frontier: {f['n']:,} real MNIST image embeddings ({f['dim']}-d) from {f['checkpoint']}; "
        f"{f['text_queries']} caption (text→image) and {f['image_queries']} held-out image queries, k=10"
    )
    if f["ivf_lists"]:
        print(
            f"candidates() offers no IVF below 10,000 items; its IVF specs (marked *) are built explicitly with "
            f"{f['ivf_lists']} lists (>= 39 items a list), nprobe from prepare()."
        )
    print("\n| index | storage | recall@10 text→image | recall@10 image→image | q/s 1 thread | q/s 2 threads "
          "| q/s / Flat | RAM B/vector | disk B/vector | RAM / Flat |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in f["rows"]:
        print(
            f"| `{r['spec']}`{'*' if r['explicit'] else ''} | {r['storage']} | {r['recall text→image']:.3f} | "
            f"{r['recall image→image']:.3f} | {r['qps1']:,.0f} | {r['qps2']:,.0f} | {r['qps_ratio']:.2f}x | "
            f"{r['ram_B']:.1f} | {r['disk_B']:.1f} | {r['mem_ratio']:.3f} |"
        )

    def worst(r):
        return min(r["recall text→image"], r["recall image→image"])

    def desc(r, key, unit=""):
        return f"`{r['spec']}` ({r['storage']}, recall {worst(r):.3f}, {r[key]:.3f}{unit} of Flat)"

    approx = [r for r in f["rows"] if not (r["spec"] == "Flat" and r["storage"] == "ram")]
    fast = [r for r in approx if worst(r) >= 0.95 and r["qps_ratio"] >= 10]
    best = max((r for r in approx if worst(r) >= 0.95), key=lambda r: r["qps_ratio"], default=None)
    verdicts = [
        "target recall@10 >= 0.95 at >= 10x exact's queries/s: "
        + (f"MET by {', '.join(desc(r, 'qps_ratio', 'x q/s') for r in fast)}" if fast else "NOT MET")
        + ("" if fast or not best else f" (fastest at recall >= 0.95: {desc(best, 'qps_ratio', 'x q/s')})")
        + ("" if fast or best else " (no approximate index reaches recall 0.95)")
    ]
    for key, what in (("mem_ratio", "RAM"), ("mem_disk_ratio", "RAM + disk")):
        ok = [r for r in approx if worst(r) >= 0.90]
        small = [r for r in ok if r[key] <= 0.1]
        best = min(ok, key=lambda r: r[key], default=None)
        verdicts.append(
            f"target recall@10 >= 0.90 at <= 1/10 of Flat's memory ({what}): "
            + (f"MET by {', '.join(desc(r, key, 'x memory') for r in small)}" if small else "NOT MET")
            + ("" if small or not best else f" (smallest at recall >= 0.90: {desc(best, key, 'x memory')})")
        )
    print("recall = the worse of the two query sets; q/s ratio at 1 thread, batched.")
    for v in verdicts:
        print(v)
    return verdicts


CHILD = r"""
import json, os, resource, sys, time
import faiss, pyarrow, pyarrow.ipc  # imported before the cap: their libraries' own data counts
import numpy as np
sys.path.insert(0, {root!r})
sys.path.insert(0, os.path.join({root!r}, "benchmarks"))
from memory import peak_rss_bytes, proc_status_kb  # benchmarks/memory.py: the one way memory is measured
from align.index import chunked
from align.index.chunked import Chunk, build_from_chunks
from align.index.embedding_index import EmbeddingIndex
from align.index.score import exact_truth

p = json.loads({params!r})
status_kb = proc_status_kb
peak_data = [0]
def note():
    peak_data[0] = max(peak_data[0], status_kb('VmData'))
chunked.SHARD_BYTES = p['shard_mb'] * 2**20
n, d, rows, tmp = p['n'], p['dim'], 65_536, p['tmp']
rng = np.random.default_rng(0)
centres = rng.standard_normal((p['centres'], d)).astype(np.float32)
centres /= np.linalg.norm(centres, axis=1, keepdims=True)
def draw(k):  # unit centres + noise of norm ~1
    x = centres[rng.integers(0, len(centres), k)] + rng.standard_normal((k, d), dtype=np.float32) / np.sqrt(d)
    return x / np.linalg.norm(x, axis=1, keepdims=True)
warm = draw(5000)  # first use of BLAS, Arrow, the save / load / exact paths: uncapped
w, ws = build_from_chunks([Chunk(warm, np.arange(5000))], d, "IVF16,Flat", tmp + "/warm", storage="ondisk")
EmbeddingIndex.load(w.save(tmp + "/warm-out")).search(warm[:2], 10); exact_truth(ws.blocks, warm[:2], 10)
del w, ws
base = status_kb('VmData') * 1024
limit = base + p['cap']
resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
try:
    np.ones(n * d, np.float32).sum()
    bites = False
except MemoryError:
    bites = True
def chunks():
    for s in range(0, n, rows):
        note()
        yield Chunk(draw(min(rows, n - s)), np.arange(s, min(n, s + rows)))
t = time.perf_counter()
idx, spill = build_from_chunks(chunks(), d, p['spec'], tmp + "/scratch", storage="ondisk", train_rows=p['train_rows'])
folder = idx.save(tmp + "/out")
build_s = time.perf_counter() - t
note()
del idx
disk = sum(f.stat().st_size for f in folder.rglob('*') if f.is_file())
loaded = EmbeddingIndex.load(folder)
loaded.set_search_params(nprobe=16)
q = draw(200)
times = []
for row in q:
    t0 = time.perf_counter(); loaded.search(row[None, :], 10); times.append(time.perf_counter() - t0)
note()
t0 = time.perf_counter()
truth = spill.ids[exact_truth(spill.blocks, q[:100], 10)]
exact_s = time.perf_counter() - t0
got = loaded.search(q[:100], 10)[1]
rec = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, got)]))
note()
print(json.dumps({{"n": n, "dim": d, "spec": p['spec'], "cap": p['cap'], "base_vmdata": base, "cap_bites": bites,
    "vector_bytes": n * d * 4, "build_s": build_s,
    "ru_maxrss": peak_rss_bytes(),
    "vmhwm": status_kb('VmHWM') * 1024, "peak_vmdata": peak_data[0] * 1024, "disk_bytes": disk, "count": len(loaded),
    "query_p50_ms": 1000 * float(np.median(times)), "query_p99_ms": 1000 * float(np.percentile(times, 99)),
    "recall@10": rec, "exact_s": exact_s}}))
"""


def scale(args, tmp: Path) -> dict:
    from align.index.choose import parse_size

    vector_bytes = args.scale_n * args.scale_dim * 4
    free = shutil.disk_usage(tmp).free
    if free < 3 * vector_bytes:
        sys.exit(
            f"index_scale: {tmp} has {free / 1e9:.1f} GB free; the scale part needs 3x the vectors' "
            f"{vector_bytes / 1e9:.2f} GB (spill + lists + folder): use --scratch or a smaller --scale-n"
        )
    params = {"n": args.scale_n, "dim": args.scale_dim, "spec": args.scale_spec, "cap": parse_size(args.cap),
              "train_rows": args.scale_train_rows, "shard_mb": args.shard_mb, "centres": 1000,
              "tmp": str(tmp)}  # fmt: skip
    env = {**os.environ, "ARROW_DEFAULT_MEMORY_POOL": "system"}
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT), params=json.dumps(params))],
                          capture_output=True, text=True, env=env)  # fmt: skip
    if proc.returncode != 0:
        sys.exit(f"index_scale: the capped build failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    out = json.loads(next(line for line in proc.stdout.splitlines()[::-1] if line.startswith("{")))
    out["wall_s"] = time.perf_counter() - t
    return out


def print_scale(s: dict) -> None:
    mb = 2**20
    print(
        f"\n## Scale: {s['n']:,} SYNTHETIC clustered vectors (Gaussian mixture, 1,000 centres, unit norm) x "
        f"{s['dim']}-d, `{s['spec']}`, lists on disk, built under RLIMIT_DATA\n"
    )
    print("| vectors | float32 size | cap above warm-up VmData | build + save s | peak RSS (getrusage max) | VmHWM "
          "| largest VmData above warm-up | on disk | query p50 ms (nprobe 16) | recall@10 |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {s['n']:,} | {s['vector_bytes'] / mb:,.0f} MiB | {s['cap'] / mb:,.0f} MiB | {s['build_s']:.1f} | "
        f"{s['ru_maxrss'] / mb:,.0f} MiB | {s['vmhwm'] / mb:,.0f} MiB | "
        f"{(s['peak_vmdata'] - s['base_vmdata']) / mb:,.0f} MiB | "
        f"{s['disk_bytes'] / mb:,.0f} MiB | {s['query_p50_ms']:.2f} | {s['recall@10']:.3f} |"
    )
    print(
        f"vectors {s['vector_bytes'] / s['cap']:.1f}x the cap; all of them at once under the cap: "
        f"{'MemoryError (the cap bites)' if s['cap_bites'] else 'FITS (the cap does not bite)'}; "
        f"{s['count']:,} items loaded; query p99 {s['query_p99_ms']:.2f} ms; exact truth for 100 queries "
        f"block by block {s['exact_s']:.1f}s; ru_maxrss and VmHWM count the mapped lists file's resident pages."
    )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--checkpoint", help="an align checkpoint with image and text towers (default: train the demo)")
    ap.add_argument("--train-steps", type=int, default=300, help="demo training steps when no --checkpoint")
    ap.add_argument("--mnist-rows", type=int, default=5000, help="MNIST digits encoded (index + held-out)")
    ap.add_argument("--holdout", type=int, default=500, help="of them held out as image queries")
    ap.add_argument("--repeats", type=int, default=5, help="batched searches timed per thread count (median)")
    ap.add_argument("--scale-n", type=int, default=10_000_000)
    ap.add_argument("--scale-dim", type=int, default=64)
    ap.add_argument("--scale-spec", default="IVF1024,SQ8")
    ap.add_argument("--scale-train-rows", type=int, default=100_000)
    ap.add_argument("--cap", default="1.5GiB", help="RLIMIT_DATA above the child's VmData after its warm-up")
    ap.add_argument("--shard-mb", type=int, default=256, help="codes per on-disk shard (chunked.SHARD_BYTES)")
    ap.add_argument("--skip-frontier", action="store_true")
    ap.add_argument("--skip-scale", action="store_true")
    ap.add_argument("--scratch", type=Path, help="folder for the temporary files (default: the system's)")
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")
    ap.add_argument("--smoke", action="store_true", help=f"tiny run (CI): {SMOKE}")
    args = ap.parse_args(argv)
    if args.smoke:
        ap.set_defaults(**SMOKE)
        args = ap.parse_args(argv)
    load = os.getloadavg()
    print(f"# index_scale: {os.cpu_count()} CPUs, load average before {' '.join(f'{x:.2f}' for x in load)}")
    result: dict = {"loadavg_before": load}
    with tempfile.TemporaryDirectory(prefix="index_scale-", dir=args.scratch) as tmp:
        if not args.skip_scale:  # first: Linux keeps ru_maxrss across exec, so fork while this process is small
            result["scale"] = scale(args, Path(tmp))
            print_scale(result["scale"])
        if not args.skip_frontier:
            result["frontier"] = frontier(args, Path(tmp))
            result["verdicts"] = print_frontier(result["frontier"])
    import faiss

    result["loadavg_after"] = os.getloadavg()
    print(
        f"\nfaiss {faiss.__version__}, numpy {np.__version__}, {os.cpu_count()} CPUs; load average after "
        f"{' '.join(f'{x:.2f}' for x in result['loadavg_after'])}; peak RSS of this process "
        f"{peak_rss_bytes() / 2**20:,.0f} MiB"
    )
    print("rerun: python benchmarks/index_scale.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
