"""PNG plots a person would rather look at than read (matplotlib, headless Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path) -> Path:
    """Lay ``fig`` out, write it to ``path`` (its folder made if missing) and close it, also when
    writing fails, so no figure is left open; returns ``path``."""
    plt = _plt()
    path = Path(path)
    try:
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def plot_loss_curve(losses: Sequence[tuple[int, float]], path: str | Path, title: str = "training loss") -> Path:
    plt = _plt()
    steps = np.array([s for s, _ in losses])
    values = np.array([v for _, v in losses])
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(steps, values, lw=0.8, alpha=0.4, label="per step")
    if len(values) >= 10:
        w = max(5, len(values) // 30)
        smooth = np.convolve(values, np.ones(w) / w, mode="valid")
        ax.plot(steps[w - 1 :], smooth, lw=1.6, label=f"mean of {w}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def plot_confusion_matrix(
    cm: np.ndarray, classnames: Sequence[str], path: str | Path, title: str = "zero-shot confusion matrix"
) -> Path:
    plt = _plt()
    cm = np.asarray(cm)
    n = len(classnames)
    fig, ax = plt.subplots(figsize=(1.0 + 0.5 * n, 0.8 + 0.5 * n), dpi=120)
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), classnames, rotation=45, ha="right")
    ax.set_yticks(range(n), classnames)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    thresh = cm.max() / 2 if cm.size else 0
    for i in range(n):
        for j in range(n):
            if cm[i, j]:
                ax.text(
                    j,
                    i,
                    str(cm[i, j]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if cm[i, j] > thresh else "black",
                )
    return save_figure(fig, path)


def plot_recall_curve(metrics: dict, path: str | Path, title: str = "retrieval recall@k") -> Path:
    """R@k against k for each direction found in ``metrics`` (keys like 'image_to_text/R@5')."""
    plt = _plt()
    curves: dict[str, list[tuple[int, float]]] = {}
    for key, value in metrics.items():
        if "/R@" in key and value is not None:
            direction, k = key.split("/R@")
            curves.setdefault(direction, []).append((int(k), float(value)))
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for direction, points in sorted(curves.items()):
        ks, vs = zip(*sorted(points))
        ax.plot(ks, vs, marker="o", label=direction.replace("_to_", " -> "))
    ax.set_xscale("log")
    ax.set_xlabel("k")
    ax.set_ylabel("recall@k")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def plot_query_grid(
    queries: Sequence[str],
    results: Sequence[Sequence[tuple]],
    path: str | Path,
    title: str = "text -> image: top results",
) -> Path:
    """One row per text query: the query, then its top images as ``(PIL image, score, is_positive)``;
    positives get a green frame, misses a red one."""
    plt = _plt()
    k = max(len(r) for r in results)
    fig, axes = plt.subplots(len(queries), k + 1, figsize=(1.6 * (k + 1), 1.7 * len(queries)), dpi=110, squeeze=False)
    for row, (query, hits) in enumerate(zip(queries, results)):
        axes[row, 0].text(0.0, 0.5, query, wrap=True, fontsize=8, va="center")
        axes[row, 0].axis("off")
        for col in range(k):
            ax = axes[row, col + 1]
            ax.set_xticks([])
            ax.set_yticks([])
            if col >= len(hits):
                ax.axis("off")
                continue
            image, score, positive = hits[col]
            ax.imshow(np.asarray(image), cmap="gray")
            ax.set_title(f"{score:.3f}", fontsize=7)
            for spine in ax.spines.values():
                spine.set_edgecolor("green" if positive else "red")
                spine.set_linewidth(2.5)
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)


def plot_pair_heatmap(
    matrix: Sequence[Sequence[float | None]],
    names: Sequence[str],
    path: str | Path,
    title: str = "R@1 between modalities",
) -> Path:
    """Query modality (rows) x gallery modality (columns), one value per direction, annotated in
    its cell; ``None`` (the diagonal: a modality against itself is not a pair) stays blank."""
    plt = _plt()
    m = np.array([[np.nan if v is None else float(v) for v in row] for row in matrix], dtype=float)
    n = len(names)
    fig, ax = plt.subplots(figsize=(1.6 + 0.9 * n, 1.2 + 0.8 * n), dpi=120)
    cmap = plt.get_cmap("viridis").with_extremes(bad="white")  # NaN cells (the diagonal) blank
    im = ax.imshow(np.ma.masked_invalid(m), cmap=cmap, vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n), names, rotation=30, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("gallery")
    ax.set_ylabel("query")
    ax.set_title(title)
    for i in range(n):
        for j in range(n):
            if np.isfinite(m[i, j]):
                ax.text(
                    j,
                    i,
                    f"{m[i, j]:.3f}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="black" if m[i, j] > 0.6 else "white",
                )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return save_figure(fig, path)
