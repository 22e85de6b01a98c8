"""Linear probe on frozen embeddings: logistic regression, its regularisation chosen by
cross-validation on the training embeddings only (the CLIP paper's protocol; reported with the
zero-shot metrics' keys: top-k and mean per-class recall on the test split). CLIP_benchmark's
``linear_probe`` task fits a torch linear layer by AdamW for a fixed number of epochs instead, with
weight decay chosen on a validation split carved from the training set; its numbers are not these.

Why sklearn's L-BFGS ``LogisticRegression`` (multinomial, L2) and not a torch layer: the objective
is convex, so the fit is the unique optimum, the same on every machine and seed; CLIP fitted its
probes the same way. ``C`` (inverse L2 strength) is swept over ``C_GRID`` with stratified k-fold
cross-validation on the training rows (at most ``folds`` folds, no more than the smallest class
has rows); the best mean fold accuracy wins, ties going to the smaller ``C`` (the stronger
regularisation). With one example in some class no fold can hold it out: ``C`` then stays at
sklearn's default 1.0 and the result says so (``cv: null`` plus the reason). The test split is
never looked at while choosing.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
import torch

from align.eval.zeroshot_metrics import zeroshot_classification_metrics

C_GRID = tuple(float(c) for c in 10.0 ** np.arange(-2, 5))  # 0.01 ... 10,000, 7 values
DEFAULT_C = 1.0


def _fit(x: np.ndarray, y: np.ndarray, c: float, seed: int):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=c, max_iter=1000, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, y)
    return clf


def choose_c(
    x: np.ndarray, y: np.ndarray, seed: int = 0, grid: Sequence[float] = C_GRID, folds: int = 5
) -> tuple[float, dict[str, Any]]:
    """(C, record): ``C`` by stratified k-fold accuracy on (x, y) alone."""
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(y)
    smallest = int(counts[counts > 0].min())
    n_folds = min(int(folds), smallest)
    if n_folds < 2 or len(np.unique(y)) < 2:
        reason = f"{smallest} example(s) in a class: no fold to hold out"
        return DEFAULT_C, {"C": DEFAULT_C, "cv": None, "reason": reason}
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    scores = []
    for c in grid:
        acc = [float((_fit(x[tr], y[tr], c, seed).predict(x[te]) == y[te]).mean()) for tr, te in splitter.split(x, y)]
        scores.append(float(np.mean(acc)))
    best = int(np.argmax(scores))  # first maximum: the smallest C among equals
    return float(grid[best]), {"C": float(grid[best]), "cv": {"folds": n_folds, "grid": list(grid), "accuracy": scores}}


def fit_linear_probe(
    x: Any, y: Any, n_classes: int, seed: int = 0, grid: Sequence[float] = C_GRID, folds: int = 5
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """(weight [C, D], bias [C], record) of the probe fitted on all of (x, y) with the chosen ``C``.
    Every class in ``range(n_classes)`` must have examples (an absent class has no weights)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    missing = sorted(set(range(n_classes)) - set(y.tolist()))
    if missing:
        raise ValueError(f"linear probe: no training examples for class(es) {missing}")
    c, record = choose_c(x, y, seed, grid, folds)
    clf = _fit(x, y, c, seed)
    coef, intercept = np.asarray(clf.coef_), np.asarray(clf.intercept_)
    if n_classes == 2:  # sklearn keeps one row for two classes: logit(1) - logit(0)
        coef = np.stack([-coef[0] / 2, coef[0] / 2])
        intercept = np.asarray([-intercept[0] / 2, intercept[0] / 2])
    return torch.as_tensor(coef, dtype=torch.float32), torch.as_tensor(intercept, dtype=torch.float32), record


def linear_probe_metrics(
    train_x: Any,
    train_y: Any,
    test_x: Any,
    test_y: Any,
    classnames: Sequence[str] | None = None,
    seed: int = 0,
    folds: int = 5,
) -> dict[str, Any]:
    """Fit on (train_x, train_y), score test: the zero-shot metrics' keys (top1, top5,
    mean_per_class_recall, confusion matrix) plus the chosen ``C`` and the training size."""
    n_classes = len(classnames) if classnames is not None else int(max(np.max(train_y), np.max(test_y)) + 1)
    weight, bias, record = fit_linear_probe(train_x, train_y, n_classes, seed, folds=folds)
    logits = torch.as_tensor(np.ascontiguousarray(test_x), dtype=torch.float32) @ weight.T + bias
    out = zeroshot_classification_metrics(logits, test_y, classnames=classnames)
    out.update(probe=record, n_train=int(len(train_y)))
    return out
