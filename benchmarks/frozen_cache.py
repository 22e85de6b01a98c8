"""ChEBI-20 (configs/chebi20-graph-text.yaml) trained with the frozen MiniLM recomputed every step
vs its features computed once (align/training/feature_cache.py) and the SMILES featurised once
(``data.cache_samples``): wall time of the same run, same code, same machine.

    python benchmarks/frozen_cache.py                 # 40 steps each, extrapolated to the config's 600
    python benchmarks/frozen_cache.py --steps 600     # the whole run, both ways (~1.5 h on 2 cores)
    python benchmarks/frozen_cache.py --smoke         # 8 steps of 8 rows on 32 molecules, small GIN: seconds (CI)

Each variant runs ``align.training.loop.run_training`` (the loop without the final evaluation) in its own
process, one after the other. Reported per variant: setup seconds (loading, fitting, and for the
cached run the one forward over the 3,301 training descriptions), the median step time over the
steps after the first 5 (from ``train_log.jsonl``'s wall clock, logged every step), and the
end-to-end time of the config's 600 steps = setup + 600 x median step, measured when
``--steps 600``. The ratio recomputed / cached is the speed-up (target >= 3). The two runs' loss
curves agree to float rounding (batch padding differs between a 256-row cache batch and a 64-row
training batch); the largest difference over the steps is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "chebi20-graph-text.yaml"
VARIANTS = {
    "recomputed": ["model.modalities.text.cache=off", "data.cache_samples=false"],
    "cached": ["model.modalities.text.cache=auto", "data.cache_samples=true"],
}
SMOKE_OVERRIDES = [  # --smoke: the same config, model and loop at their smallest (the frozen MiniLM stays)
    "data.train.max_samples=32",
    "train.batch_size=8",
    "train.warmup_steps=0",
    "model.modalities.graph.options.width=16",
    "model.modalities.graph.options.layers=2",
    "model.modalities.text.options.max_length=32",
]
CHILD = """
import json, sys, time
t0 = time.perf_counter()
from align.config.schema import load_config
from align.training.loop import run_training
cfg = load_config(sys.argv[1], sys.argv[3:])
result = run_training(cfg)
print(json.dumps({"total_s": time.perf_counter() - t0, "losses": result.losses}))
"""


def run(variant: str, steps: int, out: Path, extra: list[str] = ()) -> dict:
    overrides = (
        VARIANTS[variant]
        + list(extra)
        + [
            f"output_dir={out / variant}",
            f"train.steps={steps}",
            "train.log_every=1",
            "train.progress=false",
            "train.eval_at_end=false",
        ]
    )
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(CONFIG), variant, *overrides], cwd=REPO, capture_output=True, text=True
    )
    if proc.returncode:
        sys.exit(f"{variant} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    wall = [
        json.loads(line)["wall_s"]
        for line in (out / variant / "train_log.jsonl").read_text().splitlines()
        if '"wall_s"' in line
    ]
    steps_s = sorted(b - a for a, b in zip(wall[5:], wall[6:]))
    result["step_s"] = steps_s[len(steps_s) // 2]
    result["setup_s"] = result["total_s"] - wall[-1]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--full-steps", type=int, default=600, help="the config's train.steps")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny run of both variants (CI): 8 steps, " + " ".join(SMOKE_OVERRIDES)
    )
    args = parser.parse_args()
    if args.smoke:
        parser.set_defaults(steps=8)  # the median step needs at least 7 logged steps
        args = parser.parse_args()
    extra = SMOKE_OVERRIDES if args.smoke else []
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        res = {v: run(v, args.steps, Path(tmp), extra) for v in VARIANTS}
    print(
        f"ChEBI-20, {args.steps} steps each, batch {8 if args.smoke else 64}, torch threads default, "
        f"load {load[0]:.2f} -> "
        f"{os.getloadavg()[0]:.2f}, {time.strftime('%Y-%m-%d %H:%M')}"
    )
    print("| variant | setup s | median step s | 600-step run (setup + 600 x step) |")
    print("|---|---:|---:|---:|")
    full = {}
    for v, r in res.items():
        full[v] = r["setup_s"] + args.full_steps * r["step_s"]
        print(f"| {v} | {r['setup_s']:.1f} | {r['step_s']:.3f} | {full[v] / 60:.1f} min |")
    print(
        f"speed-up (recomputed / cached), end to end: {full['recomputed'] / full['cached']:.2f}x; "
        f"per step: {res['recomputed']['step_s'] / res['cached']['step_s']:.2f}x"
    )
    diff = max(abs(a[1] - b[1]) for a, b in zip(res["recomputed"]["losses"], res["cached"]["losses"]))
    print(f"largest loss difference between the runs over {args.steps} steps: {diff:.2e}")
    print(f"rerun: python benchmarks/frozen_cache.py --steps {args.steps}" + (" --smoke" if args.smoke else ""))


if __name__ == "__main__":
    main()
