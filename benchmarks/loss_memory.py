"""Contrastive-loss memory and time: ``align.objectives.tiled`` vs open_clip's dense losses, on this CPU.

What it measures
    Forward + backward of the loss alone, for B pairs of ``--dim`` (512) float32 unit features
    (``a``, ``b`` leaves requiring grad), ``logit_scale = exp(log 100)`` (a leaf's exp, as in
    training) and, for SigLIP, a learnable bias of -10:

    * ``ours``: ``align.objectives.tiled.TiledClipLoss`` / ``TiledSigLipLoss`` (``--tile-size``, default
      1024 as ``model.loss_tile_size``), which never hold the [B, B] logits;
    * ``open_clip``: ``open_clip.loss.ClipLoss`` / ``SigLipLoss`` (one process), which build the
      [B, B] logits, their log-softmax / log-sigmoid and gradients.

    Every (implementation, loss, B) runs in a fresh subprocess, one at a time: inputs are created,
    one small untimed call warms up the kernels, then each repeat is timed (wall clock,
    ``time.perf_counter``, forward + ``backward()``; median reported) and its peak extra memory
    taken as peak RSS during the call minus RSS just before it (Linux: ``VmHWM`` after resetting it
    through ``/proc/self/clear_refs``; elsewhere the ``ru_maxrss`` delta of the first repeat).
    Reported: the maximum over repeats. Repeats: ``--repeats`` (3) up to B=16384,
    ``--big-repeats`` (1) above. open_clip is skipped where its estimated need (B^2 * 4 bytes * 4)
    exceeds ``--dense-fraction`` (0.5) of MemAvailable (the machine is shared), and the table says
    what it would need. Both sides' loss values must agree to 1e-4 (relative) or the script fails.

Cost: ~4 block matmuls of B^2 * d for tiled CLIP (forward 1; backward 1 recompute + 2) against
open_clip's 3, but open_clip also makes ~10 passes over B^2-float tensors that do not fit in any
cache; tiled SigLIP computes its gradients in the forward pass (3 matmuls, like open_clip).
The whole default run takes ~10 min on 2 busy cores (B=65536 alone: a few minutes).

Rerun::

    python benchmarks/loss_memory.py                                  # all sizes, CLIP + SigLIP at 16384
    python benchmarks/loss_memory.py --batches 4096,8192 --siglip-batches 8192 --repeats 5
    python benchmarks/loss_memory.py --tile-size 512 --threads 1 --json out.json
    python benchmarks/loss_memory.py --smoke                          # B=256, 32-d, tile 64, both losses: seconds (CI)
"""

from __future__ import annotations

import argparse
import gc
import json
import math
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
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from memory import PeakExtra, mem_available  # noqa: E402 -- benchmarks/memory.py, this script's folder

from align.objectives.tiled import TiledClipLoss, TiledSigLipLoss  # noqa: E402

DENSE_FACTOR = 4  # open_clip's peak, in [B, B] float32 matrices (measured ~3.5 for ClipLoss)
VALUE_RTOL = 1e-4
SMOKE = {
    "batches": [256],
    "siglip_batches": [256],
    "dim": 32,
    "tile_size": 64,
    "repeats": 1,
    "big_repeats": 1,
}  # --smoke defaults: both losses, both implementations, tiny (4 tiles a side)


def make_loss(impl: str, loss: str, tile_size: int):
    if impl == "ours":
        return TiledClipLoss(tile_size=tile_size) if loss == "clip" else TiledSigLipLoss(tile_size=tile_size)
    from open_clip import loss as oc_loss

    return oc_loss.ClipLoss() if loss == "clip" else oc_loss.SigLipLoss()


def worker(args) -> None:
    import torch
    import torch.nn.functional as F

    if args.threads:
        torch.set_num_threads(args.threads)
    impl, loss, batch = args.worker.split(":")
    batch = int(batch)
    g = torch.Generator().manual_seed(args.seed)
    a = F.normalize(torch.randn(batch, args.dim, generator=g), dim=-1).requires_grad_()
    b = F.normalize(torch.randn(batch, args.dim, generator=g), dim=-1).requires_grad_()
    log_scale = torch.tensor(math.log(100.0), requires_grad=True)
    bias = torch.tensor(-10.0, requires_grad=True) if loss == "siglip" else None
    fn = make_loss(impl, loss, args.tile_size)

    def call():
        value = fn(a, b, log_scale.exp(), bias)
        value.backward()
        return value.item()

    small = min(batch, 512)
    fn(a[:small], b[:small], log_scale.exp(), bias).backward()  # warm-up: kernels, thread pool
    times, value = [], None
    meter = PeakExtra()
    for i in range(args.repeats if batch <= 16384 else args.big_repeats):
        for t in (a, b, log_scale, bias):
            if t is not None:
                t.grad = None
        gc.collect()
        with meter.measure():
            t0 = time.perf_counter()
            value = call()
            times.append(time.perf_counter() - t0)
        print(f"  [{args.worker}] repeat {i + 1}: {times[-1]:.2f} s", file=sys.stderr, flush=True)
    Path(args.worker_out).write_text(
        json.dumps(
            {
                "times": times,
                "peak_bytes": max(meter.peaks),
                "value": value,
                "threads": torch.get_num_threads(),
                "peak_method": meter.method,
            }
        )
    )


