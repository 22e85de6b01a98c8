"""Load test of `align serve`: latency and throughput by concurrency, beside the in-process rate.

Setup (in a temporary folder, nothing downloaded): the demo's towers (configs/demo-digits.yaml)
trained for ``--train-steps`` steps on scikit-learn's digits, and an index of ``--items`` items (the
1,437 training images encoded, then repeated with small Gaussian noise and re-normalised up to the
count, so the index is as large as asked while its items stay image embeddings) recorded with the
checkpoint's identity. Then `align serve` runs as a subprocess on a free 127.0.0.1 port, and for each
concurrency level (default 1 / 4 / 16 / 64) closed-loop clients (asyncio + httpx, one request in
flight each) send text queries (``POST /v1/search``, a digit caption, k=10) and then image uploads
(``POST /v1/search/upload``, a digit PNG), each phase bounded by ``--requests`` requests and
``--seconds`` seconds. Reported per phase: p50 / p99 latency, requests/s, errors; the server's RSS
before the first and after the last request; and, measured in the same run, the in-process batched
rate (``Searcher.search`` on batches of 64 text queries: encode + FAISS search per query), the
ceiling a service can approach. Targets (issue 22, 2-core CPU, demo towers): text p50 <= 20 ms at
concurrency 1; text throughput at concurrency 16 >= 0.8x the in-process batched rate; 0 errors; RSS
growth <= 5 % over all requests. The server stops at the end (SIGTERM) and its exit code is shown.

    python benchmarks/serve_load.py                          # 100k items, 1/4/16/64, ~5 min on 2 cores
    python benchmarks/serve_load.py --concurrency 16 --requests 10000
    python benchmarks/serve_load.py --smoke                  # 2k items, concurrency 1 and 4, 40 requests
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CAPTIONS = [
    f"a handwritten {n}." for n in ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def build(tmp: Path, items: int, train_steps: int) -> tuple[Path, Path, list[bytes]]:
    """(checkpoint folder, index folder, PNG bytes of a few test digits)."""
    import numpy as np
    from PIL import Image

    import align
    from align.config.schema import load_config
    from align.data.sources.sklearn_digits import sklearn_digits
    from align.index.build import model_identity
    from align.index.embedding_index import EmbeddingIndex
    from align.model.checkpoint import resolve_checkpoint

    cfg = load_config(
        ROOT / "configs" / "demo-digits.yaml",
        [f"train.steps={train_steps}", "eval=null", f"output_dir={tmp / 'run'}", f"train.log_every={train_steps}"],
    )
    result = align.train(cfg)
    ckpt = resolve_checkpoint(result.output_dir)
    train = sklearn_digits("train")
    emb = align.encode(result.model, "image", list(train["image"])).numpy()
    labels = list(train["label"])
    rng = np.random.default_rng(0)
    reps = -(-items // len(emb))
    vectors = np.concatenate([emb + (0 if r == 0 else 0.05) * rng.standard_normal(emb.shape) for r in range(reps)])
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True))[:items].astype(np.float32)
    index = EmbeddingIndex(emb.shape[1], "Flat", model=model_identity(ckpt), modality="image")
    meta = [{"row": i % len(emb), "label": str(labels[i % len(emb)])} for i in range(items)]
    index.add(vectors, ids=np.arange(items), metadata=meta)
    folder = index.save(tmp / "index")
    pngs = []
    for img in list(sklearn_digits("test")["image"])[:16]:
        buf = io.BytesIO()
        (img if isinstance(img, Image.Image) else Image.fromarray(np.asarray(img))).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    return ckpt, folder, pngs


def in_process_rate(ckpt: Path, folder: Path, batch: int, seconds: float) -> float:
    """Text queries/s through ``Searcher.search`` on batches of ``batch`` (encode + one FAISS search)."""
    from align.serve.searcher import Searcher

    searcher = Searcher(ckpt, {"bench": folder})
    queries = [CAPTIONS[i % len(CAPTIONS)] for i in range(batch)]
    searcher.search("text", queries, k=10)  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or done < 3 * batch:
        searcher.search("text", queries, k=10)
        done += batch
    return done / (time.perf_counter() - start)


async def phase(base: str, kind: str, concurrency: int, requests: int, seconds: float, pngs: list[bytes]) -> dict:
    import httpx

    latencies: list[float] = []
    errors = 0
    sent = 0
    deadline = time.perf_counter() + seconds

    async def client(c: int, http: httpx.AsyncClient) -> None:
        nonlocal errors, sent
        while sent < requests and time.perf_counter() < deadline:
            i = sent
            sent += 1
            t0 = time.perf_counter()
            try:
                if kind == "text":
                    r = await http.post(
                        f"{base}/v1/search", json={"modality": "text", "queries": [CAPTIONS[i % 10]], "k": 10}
                    )
                else:
                    files = {"files": (f"digit{i % len(pngs)}.png", pngs[i % len(pngs)], "image/png")}
                    r = await http.post(f"{base}/v1/search/upload", data={"modality": "image", "k": "10"}, files=files)
                ok = r.status_code == 200 and len(r.json()["results"][0]) == 10
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - t0)
            errors += not ok

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(c, http) for c in range(concurrency)))
        wall = time.perf_counter() - start
    latencies.sort()
    return {
        "kind": kind,
        "concurrency": concurrency,
        "requests": len(latencies),
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "rps": len(latencies) / wall,
        "errors": errors,
    }


def wait_ready(base: str, proc: subprocess.Popen, timeout: float) -> None:
    import httpx

    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"align serve exited with {proc.returncode} before it was ready")
        try:
            if httpx.get(f"{base}/v1/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"align serve not ready after {timeout} s")


def serve_phases(cmd: list[str], args, pngs: list[bytes], kinds: list[str], levels: str):
    """Start ``cmd`` (an ``align serve``) on a free port, run each kind x concurrency phase, SIGTERM it.
    Returns (rows, RSS MB before, RSS MB after, exit code)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([*cmd, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_ready(base, proc, 120)
        rss_before = rss_mb(proc.pid)
        rows = [
            asyncio.run(phase(base, kind, int(c), args.requests, args.seconds, pngs))
            for kind in kinds
            for c in levels.split(",")
        ]
        rss_after = rss_mb(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = "killed after 30 s"
    return rows, rss_before, rss_after, code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--concurrency", default="1,4,16,64")
    parser.add_argument("--requests", type=int, default=2000, help="per phase (kind x concurrency)")
    parser.add_argument("--seconds", type=float, default=30, help="per phase")
    parser.add_argument("--train-steps", type=int, default=100)
    parser.add_argument("--kinds", default="text,image")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--smoke", action="store_true", help="2k items, concurrency 1,4, 40 requests, 5 steps")
    args = parser.parse_args()
    if args.smoke:
        args.items, args.concurrency, args.requests, args.seconds, args.train_steps = 2000, "1,4", 40, 20, 5
    load = os.getloadavg()
    print(f"# serve_load: {os.cpu_count()} CPUs, load average before {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt, folder, pngs = build(Path(tmp), args.items, args.train_steps)
        batched = in_process_rate(ckpt, folder, 64, 3 if args.smoke else 10)
        cmd = [sys.executable, "-m", "align", "serve", "--checkpoint", str(ckpt), "--index", f"bench={folder}"]
        rows, rss_before, rss_after, code = serve_phases(cmd, args, pngs, args.kinds.split(","), args.concurrency)
        # the same text load at concurrency 16 (or the highest asked) with batching off (one request per model call):
        # what dynamic batching buys, measured rather than assumed
        levels = args.concurrency.split(",")
        level = "16" if "16" in levels else levels[-1]  # the throughput target's level
        unbatched, *_ = serve_phases([*cmd, "--max-batch", "1", "--batch-wait-ms", "0"], args, pngs, ["text"], level)
    print(f"\nindex: {args.items:,} items (Flat, dim 64)")
    print(f"in-process batched (Searcher.search, 64 text queries per call): {batched:.0f} q/s")
    print("\n| query | concurrency | requests | p50 ms | p99 ms | requests/s | vs in-process text | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ratio = f"{r['rps'] / batched:.2f}x" if r["kind"] == "text" else "-"  # the in-process rate is text's
        print(
            f"| {r['kind']} | {r['concurrency']} | {r['requests']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
            f"{r['rps']:.1f} | {ratio} | {r['errors']} |"
        )
    u = unbatched[0]
    batched_top = next((r for r in rows if r["kind"] == "text" and r["concurrency"] == u["concurrency"]), None)
    print(
        f"\nbatching off (--max-batch 1), text at concurrency {u['concurrency']}: {u['rps']:.1f} requests/s, "
        f"p50 {u['p50_ms']:.1f} ms, {u['errors']} errors"
        + (f"; dynamic batching: {batched_top['rps'] / u['rps']:.2f}x the requests/s" if batched_top else "")
    )
    total = sum(r["requests"] for r in rows)
    growth = 100 * (rss_after - rss_before) / rss_before
    print(f"\nserver RSS: {rss_before:.0f} MB before, {rss_after:.0f} MB after {total} requests ({growth:+.1f} %)")
    print(f"server exit after SIGTERM: {code}")
    text1 = next((r for r in rows if r["kind"] == "text" and r["concurrency"] == 1), None)
    text16 = next((r for r in rows if r["kind"] == "text" and r["concurrency"] == 16), None)
    checks = [
        ("text p50 <= 20 ms at concurrency 1", text1 and text1["p50_ms"] <= 20),
        ("text throughput at concurrency 16 >= 0.8x in-process", text16 and text16["rps"] >= 0.8 * batched),
        ("0 errors", sum(r["errors"] for r in rows) == 0),
        (f"RSS growth <= 5 % over {total} requests", growth <= 5),
    ]
    for name, ok in checks:
        print(f"target {name}: {'OK' if ok else ('not measured' if ok is None else 'MISSED')}")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"rows": rows, "in_process_qps": batched, "rss_mb": [rss_before, rss_after]})
        )
    print(f"\nrerun: python benchmarks/serve_load.py {' '.join(sys.argv[1:])}")


if __name__ == "__main__":
    main()
