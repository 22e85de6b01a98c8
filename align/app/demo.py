"""``align demo``: the embedded default job, image <-> text on scikit-learn's real digits.

Trains the shipped ``demo-digits.yaml`` config, then evaluates on the held-out split: zero-shot
classification with a prompt ensemble and image<->text recall@k through a FAISS index. Writes
``metrics.json``, ``loss.png`` and ``confusion.png`` to the output folder and prints a table.
"""

from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path
from typing import Any


def demo_config_path() -> Path:
    return Path(str(resources.files("align.configs").joinpath("demo-digits.yaml")))


def format_table(metrics: dict[str, Any]) -> str:
    rows = []
    zs = metrics.get("zeroshot")
    if zs:
        rows.append(("zero-shot top-1 (held-out)", zs["top1"]))
        if zs.get("top5") is not None:
            rows.append(("zero-shot top-5", zs["top5"]))
        rows.append(("zero-shot mean per-class recall", zs["mean_per_class_recall"]))
    r = metrics.get("retrieval")
    if r:
        for key, value in r["faiss"].items():
            if "/R@" in key:
                rows.append(
                    (f"{key.replace('_to_', '->')} (FAISS {r['faiss']['spec']}, {r['positives']} positives)", value)
                )
    t = metrics.get("timing", {})
    width = max(len(n) for n, _ in rows) if rows else 10
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  -----"]
    lines += [f"{n:<{width}}  {v:.4f}" for n, v in rows]
    if t:
        lines.append(f"{'train / eval seconds':<{width}}  {t['train_s']:.1f} / {t['eval_s']:.1f}")
    return "\n".join(lines)


def run_demo(out: str | Path = "runs/demo", overrides: list[str] | None = None) -> dict[str, Any]:
    from align.app.trainer import train
    from align.config.schema import load_config
    from align.eval.plots import plot_confusion_matrix, plot_loss_curve
    from align.eval.runner import evaluate

    out = Path(out)
    # the demo evaluates (and times) the final model itself, into metrics.json
    cfg = load_config(demo_config_path(), [f"output_dir={out}", "train.eval_at_end=false", *(overrides or [])])
    t0 = time.perf_counter()
    result = train(cfg)
    t1 = time.perf_counter()
    metrics = evaluate(result.model, cfg.eval)
    t2 = time.perf_counter()
    metrics["timing"] = {"train_s": t1 - t0, "eval_s": t2 - t1, "train_samples_per_s": result.samples_per_s}
    metrics["train"] = {
        "steps": cfg.train.steps,
        "batch_size": cfg.train.batch_size,
        "final_loss": result.losses[-1][1] if result.losses else None,
        "checkpoint": str(result.final_checkpoint) if result.final_checkpoint else None,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plot_loss_curve(result.losses, out / "loss.png", "demo: image<->text CLIP loss (sklearn digits)")
    zs = metrics["zeroshot"]
    plot_confusion_matrix(
        zs["confusion_matrix"],
        zs["classnames"],
        out / "confusion.png",
        f"zero-shot on held-out digits (top-1 {zs['top1']:.3f})",
    )
    return metrics