def spawn(key: str, argv: list[str], tmp: Path) -> dict:
    out = tmp / (key.replace(":", "-") + ".json")
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--worker", key, "--worker-out", str(out)]
    subprocess.run(cmd, check=True, cwd=ROOT)
    return json.loads(out.read_text())


def fmt_bytes(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def versions() -> str:
    from importlib.metadata import version

    import torch

    # open_clip's version from its metadata: importing it here would cost the parent seconds
    return (
        f"python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"open_clip {version('open_clip_torch')}, {platform.machine()} {platform.system()}, {os.cpu_count()} CPUs"
    )


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--batches", type=_ints, default=[4096, 8192, 16384, 32768, 65536], help="CLIP batch sizes")
    ap.add_argument("--siglip-batches", type=_ints, default=[16384], help="SigLIP batch sizes")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--tile-size", type=int, default=1024, help="ours: rows / columns per block (default 1024)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats up to B=16384 (default 3)")
    ap.add_argument("--big-repeats", type=int, default=1, help="timed repeats above B=16384 (default 1)")
    ap.add_argument(
        "--dense-fraction",
        type=float,
        default=0.5,
        help="skip open_clip when B^2*16 bytes exceed this share of MemAvailable (default 0.5)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    ap.add_argument("--json", type=Path, default=None, help="also write results as JSON here")
    ap.add_argument("--smoke", action="store_true", help=f"tiny run of the same path, both sides (CI): {SMOKE}")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.smoke:  # the workers get every setting explicitly (passthrough below)
        ap.set_defaults(**SMOKE)
        args = ap.parse_args(argv)
    if args.worker:
        return worker(args)

    raw = sys.argv[1:] if argv is None else argv
    passthrough = [
        "--dim",
        str(args.dim),
        "--tile-size",
        str(args.tile_size),
        "--repeats",
        str(args.repeats),
        "--big-repeats",
        str(args.big_repeats),
        "--seed",
        str(args.seed),
    ]
    if args.threads:
        passthrough += ["--threads", str(args.threads)]
    cases = [("clip", n) for n in args.batches] + [("siglip", n) for n in args.siglip_batches]
    load_before = os.getloadavg()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for loss, n in cases:
            for impl in ("ours", "open_clip"):
                key = f"{impl}:{loss}:{n}"
                need, avail = DENSE_FACTOR * 4 * n * n, mem_available()
                if impl == "open_clip" and avail is not None and need > args.dense_fraction * avail:
                    results[key] = {"skipped": f"skipped: would need ~{fmt_bytes(need)} ({fmt_bytes(avail)} available)"}
                    print(f"{key}: {results[key]['skipped']}", file=sys.stderr, flush=True)
                    continue
                print(f"running {key} ...", file=sys.stderr, flush=True)
                results[key] = spawn(key, passthrough, Path(tmp))

    lines = [
        "| loss | B | open_clip peak extra | ours peak extra | memory ours/open_clip "
        "| open_clip median s | ours median s | time ours/open_clip | repeats |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for loss, n in cases:
        ours, ref = results[f"ours:{loss}:{n}"], results[f"open_clip:{loss}:{n}"]
        t_ours = statistics.median(ours["times"])
        if "skipped" in ref:
            cells = [ref["skipped"], fmt_bytes(ours["peak_bytes"]), "", "", f"{t_ours:.2f}", ""]
        else:
            rel = abs(ours["value"] - ref["value"]) / abs(ref["value"])
            if rel > VALUE_RTOL:
                raise SystemExit(f"{loss} B={n}: loss values differ: ours {ours['value']} vs open_clip {ref['value']}")
            t_ref = statistics.median(ref["times"])
            mem_ratio = f"{ours['peak_bytes'] / ref['peak_bytes']:.3f}" if ref["peak_bytes"] else "n/a"
            cells = [
                fmt_bytes(ref["peak_bytes"]),
                fmt_bytes(ours["peak_bytes"]),
                mem_ratio,
                f"{t_ref:.2f}",
                f"{t_ours:.2f}",
                f"{t_ours / t_ref:.2f}",
            ]
        lines.append(f"| {loss} | {n} | " + " | ".join(cells) + f" | {len(ours['times'])} |")
    cmd = "python benchmarks/loss_memory.py" + ("" if not raw else " " + shlex.join(raw))
    load_after = os.getloadavg()
    print("\n".join(lines))
    print()
    print(
        f"d={args.dim} float32, tile {args.tile_size}, seed {args.seed}; memory: "
        f"{next(iter(r['peak_method'] for r in results.values() if 'peak_method' in r))}, max over repeats"
    )
    print(
        "times (s): "
        + "; ".join(f"{k} {[round(t, 2) for t in r['times']]}" for k, r in results.items() if "times" in r)
    )
    print(
        f"versions: {versions()}; load average before {' '.join(f'{x:.2f}' for x in load_before)}, "
        f"after {' '.join(f'{x:.2f}' for x in load_after)}"
    )
    print(f"rerun: {cmd}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                    "results": results,
                    "versions": versions(),
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
