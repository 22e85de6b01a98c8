"""Metrics with the definitions the field uses (CLIP_benchmark for zero-shot and recall@k)."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float | None:
    """Fraction of rows whose true label is among the k highest scores; ``None`` when there are
    fewer than k classes (the metric is undefined there, not 1.0)."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    if scores.shape[1] < k:
        return None
    topk = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float((topk == labels[:, None]).any(axis=1).mean())


def confusion_matrix(pred: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(labels), np.asarray(pred)), 1)
    return cm


def balanced_accuracy(cm: np.ndarray) -> float:
    """Mean per-class recall over classes that occur."""
    support = cm.sum(axis=1)
    present = support > 0
    return float((np.diag(cm)[present] / support[present]).mean())


def recall_at_k(ranked: np.ndarray, positives: Sequence[set[int]] | np.ndarray, ks: Sequence[int]) -> dict[int, float]:
    """Recall@k for ranked gallery ids [Q, >=max(k)]: a query scores 1 when any of its positives is
    in its top k (CLIP_benchmark's definition), averaged over queries."""
    ranked = np.asarray(ranked)
    if isinstance(positives, np.ndarray) and positives.dtype == bool:
        hits = np.take_along_axis(positives, ranked, axis=1)
    else:
        hits = np.array([[int(g) in pos for g in row] for row, pos in zip(ranked, positives)], dtype=bool)
    return {k: float(hits[:, :k].any(axis=1).mean()) for k in ks}
