"""GradCache (``train.micro_batch_size``, align/training/gradcache.py) with the demo's towers on this CPU.

    python benchmarks/gradcache.py                       # both parts below, ~10 min on 2 cores
    python benchmarks/gradcache.py --skip-large          # only the overhead part (~1 min)
    python benchmarks/gradcache.py --smoke               # both parts at 64 / 256 rows, 1 thread: seconds (CI)

1. Overhead: ``align.training.loop.train_step`` at a batch both can run (default 1024 rows), plain
   (the whole batch in one graph) against GradCache (micro-batches of 256), alternating blocks
   after a warm-up step; median step time of each and the ratio (target <= 1.4: GradCache adds
   one forward without autograd).
2. Large batch: one GradCache step with an effective batch of 65,536 rows (micro-batches of 1024,
   the tiled CLIP loss), and, for scale, a plain step at 4,096 rows: wall time, samples/s and the
   process's peak RSS (``ru_maxrss``), each step in a fresh process.

Towers: ``configs/demo-digits.yaml`` (ViT 32 px / patch 4 / width 96 / 3 layers, text width 64 /
2 layers, embed 64). Rows: scikit-learn's 1,437 training digits and their captions, preprocessed
once (evaluation transforms) and repeated to fill the batch, so no data loading is timed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from memory import peak_rss_bytes  # benchmarks/memory.py, this script's folder

from align.config.schema import load_config
from align.data.tables import load_table
from align.model.align_model import AlignModel
from align.objectives.task import ContrastiveTask
from align.training.engine import build_optimizer
from align.training.loop import train_step

REPO = Path(__file__).resolve().parents[1]
SMOKE = {
    "batch": 64,
    "overhead_micro": 16,
    "steps": 2,
    "blocks": 1,
    "threads": 1,
    "large_plain": 0,
    "large_batch": 256,
    "large_micro": 64,
    "max_rows": 128,
}  # --smoke defaults: both parts, tiny


def setup(batch: int, micro: int | None, tiling: str, max_rows: int | None = None):
    import torch
    from accelerate import Accelerator

    cfg = load_config(
        REPO / "configs" / "demo-digits.yaml",
        [f"train.batch_size={batch}", f"model.loss_tiling={tiling}", "output_dir=/tmp/align-gradcache-bench"]
        + ([f"train.micro_batch_size={micro}"] if micro else [])
        + ([f"data.train.max_samples={max_rows}"] if max_rows else []),
    )
    torch.manual_seed(0)
    model = AlignModel(cfg.model)
    table = load_table(cfg.data.train)
    pre = model.preprocessors()
    images = torch.stack([pre["image"](r, train=False) for r in table["image"]])
    captions = [c if isinstance(c, str) else c[0] for c in table["caption"]]
    tokens = pre["text"].collate([pre["text"](c, train=False) for c in captions])
    rows = torch.arange(batch) % len(images)
    batch_data = {"image": images[rows], "text": tokens[rows], "index": rows}
    accelerator = Accelerator(cpu=True)
    optimizer = build_optimizer(model, cfg.train)
    model, optimizer = accelerator.prepare(model, optimizer)
    task = ContrastiveTask.from_config(cfg, accelerator.unwrap_model(model))
    model.train()
    return accelerator, model, task, batch_data, optimizer


def worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    acc, model, task, batch, opt = setup(args.batch, args.micro, args.tiling, args.max_rows)
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        loss = train_step(acc, model, task, batch, opt, None, grad_clip=1.0)
        times.append(time.perf_counter() - t)
    print(json.dumps({"times": times, "loss": float(loss), "peak_rss_gb": peak_rss_bytes() / 2**30}))


def run(
    batch: int, micro: int | None, steps: int, tiling: str = "auto", threads: int = 2, max_rows: int | None = None
) -> dict:
    cmd = (
        [
            sys.executable,
            __file__,
            "--worker",
            "--batch",
            str(batch),
            "--steps",
            str(steps),
            "--tiling",
            tiling,
            "--threads",
            str(threads),
        ]
        + (["--micro", str(micro)] if micro else [])
        + (["--max-rows", str(max_rows)] if max_rows else [])
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--micro", type=int, default=None)
    p.add_argument("--steps", type=int, default=7)
    p.add_argument("--tiling", default="auto")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--blocks", type=int, default=3, help="alternating plain / GradCache blocks")
    p.add_argument("--skip-large", action="store_true")
    p.add_argument("--skip-overhead", action="store_true")
    p.add_argument("--overhead-micro", type=int, default=256, help="GradCache micro-batch of the overhead part")
    p.add_argument("--large-batch", type=int, default=65536, help="effective batch of the large GradCache step")
    p.add_argument("--large-micro", type=int, default=1024, help="its micro-batch")
    p.add_argument("--large-plain", type=int, default=4096, help="rows of the plain step shown for scale (0: none)")
    p.add_argument("--max-rows", type=int, default=None, help="distinct digits preprocessed (default: all 1,437)")
    p.add_argument("--smoke", action="store_true", help=f"tiny run of both parts (CI): {SMOKE}")
    args = p.parse_args()
    if args.smoke:
        p.set_defaults(**SMOKE)
        args = p.parse_args()
    if args.worker:
        return worker(args)
    print(f"load average {os.getloadavg()[0]:.2f}, {time.strftime('%Y-%m-%d %H:%M')}, {args.threads} threads")
    plain_t, cached_t = [], []
    for i in range(0 if args.skip_overhead else args.blocks):  # ABBA: drift of the machine cancels
        m = args.overhead_micro
        order = [("plain", None), ("cached", m)] if i % 2 == 0 else [("cached", m), ("plain", None)]
        for name, micro in order:
            r = run(args.batch, micro, args.steps, threads=args.threads, max_rows=args.max_rows)
            (plain_t if micro is None else cached_t).extend(r["times"][1:])  # first step: warm-up
    if plain_t:
        plain, cached = statistics.median(plain_t), statistics.median(cached_t)
        print(f"\n| batch {args.batch} | median step s | samples/s |\n|---|---:|---:|")
        print(f"| plain | {plain:.3f} | {args.batch / plain:.0f} |")
        print(f"| GradCache, micro {args.overhead_micro} | {cached:.3f} | {args.batch / cached:.0f} |")
        print(f"overhead GradCache / plain: {cached / plain:.2f}x (target <= 1.4)")
    if not args.skip_large:
        print("\n| step | rows | wall s | samples/s | peak RSS GB |\n|---|---:|---:|---:|---:|")
        n, big_n = args.large_plain, args.large_batch
        if n:  # --smoke leaves it out: the same path as the overhead part's plain step, one process less
            plain4k = run(n, None, 1, threads=args.threads, max_rows=args.max_rows)
            print(
                f"| plain | {n} | {plain4k['times'][0]:.1f} | {n / plain4k['times'][0]:.0f} | "
                f"{plain4k['peak_rss_gb']:.2f} |"
            )
        big = run(big_n, args.large_micro, 1, tiling="on", threads=args.threads, max_rows=args.max_rows)
        print(
            f"| GradCache, micro {args.large_micro}, tiled loss | {big_n} | {big['times'][0]:.1f} | "
            f"{big_n / big['times'][0]:.0f} | {big['peak_rss_gb']:.2f} |"
        )
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    print("rerun: python benchmarks/gradcache.py" + "".join(" " + a for a in sys.argv[1:]))


if __name__ == "__main__":
    main()
