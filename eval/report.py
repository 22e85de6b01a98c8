"""Evaluation reports: one JSON per run in a stable, documented schema (``align.eval/v1``).

    {
      "schema": "align.eval/v1",
      "task": "zeroshot" | "retrieval" | "pairs",
      "created": ISO-8601 UTC time,
      "align_version": str,
      "model": {"checkpoint": path, "step": int, "embed_dim": int, "loss": "clip"|"siglip",
                "modalities": [str]},
      "dataset": {"source": str, "split": str, "rows": int},
      "metrics": {...}   # zeroshot: top1, top5 (null + reason under "undefined" below 5 classes),
                         #   mean_per_class_recall, per_class_recall, confusion_matrix, classnames
                         # retrieval: "{a}_to_{b}/R@k", mAP, median_rank, mean_rank, n_queries (both
                         #   directions), positives ("row" | "label"), n_a, n_b
      "timing": {"seconds": float}
    }

Beside it ``align eval`` writes ``confusion.png`` (zero-shot) or ``recall_at_k.png`` and, when one
side is images, ``queries.png`` (top-k images for a few queries; green frame = positive).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import align
from align.io.atomic import write_atomic

SCHEMA = "align.eval/v1"


def build_report(task: str, metrics: dict[str, Any], model_info: dict[str, Any]) -> dict[str, Any]:
    metrics = dict(metrics)
    dataset = metrics.pop("dataset", None)
    seconds = metrics.pop("seconds", None)
    return {
        "schema": SCHEMA,
        "task": task,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "align_version": align.__version__,
        "model": model_info,
        "dataset": dataset,
        "metrics": metrics.get(task, metrics),
        "timing": {"seconds": seconds},
    }


def write_report(report: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    return write_atomic(path, json.dumps(report, indent=2))
