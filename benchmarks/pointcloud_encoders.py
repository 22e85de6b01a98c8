"""Point-cloud encoders on CPU: training-step throughput of PointNet and the patch transformer, and
the preprocessor's per-sample cost on real DALES objects.

What it measures
    * train step: ``PointCloudAdapter`` (built from options) + a linear head, a CLIP-style loss
      against fixed random targets, backward, AdamW step, on one pre-built random batch
      [batch, num_points, 3] (no data loading). Median wall time over ``--steps`` timed steps after
      ``--warmup``; reported as samples/s. Encoders: each one's defaults, plus the encoder options
      of the DALES configs (``configs/dales-pointcloud-text*.yaml``) at the same point count.
    * preprocess (``--preprocess``): ``PointCloudPreprocessor`` in training mode on the 499 DALES
      objects (fps and random sampling), median ms per sample, i.e. what one DataLoader worker
      can feed.

Rerun (about 1-2 minutes on 2 idle cores)::

    python benchmarks/pointcloud_encoders.py
    python benchmarks/pointcloud_encoders.py --batch-size 64 --num-points 512 --threads 2 --preprocess
    python benchmarks/pointcloud_encoders.py --smoke   # batch 4, 128 points, 1 step, 20 objects: seconds (CI)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from align.modalities import build_adapter  # noqa: E402

NPZ = ROOT.parent / "shared" / "data" / "pointcloud" / "dales_objects" / "dales_objects_499.npz"
ENCODER_KEYS = (
    "encoder",
    "widths",
    "pooling",
    "norm",
    "num_groups",
    "group_size",
    "token_widths",
    "width",
    "layers",
    "heads",
    "mlp_ratio",
)
SMOKE = {
    "batch_size": 4,
    "num_points": 128,
    "steps": 1,
    "warmup": 1,
    "preprocess": True,
    "objects": 20,
}  # --smoke defaults: every encoder variant, tiny


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-points", type=int, default=1024)
    p.add_argument("--steps", type=int, default=8, help="timed steps per encoder")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--no-configs", action="store_true", help="only the encoders' default options")
    p.add_argument("--preprocess", action="store_true", help="also time the preprocessor on DALES")
    p.add_argument("--objects", type=int, default=None, help="--preprocess: the first N DALES objects (default all)")
    p.add_argument("--smoke", action="store_true", help=f"tiny run of the same path (CI): {SMOKE}")
    args = p.parse_args(argv)
    if args.smoke:
        p.set_defaults(**SMOKE)
        args = p.parse_args(argv)
    return args


def encoder_variants(num_points: int, with_configs: bool) -> list[tuple[str, dict]]:
    rows = [("pointnet (defaults)", {"encoder": "pointnet"}), ("patch (defaults)", {"encoder": "patch"})]
    if with_configs:
        import yaml

        for cfg in sorted((ROOT / "configs").glob("dales-pointcloud-text*.yaml")):
            opts = yaml.safe_load(cfg.read_text())["model"]["modalities"]["pointcloud"]["options"]
            rows.append((cfg.stem, {k: v for k, v in opts.items() if k in ENCODER_KEYS}))
    return [(name, {**opts, "num_points": num_points}) for name, opts in rows]


def time_train_step(options: dict, batch_size: int, steps: int, warmup: int) -> tuple[float, int]:
    """Median seconds per optimizer step and the parameter count."""
    torch.manual_seed(0)
    adapter = build_adapter("pointcloud", options)
    head = torch.nn.Linear(adapter.feature_dim, 64)
    params = [*adapter.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-3)
    x = torch.randn(batch_size, options["num_points"], 3)
    targets = torch.nn.functional.normalize(torch.randn(batch_size, 64), dim=-1)
    labels = torch.arange(batch_size)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        emb = torch.nn.functional.normalize(head(adapter(x)), dim=-1)
        loss = torch.nn.functional.cross_entropy(emb @ targets.T * 10, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times), sum(p.numel() for p in params)


def time_preprocess(num_points: int, objects: int | None = None) -> list[tuple[str, float, float]]:
    import numpy as np

    z = np.load(NPZ)
    off, points = z["offsets"], z["points"]  # one read: every z[...] reloads the whole array
    clouds = [points[off[i] : off[i + 1]] for i in range(len(off) - 1)][:objects]
    out = []
    for sampling in ("fps", "random"):
        pre = build_adapter("pointcloud", {"num_points": num_points, "sampling": sampling}).preprocessor()
        times = []
        for c in clouds:
            t0 = time.perf_counter()
            pre(c, train=True)
            times.append(time.perf_counter() - t0)
        out.append((sampling, 1000 * statistics.median(times), 1000 * statistics.mean(times)))
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}; batch {args.batch_size}, {args.num_points} points, "
        f"median of {args.steps} steps\n"
    )
    print("| encoder | options | params | step ms | samples/s |")
    print("|---|---|---:|---:|---:|")
    for name, opts in encoder_variants(args.num_points, not args.no_configs):
        step, n_params = time_train_step(opts, args.batch_size, args.steps, args.warmup)
        shown = ", ".join(f"{k}={v}" for k, v in opts.items() if k not in ("encoder", "num_points"))
        print(
            f"| {name} | {shown or 'defaults'} | {n_params / 1e6:.2f} M | {1000 * step:.0f} | "
            f"{args.batch_size / step:.1f} |",
            flush=True,
        )
    if args.preprocess:
        if not NPZ.is_file():
            print(f"\n(no DALES data at {NPZ}: preprocessing not timed)")
            return 0
        print(
            f"\n| preprocess (train, {args.num_points} points, {args.objects or 499} DALES objects) "
            "| median ms | mean ms |"
        )
        print("|---|---:|---:|")
        for sampling, med, mean in time_preprocess(args.num_points, args.objects):
            print(f"| {sampling} | {med:.2f} | {mean:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
