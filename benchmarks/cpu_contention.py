"""Training, evaluation and encoding speed on a quiet and on a contended CPU, per thread setting.

A user's laptop or a shared server is always contended. This runs each workload in a fresh process
(so OpenMP reads its environment anew) beside 0, 1 or 2 busy processes (a pure-Python spin loop
each: any CPU-bound neighbour) under each setting:

* ``spin``     torch's own default: OpenMP threads spin-wait (``ALIGN_CPU_DEFAULTS=0``)
* ``align``    align's default (``align.cpu.apply_cpu_defaults``: ``OMP_WAIT_POLICY=PASSIVE``)
* ``1 thread`` ``OMP_NUM_THREADS=1`` with torch's spin-waiting
* ``passive+1 thread``
* ``spin 10k`` / ``spin 100k``: ``GOMP_SPINCOUNT`` 10,000 / 100,000 (libgomp's default is 300,000
  spins, then sleep; PASSIVE is 0)

Workloads (scikit-learn's digits, the demo's towers, nothing downloaded): ``train`` (``align.train``
on configs/demo-digits.yaml, samples/s over its steps), ``eval`` (``align.eval.runner.evaluate``:
zero-shot + retrieval on the 360 test rows, rows/s), ``encode`` (``align.encode`` of the 1,437
training images, items/s); ``train-nodes`` (configs/citeseer-node-text.yaml, the graph-nodes route)
when ../shared/data has CiteSeer. Prints a table of medians and each rate as a share of the quiet
machine's default, next to the fair share (cores / (cores + busy), for a 2-core machine 0.67 and
0.5), plus the load average before the run.

    python benchmarks/cpu_contention.py                     # everything, ~15 min on 2 cores
    python benchmarks/cpu_contention.py --workloads train --busy 0,2 --repeats 3
    python benchmarks/cpu_contention.py --smoke             # train + encode once each, tiny, quiet only
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CITESEER = ROOT.parent / "shared" / "data" / "graph" / "citeseer"
SETTINGS = {
    "spin": {"ALIGN_CPU_DEFAULTS": "0"},
    "align": {},
    "1 thread": {"ALIGN_CPU_DEFAULTS": "0", "OMP_NUM_THREADS": "1"},
    "passive+1 thread": {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"},
    "spin 10k": {"ALIGN_CPU_DEFAULTS": "0", "GOMP_SPINCOUNT": "10000"},
    "spin 100k": {"ALIGN_CPU_DEFAULTS": "0", "GOMP_SPINCOUNT": "100000"},
}
USER_THREAD_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS", "ALIGN_CPU_DEFAULTS")


def worker(workload: str, steps: int, repeat_items: int) -> dict[str, float]:
    """Runs in the measured process: align's defaults first (as the CLI does), then torch."""
    from align.cpu import apply_cpu_defaults

    apply_cpu_defaults()
    import torch

    import align
    from align.config.schema import load_config

    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        if workload in ("train", "train-nodes"):
            config = "demo-digits.yaml" if workload == "train" else "citeseer-node-text.yaml"
            cfg = load_config(
                ROOT / "configs" / config,
                [f"train.steps={steps}", "eval=null", f"output_dir={tmp}/run", f"train.log_every={steps}"],
            )
            cwd = os.getcwd()
            os.chdir(ROOT)  # the citeseer config reads ../shared/data from the checkout root
            try:
                result = align.train(cfg)
            finally:
                os.chdir(cwd)
            return {"rate": result.samples_per_s, "threads": threads}
        cfg = load_config(ROOT / "configs" / "demo-digits.yaml")
        torch.manual_seed(0)
        model = align.AlignModel(cfg.model).eval()
        if workload == "eval":
            from align.eval.runner import evaluate

            evaluate(model, cfg.eval)  # warm-up: tables loaded and cached
            start = time.perf_counter()
            for _ in range(repeat_items):
                metrics = evaluate(model, cfg.eval)
            return {
                "rate": repeat_items * metrics["dataset"]["rows"] / (time.perf_counter() - start),
                "threads": threads,
            }
        from align.data.sources.sklearn_digits import sklearn_digits

        images = list(sklearn_digits("train")["image"])
        align.encode(model, "image", images[:256])
        start = time.perf_counter()
        for _ in range(repeat_items):
            align.encode(model, "image", images)
        return {"rate": repeat_items * len(images) / (time.perf_counter() - start), "threads": threads}


def run_one(workload: str, setting: str, busy: int, args) -> dict[str, float]:
    # the measured settings replace the caller's thread settings; a smoke run keeps them (the test
    # suite runs it single-threaded beside another)
    env = {k: v for k, v in os.environ.items() if args.smoke or k not in USER_THREAD_ENV}
    env.update(SETTINGS[setting], HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(ROOT))
    load_before = os.getloadavg()[0]  # what else was running: a cell measured beside other work says so
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    try:
        out = subprocess.run(
            [sys.executable, __file__, "--worker", workload, "--steps", str(args.steps), "--items", str(args.items)],
            env=env,
            capture_output=True,
            text=True,
            timeout=args.timeout,
        )
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    if out.returncode != 0:
        raise SystemExit(f"{workload} / {setting} / busy {busy} failed:\n{out.stderr[-3000:]}")
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "load": load_before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default="train,eval,encode,train-nodes")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma list of {list(SETTINGS)}")
    parser.add_argument("--busy", default="0,1,2", help="numbers of busy neighbour processes")
    parser.add_argument("--repeats", type=int, default=1, help="runs per cell (median reported)")
    parser.add_argument("--steps", type=int, default=60, help="training steps per train run")
    parser.add_argument("--items", type=int, default=2, help="eval / encode passes per run")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--smoke", action="store_true", help="train + encode, quiet, setting align, 2 steps, 1 pass")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps, args.items)))
        return
    if args.smoke:
        args.workloads, args.settings, args.busy, args.steps, args.items, args.repeats = (
            "train,encode",
            "align",
            "0",
            2,
            1,
            1,
        )
    workloads = [w for w in args.workloads.split(",") if w != "train-nodes" or CITESEER.is_dir()]
    settings, busy_levels = args.settings.split(","), [int(b) for b in args.busy.split(",")]
    cores = os.cpu_count() or 1
    load = os.getloadavg()
    print(f"# cpu_contention: {cores} CPUs, load average before {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    rows = []
    for workload in workloads:
        for busy in busy_levels:
            for setting in settings:
                runs = [run_one(workload, setting, busy, args) for _ in range(args.repeats)]
                rate = statistics.median(r["rate"] for r in runs)
                load = max(r["load"] for r in runs)
                rows.append((workload, busy, setting, rate, runs[0]["threads"], load))
                print(f"  {workload:11s} busy {busy} {setting:18s} {rate:9.1f}/s  (load before {load:.2f})", flush=True)
    print()
    print(
        "| workload | busy processes | setting | torch threads | median rate /s | share of quiet spin | fair share "
        "| load before |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for workload, busy, setting, rate, threads, load in rows:
        quiet = next((r[3] for r in rows if r[0] == workload and r[1] == 0 and r[2] == "spin"), None)
        share = f"{rate / quiet:.2f}" if quiet else "-"
        fair = min(1, cores / (cores + busy))
        print(f"| {workload} | {busy} | {setting} | {threads} | {rate:.1f} | {share} | {fair:.2f} | {load:.2f} |")
    rerun = shlex.join(["python", "benchmarks/cpu_contention.py", *sys.argv[1:]])
    print(f"\nrerun: {rerun}")


if __name__ == "__main__":
    main()
